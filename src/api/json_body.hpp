// Reading and checking JSON request bodies with OpenAI-style error messages
// that name the offending parameter.
#pragma once

#include "core/http_exchange.hpp"
#include "core/task.hpp"

#include <nlohmann/json.hpp>

namespace mmserve::api {

// The body as a JSON object: 400 invalid_json when it does not parse, 400
// when it is not an object, 413 past the body limit.
Task<nlohmann::json> read_json_object(http::HttpExchange& exchange);

// "an integer", "a string", ... as OpenAI's messages name JSON types.
std::string json_type_phrase(const nlohmann::json& value);
// 400 "Invalid type for 'param': expected X, but got Y instead."
[[noreturn]] void throw_invalid_type(const std::string& param, const std::string& expected, const nlohmann::json& got);

} // namespace mmserve::api
