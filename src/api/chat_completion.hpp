// Runs a validated chat request on the vision engine and writes the OpenAI
// response: one JSON object, or an SSE stream of chat.completion.chunk.
#pragma once

#include "api/chat_images.hpp"
#include "api/chat_request.hpp"
#include "core/http_exchange.hpp"
#include "core/task.hpp"
#include "engines/vlm/vlm_engine.hpp"

namespace mmserve::api {

// Images are fetched and preprocessed first (`images`), then the request
// is queued on the engine.
Task<void> run_chat_completion(vlm::VlmEngine& engine, const ChatRequest& request, const ChatImagePolicy& images,
                               ServerMetrics& metrics, http::HttpExchange& exchange);

} // namespace mmserve::api
