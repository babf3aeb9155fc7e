// The gateway's routes: host (exact, "*.domain" or "*") and path prefix to a
// pool name. The longest matching prefix wins; among equal prefixes an exact
// host beats a wildcard domain, which beats "*".
#pragma once

#include "core/config.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace mmserve::gateway {

class RouteTable {
public:
  explicit RouteTable(std::vector<GatewayRoute> routes);

  // The route for a request, or nullptr. `host` is the request's Host
  // header (a port, if any, is ignored). Its path prefix is the request's
  // label in metrics and logs.
  const GatewayRoute* match(std::string_view host, std::string_view path) const;

private:
  std::vector<GatewayRoute> routes_;
};

// A path prefix matches whole segments: "/v1/chat/vision" matches itself,
// "/v1/chat/vision/x" and "/v1/chat/vision?x", not "/v1/chat/visionary";
// a prefix ending in '/' matches anything below it.
bool path_has_prefix(std::string_view path, std::string_view prefix);

} // namespace mmserve::gateway
