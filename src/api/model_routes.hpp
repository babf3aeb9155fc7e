// POST /v1/models/{id}/load and /v1/models/{id}/unload: an operator loads or
// unloads a model without restarting. Allowed for registry.admin_api_keys,
// or for clients on the loopback interface when no admin key is configured.
#pragma once

#include "core/config.hpp"
#include "core/model_registry.hpp"
#include "core/router.hpp"

namespace mmserve::api {

void register_model_admin_routes(http::Router& router, ModelRegistry& registry,
                                 const std::vector<GatewayApiKey>& admin_keys);

} // namespace mmserve::api
