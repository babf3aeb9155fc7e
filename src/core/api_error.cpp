#include "core/api_error.hpp"

namespace mmserve {

ApiError::ApiError(int status, std::string message, std::string type, std::string code,
                   std::optional<std::string> param)
    : std::runtime_error(std::move(message)), status_(status), type_(std::move(type)), code_(std::move(code)),
      param_(std::move(param)) {}

nlohmann::json ApiError::to_json() const {
  nlohmann::json error = {
      {"message", what()},
      {"type", type_},
      {"param", param_ ? nlohmann::json(*param_) : nlohmann::json(nullptr)},
      {"code", code_.empty() ? nlohmann::json(nullptr) : nlohmann::json(code_)},
  };
  return {{"error", std::move(error)}};
}

ApiError ApiError::bad_request(std::string message, std::optional<std::string> param, std::string code) {
  return {400, std::move(message), "invalid_request_error", std::move(code), std::move(param)};
}
ApiError ApiError::invalid_json(std::string message) {
  return {400, std::move(message), "invalid_request_error", "invalid_json"};
}
ApiError ApiError::unauthorized(std::string message) {
  return {401, std::move(message), "authentication_error", "invalid_api_key"};
}
ApiError ApiError::not_found(std::string message, std::string code) {
  return {404, std::move(message), "invalid_request_error", std::move(code)};
}
ApiError ApiError::method_not_allowed(std::string message) {
  return {405, std::move(message), "invalid_request_error", "method_not_allowed"};
}
ApiError ApiError::payload_too_large(std::string message) {
  return {413, std::move(message), "invalid_request_error", "payload_too_large"};
}
ApiError ApiError::unsupported_media_type(std::string message, std::optional<std::string> param, std::string code) {
  return {415, std::move(message), "invalid_request_error", std::move(code), std::move(param)};
}
ApiError ApiError::unprocessable(std::string message, std::optional<std::string> param) {
  return {422, std::move(message), "invalid_request_error", "unprocessable_entity", std::move(param)};
}
ApiError ApiError::too_many_requests(std::string message, int retry_after_seconds) {
  ApiError error{429, std::move(message), "rate_limit_error", "rate_limit_exceeded"};
  return error.with_retry_after(retry_after_seconds);
}
ApiError ApiError::header_too_large(std::string message) {
  return {431, std::move(message), "invalid_request_error", "header_too_large"};
}
ApiError ApiError::internal(std::string message) {
  return {500, std::move(message), "server_error", "internal_error"};
}
ApiError ApiError::unavailable(std::string message, int retry_after_seconds, std::string code) {
  ApiError error{503, std::move(message), "server_error", std::move(code)};
  return error.with_retry_after(retry_after_seconds);
}
ApiError ApiError::timeout(std::string message) {
  return {504, std::move(message), "server_error", "timeout"};
}

} // namespace mmserve
