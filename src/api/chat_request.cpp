#include "api/chat_request.hpp"

#include "api/json_body.hpp"
#include "core/api_error.hpp"

#include <fmt/format.h>

namespace mmserve::api {
namespace {

using nlohmann::json;

double read_number(const json& body, const char* key, double min, double max, double fallback) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) return fallback;
  if (!it->is_number()) throw_invalid_type(key, "a number", *it);
  const double value = it->get<double>();
  if (value < min || value > max) {
    throw ApiError::bad_request(fmt::format("Invalid value for '{}': {} is outside [{}, {}].", key, value, min, max),
                                key, "invalid_value");
  }
  return value;
}

bool read_bool(const json& body, const char* key, const std::string& param) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) return false;
  if (!it->is_boolean()) throw_invalid_type(param, "a boolean", *it);
  return it->get<bool>();
}

ChatContentPart parse_part(const json& part, const std::string& param) {
  if (!part.is_object()) throw_invalid_type(param, "an object", part);
  const auto type = part.find("type");
  if (type == part.end() || !type->is_string()) {
    throw ApiError::bad_request(fmt::format("Missing required parameter: '{}.type'.", param), param + ".type",
                                "missing_required_parameter");
  }
  ChatContentPart result;
  const std::string kind = type->get<std::string>();
  if (kind == "text") {
    const auto text = part.find("text");
    if (text == part.end() || !text->is_string())
      throw_invalid_type(param + ".text", "a string", text == part.end() ? json() : *text);
    result.kind = ChatContentPart::Kind::text;
    result.text = text->get<std::string>();
  } else if (kind == "image_url") {
    const auto image = part.find("image_url");
    if (image == part.end()) {
      throw ApiError::bad_request(fmt::format("Missing required parameter: '{}.image_url'.", param),
                                  param + ".image_url", "missing_required_parameter");
    }
    // Accepted as an object {"url": ...} (OpenAI) or a bare string (common in other servers).
    const json* url = nullptr;
    if (image->is_string())
      url = &*image;
    else if (image->is_object() && image->contains("url"))
      url = &(*image)["url"];
    if (!url || !url->is_string() || url->get<std::string>().empty()) {
      throw ApiError::bad_request(
          fmt::format("Invalid value for '{}.image_url.url': expected a non-empty string.", param),
          param + ".image_url.url", "invalid_value");
    }
    result.kind = ChatContentPart::Kind::image_url;
    result.url = url->get<std::string>();
    if (image->is_object() && image->contains("detail")) {
      const auto& detail = (*image)["detail"];
      if (!detail.is_string() || (detail != "auto" && detail != "low" && detail != "high")) {
        throw ApiError::bad_request(
            fmt::format("Invalid value for '{}.image_url.detail': expected one of auto, low, high.", param),
            param + ".image_url.detail", "invalid_value");
      }
      result.detail = detail.get<std::string>();
    }
  } else {
    throw ApiError::bad_request(
        fmt::format("Invalid value for '{}.type': '{}' (supported: text, image_url).", param, kind), param + ".type",
        "invalid_value");
  }
  return result;
}

ChatMessage parse_message(const json& message, const std::string& param) {
  if (!message.is_object()) throw_invalid_type(param, "an object", message);
  const auto role = message.find("role");
  if (role == message.end()) {
    throw ApiError::bad_request(fmt::format("Missing required parameter: '{}.role'.", param), param + ".role",
                                "missing_required_parameter");
  }
  if (!role->is_string()) throw_invalid_type(param + ".role", "a string", *role);
  ChatMessage result;
  result.role = role->get<std::string>();
  if (result.role != "system" && result.role != "developer" && result.role != "user" && result.role != "assistant") {
    throw ApiError::bad_request(fmt::format("Invalid value for '{}.role': '{}' (supported: system, developer, user, "
                                            "assistant).",
                                            param, result.role),
                                param + ".role", "invalid_value");
  }
  const auto content = message.find("content");
  if (content == message.end() || content->is_null()) {
    throw ApiError::bad_request(fmt::format("Missing required parameter: '{}.content'.", param), param + ".content",
                                "missing_required_parameter");
  }
  if (content->is_string()) {
    result.parts.push_back({ChatContentPart::Kind::text, content->get<std::string>(), {}, {}});
  } else if (content->is_array()) {
    for (size_t i = 0; i < content->size(); ++i) {
      result.parts.push_back(parse_part((*content)[i], fmt::format("{}.content[{}]", param, i)));
      if (result.parts.back().kind == ChatContentPart::Kind::image_url && result.role != "user") {
        throw ApiError::bad_request(
            fmt::format("Images are only allowed in user messages ('{}.content[{}]').", param, i),
            fmt::format("{}.content[{}]", param, i), "invalid_value");
      }
    }
  } else {
    throw_invalid_type(param + ".content", "a string or an array of content parts", *content);
  }
  return result;
}

} // namespace

size_t ChatRequest::image_count() const {
  size_t count = 0;
  for (const auto& message : messages) {
    for (const auto& part : message.parts)
      count += part.kind == ChatContentPart::Kind::image_url;
  }
  return count;
}

ChatRequest parse_chat_request(const json& body) {
  ChatRequest request;
  if (const auto model = body.find("model"); model != body.end() && !model->is_null()) {
    if (!model->is_string()) throw_invalid_type("model", "a string", *model);
    request.model = model->get<std::string>();
  }
  const auto messages = body.find("messages");
  if (messages == body.end()) {
    throw ApiError::bad_request("Missing required parameter: 'messages'.", "messages", "missing_required_parameter");
  }
  if (!messages->is_array()) throw_invalid_type("messages", "an array", *messages);
  if (messages->empty()) {
    throw ApiError::bad_request("Invalid 'messages': empty array. Expected an array with minimum length 1.", "messages",
                                "empty_array");
  }
  for (size_t i = 0; i < messages->size(); ++i) {
    request.messages.push_back(parse_message((*messages)[i], fmt::format("messages[{}]", i)));
  }

  request.stream = read_bool(body, "stream", "stream");
  if (const auto options = body.find("stream_options"); options != body.end() && !options->is_null()) {
    if (!options->is_object()) throw_invalid_type("stream_options", "an object", *options);
    if (!request.stream) {
      throw ApiError::bad_request("'stream_options' is only allowed when 'stream' is true.", "stream_options",
                                  "invalid_value");
    }
    request.include_usage = read_bool(*options, "include_usage", "stream_options.include_usage");
  }
  for (const char* key : {"max_completion_tokens", "max_tokens"}) {
    const auto it = body.find(key);
    if (it == body.end() || it->is_null()) continue;
    if (!it->is_number_integer()) throw_invalid_type(key, "an integer", *it);
    const auto value = it->get<int64_t>();
    if (value < 1 || value > 1'000'000) {
      throw ApiError::bad_request(fmt::format("Invalid value for '{}': {} (expected 1 to 1000000).", key, value), key,
                                  "invalid_value");
    }
    request.max_tokens = static_cast<int>(value);
    break;
  }
  request.temperature = read_number(body, "temperature", 0.0, 2.0, 1.0);
  request.top_p = read_number(body, "top_p", 0.0, 1.0, 1.0);
  request.presence_penalty = read_number(body, "presence_penalty", -2.0, 2.0, 0.0);
  request.frequency_penalty = read_number(body, "frequency_penalty", -2.0, 2.0, 0.0);
  if (const auto seed = body.find("seed"); seed != body.end() && !seed->is_null()) {
    if (!seed->is_number_integer()) throw_invalid_type("seed", "an integer", *seed);
    request.seed = seed->get<int64_t>();
  }
  if (const auto stop = body.find("stop"); stop != body.end() && !stop->is_null()) {
    if (stop->is_string()) {
      request.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      if (stop->size() > 4) {
        throw ApiError::bad_request("Invalid 'stop': at most 4 sequences are allowed.", "stop", "invalid_value");
      }
      for (size_t i = 0; i < stop->size(); ++i) {
        if (!(*stop)[i].is_string()) throw_invalid_type(fmt::format("stop[{}]", i), "a string", (*stop)[i]);
        request.stop.push_back((*stop)[i].get<std::string>());
      }
    } else {
      throw_invalid_type("stop", "a string or an array of strings", *stop);
    }
  }
  if (const auto n = body.find("n"); n != body.end() && !n->is_null()) {
    if (!n->is_number_integer()) throw_invalid_type("n", "an integer", *n);
    if (n->get<int64_t>() != 1) {
      throw ApiError::bad_request("Invalid value for 'n': only 1 choice per request is supported.", "n",
                                  "invalid_value");
    }
  }
  if (const auto format = body.find("response_format"); format != body.end() && !format->is_null()) {
    if (!format->is_object()) throw_invalid_type("response_format", "an object", *format);
    const auto type = format->find("type");
    if (type == format->end() || !type->is_string()) {
      throw ApiError::bad_request("Missing required parameter: 'response_format.type'.", "response_format.type",
                                  "missing_required_parameter");
    }
    if (*type == "json_object")
      request.json_object = true;
    else if (*type != "text") {
      throw ApiError::bad_request(fmt::format("Invalid value for 'response_format.type': '{}' (supported: text, "
                                              "json_object).",
                                              type->get<std::string>()),
                                  "response_format.type", "invalid_value");
    }
  }
  return request;
}

} // namespace mmserve::api
