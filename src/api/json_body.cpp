#include "api/json_body.hpp"

#include "core/task.hpp"

#include <fmt/format.h>

namespace mmserve::api {

std::string json_type_phrase(const nlohmann::json& value) {
  switch (value.type()) {
  case nlohmann::json::value_t::null: return "null";
  case nlohmann::json::value_t::boolean: return "a boolean";
  case nlohmann::json::value_t::number_integer:
  case nlohmann::json::value_t::number_unsigned: return "an integer";
  case nlohmann::json::value_t::number_float: return "a decimal";
  case nlohmann::json::value_t::string: return "a string";
  case nlohmann::json::value_t::array: return "an array";
  case nlohmann::json::value_t::object: return "an object";
  default: return "an unsupported value";
  }
}

void throw_invalid_type(const std::string& param, const std::string& expected, const nlohmann::json& got) {
  throw ApiError::bad_request(
      fmt::format("Invalid type for '{}': expected {}, but got {} instead.", param, expected, json_type_phrase(got)),
      param, "invalid_type");
}

Task<nlohmann::json> read_json_object(http::HttpExchange& exchange) {
  const std::string content_type = exchange.header(http::bhttp::field::content_type);
  // Lenient on purpose: curl -d sends form-urlencoded for JSON bodies; only a
  // multipart upload is certainly not JSON.
  if (content_type.starts_with("multipart/")) {
    throw ApiError::unsupported_media_type(
        fmt::format("Unsupported Content-Type '{}': this endpoint takes application/json.", content_type));
  }
  const std::string body = co_await exchange.read_body();
  if (body.empty()) {
    throw ApiError::invalid_json("The request body is empty: this endpoint takes a JSON object.");
  }
  nlohmann::json parsed;
  try {
    parsed = nlohmann::json::parse(body);
  } catch (const nlohmann::json::parse_error& error) {
    throw ApiError::invalid_json(fmt::format(
        "We could not parse the JSON body of your request: {} (byte {}). The body must be a valid JSON object.",
        error.what(), error.byte));
  }
  if (!parsed.is_object()) {
    throw ApiError::invalid_json(
        fmt::format("The JSON body must be an object, but got {} instead.", json_type_phrase(parsed)));
  }
  co_return parsed;
}

} // namespace mmserve::api
