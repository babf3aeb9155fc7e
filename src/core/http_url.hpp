// Absolute http(s) URLs as mmserve's outbound clients use them (image URL
// fetches, model pulls, the S3 endpoint): one parser, so that all three
// read a URL the same way. Header-only: mmserve_storage takes only headers
// from core.
#pragma once

#include "core/text.hpp"

#include <charconv>
#include <optional>
#include <string>
#include <string_view>

namespace mmserve {

struct HttpUrl {
  std::string scheme; // "http" or "https"
  std::string host;   // lower case, IPv6 addresses without brackets
  std::string port;   // 1-65535; the scheme's default where the URL names none
  std::string target; // path and query, "/" at least

  bool default_port() const { return port == (scheme == "https" ? "443" : "80"); }
  // The host as URLs and the Host field write it: IPv6 addresses in brackets.
  std::string host_in_url() const { return host.find(':') != std::string::npos ? "[" + host + "]" : host; }
  std::string origin() const { return scheme + "://" + host_in_url() + ":" + port; }
  // The Host field: the port only where it is not the scheme's default.
  std::string host_field() const { return default_port() ? host_in_url() : host_in_url() + ":" + port; }
};

namespace http_url_detail {

// RFC 3986's host characters (unreserved, sub-delims, '%' of an escape);
// ':' only inside IPv6 brackets.
constexpr bool host_char(char c, bool bracketed) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  if (std::string_view("-._~%!$&'()*+,;=").find(c) != std::string_view::npos) return true;
  return bracketed && c == ':';
}

inline void append_escaped(std::string& out, unsigned char byte) {
  constexpr char kHex[] = "0123456789ABCDEF";
  out += '%';
  out += kHex[byte >> 4];
  out += kHex[byte & 15];
}

// The path and query as sent: control characters refused (they would end
// the request line early), spaces, quotes, angle brackets, backticks,
// braces and non-ASCII bytes percent-encoded, as browsers send them.
inline std::optional<std::string> request_target(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) return std::nullopt;
    if (byte >= 0x80 || std::string_view(" \"<>`{}").find(c) != std::string_view::npos) {
      append_escaped(out, byte);
    } else {
      out += c;
    }
  }
  return out;
}

} // namespace http_url_detail

// `text` with every byte but RFC 3986's unreserved ones (letters, digits,
// "-._~") and those in `keep` percent-encoded: a name put into a URL path.
inline std::string percent_encode(std::string_view text, std::string_view keep = {}) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const bool unreserved = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                            std::string_view("-._~").find(c) != std::string_view::npos;
    if (unreserved || keep.find(c) != std::string_view::npos) {
      out += c;
    } else {
      http_url_detail::append_escaped(out, static_cast<unsigned char>(c));
    }
  }
  return out;
}

// scheme://[user@]host[:port][/path][?query][#fragment] with scheme http or
// https (any case); the user part and the fragment are dropped. nullopt for
// anything else: another scheme, no host or a host with characters no host
// has, a bad port, an unclosed bracket, control characters in the path.
inline std::optional<HttpUrl> parse_http_url(std::string_view text) {
  const auto scheme_end = text.find("://");
  if (scheme_end == std::string_view::npos) return std::nullopt;
  HttpUrl url;
  url.scheme = text::lowered(text.substr(0, scheme_end));
  if (url.scheme != "http" && url.scheme != "https") return std::nullopt;
  std::string_view rest = text.substr(scheme_end + 3);
  rest = rest.substr(0, rest.find('#'));
  const auto path_start = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, path_start);
  auto target = http_url_detail::request_target(path_start == std::string_view::npos ? "/" : rest.substr(path_start));
  if (!target) return std::nullopt;
  url.target = std::move(*target);
  if (url.target.front() == '?') url.target.insert(0, "/");
  if (const auto at = authority.rfind('@'); at != std::string_view::npos) authority.remove_prefix(at + 1);
  std::string_view host = authority, port;
  const bool bracketed = authority.starts_with("[");
  if (bracketed) {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = authority.substr(1, close - 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') return std::nullopt;
      port = authority.substr(close + 2);
    }
  } else if (const auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  if (host.empty()) return std::nullopt;
  for (const char c : host) {
    if (!http_url_detail::host_char(c, bracketed)) return std::nullopt;
  }
  url.host = text::lowered(host);
  if (port.empty()) {
    url.port = url.scheme == "https" ? "443" : "80";
  } else {
    unsigned number = 0;
    const auto [end, error] = std::from_chars(port.data(), port.data() + port.size(), number);
    if (error != std::errc() || end != port.data() + port.size() || number == 0 || number > 65535) return std::nullopt;
    url.port = std::to_string(number);
  }
  return url;
}

// Where a redirect's Location leads from `base`: an absolute URL, one
// without a scheme ("//host/path"), an absolute path or a relative one.
inline std::string resolve_location(const HttpUrl& base, const std::string& location) {
  if (location.find("://") != std::string::npos) return location;
  if (location.starts_with("//")) return base.scheme + ":" + location;
  if (location.starts_with("/")) return base.origin() + location;
  const std::string path = base.target.substr(0, base.target.find('?'));
  return base.origin() + path.substr(0, path.rfind('/') + 1) + location;
}

} // namespace mmserve
