#include "api/chat_request.hpp"
#include "core/api_error.hpp"

#include <gtest/gtest.h>

using mmserve::ApiError;
using mmserve::api::ChatContentPart;
using mmserve::api::parse_chat_request;
using nlohmann::json;

namespace {
// The parameter an invalid request is rejected for.
std::string rejected_param(const json& body) {
  try {
    parse_chat_request(body);
  } catch (const ApiError& error) {
    EXPECT_EQ(error.status(), 400);
    return error.param().value_or("<none>");
  }
  return "<accepted>";
}
} // namespace

TEST(ChatRequest, ParsesTextAndImageParts) {
  const auto request = parse_chat_request(json::parse(R"({
    "model": "llava", "stream": true, "stream_options": {"include_usage": true},
    "max_tokens": 64, "temperature": 0, "top_p": 0.9, "seed": 7, "stop": ["\n\n"],
    "response_format": {"type": "json_object"},
    "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}
      ]}
    ]})"));
  EXPECT_EQ(request.model, "llava");
  EXPECT_TRUE(request.stream);
  EXPECT_TRUE(request.include_usage);
  EXPECT_EQ(request.max_tokens, 64);
  EXPECT_DOUBLE_EQ(request.temperature, 0);
  EXPECT_EQ(request.seed, 7);
  EXPECT_EQ(request.stop.size(), 1u);
  EXPECT_TRUE(request.json_object);
  ASSERT_EQ(request.messages.size(), 2u);
  EXPECT_EQ(request.messages[1].parts.size(), 3u);
  EXPECT_EQ(request.messages[1].parts[1].kind, ChatContentPart::Kind::image_url);
  EXPECT_EQ(request.messages[1].parts[1].detail, "low");
  EXPECT_EQ(request.image_count(), 2u);
}

TEST(ChatRequest, MaxCompletionTokensWins) {
  const auto request = parse_chat_request(
      json::parse(R"({"max_completion_tokens": 5, "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]})"));
  EXPECT_EQ(request.max_tokens, 5);
}

TEST(ChatRequest, RejectsBadInputsNamingTheParameter) {
  EXPECT_EQ(rejected_param(json::parse(R"({})")), "messages");
  EXPECT_EQ(rejected_param(json::parse(R"({"messages": []})")), "messages");
  EXPECT_EQ(rejected_param(json::parse(R"({"messages": "hi"})")), "messages");
  EXPECT_EQ(rejected_param(json::parse(R"({"messages": [42]})")), "messages[0]");
  EXPECT_EQ(rejected_param(json::parse(R"({"messages": [{"content": "x"}]})")), "messages[0].role");
  EXPECT_EQ(rejected_param(json::parse(R"({"messages": [{"role": "robot", "content": "x"}]})")), "messages[0].role");
  EXPECT_EQ(rejected_param(json::parse(R"({"messages": [{"role": "user", "content": 5}]})")), "messages[0].content");
  EXPECT_EQ(rejected_param(json::parse(R"({"messages": [{"role": "user"}]})")), "messages[0].content");
  EXPECT_EQ(rejected_param(json::parse(R"({"messages": [{"role": "user", "content": [{"type": "audio"}]}]})")),
            "messages[0].content[0].type");
  EXPECT_EQ(rejected_param(json::parse(
                R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}]})")),
            "messages[0].content[0].image_url.url");
  EXPECT_EQ(rejected_param(json::parse(
                R"({"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": "x"}]}]})")),
            "messages[0].content[0]");
  const std::string ok = R"("messages": [{"role": "user", "content": "hi"}])";
  EXPECT_EQ(rejected_param(json::parse("{" + ok + R"(, "model": 3})")), "model");
  EXPECT_EQ(rejected_param(json::parse("{" + ok + R"(, "temperature": 3})")), "temperature");
  EXPECT_EQ(rejected_param(json::parse("{" + ok + R"(, "temperature": "hot"})")), "temperature");
  EXPECT_EQ(rejected_param(json::parse("{" + ok + R"(, "top_p": -0.1})")), "top_p");
  EXPECT_EQ(rejected_param(json::parse("{" + ok + R"(, "max_tokens": 0})")), "max_tokens");
  EXPECT_EQ(rejected_param(json::parse("{" + ok + R"(, "max_tokens": 1.5})")), "max_tokens");
  EXPECT_EQ(rejected_param(json::parse("{" + ok + R"(, "stream": "yes"})")), "stream");
  EXPECT_EQ(rejected_param(json::parse("{" + ok + R"(, "stream_options": {"include_usage": true}})")),
            "stream_options");
  EXPECT_EQ(rejected_param(json::parse("{" + ok + R"(, "stop": [1]})")), "stop[0]");
  EXPECT_EQ(rejected_param(json::parse("{" + ok + R"(, "stop": ["a","b","c","d","e"]})")), "stop");
  EXPECT_EQ(rejected_param(json::parse("{" + ok + R"(, "n": 2})")), "n");
  EXPECT_EQ(rejected_param(json::parse("{" + ok + R"(, "response_format": {"type": "xml"}})")), "response_format.type");
  EXPECT_EQ(rejected_param(json::parse("{" + ok + R"(, "seed": "x"})")), "seed");
}
