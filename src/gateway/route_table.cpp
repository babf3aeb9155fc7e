#include "gateway/route_table.hpp"
#include "core/text.hpp"

#include <algorithm>
#include <cctype>
#include <optional>

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
  std::string out = text::lowered(host);
  if (!out.empty() && out.back() == '.') out.pop_back(); // "example.com." is example.com
  return out;
}

// 2: exact host, 1: wildcard domain, 0: any host; -1: no match. `pattern` is lower case.
int host_rank(const std::string& pattern, const std::string& host) {
  if (pattern == "*") return 0;
  if (pattern.starts_with("*.")) {
    // "*.example.com" covers one or more labels before ".example.com", as in Kubernetes Ingress.
    const std::string_view suffix = std::string_view(pattern).substr(1);
    return host.size() > suffix.size() && host.ends_with(suffix) ? 1 : -1;
  }
  return pattern == host ? 2 : -1;
}

} // namespace

bool path_has_prefix(std::string_view path, std::string_view prefix) {
  if (!path.starts_with(prefix)) return false;
  if (path.size() == prefix.size() || prefix.ends_with('/')) return true;
  const char next = path[prefix.size()];
  return next == '/' || next == '?';
}

RouteTable::RouteTable(std::vector<GatewayRoute> routes) : routes_(std::move(routes)) {
  // Host names compare case-insensitively: patterns are lowered once here, request hosts when a route needs them.
  for (auto& route : routes_)
    route.host = text::lowered(route.host);
}

const GatewayRoute* RouteTable::match(std::string_view host, std::string_view path) const {
  std::optional<std::string> request_host;
  const GatewayRoute* best = nullptr;
  int best_rank = -1;
  for (const auto& route : routes_) {
    if (!path_has_prefix(path, route.path_prefix)) continue;
    int rank = 0;
    if (route.host != "*") {
      if (!request_host) request_host = lower_host(host);
      rank = host_rank(route.host, *request_host);
    }
    if (rank < 0) continue;
    if (!best || route.path_prefix.size() > best->path_prefix.size() ||
        (route.path_prefix.size() == best->path_prefix.size() && rank > best_rank)) {
      best = &route;
      best_rank = rank;
    }
  }
  return best;
}

} // namespace mmserve::gateway
