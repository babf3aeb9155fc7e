// The gateway in front of every request (the seed's multimodal-gateway
// Ingress): CORS, API keys, rate limits, then routing by host and path
// prefix to a pool of remote endpoints, or on to this process's own
// services. Runs as the `gateway` role and in-process under `serve`.
#pragma once

#include "core/config.hpp"
#include "core/http_exchange.hpp"
#include "core/server_metrics.hpp"
#include "core/task.hpp"
#include "gateway/access_control.hpp"
#include "gateway/rate_limiter.hpp"
#include "gateway/route_table.hpp"
#include "gateway/upstream_pool.hpp"

#include <functional>
#include <map>
#include <memory>

namespace mmserve::gateway {

class Gateway {
public:
  // Pools with endpoints are proxied; the rest are this process's services.
  Gateway(const GatewayConfig& config, net::io_context& ioc, ServerMetrics& metrics);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  void start();
  void stop();

  // This process's own models, merged into /v1/models with the pools' lists.
  void set_local_models(std::function<nlohmann::json()> list) { local_models_ = std::move(list); }

  // The HTTP server's front handler: true when the request was answered here.
  Task<bool> handle(http::HttpExchange& exchange);

  bool proxies_anything() const { return !pools_.empty(); }

private:
  bool apply_cors(http::HttpExchange& exchange);
  void check_access(http::HttpExchange& exchange);
  Task<nlohmann::json> merged_models(http::HttpExchange& exchange);

  const GatewayConfig& config_;
  ServerMetrics& metrics_;
  RouteTable routes_;
  ApiKeyRing keys_;
  CorsPolicy cors_;
  RateLimiter limiter_;
  std::map<std::string, std::unique_ptr<UpstreamPool>> pools_;
  std::function<nlohmann::json()> local_models_;
};

} // namespace mmserve::gateway
