// POST /v1/chat/completions and the seed's POST /v1/chat/vision: the request
// is parsed and validated here, then handed to the vision engine that owns
// the named model.
#pragma once

#include "api/chat_request.hpp"
#include "core/router.hpp"
#include "core/task.hpp"

#include <functional>

namespace mmserve::api {

// Runs one validated request on the model it names (leased from the model
// registry, loaded on first use) and writes the response (JSON or SSE).
using ChatEngine = std::function<Task<void>(const ChatRequest&, http::HttpExchange&)>;

void register_chat_routes(http::Router& router, ChatEngine engine);

} // namespace mmserve::api
