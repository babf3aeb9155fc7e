// One error type for every failure a client can cause or see, rendered as the
// OpenAI error body {"error":{"message","type","param","code"}}.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <stdexcept>
#include <string>

namespace mmserve {

class ApiError : public std::runtime_error {
public:
  ApiError(int status, std::string message, std::string type, std::string code,
           std::optional<std::string> param = std::nullopt);

  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& code() const { return code_; }
  const std::optional<std::string>& param() const { return param_; }
  // Seconds a client should wait before retrying (429/503), 0 when not set.
  int retry_after_seconds() const { return retry_after_; }
  ApiError& with_retry_after(int seconds) {
    retry_after_ = seconds;
    return *this;
  }

  nlohmann::json to_json() const;

  static ApiError bad_request(std::string message, std::optional<std::string> param = std::nullopt,
                              std::string code = "invalid_request");
  static ApiError invalid_json(std::string message);
  static ApiError unauthorized(std::string message);
  static ApiError not_found(std::string message, std::string code = "not_found");
  static ApiError method_not_allowed(std::string message);
  static ApiError payload_too_large(std::string message);
  static ApiError unsupported_media_type(std::string message, std::optional<std::string> param = std::nullopt,
                                         std::string code = "unsupported_media_type");
  static ApiError unprocessable(std::string message, std::optional<std::string> param = std::nullopt);
  static ApiError too_many_requests(std::string message, int retry_after_seconds);
  static ApiError header_too_large(std::string message);
  static ApiError internal(std::string message);
  static ApiError unavailable(std::string message, int retry_after_seconds, std::string code = "unavailable");
  static ApiError timeout(std::string message);

private:
  int status_;
  std::string type_;
  std::string code_;
  std::optional<std::string> param_;
  int retry_after_ = 0;
};

} // namespace mmserve
