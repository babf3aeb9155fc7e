#include "api/model_routes.hpp"

#include "api/system_routes.hpp"
#include "core/task.hpp"
#include "gateway/access_control.hpp"

#include <boost/asio/ip/address.hpp>
#include <fmt/format.h>

namespace mmserve::api {
namespace {

bool is_loopback(const std::string& address) {
  boost::system::error_code ec;
  const auto parsed = boost::asio::ip::make_address(address, ec);
  if (ec) return false;
  if (parsed.is_v6() && parsed.to_v6().is_v4_mapped()) {
    return boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, parsed.to_v6()).is_loopback();
  }
  return parsed.is_loopback();
}

void check_admin(const http::HttpExchange& exchange, const gateway::ApiKeyRing& keys) {
  if (!keys.enabled()) {
    if (is_loopback(exchange.remote_address())) return;
    throw ApiError(403,
                   "Loading and unloading models is allowed from this machine only; configure "
                   "registry.admin_api_keys to allow it from elsewhere.",
                   "permission_error", "admin_only");
  }
  const std::string authorization = exchange.header(http::bhttp::field::authorization); // the token views into it
  const auto token = gateway::bearer_token(authorization);
  if (!token)
    throw ApiError::unauthorized("Loading and unloading models needs an admin API key (Authorization: Bearer).");
  if (!keys.find(*token)) throw ApiError::unauthorized("Incorrect admin API key provided.");
}

} // namespace

void register_model_admin_routes(http::Router& router, ModelRegistry& registry,
                                 const std::vector<GatewayApiKey>& admin_keys) {
  auto keys = std::make_shared<gateway::ApiKeyRing>(admin_keys);
  router.add("POST", "/v1/models/{id}/load", [&registry, keys](http::HttpExchange& exchange) -> Task<void> {
    check_admin(exchange, *keys);
    const ModelStatus status = registry.load(exchange.path_params().at("id"));
    // 202 while the load runs (poll GET /v1/models/{id}); 200 when it already is loaded.
    co_await exchange.respond_json(status.state == ModelState::loaded ? 200 : 202, model_object(status));
  });
  router.add("POST", "/v1/models/{id}/unload", [&registry, keys](http::HttpExchange& exchange) -> Task<void> {
    check_admin(exchange, *keys);
    const ModelStatus status = co_await registry.unload(exchange.path_params().at("id"));
    co_await exchange.respond_json(200, model_object(status));
  });
}

} // namespace mmserve::api
