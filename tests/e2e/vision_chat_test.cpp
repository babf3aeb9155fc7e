// The vision service's chat completions on a real trained model
// (stories260K), over real sockets, compared with llama.cpp's own server.
#include "static_http_server.hpp"
#include "test_server.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <future>
#include <optional>
#include <thread>

using namespace mmserve::test;
using nlohmann::json;

namespace {

std::string models_dir() {
  const char* env = std::getenv("MMSERVE_TEST_MODELS");
  return env && *env ? env : std::string(MMSERVE_SOURCE_DIR) + "/../shared/models";
}

std::string stories_model() {
  return models_dir() + "/stories260K.gguf";
}

#define REQUIRE_MODEL(path)                                                                                            \
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "model file absent, skipping: " << (path)

json chat_body(const std::string& prompt, int max_tokens, json extra = json::object()) {
  json body = {{"messages", json::array({{{"role", "user"}, {"content", prompt}}})},
               {"max_tokens", max_tokens},
               {"temperature", 0}};
  for (auto& [key, value] : extra.items())
    body[key] = value;
  return body;
}

json post_json(uint16_t port, const json& body, unsigned expected_status = 200) {
  const auto response =
      request(port, "POST", "/v1/chat/completions", body.dump(), {{"Content-Type", "application/json"}});
  EXPECT_EQ(response.status, expected_status) << response.body;
  return json::parse(response.body);
}

// Reads an SSE response body into its JSON events; the last one must be [DONE].
std::vector<json> sse_events(const std::string& body, bool* saw_done) {
  std::vector<json> events;
  *saw_done = false;
  size_t start = 0;
  while ((start = body.find("data: ", start)) != std::string::npos) {
    const size_t end = body.find("\n\n", start);
    const std::string payload = body.substr(start + 6, end - start - 6);
    start = end;
    if (payload == "[DONE]") {
      *saw_done = true;
      break;
    }
    events.push_back(json::parse(payload));
  }
  return events;
}

std::string vision_config(int parallel = 2, int max_queue = 8) {
  return "vision:\n  model_path: " + stories_model() + "\n  parallel: " + std::to_string(parallel) +
         "\n  max_queue: " + std::to_string(max_queue) + "\n  max_model_len: 1024\n";
}

// Sends a streamed chat request of `max_tokens` on `connection`; true once
// the first bytes of the answer arrived (the generation is under way).
bool start_streamed_answer(Connection& connection, int max_tokens) {
  const std::string body = chat_body("Once upon a time", max_tokens, {{"stream", true}}).dump();
  connection.send_raw("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: " +
                      std::to_string(body.size()) + "\r\n\r\n" + body);
  char first[16];
  return ::recv(connection.socket().native_handle(), first, sizeof first, 0) > 0;
}

// tokens_generated_total of stories260K from a scrape; nullopt before the first token.
std::optional<double> tokens_generated(uint16_t port) {
  const std::string metrics = request(port, "GET", "/metrics").body;
  const std::string key = R"(tokens_generated_total{service="vision",model="stories260K"} )";
  const auto at = metrics.find(key);
  if (at == std::string::npos) return std::nullopt;
  return std::stod(metrics.substr(at + key.size()));
}

void wait_until_loaded(uint16_t port) {
  for (int i = 0; i < 500; ++i) {
    if (request(port, "GET", "/readyz").status == 200) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  FAIL() << "the model did not load";
}

} // namespace

class VisionChat : public ::testing::Test {
protected:
  void SetUp() override {
    REQUIRE_MODEL(stories_model());
    server_ = std::make_unique<ServerProcess>(vision_config(), "vision");
    wait_until_loaded(server_->port());
  }
  uint16_t port() const { return server_->port(); }
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(VisionChat, GreedyAnswerIsDeterministicWithUsage) {
  const json first = post_json(port(), chat_body("Once upon a time", 24));
  const json second = post_json(port(), chat_body("Once upon a time", 24));
  ASSERT_EQ(first["object"], "chat.completion");
  const auto& choice = first["choices"][0];
  EXPECT_EQ(choice["message"]["role"], "assistant");
  EXPECT_EQ(choice["finish_reason"], "length");
  EXPECT_FALSE(choice["message"]["content"].get<std::string>().empty());
  EXPECT_EQ(first["usage"]["completion_tokens"], 24);
  EXPECT_GT(first["usage"]["prompt_tokens"].get<int>(), 3);
  EXPECT_EQ(first["usage"]["total_tokens"],
            first["usage"]["prompt_tokens"].get<int>() + first["usage"]["completion_tokens"].get<int>());
  EXPECT_EQ(first["model"], "stories260K");
  EXPECT_EQ(choice["message"]["content"], second["choices"][0]["message"]["content"]);
}

TEST_F(VisionChat, StreamCarriesTheSameTextAsTheWholeAnswer) {
  const json whole = post_json(port(), chat_body("Once upon a time", 20));
  const auto response = request(
      port(), "POST", "/v1/chat/completions",
      chat_body("Once upon a time", 20, {{"stream", true}, {"stream_options", {{"include_usage", true}}}}).dump());
  ASSERT_EQ(response.status, 200u);
  EXPECT_EQ(response.header("content-type"), "text/event-stream");
  bool done = false;
  const auto events = sse_events(response.body, &done);
  EXPECT_TRUE(done);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.front()["choices"][0]["delta"]["role"], "assistant");
  std::string streamed;
  std::string finish;
  for (const auto& event : events) {
    EXPECT_EQ(event["object"], "chat.completion.chunk");
    if (event["choices"].empty()) continue;
    const auto& delta = event["choices"][0]["delta"];
    if (delta.contains("content")) streamed += delta["content"].get<std::string>();
    if (!event["choices"][0]["finish_reason"].is_null()) finish = event["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(streamed, whole["choices"][0]["message"]["content"]);
  EXPECT_EQ(finish, "length");
  EXPECT_TRUE(events.back()["choices"].empty());
  EXPECT_EQ(events.back()["usage"]["completion_tokens"], 20);
}

TEST_F(VisionChat, StopSequenceEndsTheAnswerBeforeIt) {
  const std::string full = post_json(port(), chat_body("Once upon a time", 30))["choices"][0]["message"]["content"];
  ASSERT_GT(full.size(), 12u);
  const std::string stop = full.substr(8, 3);
  const json stopped = post_json(port(), chat_body("Once upon a time", 30, {{"stop", json::array({stop})}}));
  const std::string content = stopped["choices"][0]["message"]["content"];
  EXPECT_EQ(stopped["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(content, full.substr(0, full.find(stop)));
}

TEST_F(VisionChat, ConcurrentRequestsAllComplete) {
  std::vector<std::future<json>> answers;
  for (int i = 0; i < 4; ++i) {
    answers.push_back(
        std::async(std::launch::async, [this] { return post_json(port(), chat_body("Once upon a time", 16)); }));
  }
  for (auto& answer : answers) {
    const json result = answer.get();
    EXPECT_EQ(result["usage"]["completion_tokens"], 16);
    EXPECT_EQ(result["choices"][0]["finish_reason"], "length");
  }
}

TEST_F(VisionChat, BadRequestsAreClear4xxAndServingGoesOn) {
  json image = chat_body("What is this?", 8);
  image["messages"][0]["content"] =
      json::array({{{"type", "text"}, {"text", "What is this?"}},
                   {{"type", "image_url"}, {"image_url", {{"url", "data:image/png;base64,iVBORw0KGgo="}}}}});
  EXPECT_EQ(post_json(port(), image, 400)["error"]["code"], "images_not_supported");
  EXPECT_EQ(post_json(port(), chat_body("x", 8, {{"model", "gpt-4o"}}), 404)["error"]["code"], "model_not_found");
  json empty = chat_body("x", 8);
  empty["messages"] = json::array();
  EXPECT_EQ(post_json(port(), empty, 400)["error"]["param"], "messages");
  EXPECT_EQ(post_json(port(), chat_body("x", 8, {{"temperature", "hot"}}), 400)["error"]["param"], "temperature");
  EXPECT_EQ(post_json(port(), chat_body("Once upon a time", 4))["usage"]["completion_tokens"], 4);
}

TEST(VisionChatLimits, FullQueueAnswers429WithRetryAfter) {
  REQUIRE_MODEL(stories_model());
  ServerProcess server(vision_config(1, 0), "vision");
  wait_until_loaded(server.port());
  // A long streamed answer holds the only slot; its first bytes prove it started.
  Connection holder(server.port());
  ASSERT_TRUE(start_streamed_answer(holder, 900));
  const auto refused = request(server.port(), "POST", "/v1/chat/completions", chat_body("Hello", 4).dump());
  EXPECT_EQ(refused.status, 429u) << refused.body;
  EXPECT_EQ(json::parse(refused.body)["error"]["type"], "rate_limit_error");
  EXPECT_FALSE(refused.header("retry-after").empty());
}

TEST(VisionChatLimits, DisconnectedClientFreesItsSlot) {
  REQUIRE_MODEL(stories_model());
  ServerProcess server(vision_config(1, 4), "vision");
  wait_until_loaded(server.port());
  {
    Connection gone(server.port());
    ASSERT_TRUE(start_streamed_answer(gone, 900));
  } // the client hangs up after the first bytes
  // With one slot, this answer can only come once the abandoned one stopped.
  const json next = post_json(server.port(), chat_body("Once upon a time", 4));
  EXPECT_EQ(next["usage"]["completion_tokens"], 4);
  const auto tokens = tokens_generated(server.port());
  ASSERT_TRUE(tokens.has_value());
  EXPECT_LT(*tokens, 900 + 4) << "the abandoned request ran to its end";
}

TEST(VisionChatParity, SameAnswerAsLlamaCppServer) {
  REQUIRE_MODEL(stories_model());
  // llama.cpp's own server, built from the same tree, on the same model.
  const uint16_t peer_port = free_port();
  const std::string dir = make_temp_dir("llama-server");
  const std::string log = dir + "/llama-server.log";
  const std::string command = std::string(LLAMA_SERVER) + " -m " + stories_model() + " --port " +
                              std::to_string(peer_port) + " -c 1024 -np 1 --no-webui > " + log + " 2>&1 & echo $!";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  int peer_pid = 0;
  ASSERT_EQ(fscanf(pipe, "%d", &peer_pid), 1);
  pclose(pipe);
  struct KillPeer {
    int pid;
    ~KillPeer() { kill(pid, SIGKILL); }
  } kill_peer{peer_pid};
  bool peer_ready = false;
  for (int i = 0; i < 300 && !peer_ready; ++i) {
    try {
      peer_ready = request(peer_port, "GET", "/health").status == 200;
    } catch (const std::exception&) {
    }
    if (!peer_ready) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(peer_ready) << read_file(log);

  ServerProcess server(vision_config(1, 4), "vision");
  wait_until_loaded(server.port());
  // The third prompt is longer than one prompt batch (512 tokens), so it is
  // evaluated in several steps (chunked prefill).
  std::string long_prompt;
  for (int i = 0; i < 55; ++i)
    long_prompt += "Lily and Ben played in the park. ";
  for (const std::string& prompt : {std::string("Once upon a time"), std::string("The little dog"), long_prompt}) {
    const json body = chat_body(prompt, 48);
    const json ours = post_json(server.port(), body);
    const json theirs = post_json(peer_port, body);
    ASSERT_FALSE(ours["choices"][0]["message"]["content"].get<std::string>().empty()) << prompt;
    EXPECT_EQ(ours["choices"][0]["message"]["content"], theirs["choices"][0]["message"]["content"]) << prompt;
    EXPECT_EQ(ours["usage"]["prompt_tokens"], theirs["usage"]["prompt_tokens"]) << prompt;
    EXPECT_EQ(ours["usage"]["completion_tokens"], theirs["usage"]["completion_tokens"]) << prompt;
    if (prompt == long_prompt) EXPECT_GT(ours["usage"]["prompt_tokens"].get<int>(), 512);
  }
}

TEST_F(VisionChat, MetricsRecordInferenceAndTokens) {
  post_json(port(), chat_body("Once upon a time", 10));
  const std::string metrics = request(port(), "GET", "/metrics").body;
  for (const std::string series :
       {R"(tokens_generated_total{service="vision",model="stories260K"} 10)",
        R"(model_inference_seconds_count{service="vision",model="stories260K",phase="prefill"} 1)",
        R"(model_inference_seconds_count{service="vision",model="stories260K",phase="decode"} 9)",
        R"(time_to_first_token_seconds_count{service="vision",model="stories260K"} 1)",
        R"(mmserve_model_ready{service="vision",model="stories260K"} 1)",
        R"(mmserve_slots_busy{service="vision"} 0)"}) {
    EXPECT_NE(metrics.find(series), std::string::npos) << series << "\n" << metrics;
  }
}

// ---- images, through a projector the project generates (tools/gen_tiny_mmproj.py) ----

namespace {

std::string base64(const std::string& bytes) {
  static constexpr char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t n = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    out += {table[n >> 18], table[(n >> 12) & 63], table[(n >> 6) & 63], table[n & 63]};
  }
  if (i + 1 == bytes.size()) {
    const uint32_t n = uint8_t(bytes[i]) << 16;
    out += {table[n >> 18], table[(n >> 12) & 63], '=', '='};
  } else if (i + 2 == bytes.size()) {
    const uint32_t n = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8);
    out += {table[n >> 18], table[(n >> 12) & 63], table[(n >> 6) & 63], '='};
  }
  return out;
}

std::string photo_path() {
  return std::string(MMSERVE_SOURCE_DIR) + "/../shared/media/newspaper-moon.jpeg";
}

json image_body(const std::string& url, const std::string& text, int max_tokens) {
  json body = chat_body(text, max_tokens);
  body["messages"][0]["content"] =
      json::array({{{"type", "image_url"}, {"image_url", {{"url", url}}}}, {{"type", "text"}, {"text", text}}});
  return body;
}

} // namespace

class VisionImages : public ::testing::Test {
protected:
  void SetUp() override {
    REQUIRE_MODEL(stories_model());
    REQUIRE_MODEL(photo_path());
    // Image URLs on loopback are refused unless allowed: the test web server
    // is on 127.0.0.1, which this configuration opens (and nothing else).
    server_ = std::make_unique<ServerProcess>(vision_config(2, 8) + "  mmproj_path: " + std::string(TINY_MMPROJ) +
                                                  "\nmedia:\n  fetch:\n    allow_networks: [127.0.0.1/32]\n"
                                                  "    timeout: 1500ms\n    max_bytes: 1Mi\n    max_redirects: 2\n",
                                              "vision");
    wait_until_loaded(server_->port());
    photo_bytes_ = read_file(photo_path());
    photo_url_ = "data:image/jpeg;base64," + base64(photo_bytes_);
  }
  uint16_t port() const { return server_->port(); }
  std::unique_ptr<ServerProcess> server_;
  std::string photo_bytes_;
  std::string photo_url_;
};

TEST_F(VisionImages, ImageTokensReachTheModelAndSteerIt) {
  const json text_only = post_json(port(), chat_body("Once upon a time", 24));
  const json with_image = post_json(port(), image_body(photo_url_, "Once upon a time", 24));
  const json again = post_json(port(), image_body(photo_url_, "Once upon a time", 24));
  // The projector yields 256 embeddings for a 32x32 image (16x16 patches).
  EXPECT_GE(with_image["usage"]["prompt_tokens"].get<int>(), text_only["usage"]["prompt_tokens"].get<int>() + 256);
  EXPECT_NE(with_image["choices"][0]["message"]["content"], text_only["choices"][0]["message"]["content"]);
  EXPECT_EQ(with_image["choices"][0]["message"]["content"], again["choices"][0]["message"]["content"]);
  const std::string metrics = request(port(), "GET", "/metrics").body;
  EXPECT_NE(metrics.find(R"(image_size_bytes_count{service="vision"} 2)"), std::string::npos) << metrics;
  // Preprocessing is timed by step, at most once: the second request hit the
  // decoded-image cache (and the disk cache may hold the pixels from an earlier run).
  const auto count_of = [&](const std::string& step) {
    const std::string series = R"(image_processing_seconds_count{service="vision",step=")" + step + "\"} ";
    const auto at = metrics.find(series);
    return at == std::string::npos ? 0 : std::stoi(metrics.substr(at + series.size()));
  };
  EXPECT_LE(count_of("decode"), 1) << metrics;
  EXPECT_EQ(count_of("resize"), count_of("decode")) << metrics;
  EXPECT_EQ(count_of("preprocess"), 0) << metrics;
  // The same image and prompt again: the slot's KV cache held them, so most
  // positions were not evaluated again.
  const std::string cached_key = R"(prompt_tokens_cached_total{service="vision",model="stories260K"} )";
  const auto cached_at = metrics.find(cached_key);
  ASSERT_NE(cached_at, std::string::npos) << metrics;
  EXPECT_GE(std::stod(metrics.substr(cached_at + cached_key.size())), 256.0) << metrics;
  // The same image twice: the vision encoder ran once, the cache served the second.
  EXPECT_NE(
      metrics.find(R"(model_inference_seconds_count{service="vision",model="stories260K",phase="image_encode"} 1)"),
      std::string::npos)
      << metrics;
}

TEST_F(VisionImages, ImageByUrlIsFetchedAndAnswersLikeTheSameBytesInline) {
  StaticHttpServer web;
  web.route("/moon.jpg", {200, {{"Content-Type", "image/jpeg"}}, photo_bytes_});
  web.route("/moved", {302, {{"Location", "/moon.jpg"}}, ""});
  web.route("/new%20moon.jpg", {200, {{"Content-Type", "image/jpeg"}}, photo_bytes_});
  const json inline_answer = post_json(port(), image_body(photo_url_, "Once upon a time", 12));
  const json by_url = post_json(port(), image_body(web.url("/moon.jpg"), "Once upon a time", 12));
  const json redirected = post_json(port(), image_body(web.url("/moved"), "Once upon a time", 12));
  EXPECT_EQ(by_url["choices"][0]["message"]["content"], inline_answer["choices"][0]["message"]["content"]);
  EXPECT_EQ(redirected["choices"][0]["message"]["content"], inline_answer["choices"][0]["message"]["content"]);
  EXPECT_EQ(by_url["usage"]["prompt_tokens"], inline_answer["usage"]["prompt_tokens"]);
  EXPECT_EQ(web.hits("/moon.jpg"), 2);
  EXPECT_EQ(web.hits("/moved"), 1);
  // A space in the path goes out percent-encoded, as a browser sends it.
  const json spaced = post_json(port(), image_body(web.url("/new moon.jpg"), "Once upon a time", 12));
  EXPECT_EQ(spaced["choices"][0]["message"]["content"], inline_answer["choices"][0]["message"]["content"]);
  EXPECT_EQ(web.hits("/new%20moon.jpg"), 1);
  const std::string metrics = request(port(), "GET", "/metrics").body;
  EXPECT_NE(metrics.find(R"(image_processing_seconds_count{service="vision",step="fetch"} 3)"), std::string::npos)
      << metrics;
}

TEST_F(VisionImages, BadImageUrlsAreClear4xxAndTheServerGoesOn) {
  StaticHttpServer web;
  web.route("/missing.jpg", {404, {}, "no such image"});
  web.route("/loop", {302, {{"Location", "/loop"}}, ""});
  web.route("/to-metadata", {302, {{"Location", "http://169.254.169.254/latest/meta-data/"}}, ""});
  web.route("/huge.jpg", {200, {{"Content-Type", "image/jpeg"}}, "x", {}, 50ull << 20});
  web.route("/slow.jpg", {200, {}, "x", std::chrono::milliseconds(4000)});
  web.route("/text.png", {200, {{"Content-Type", "image/png"}}, "this is not a PNG"});
  const auto error_of = [&](const std::string& url, unsigned status) {
    return post_json(port(), image_body(url, "What is this?", 4), status)["error"];
  };
  // Internal addresses: cloud metadata, loopback outside the allow-list,
  // also when a redirect leads there; other schemes.
  EXPECT_EQ(error_of("http://169.254.169.254/latest/meta-data/", 400)["code"], "url_not_allowed");
  EXPECT_EQ(error_of("http://127.0.0.2:" + std::to_string(web.port()) + "/moon.jpg", 400)["code"], "url_not_allowed");
  EXPECT_EQ(error_of("http://[::1]:" + std::to_string(web.port()) + "/moon.jpg", 400)["code"], "url_not_allowed");
  EXPECT_EQ(error_of(web.url("/to-metadata"), 400)["code"], "url_not_allowed");
  EXPECT_EQ(error_of("ftp://127.0.0.1/moon.jpg", 400)["code"], "url_not_allowed");
  // Control characters would end the request line early and add fields of
  // the client's choosing: refused before anything is sent.
  EXPECT_EQ(error_of(web.url("/missing.jpg\r\nX-Injected: 1"), 400)["code"], "url_not_allowed");
  EXPECT_EQ(error_of("http://127.0.0.1\r\nX-Injected: 1/moon.jpg", 400)["code"], "url_not_allowed");
  EXPECT_EQ(web.hits("/missing.jpg"), 0);
  // Unreachable, missing, looping, too large, too slow, not an image.
  const json unreachable = error_of("http://127.0.0.1:" + std::to_string(free_port()) + "/moon.jpg", 400);
  EXPECT_EQ(unreachable["code"], "image_fetch_failed");
  EXPECT_EQ(unreachable["param"], "messages[0].content[0].image_url.url");
  const json missing = error_of(web.url("/missing.jpg"), 400);
  EXPECT_EQ(missing["code"], "image_fetch_failed");
  EXPECT_NE(missing["message"].get<std::string>().find("HTTP 404"), std::string::npos) << missing;
  const json loop = error_of(web.url("/loop"), 400);
  EXPECT_NE(loop["message"].get<std::string>().find("more than 2 redirects"), std::string::npos) << loop;
  EXPECT_EQ(web.hits("/loop"), 3);
  EXPECT_EQ(error_of(web.url("/huge.jpg"), 400)["code"], "image_too_large");
  const auto started = std::chrono::steady_clock::now();
  const json slow = error_of(web.url("/slow.jpg"), 400);
  EXPECT_EQ(slow["code"], "image_fetch_failed");
  EXPECT_NE(slow["message"].get<std::string>().find("1500 ms"), std::string::npos) << slow;
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(3500));
  EXPECT_EQ(error_of(web.url("/text.png"), 415)["code"], "unsupported_image_format");
  EXPECT_EQ(post_json(port(), image_body(photo_url_, "Once upon a time", 4))["usage"]["completion_tokens"], 4);
}

TEST_F(VisionImages, BadImagesAreClear4xx) {
  const auto error_of = [&](const std::string& url, unsigned status) {
    return post_json(port(), image_body(url, "What is this?", 4), status)["error"];
  };
  EXPECT_EQ(error_of("data:image/png;base64,!!!not-base64!!!", 400)["code"], "invalid_image");
  EXPECT_EQ(error_of("data:image/png,rawbytes", 400)["code"], "invalid_image");
  // A text file that calls itself a PNG: the bytes decide, and they are no image.
  const json text_file = error_of("data:image/png;base64," + base64("this is a text file, not a PNG"), 415);
  EXPECT_EQ(text_file["code"], "unsupported_image_format");
  EXPECT_NE(text_file["message"].get<std::string>().find("jpeg, png"), std::string::npos) << text_file;
  // A PNG header claiming 50000x50000 pixels is refused before any decoding.
  std::string bomb = "\x89PNG\r\n\x1A\n";
  bomb += std::string("\0\0\0\x0DIHDR", 8);
  bomb += std::string("\0\0\xC3\x50\0\0\xC3\x50\x08\x02\0\0\0", 13);
  bomb += std::string("\0\0\0\0", 4);
  const json too_large = error_of("data:image/png;base64," + base64(bomb), 400);
  EXPECT_EQ(too_large["code"], "image_too_large");
  EXPECT_NE(too_large["message"].get<std::string>().find("50000x50000"), std::string::npos) << too_large;
  // A JPEG cut off inside its header.
  const std::string photo = read_file(photo_path());
  EXPECT_EQ(error_of("data:image/jpeg;base64," + base64(photo.substr(0, 20)), 400)["code"], "invalid_image");
  EXPECT_EQ(error_of("http://169.254.169.254/latest/meta-data", 400)["code"], "url_not_allowed");
  json in_assistant = image_body(photo_url_, "x", 4);
  in_assistant["messages"][0]["role"] = "assistant";
  EXPECT_EQ(post_json(port(), in_assistant, 400)["error"]["param"], "messages[0].content[0]");
  // And the service goes on answering.
  EXPECT_EQ(post_json(port(), image_body(photo_url_, "Once upon a time", 4))["usage"]["completion_tokens"], 4);
}

// llama.cpp's own multimodal CLI, greedy: its answer for one image and prompt.
std::string mtmd_cli_answer(const std::string& model, const std::string& mmproj, const std::string& prompt,
                            int max_tokens, const std::string& expected_by_us, const std::string& extra_args = "") {
  const std::string dir = make_temp_dir("mtmd-cli");
  const std::string command = std::string(LLAMA_MTMD_CLI) + " -m " + model + " --mmproj " + mmproj + " --image " +
                              photo_path() + " -p '" + prompt + "' --temp 0 -n " + std::to_string(max_tokens) + " " +
                              extra_args + " > " + dir + "/out.txt 2> " + dir + "/err.txt";
  std::string theirs;
  // The CLI prints through an asynchronous logger that can lose the tail of
  // its output at exit on a loaded machine; a run whose output is a strict
  // prefix of ours is run again. A differing token is never a prefix.
  for (int attempt = 0; attempt < 4; ++attempt) {
    EXPECT_EQ(std::system(command.c_str()), 0) << read_file(dir + "/err.txt");
    theirs = read_file(dir + "/out.txt");
    while (!theirs.empty() && theirs.back() == '\n')
      theirs.pop_back();
    // The CLI prints a newline of its own before the answer.
    if (!theirs.empty() && theirs.front() == '\n') theirs.erase(0, 1);
    if (!(theirs.size() < expected_by_us.size() && expected_by_us.compare(0, theirs.size(), theirs) == 0)) break;
  }
  return theirs;
}

TEST_F(VisionImages, SameAnswerAsLlamaMtmdCli) {
  // Same model, projector, image and prompt. stories260K has no chat
  // template; both sides use ChatML.
  const json ours = post_json(port(), image_body(photo_url_, "Once upon a time", 32));
  const std::string expected = ours["choices"][0]["message"]["content"];
  ASSERT_FALSE(expected.empty());
  const std::string theirs =
      mtmd_cli_answer(stories_model(), TINY_MMPROJ, "Once upon a time", 32, expected, "--chat-template chatml");
  ASSERT_FALSE(theirs.empty());
  EXPECT_EQ(expected, theirs);
  // Again, now with the encoder output from the cache: still the same answer.
  const json cached = post_json(port(), image_body(photo_url_, "Once upon a time", 32));
  EXPECT_EQ(cached["choices"][0]["message"]["content"].get<std::string>(), theirs);
}

// Fully generated models (random weights, the chat template inside the
// GGUF): a llama text model with the generated projector, and a gemma3 text
// model with ggml's own tinygemma3 projector. Same answer as the CLI.
class GeneratedVisionModels : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(GeneratedVisionModels, SameAnswerAsLlamaMtmdCli) {
  const auto& [model, mmproj] = GetParam();
  REQUIRE_MODEL(model);
  REQUIRE_MODEL(mmproj);
  REQUIRE_MODEL(photo_path());
  ServerProcess server("vision:\n  model_path: " + model + "\n  mmproj_path: " + mmproj +
                           "\n  parallel: 2\n  max_model_len: 1024\n",
                       "vision");
  wait_until_loaded(server.port());
  const std::string photo = "data:image/jpeg;base64," + base64(read_file(photo_path()));
  for (const std::string prompt : {"Once upon a time", "The dog ran"}) {
    const json ours = post_json(server.port(), image_body(photo, prompt, 16));
    const std::string expected = ours["choices"][0]["message"]["content"];
    ASSERT_FALSE(expected.empty()) << ours;
    EXPECT_EQ(expected, mtmd_cli_answer(model, mmproj, prompt, 16, expected)) << prompt;
  }
}

INSTANTIATE_TEST_SUITE_P(Generated, GeneratedVisionModels,
                         ::testing::Values(std::make_pair(std::string(TINY_LLAMA), std::string(TINY_MMPROJ)),
                                           std::make_pair(std::string(TINY_GEMMA3),
                                                          models_dir() + "/mmproj-tinygemma3.gguf")),
                         [](const auto& info) { return info.index == 0 ? "llama" : "gemma3"; });

TEST(VisionChatLimits, ShutdownCutsAGenerationPastTheGracePeriodCleanly) {
  REQUIRE_MODEL(stories_model());
  ServerProcess server(vision_config(1, 4) + "server: {shutdown_grace_period: 1ms}\n", "vision");
  wait_until_loaded(server.port());
  Connection streaming(server.port());
  ASSERT_TRUE(start_streamed_answer(streaming, 950));
  server.signal(SIGTERM);
  const auto code = server.wait_exit(std::chrono::seconds(10));
  ASSERT_TRUE(code.has_value()) << server.log();
  EXPECT_EQ(*code, 0) << server.log(); // no crash while the engine stops with a request in flight
}

TEST(VisionLoad8Bit, QuantizesOnceIntoTheModelCacheAndReusesIt) {
  REQUIRE_MODEL(stories_model());
  const std::string models = make_temp_dir("mmserve-models");
  const std::map<std::string, std::string> env = {
      {"MODEL_PATH", stories_model()}, {"LOAD_8BIT", "true"}, {"MMSERVE_MODELS", models}};
  const std::string q8 = models + "/cache/stories260K.q8_0.gguf";
  {
    ServerProcess server("vision: {parallel: 1, max_model_len: 512}\n", "vision", env);
    wait_until_loaded(server.port());
    EXPECT_TRUE(std::filesystem::exists(q8)) << server.log();
    EXPECT_LT(std::filesystem::file_size(q8), std::filesystem::file_size(stories_model()) / 2);
    EXPECT_NE(server.log().find("converting to Q8_0:"), std::string::npos) << server.log(); // progress lines
    EXPECT_EQ(post_json(server.port(), chat_body("Once upon a time", 8))["usage"]["completion_tokens"], 8);
  }
  ServerProcess again("vision: {parallel: 1, max_model_len: 512}\n", "vision", env);
  wait_until_loaded(again.port());
  EXPECT_NE(again.log().find("using the Q8_0 copy in the model cache"), std::string::npos) << again.log();
  EXPECT_EQ(again.log().find("converting '"), std::string::npos) << again.log();
  std::filesystem::remove_all(models);
}

TEST(VisionDtype, HalfConvertsTheWeightsOnceLikeVllm) {
  REQUIRE_MODEL(stories_model());
  const std::string models = make_temp_dir("mmserve-models");
  const std::map<std::string, std::string> env = {{"MODEL_PATH", stories_model()}, {"MMSERVE_MODELS", models}};
  const std::string f16 = models + "/cache/stories260K.f16.gguf";
  ServerProcess server("vision: {parallel: 1, max_model_len: 512}\n", "vision", env, {"--dtype", "half"});
  wait_until_loaded(server.port());
  ASSERT_TRUE(std::filesystem::exists(f16)) << server.log();
  // The 2-D weights are now 2 bytes each (norms stay f32): well under the f32 file.
  EXPECT_LT(std::filesystem::file_size(f16), std::filesystem::file_size(stories_model()) * 3 / 4);
  EXPECT_NE(server.log().find("converting to F16:"), std::string::npos) << server.log();
  const json answer = post_json(server.port(), chat_body("Once upon a time", 8));
  EXPECT_EQ(answer["usage"]["completion_tokens"], 8);
  std::filesystem::remove_all(models);
}

TEST(VisionChatLimits, RequestTimeoutStopsAGenerationWith504) {
  REQUIRE_MODEL(stories_model());
  ServerProcess server(vision_config(1, 4) + "server: {request_timeout: 150ms}\n", "vision");
  wait_until_loaded(server.port());
  // About 950 tokens take far longer than 150 ms, even on this tiny model.
  const json error = post_json(server.port(), chat_body("Once upon a time", 950), 504)["error"];
  EXPECT_EQ(error["code"], "timeout");
  EXPECT_EQ(error["type"], "server_error");
  // The abandoned generation stopped: the token counter stands still, short of 950.
  const auto tokens_so_far = [&] { return tokens_generated(server.port()).value_or(0.0); };
  // The slot notices the cancellation at its next step, which a loaded
  // machine may reach late: wait until the counter stands still, then check
  // it stopped short of the 950 tokens asked for.
  double settled = -1;
  for (int i = 0; i < 20; ++i) {
    const double before = tokens_so_far();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    if (tokens_so_far() == before) {
      settled = before;
      break;
    }
  }
  ASSERT_GE(settled, 0.0) << "the token counter never stood still";
  EXPECT_LT(settled, 950.0);
}

TEST_F(VisionChat, JsonObjectResponseFormatConstrainsTheOutput) {
  const json answer =
      post_json(port(), chat_body("Once upon a time", 200, {{"response_format", {{"type", "json_object"}}}}));
  const std::string content = answer["choices"][0]["message"]["content"];
  ASSERT_FALSE(content.empty());
  // A story model left alone writes prose; under the grammar it can only write JSON.
  const auto first = content.find_first_not_of(" \t\n");
  ASSERT_NE(first, std::string::npos);
  EXPECT_EQ(content[first], '{') << content;
  if (answer["choices"][0]["finish_reason"] == "stop") {
    const json parsed = json::parse(content);
    EXPECT_TRUE(parsed.is_object()) << content;
  }
  const std::string prose = post_json(port(), chat_body("Once upon a time", 20))["choices"][0]["message"]["content"];
  EXPECT_NE(prose.find_first_not_of(" \t\n") == std::string::npos ? ' ' : prose[prose.find_first_not_of(" \t\n")], '{');
}
