// Which model of a service a request names, from the model board: 404 for a
// name no service of that kind serves, 503 while it is not loaded.
#pragma once

#include "core/model_board.hpp"

#include <initializer_list>
#include <string>

namespace mmserve::api {

// `requested` empty or one of `aliases` (names OpenAI clients hard-code,
// like "whisper-1") picks the service's first model. `kind` words the 404
// ("chat", "speech"). Throws ApiError.
ModelStatus loaded_model_for(const ModelBoard& board, const std::string& service, const std::string& requested,
                             const std::string& kind, std::initializer_list<const char*> aliases = {});

} // namespace mmserve::api
