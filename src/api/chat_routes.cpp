#include "api/chat_routes.hpp"

#include "api/json_body.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace mmserve::api {

void register_chat_routes(http::Router& router, const ModelBoard& board, ChatEngine engine) {
  auto handler = [&board, engine = std::move(engine)](http::HttpExchange& exchange) -> http::net::awaitable<void> {
    const auto body = co_await read_json_object(exchange);
    const ChatRequest request = parse_chat_request(body);

    std::vector<ModelStatus> vision_models;
    for (const auto& model : board.snapshot()) {
      if (model.service == "vision") vision_models.push_back(model);
    }
    const ModelStatus* target = nullptr;
    for (const auto& model : vision_models) {
      if (request.model.empty() || model.id == request.model) {
        target = &model;
        break;
      }
    }
    if (!target) {
      std::vector<std::string> ids;
      for (const auto& model : vision_models)
        ids.push_back(model.id);
      throw ApiError::not_found(
          fmt::format("The model '{}' does not exist. Available chat models: {}.", request.model,
                      ids.empty() ? std::string("none") : fmt::format("{}", fmt::join(ids, ", "))),
          "model_not_found");
    }
    if (target->state != ModelState::loaded || !engine) {
      throw ApiError::unavailable(fmt::format("The model '{}' is not loaded ({}){}{}.", target->id,
                                              model_state_name(target->state), target->detail.empty() ? "" : ": ",
                                              target->detail),
                                  target->state == ModelState::loading ? 5 : 30, "model_not_loaded");
    }
    co_await engine(request, exchange);
  };
  router.add("POST", "/v1/chat/completions", handler);
  router.add("POST", "/v1/chat/vision", handler);
}

} // namespace mmserve::api
