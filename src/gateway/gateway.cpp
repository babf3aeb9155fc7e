#include "gateway/gateway.hpp"

#include "core/logging.hpp"
#include "core/task.hpp"
#include "gateway/proxy.hpp"

#include <fmt/format.h>

#include <cmath>
#include <set>

namespace mmserve::gateway {
namespace {

bool exempt_from_access_control(std::string_view path) {
  // Probes and the Prometheus scrape come from the cluster itself; the
  // playground's static files hold no data (its API calls carry the key).
  return path == "/healthz" || path == "/readyz" || path == "/metrics" || path == "/" ||
         path.starts_with("/playground/");
}

std::string seconds_header(double seconds) {
  return std::to_string(static_cast<long long>(std::ceil(std::max(0.0, seconds))));
}

} // namespace

Gateway::Gateway(const GatewayConfig& config, net::io_context& ioc, ServerMetrics& metrics)
    : config_(config), metrics_(metrics), routes_(config.routes), keys_(config.api_keys), cors_(config.cors_origins) {
  for (const auto& [name, pool] : config.pools) {
    if (pool.endpoints.empty()) continue;
    pools_.emplace(name, std::make_unique<UpstreamPool>(name, pool.endpoints, config, ioc, metrics));
  }
  for (const char* reason : {"unauthorized", "forbidden", "rate_limited", "cors"})
    metrics_.gateway_refused_total.labels({reason});
  if (keys_.enabled())
    spdlog::info("gateway: {} API key(s) configured; requests need Authorization: Bearer", config.api_keys.size());
}

Gateway::~Gateway() {
  stop();
}

void Gateway::start() {
  for (auto& [name, pool] : pools_)
    pool->start();
}

void Gateway::stop() {
  for (auto& [name, pool] : pools_)
    pool->stop();
}

// Adds CORS headers for an allowed origin; answers preflights. True when answered.
bool Gateway::apply_cors(http::HttpExchange& exchange) {
  if (!cors_.enabled()) return false;
  const std::string origin = exchange.header(http::bhttp::field::origin);
  if (origin.empty()) return false;
  const auto allowed = cors_.allow_origin(origin);
  const bool preflight = exchange.method() == http::bhttp::verb::options &&
                         !exchange.header(http::bhttp::field::access_control_request_method).empty();
  if (!allowed) {
    if (preflight) {
      metrics_.gateway_refused_total.labels({"cors"}).inc();
      throw ApiError(403, fmt::format("Origin {} is not allowed (gateway.cors.allowed_origins).", origin),
                     "permission_error", "origin_not_allowed");
    }
    return false; // no CORS headers: the browser keeps the answer from the page
  }
  exchange.set_header("Access-Control-Allow-Origin", *allowed);
  exchange.set_header("Vary", "Origin");
  if (!preflight) {
    exchange.set_header("Access-Control-Expose-Headers",
                        "X-Request-Id, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset");
    return false;
  }
  exchange.set_header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS");
  const std::string asked = exchange.header(http::bhttp::field::access_control_request_headers);
  exchange.set_header("Access-Control-Allow-Headers",
                      asked.empty() ? "Authorization, Content-Type, X-Request-Id" : asked);
  exchange.set_header("Access-Control-Max-Age", "600");
  return true;
}

void Gateway::check_access(http::HttpExchange& exchange) {
  std::string client_key;
  RateLimit key_limit = config_.per_key_limit;
  if (keys_.enabled()) {
    const std::string authorization = exchange.header(http::bhttp::field::authorization);
    const auto token = bearer_token(authorization);
    if (!token) {
      metrics_.gateway_refused_total.labels({"unauthorized"}).inc();
      throw ApiError::unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.");
    }
    const GatewayApiKey* key = keys_.find(*token);
    if (!key) {
      metrics_.gateway_refused_total.labels({"unauthorized"}).inc();
      throw ApiError::unauthorized("Incorrect API key provided.");
    }
    if (!ApiKeyRing::allows(*key, exchange.path())) {
      metrics_.gateway_refused_total.labels({"forbidden"}).inc();
      throw ApiError(403, fmt::format("The API key '{}' may not use {}.", key->name, exchange.path()),
                     "permission_error", "route_not_allowed");
    }
    client_key = "key:" + key->name;
    if (key->rate_limit) key_limit = *key->rate_limit;
  }

  // Both limits apply; the headers describe the tighter one (a refusal first).
  std::optional<RateDecision> tightest;
  auto consider = [&](const std::string& client, const RateLimit& limit) {
    if (limit.requests_per_second <= 0) return;
    const RateDecision decision = limiter_.take(client, limit);
    const bool tighter = !tightest || (!decision.allowed && tightest->allowed) ||
                         (decision.allowed == tightest->allowed && decision.remaining < tightest->remaining);
    if (tighter) tightest = decision;
  };
  if (!client_key.empty()) consider(client_key, key_limit);
  if (config_.per_ip_limit.requests_per_second > 0) consider("ip:" + exchange.remote_address(), config_.per_ip_limit);
  if (!tightest) return;
  exchange.set_header("X-RateLimit-Limit", fmt::format("{}", static_cast<long long>(tightest->limit)));
  exchange.set_header("X-RateLimit-Remaining", fmt::format("{}", static_cast<long long>(tightest->remaining)));
  exchange.set_header("X-RateLimit-Reset", seconds_header(tightest->reset_seconds));
  if (!tightest->allowed) {
    metrics_.gateway_refused_total.labels({"rate_limited"}).inc();
    throw ApiError::too_many_requests("Rate limit reached for requests; retry after the time in Retry-After.",
                                      std::max(1, static_cast<int>(std::ceil(tightest->retry_after_seconds))));
  }
}

Task<nlohmann::json> Gateway::merged_models(http::HttpExchange& exchange) {
  nlohmann::json data = nlohmann::json::array();
  std::set<std::string> seen;
  auto add = [&](const nlohmann::json& list) {
    if (!list.is_array()) return;
    for (const auto& model : list) {
      if (!model.is_object() || !model.contains("id") || !model["id"].is_string()) continue;
      if (seen.insert(model["id"].get<std::string>()).second) data.push_back(model);
    }
  };
  if (local_models_) add(local_models_());
  for (auto& [name, pool] : pools_) {
    const auto [status, body] = co_await fetch_from_pool(*pool, "/v1/models", exchange);
    if (status != 200) {
      spdlog::warn("gateway: /v1/models from pool {}: status {}", name, status);
      continue;
    }
    const auto parsed = nlohmann::json::parse(body, nullptr, false);
    if (parsed.is_object() && parsed.contains("data")) add(parsed["data"]);
  }
  co_return data;
}

Task<bool> Gateway::handle(http::HttpExchange& exchange) {
  if (apply_cors(exchange)) {
    co_await exchange.respond(204, std::string(), "text/plain");
    co_return true;
  }
  const std::string_view path = exchange.path();
  if (exempt_from_access_control(path)) co_return false;
  check_access(exchange);

  // The model list spans every pool.
  if (!pools_.empty() && exchange.method() == http::bhttp::verb::get &&
      (path == "/v1/models" || path.starts_with("/v1/models/"))) {
    exchange.set_route_label(path == "/v1/models" ? "/v1/models" : "/v1/models/{id}");
    const nlohmann::json data = co_await merged_models(exchange);
    if (path == "/v1/models") {
      const nlohmann::json body = {{"object", "list"}, {"data", data}};
      co_await exchange.respond_json(200, body);
      co_return true;
    }
    const std::string id(path.substr(std::string_view("/v1/models/").size()));
    for (const auto& model : data) {
      if (model["id"] == id) {
        co_await exchange.respond_json(200, model);
        co_return true;
      }
    }
    throw ApiError::not_found(fmt::format("The model '{}' does not exist.", id), "model_not_found");
  }

  const auto target = routes_.match(exchange.header(http::bhttp::field::host), path);
  if (!target) co_return false; // this process's own routes, or 404
  const auto pool = pools_.find(target->pool);
  if (pool == pools_.end()) co_return false; // served in this process
  exchange.set_route_label(target->path_prefix);
  co_await proxy_request(exchange, *pool->second);
  co_return true;
}

} // namespace mmserve::gateway
