#include "api/model_routes.hpp"

#include "api/system_routes.hpp"
#include "gateway/access_control.hpp"

#include <boost/asio/ip/address.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
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
  router.add("POST", "/v1/models/{id}/load",
             [&registry, keys](http::HttpExchange& exchange) -> http::net::awaitable<void> {
               check_admin(exchange, *keys);
               const ModelStatus status = registry.load(exchange.path_params().at("id"));
               // 202 while the load runs (poll GET /v1/models/{id}); 200 when it already is loaded.
               co_await exchange.respond_json(status.state == ModelState::loaded ? 200 : 202, model_object(status));
             });
  router.add("POST", "/v1/models/{id}/unload",
             [&registry, keys](http::HttpExchange& exchange) -> http::net::awaitable<void> {
               check_admin(exchange, *keys);
               // A request that has just been answered may not have let go of
               // the model yet: wait a moment for the ones finishing.
               const auto deadline = http::Clock::now() + std::chrono::seconds(1);
               boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor);
               ModelStatus status;
               for (;;) {
                 try {
                   status = registry.unload(exchange.path_params().at("id"));
                   break;
                 } catch (const ApiError& error) {
                   if (error.code() != "model_in_use" || http::Clock::now() >= deadline) throw;
                 }
                 timer.expires_after(std::chrono::milliseconds(20));
                 co_await timer.async_wait(boost::asio::use_awaitable);
               }
               co_await exchange.respond_json(200, model_object(status));
             });
}

} // namespace mmserve::api
