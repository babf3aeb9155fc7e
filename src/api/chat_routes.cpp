#include "api/chat_routes.hpp"

#include "api/json_body.hpp"
#include "api/model_lookup.hpp"

namespace mmserve::api {

void register_chat_routes(http::Router& router, const ModelBoard& board, ChatEngine engine) {
  auto handler = [&board, engine = std::move(engine)](http::HttpExchange& exchange) -> http::net::awaitable<void> {
    const auto body = co_await read_json_object(exchange);
    const ChatRequest request = parse_chat_request(body);

    loaded_model_for(board, "vision", request.model, "chat");
    if (!engine) throw ApiError::unavailable("The vision engine is not running.", 30, "model_not_loaded");
    co_await engine(request, exchange);
  };
  router.add("POST", "/v1/chat/completions", handler);
  router.add("POST", "/v1/chat/vision", handler);
}

} // namespace mmserve::api
