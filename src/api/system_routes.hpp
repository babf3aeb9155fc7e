// Liveness, readiness, metrics and the OpenAI model list.
#pragma once

#include "core/http_server.hpp"
#include "core/model_board.hpp"

namespace mmserve::api {

// `expects_models`: false for the gateway role, which is ready without any
// model of its own (its pools report their health separately).
void register_system_routes(http::Router& router, const ModelBoard& board, ServerMetrics& metrics,
                            const std::atomic<bool>& draining, bool expects_models = true);

// The OpenAI model object for one board entry (with mmserve's status fields).
nlohmann::json model_object(const ModelStatus& model);

} // namespace mmserve::api
