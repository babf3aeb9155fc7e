#include "api/chat_routes.hpp"

#include "api/json_body.hpp"
#include "core/task.hpp"

namespace mmserve::api {

void register_chat_routes(http::Router& router, ChatEngine engine) {
  auto handler = [engine = std::move(engine)](http::HttpExchange& exchange) -> Task<void> {
    const auto body = co_await read_json_object(exchange);
    const ChatRequest request = parse_chat_request(body);
    co_await engine(request, exchange);
  };
  router.add("POST", "/v1/chat/completions", handler);
  router.add("POST", "/v1/chat/vision", handler);
}

} // namespace mmserve::api
