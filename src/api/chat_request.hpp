// The OpenAI chat completions request, parsed and checked. Every field the
// vision service honours is validated here, so a bad request never reaches
// an engine.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mmserve::api {

struct ChatContentPart {
  enum class Kind { text, image_url };
  Kind kind = Kind::text;
  std::string text;   // kind == text
  std::string url;    // kind == image_url: data: URI or http(s) URL
  std::string detail; // auto low high
};

struct ChatMessage {
  std::string role; // system developer user assistant
  std::vector<ChatContentPart> parts;
};

struct ChatRequest {
  std::string model;
  std::vector<ChatMessage> messages;
  bool stream = false;
  bool include_usage = false;
  std::optional<int> max_tokens;
  double temperature = 1.0;
  double top_p = 1.0;
  std::optional<int64_t> seed;
  std::vector<std::string> stop;
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
  bool json_object = false;
  size_t image_count() const;
};

// Throws ApiError (400) naming the parameter at fault.
ChatRequest parse_chat_request(const nlohmann::json& body);

} // namespace mmserve::api
