// Shared by the handlers that answer from an engine's events: the SSE
// framing, and the guard that cancels the engine's job when the response
// does not complete (client gone, timeout, error).
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace mmserve::api {

inline std::string sse_data(const nlohmann::json& payload) {
  return "data: " + payload.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n\n";
}

template <typename Engine, typename Job> struct CancelOnExit {
  std::shared_ptr<Job> job;
  bool completed = false;
  ~CancelOnExit() {
    if (!completed) Engine::cancel(job);
  }
};

} // namespace mmserve::api
