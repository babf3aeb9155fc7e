#include "api/system_routes.hpp"

#include "core/task.hpp"

#include <fmt/format.h>

namespace mmserve::api {

nlohmann::json model_object(const ModelStatus& model) {
  nlohmann::json object = {
      {"id", model.id},        {"object", "model"},        {"created", model.created},
      {"owned_by", "mmserve"}, {"service", model.service}, {"status", model_state_name(model.state)},
  };
  if (model.state == ModelState::loading) object["progress"] = model.progress;
  if (!model.detail.empty()) object["detail"] = model.detail;
  if (model.memory_bytes > 0) object["memory_bytes"] = model.memory_bytes;
  if (!model.gpu_memory_bytes.empty()) object["gpu_memory_bytes"] = model.gpu_memory_bytes;
  if (model.state == ModelState::available && model.on_demand) object["loads_on_demand"] = true;
  return object;
}

void register_system_routes(http::Router& router, const ModelBoard& board, ServerMetrics& metrics,
                            const std::atomic<bool>& draining, bool expects_models) {
  router.add("GET", "/healthz", [](http::HttpExchange& exchange) -> Task<void> {
    const nlohmann::json body = {{"status", "ok"}};
    co_await exchange.respond_json(200, body);
  });

  router.add("GET", "/readyz", [&board, &draining, expects_models](http::HttpExchange& exchange) -> Task<void> {
    nlohmann::json models = nlohmann::json::array();
    std::vector<std::string> reasons;
    const auto snapshot = board.snapshot();
    for (const auto& model : snapshot) {
      models.push_back(model_object(model));
      // A model the registry loads when asked for can serve: it does not hold readiness back.
      if (!serves_requests(model)) {
        reasons.push_back(fmt::format("{} model '{}' is {}{}{}", model.service, model.id, model_state_name(model.state),
                                      model.detail.empty() ? "" : ": ", model.detail));
      }
    }
    if (snapshot.empty() && expects_models)
      reasons.emplace_back("no service is enabled: enable vision, speech or image in the config");
    if (draining.load()) reasons.insert(reasons.begin(), "shutting down: draining in-flight requests");
    const bool ready = reasons.empty();
    const nlohmann::json body = {{"status", ready ? "ready" : "not_ready"}, {"reasons", reasons}, {"models", models}};
    co_await exchange.respond_json(ready ? 200 : 503, body);
  });

  router.add("GET", "/metrics", [&metrics](http::HttpExchange& exchange) -> Task<void> {
    co_await exchange.respond(200, metrics.registry.render(), "text/plain; version=0.0.4; charset=utf-8");
  });

  router.add("GET", "/v1/models", [&board](http::HttpExchange& exchange) -> Task<void> {
    nlohmann::json data = nlohmann::json::array();
    for (const auto& model : board.snapshot())
      data.push_back(model_object(model));
    const nlohmann::json body = {{"object", "list"}, {"data", data}};
    co_await exchange.respond_json(200, body);
  });

  router.add("GET", "/v1/models/{id}", [&board](http::HttpExchange& exchange) -> Task<void> {
    const std::string& id = exchange.path_params().at("id");
    for (const auto& model : board.snapshot()) {
      if (model.id == id) {
        co_await exchange.respond_json(200, model_object(model));
        co_return;
      }
    }
    throw ApiError::not_found(fmt::format("The model '{}' does not exist.", id), "model_not_found");
  });
}

} // namespace mmserve::api
