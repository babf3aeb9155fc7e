// Maps method + path to a handler. Patterns are exact paths, paths with
// "{name}" segments, or prefixes ending in "/*". Distinguishes "no such
// path" (404) from "path exists, method does not" (405).
#pragma once

#include "core/http_exchange.hpp"
#include "core/task.hpp"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace mmserve::http {

using Handler = std::function<Task<void>(HttpExchange&)>;

struct Route {
  std::string method;  // "GET", "POST", ...
  std::string pattern; // "/v1/models/{id}/load", "/outputs/*"
  Handler handler;
};

struct RouteMatch {
  const Route* route = nullptr; // set when method and path match
  std::map<std::string, std::string> params;
  std::vector<std::string> allowed_methods; // path matched, method did not
};

class Router {
public:
  void add(std::string method, std::string pattern, Handler handler);
  RouteMatch match(std::string_view method, std::string_view path) const;
  const std::vector<Route>& routes() const { return routes_; }

private:
  static bool match_pattern(const std::string& pattern, std::string_view path,
                            std::map<std::string, std::string>& params);
  std::vector<Route> routes_;
  // Indices into routes_ in the order match() tries them (kept sorted by
  // add(), so a request does not sort): exact and parameterised patterns
  // first, then prefixes, longer before shorter.
  std::vector<size_t> match_order_;
};

} // namespace mmserve::http
