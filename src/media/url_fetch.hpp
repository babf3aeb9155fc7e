// Fetches an image a client names by http(s) URL, defensively: a cap on
// bytes, on total time and on redirects, and no connection to loopback,
// private, link-local, multicast or cloud-metadata addresses unless the
// configured allow-list opens them. The check runs on the addresses DNS
// returned and the connection goes to exactly those addresses, so a name
// cannot resolve to a public address for the check and a private one for
// the fetch. Every redirect hop is checked the same way.
#pragma once

#include "core/task.hpp"

#include <boost/asio/ip/address.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mmserve::media {

struct Network {
  boost::asio::ip::address address;
  int prefix = 0;
  bool contains(const boost::asio::ip::address& candidate) const;
};
// "10.0.0.0/8", "127.0.0.1" (a /32), "::1/128", "fd00::/8"; nullopt when malformed.
std::optional<Network> parse_network(const std::string& text);

// True for addresses a server-side fetch must not reach by default:
// loopback, unspecified, private (RFC 1918, ULA), carrier-grade NAT,
// link-local (169.254.0.0/16, which holds 169.254.169.254, and fe80::/10),
// multicast, reserved and broadcast; IPv4-mapped and NAT64 IPv6 addresses
// are judged by the IPv4 address inside.
bool is_internal_address(const boost::asio::ip::address& address);

struct FetchPolicy {
  uint64_t max_bytes = 20ull << 20;
  std::chrono::milliseconds timeout{10'000}; // the whole fetch, redirects included
  int max_redirects = 3;
  std::vector<Network> allow_networks; // internal addresses that may be fetched anyway
  std::string ca_file;                 // extra PEM bundle for https (private CAs, tests)
};

struct FetchedBody {
  std::string bytes;
  std::string content_type;
  std::string final_url;
  std::string cache_control; // the response's Cache-Control (whether and how long it may be kept)
};

// Throws ApiError 400 with code `url_not_allowed` (scheme or address),
// `image_too_large` (past max_bytes) or `image_fetch_failed` (DNS,
// connection, TLS, timeout, HTTP status, too many redirects); `param`
// names the request field.
Task<FetchedBody> fetch_url(std::string url, const FetchPolicy& policy, std::string param);

} // namespace mmserve::media
