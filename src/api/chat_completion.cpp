#include "api/chat_completion.hpp"

#include "api/engine_response.hpp"
#include "core/task.hpp"

#include <boost/asio/this_coro.hpp>
#include <chrono>
#include <fmt/format.h>

namespace mmserve::api {
namespace {

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

nlohmann::json usage_of(const vlm::GenerationEvent& done) {
  return {{"prompt_tokens", done.prompt_tokens},
          {"completion_tokens", done.completion_tokens},
          {"total_tokens", done.prompt_tokens + done.completion_tokens}};
}

using JobGuard = CancelOnExit<vlm::VlmEngine, vlm::Job>;

// The engine's next events, or 504 once the request's deadline has passed
// (the job is cancelled on the way out).
Task<std::vector<vlm::GenerationEvent>> next_events(const vlm::VlmEngine::Submission& submission,
                                                    const http::HttpExchange& exchange) {
  auto events = co_await submission.events->next_batch(exchange.deadline());
  if (events.empty()) {
    throw ApiError::timeout("The request took longer than server.request_timeout; the generation was stopped.");
  }
  co_return events;
}

} // namespace

Task<void> run_chat_completion(vlm::VlmEngine& engine, const ChatRequest& request, const ChatImagePolicy& images,
                               ServerMetrics& metrics, http::HttpExchange& exchange) {
  if (request.image_count() > 0 && !engine.supports_images()) {
    throw ApiError::bad_request(
        fmt::format("The model '{}' takes text only (no vision projector is loaded).", engine.options().model_id),
        "messages", "images_not_supported");
  }
  auto prepared = co_await prepare_chat_images(request, images, metrics);
  auto submission = engine.submit(request, std::move(prepared), co_await boost::asio::this_coro::executor);
  JobGuard guard{submission.job};
  const std::string id = "chatcmpl-" + exchange.request_id();
  const int64_t created = unix_now();
  const std::string& model = engine.options().model_id;

  if (!request.stream) {
    std::string content;
    for (;;) {
      for (auto& event : co_await next_events(submission, exchange)) {
        if (event.kind == vlm::GenerationEvent::Kind::delta) {
          content += event.text;
        } else if (event.kind == vlm::GenerationEvent::Kind::failed) {
          throw ApiError(event.error_status, event.error_message,
                         event.error_status < 500 ? "invalid_request_error" : "server_error", "generation_failed");
        } else {
          guard.completed = true;
          const nlohmann::json body = {
              {"id", id},
              {"object", "chat.completion"},
              {"created", created},
              {"model", model},
              {"choices", nlohmann::json::array({{{"index", 0},
                                                  {"message", {{"role", "assistant"}, {"content", content}}},
                                                  {"logprobs", nullptr},
                                                  {"finish_reason", event.finish_reason}}})},
              {"usage", usage_of(event)}};
          co_await exchange.respond_json(200, body);
          co_return;
        }
      }
    }
  }

  // Streaming: errors found before the first token still get a status code.
  bool started = false;
  auto chunk = [&](nlohmann::json delta, nlohmann::json finish_reason) {
    return nlohmann::json{{"id", id},
                          {"object", "chat.completion.chunk"},
                          {"created", created},
                          {"model", model},
                          {"choices", nlohmann::json::array({{{"index", 0},
                                                              {"delta", std::move(delta)},
                                                              {"logprobs", nullptr},
                                                              {"finish_reason", std::move(finish_reason)}}})}};
  };
  for (;;) {
    auto events = co_await next_events(submission, exchange);
    for (auto& event : events) {
      if (event.kind == vlm::GenerationEvent::Kind::failed) {
        throw ApiError(event.error_status, event.error_message,
                       event.error_status < 500 ? "invalid_request_error" : "server_error", "generation_failed");
      }
      if (!started) {
        co_await exchange.begin_stream(200, "text/event-stream");
        const nlohmann::json first = chunk({{"role", "assistant"}, {"content", ""}}, nullptr);
        co_await exchange.write_chunk(sse_data(first));
        started = true;
      }
      if (event.kind == vlm::GenerationEvent::Kind::delta) {
        const nlohmann::json delta = chunk({{"content", event.text}}, nullptr);
        co_await exchange.write_chunk(sse_data(delta));
        continue;
      }
      guard.completed = true;
      std::string tail = sse_data(chunk(nlohmann::json::object(), event.finish_reason));
      if (request.include_usage) {
        tail += sse_data({{"id", id},
                          {"object", "chat.completion.chunk"},
                          {"created", created},
                          {"model", model},
                          {"choices", nlohmann::json::array()},
                          {"usage", usage_of(event)}});
      }
      tail += "data: [DONE]\n\n";
      co_await exchange.write_chunk(tail);
      co_await exchange.end_stream();
      co_return;
    }
  }
}

} // namespace mmserve::api
