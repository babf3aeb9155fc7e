#include "core/router.hpp"

#include <algorithm>
#include <stdexcept>

namespace mmserve::http {

void Router::add(std::string method, std::string pattern, Handler handler) {
  if (pattern.empty() || pattern.front() != '/') throw std::invalid_argument("route pattern must start with /");
  for (const auto& route : routes_) {
    if (route.method == method && route.pattern == pattern) {
      throw std::invalid_argument("route registered twice: " + method + " " + pattern);
    }
  }
  routes_.push_back({std::move(method), std::move(pattern), std::move(handler)});
  match_order_.push_back(routes_.size() - 1);
  std::stable_sort(match_order_.begin(), match_order_.end(), [this](size_t a, size_t b) {
    const bool a_prefix = routes_[a].pattern.ends_with("/*"), b_prefix = routes_[b].pattern.ends_with("/*");
    if (a_prefix != b_prefix) return !a_prefix;
    return a_prefix && routes_[a].pattern.size() > routes_[b].pattern.size();
  });
}

bool Router::match_pattern(const std::string& pattern, std::string_view path,
                           std::map<std::string, std::string>& params) {
  if (pattern.ends_with("/*")) {
    const std::string_view prefix(pattern.data(), pattern.size() - 1); // keeps the slash
    if (!path.starts_with(prefix) || path.size() == prefix.size()) return false;
    params["*"] = std::string(path.substr(prefix.size()));
    return true;
  }
  size_t p = 0, q = 0;
  while (p < pattern.size() && q < path.size()) {
    if (pattern[p] == '{') {
      const size_t close = pattern.find('}', p);
      const std::string name = pattern.substr(p + 1, close - p - 1);
      const size_t end = path.find('/', q);
      const std::string_view value = path.substr(q, end == std::string_view::npos ? path.npos : end - q);
      if (value.empty()) return false;
      params[name] = std::string(value);
      p = close + 1;
      q += value.size();
    } else {
      if (pattern[p] != path[q]) return false;
      ++p;
      ++q;
    }
  }
  return p == pattern.size() && q == path.size();
}

RouteMatch Router::match(std::string_view method, std::string_view path) const {
  RouteMatch result;
  std::map<std::string, std::string> params;
  for (const size_t index : match_order_) {
    const Route* route = &routes_[index];
    params.clear();
    if (!match_pattern(route->pattern, path, params)) continue;
    const bool method_ok = route->method == method || (method == "HEAD" && route->method == "GET");
    if (method_ok && !result.route) {
      result.route = route;
      result.params = std::move(params);
    } else if (!method_ok && std::find(result.allowed_methods.begin(), result.allowed_methods.end(), route->method) ==
                                 result.allowed_methods.end()) {
      result.allowed_methods.push_back(route->method);
    }
  }
  return result;
}

} // namespace mmserve::http
