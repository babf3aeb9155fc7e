#include "core/http_url.hpp"

#include <gtest/gtest.h>

namespace mmserve {
namespace {

TEST(HttpUrl, ReadsSchemeHostPortAndTarget) {
  const auto url = parse_http_url("HTTPS://user:secret@Example.COM/a/b?q=1#part");
  ASSERT_TRUE(url);
  EXPECT_EQ(url->scheme, "https");
  EXPECT_EQ(url->host, "example.com");
  EXPECT_EQ(url->port, "443");
  EXPECT_EQ(url->target, "/a/b?q=1"); // the fragment is the client's, never sent
  EXPECT_EQ(url->origin(), "https://example.com:443");
  EXPECT_EQ(url->host_field(), "example.com");

  const auto other_port = parse_http_url("http://models.local:8080");
  ASSERT_TRUE(other_port);
  EXPECT_EQ(other_port->port, "8080");
  EXPECT_EQ(other_port->target, "/");
  EXPECT_EQ(other_port->host_field(), "models.local:8080");

  const auto query_only = parse_http_url("http://host?x=1");
  ASSERT_TRUE(query_only);
  EXPECT_EQ(query_only->host, "host");
  EXPECT_EQ(query_only->target, "/?x=1");

  const auto empty_port = parse_http_url("http://host:/p"); // RFC 3986 allows it: the default
  ASSERT_TRUE(empty_port);
  EXPECT_EQ(empty_port->port, "80");
}

TEST(HttpUrl, KeepsIpv6AddressesOutOfTheirBrackets) {
  const auto url = parse_http_url("http://[::1]:9000/x");
  ASSERT_TRUE(url);
  EXPECT_EQ(url->host, "::1");
  EXPECT_EQ(url->port, "9000");
  EXPECT_EQ(url->host_in_url(), "[::1]");
  EXPECT_EQ(url->origin(), "http://[::1]:9000");
  EXPECT_EQ(url->host_field(), "[::1]:9000");
  const auto default_port = parse_http_url("https://[FE80::1]");
  ASSERT_TRUE(default_port);
  EXPECT_EQ(default_port->host, "fe80::1");
  EXPECT_EQ(default_port->host_field(), "[fe80::1]");
}

TEST(HttpUrl, RefusesWhatIsNotAnHttpUrl) {
  for (const char* text : {"ftp://host/", "file:///etc/passwd", "host/path", "http:/host", "http://", "http:///path",
                           "http://user@", "http://:80/", "http://[::1", "http://[::1]x", "http://host:0",
                           "http://host:65536", "http://host:8o", "http://host:-1", "http://host:+80",
                           // hosts no DNS name or address has; IPv6 only in brackets
                           "http://a b/", "http://a:b:80/", "http://a]b/", "http://x[y/",
                           "http://host\r\nX-Injected: 1/", "http://h\xC3\xA9te/",
                           // control characters would end the request line early
                           "http://host/a\r\nX-Injected: 1", "http://host/a\tb", "http://host/?q=\x7f"}) {
    EXPECT_FALSE(parse_http_url(text)) << text;
  }
}

TEST(HttpUrl, PercentEncodesWhatBrowsersEncodeInThePath) {
  const auto url = parse_http_url("http://host/my photo \"1\"<2>.png?size={big}&tag=`x`&name=caf\xC3\xA9");
  ASSERT_TRUE(url);
  EXPECT_EQ(url->target, "/my%20photo%20%221%22%3C2%3E.png?size=%7Bbig%7D&tag=%60x%60&name=caf%C3%A9");
  const auto encoded = parse_http_url("http://host/already%20encoded");
  ASSERT_TRUE(encoded);
  EXPECT_EQ(encoded->target, "/already%20encoded"); // never encoded twice
}

TEST(HttpUrl, PercentEncodesNamesForAPath) {
  EXPECT_EQ(percent_encode("refs/pr/1"), "refs%2Fpr%2F1");
  EXPECT_EQ(percent_encode("unet/special tokens?#.json", "/"), "unet/special%20tokens%3F%23.json");
  EXPECT_EQ(percent_encode("A-z_0.9~"), "A-z_0.9~");
  EXPECT_EQ(percent_encode("caf\xC3\xA9%"), "caf%C3%A9%25");
}

TEST(HttpUrl, ResolvesRedirectLocations) {
  const auto base = parse_http_url("https://a.example/x/y?z=1");
  ASSERT_TRUE(base);
  EXPECT_EQ(resolve_location(*base, "http://b.example/c"), "http://b.example/c");
  EXPECT_EQ(resolve_location(*base, "//c.example/d"), "https://c.example/d");
  EXPECT_EQ(resolve_location(*base, "/e?f=2"), "https://a.example:443/e?f=2");
  EXPECT_EQ(resolve_location(*base, "g"), "https://a.example:443/x/g");
}

} // namespace
} // namespace mmserve
