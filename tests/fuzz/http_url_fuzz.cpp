// libFuzzer target: the http(s) URL parser that image URL fetches, model
// pulls and the S3 endpoint share, and the redirect resolver. Input: a URL,
// then optionally a NUL byte and a redirect's Location. Whatever parses must
// be safe to put on the wire (no byte that could end the request line or a
// field early) and must read back the same from what it writes.
#include "core/http_url.hpp"

#include <charconv>
#include <cstdio>
#include <cstdlib>

using namespace mmserve;

namespace {

[[noreturn]] void fail(const char* what, const std::string& input) {
  std::fprintf(stderr, "invariant broken: %s (input '%s')\n", what, input.c_str());
  std::abort();
}

void check(const HttpUrl& url, const std::string& input) {
  if (url.scheme != "http" && url.scheme != "https") fail("scheme", input);
  if (url.host.empty()) fail("empty host", input);
  const bool v6 = url.host.find(':') != std::string::npos;
  for (const char c : url.host) {
    if (!http_url_detail::host_char(c, v6) || (c >= 'A' && c <= 'Z')) fail("host character", input);
  }
  unsigned port = 0;
  const auto [end, error] = std::from_chars(url.port.data(), url.port.data() + url.port.size(), port);
  if (error != std::errc() || end != url.port.data() + url.port.size() || port == 0 || port > 65535 ||
      std::to_string(port) != url.port) {
    fail("port", input);
  }
  if (url.target.empty() || url.target.front() != '/') fail("target start", input);
  for (const char c : url.target) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte <= 0x20 || byte >= 0x7f) fail("target byte not safe on the wire", input);
  }
  for (const std::string& written : {url.origin() + url.target, url.scheme + "://" + url.host_field() + url.target}) {
    const auto again = parse_http_url(written);
    if (!again) fail("what it writes does not parse", input);
    if (again->scheme != url.scheme || again->host != url.host || again->port != url.port ||
        again->target != url.target) {
      fail("what it writes reads back differently", input);
    }
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const auto split = input.find('\0');
  const std::string text = input.substr(0, split);
  const auto url = parse_http_url(text);
  if (!url) return 0;
  check(*url, text);
  if (split != std::string::npos) {
    const std::string next = resolve_location(*url, input.substr(split + 1));
    if (const auto followed = parse_http_url(next)) check(*followed, next);
  }
  return 0;
}
