#include "gateway/route_table.hpp"

#include <algorithm>
#include <cctype>

namespace mmserve::gateway {
namespace {

std::string lower_host(std::string_view host) {
  // "[::1]:8080" and "api.example.com:443" lose their port.
  if (!host.empty() && host.front() == '[') {
    const auto close = host.find(']');
    if (close != std::string_view::npos) host = host.substr(0, close + 1);
  } else if (const auto colon = host.rfind(':'); colon != std::string_view::npos) {
    host = host.substr(0, colon);
  }
  std::string out(host);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  if (!out.empty() && out.back() == '.') out.pop_back(); // "example.com." is example.com
  return out;
}

// 2: exact host, 1: wildcard domain, 0: any host; -1: no match.
int host_rank(const std::string& pattern, const std::string& host) {
  if (pattern == "*") return 0;
  std::string lower = pattern;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  if (lower.rfind("*.", 0) == 0) {
    // "*.example.com" covers one or more labels before ".example.com", as in Kubernetes Ingress.
    const std::string suffix = lower.substr(1);
    return host.size() > suffix.size() && host.ends_with(suffix) ? 1 : -1;
  }
  return lower == host ? 2 : -1;
}

} // namespace

bool path_has_prefix(std::string_view path, std::string_view prefix) {
  if (!path.starts_with(prefix)) return false;
  if (path.size() == prefix.size() || prefix.ends_with('/')) return true;
  const char next = path[prefix.size()];
  return next == '/' || next == '?';
}

RouteTable::RouteTable(std::vector<GatewayRoute> routes) : routes_(std::move(routes)) {}

std::optional<RouteTarget> RouteTable::match(std::string_view host, std::string_view path) const {
  const std::string request_host = lower_host(host);
  const GatewayRoute* best = nullptr;
  int best_rank = -1;
  for (const auto& route : routes_) {
    if (!path_has_prefix(path, route.path_prefix)) continue;
    const int rank = host_rank(route.host, request_host);
    if (rank < 0) continue;
    if (!best || route.path_prefix.size() > best->path_prefix.size() ||
        (route.path_prefix.size() == best->path_prefix.size() && rank > best_rank)) {
      best = &route;
      best_rank = rank;
    }
  }
  if (!best) return std::nullopt;
  return RouteTarget{best->path_prefix, best->pool};
}

} // namespace mmserve::gateway
