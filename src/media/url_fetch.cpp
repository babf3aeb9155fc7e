#include "media/url_fetch.hpp"

#include "core/api_error.hpp"
#include "core/client_connect.hpp"
#include "core/http_url.hpp"
#include "core/task.hpp"
#include "core/text.hpp"
#include "core/version.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <fmt/format.h>

#include <memory>

namespace mmserve::media {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

// A redirect's Location against the URL that returned it.
uint32_t v4_bits(const net::ip::address_v4& address) {
  return address.to_uint();
}

bool in_v4(uint32_t bits, uint32_t network, int prefix) {
  const uint32_t mask = prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix);
  return (bits & mask) == (network & mask);
}

bool internal_v4(const net::ip::address_v4& address) {
  const uint32_t bits = v4_bits(address);
  struct Range {
    uint32_t network;
    int prefix;
  };
  static constexpr Range kRanges[] = {
      {0x00000000, 8},  {0x0A000000, 8},  {0x64400000, 10}, {0x7F000000, 8},  {0xA9FE0000, 16},
      {0xAC100000, 12}, {0xC0000000, 24}, {0xC0000200, 24}, {0xC0A80000, 16}, {0xC6120000, 15},
      {0xC6336400, 24}, {0xCB007100, 24}, {0xE0000000, 4},  {0xF0000000, 4},
  };
  for (const auto& range : kRanges) {
    if (in_v4(bits, range.network, range.prefix)) return true;
  }
  return false;
}

bool prefix_match(const net::ip::address_v6::bytes_type& a, const net::ip::address_v6::bytes_type& b, int prefix) {
  for (int i = 0; i < 16 && prefix > 0; ++i, prefix -= 8) {
    const int bits = std::min(prefix, 8);
    const auto mask = static_cast<unsigned char>(0xFF << (8 - bits));
    if ((a[i] & mask) != (b[i] & mask)) return false;
  }
  return true;
}

ApiError fetch_failed(const std::string& url, const std::string& why, const std::string& param) {
  return ApiError::bad_request(fmt::format("The image at '{}' could not be fetched: {}.", url, why), param,
                               "image_fetch_failed");
}

struct Response {
  unsigned status = 0;
  std::string location;
  std::string content_type;
  std::string cache_control;
  std::string body;
};

template <typename Stream>
Task<Response> send_get(Stream& stream, const HttpUrl& url, const FetchPolicy& policy, const std::string& text,
                        const std::string& param) {
  bhttp::request<bhttp::empty_body> request{bhttp::verb::get, url.target, 11};
  request.set(bhttp::field::host, url.host_field());
  request.set(bhttp::field::user_agent, std::string("mmserve/") + kVersion);
  request.set(bhttp::field::accept, "image/*");
  request.set(bhttp::field::connection, "close");
  co_await bhttp::async_write(stream, request, use_task);

  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.header_limit(16 * 1024);
  parser.body_limit(policy.max_bytes);
  co_await bhttp::async_read_header(stream, buffer, parser, use_task);
  Response response;
  response.status = parser.get().result_int();
  response.location = std::string(parser.get()[bhttp::field::location]);
  response.content_type = std::string(parser.get()[bhttp::field::content_type]);
  response.cache_control = std::string(parser.get()[bhttp::field::cache_control]);
  if (response.status >= 300 && response.status < 400) co_return response;
  if (response.status < 200 || response.status >= 300) {
    throw fetch_failed(text, fmt::format("the server answered HTTP {}", response.status), param);
  }
  if (const auto length = parser.content_length(); length && *length > policy.max_bytes) {
    throw ApiError::bad_request(
        fmt::format("The image at '{}' is {} bytes; at most {} are accepted.", text, *length, policy.max_bytes), param,
        "image_too_large");
  }
  co_await bhttp::async_read(stream, buffer, parser, use_task);
  response.body = std::move(parser.get().body());
  co_return response;
}

} // namespace

bool Network::contains(const net::ip::address& candidate) const {
  if (address.is_v4() && candidate.is_v4()) return in_v4(v4_bits(candidate.to_v4()), v4_bits(address.to_v4()), prefix);
  if (address.is_v6() && candidate.is_v6()) {
    return prefix_match(candidate.to_v6().to_bytes(), address.to_v6().to_bytes(), prefix);
  }
  if (address.is_v4() && candidate.is_v6() && candidate.to_v6().is_v4_mapped()) {
    return in_v4(v4_bits(net::ip::make_address_v4(net::ip::v4_mapped, candidate.to_v6())), v4_bits(address.to_v4()),
                 prefix);
  }
  return false;
}

std::optional<Network> parse_network(const std::string& text) {
  const auto slash = text.find('/');
  boost::system::error_code error;
  Network network;
  network.address = net::ip::make_address(text.substr(0, slash), error);
  if (error) return std::nullopt;
  const int bits = network.address.is_v4() ? 32 : 128;
  network.prefix = bits;
  if (slash != std::string::npos) {
    const std::string prefix = text.substr(slash + 1);
    if (prefix.empty() || prefix.size() > 3 || prefix.find_first_not_of("0123456789") != std::string::npos) {
      return std::nullopt;
    }
    network.prefix = std::stoi(prefix);
    if (network.prefix > bits) return std::nullopt;
  }
  return network;
}

bool is_internal_address(const net::ip::address& address) {
  if (address.is_v4()) return internal_v4(address.to_v4());
  const auto v6 = address.to_v6();
  if (v6.is_v4_mapped()) return internal_v4(net::ip::make_address_v4(net::ip::v4_mapped, v6));
  const auto bytes = v6.to_bytes();
  struct Range {
    const char* network;
    int prefix;
  };
  // ::/128, ::1, IPv4-compatible ::/96, NAT64 64:ff9b::/96 (judged by the
  // IPv4 inside), discard, documentation, ULA (fd00:ec2::254 is EC2's
  // metadata service), link-local, site-local, multicast.
  static const Range kRanges[] = {{"::", 128},   {"::1", 128},   {"100::", 64},  {"2001:db8::", 32},
                                  {"fc00::", 7}, {"fe80::", 10}, {"fec0::", 10}, {"ff00::", 8}};
  for (const auto& range : kRanges) {
    if (prefix_match(bytes, net::ip::make_address_v6(range.network).to_bytes(), range.prefix)) return true;
  }
  if (prefix_match(bytes, net::ip::make_address_v6("64:ff9b::").to_bytes(), 96) ||
      prefix_match(bytes, net::ip::make_address_v6("::").to_bytes(), 96)) {
    const net::ip::address_v4 inner(net::ip::address_v4::bytes_type{bytes[12], bytes[13], bytes[14], bytes[15]});
    return internal_v4(inner);
  }
  return false;
}

Task<FetchedBody> fetch_url(std::string text, const FetchPolicy& policy, std::string param) {
  const auto deadline = Clock::now() + policy.timeout;
  auto executor = co_await net::this_coro::executor;
  std::string current = text;
  for (int hop = 0;; ++hop) {
    const auto url = parse_http_url(current);
    if (!url) {
      throw ApiError::bad_request(fmt::format("'{}' is not an http(s) URL or data: URI.",
                                              current.size() > 200 ? current.substr(0, 200) + "..." : current),
                                  param, "url_not_allowed");
    }
    tcp::resolver::results_type resolved;
    try {
      resolved = co_await client::resolve_by(url->host, url->port, deadline);
    } catch (const boost::system::system_error& error) {
      throw fetch_failed(
          current,
          error.code() == net::error::operation_aborted
              ? fmt::format("DNS did not answer within {} ms", policy.timeout.count())
              : fmt::format("the host '{}' could not be resolved ({})", url->host, error.code().message()),
          param);
    }
    std::vector<tcp::endpoint> permitted;
    std::string refused;
    for (const auto& entry : resolved) {
      const auto address = entry.endpoint().address();
      const bool allowed = !is_internal_address(address) ||
                           std::any_of(policy.allow_networks.begin(), policy.allow_networks.end(),
                                       [&](const Network& network) { return network.contains(address); });
      if (allowed)
        permitted.push_back(entry.endpoint());
      else if (refused.empty())
        refused = address.to_string();
    }
    if (permitted.empty()) {
      throw ApiError::bad_request(
          fmt::format("Image URLs may not point at internal addresses ('{}' resolves to {}: loopback, private, "
                      "link-local and metadata addresses are refused).",
                      url->host, refused.empty() ? "nothing" : refused),
          param, "url_not_allowed");
    }

    Response response;
    try {
      beast::tcp_stream tcp_stream(executor);
      tcp_stream.expires_at(deadline);
      co_await tcp_stream.async_connect(permitted, use_task);
      if (url->scheme == "http") {
        response = co_await send_get(tcp_stream, *url, policy, current, param);
      } else {
        const auto tls = client::tls_context(policy.ca_file);
        beast::ssl_stream<beast::tcp_stream> stream(std::move(tcp_stream), *tls);
        co_await client::tls_handshake(stream, url->host);
        response = co_await send_get(stream, *url, policy, current, param);
      }
    } catch (const boost::system::system_error& error) {
      if (error.code() == bhttp::error::body_limit) {
        throw ApiError::bad_request(
            fmt::format("The image at '{}' is larger than {} bytes.", current, policy.max_bytes), param,
            "image_too_large");
      }
      throw fetch_failed(current,
                         error.code() == beast::error::timeout
                             ? fmt::format("no complete answer within {} ms", policy.timeout.count())
                             : error.code().message(),
                         param);
    }
    if (response.status >= 300 && response.status < 400) {
      if (response.location.empty()) {
        throw fetch_failed(current, fmt::format("HTTP {} without a Location", response.status), param);
      }
      if (hop >= policy.max_redirects) {
        throw fetch_failed(text, fmt::format("more than {} redirects", policy.max_redirects), param);
      }
      current = resolve_location(*url, response.location);
      continue;
    }
    co_return FetchedBody{std::move(response.body), std::move(response.content_type), current,
                          std::move(response.cache_control)};
  }
}

} // namespace mmserve::media
