// The HTTP core over real sockets against the real binary.
#include "test_server.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <thread>

using namespace mmserve::test;
using nlohmann::json;

namespace {

const char* kSmallLimits = R"(
server:
  max_body_size: 64Ki
  max_header_size: 4Ki
  max_connections: 4
  idle_timeout: 2s
)";

// Asserts the OpenAI error shape and returns the error object.
json expect_openai_error(const Response& response, unsigned status) {
  EXPECT_EQ(response.status, status) << response.body;
  EXPECT_EQ(response.header("content-type"), "application/json");
  const json body = json::parse(response.body);
  EXPECT_TRUE(body.contains("error")) << response.body;
  const json& error = body["error"];
  for (const char* key : {"message", "type", "param", "code"})
    EXPECT_TRUE(error.contains(key)) << key;
  EXPECT_TRUE(error["message"].is_string());
  EXPECT_FALSE(error["message"].get<std::string>().empty());
  return error;
}

void expect_still_serving(uint16_t port) {
  const auto health = request(port, "GET", "/healthz");
  EXPECT_EQ(health.status, 200);
}

const std::string kValidChat = R"({"messages":[{"role":"user","content":"Once upon a time"}]})";

} // namespace

class HttpCore : public ::testing::Test {
protected:
  static void SetUpTestSuite() { server_ = new ServerProcess(kSmallLimits); }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  uint16_t port() const { return server_->port(); }
  static ServerProcess* server_;
};
ServerProcess* HttpCore::server_ = nullptr;

TEST_F(HttpCore, HealthzAndRequestIds) {
  const auto response = request(port(), "GET", "/healthz");
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(json::parse(response.body)["status"], "ok");
  EXPECT_EQ(response.header("x-request-id").size(), 32u);
  const auto echoed = request(port(), "GET", "/healthz", {}, {{"X-Request-Id", "trace-abc-123"}});
  EXPECT_EQ(echoed.header("x-request-id"), "trace-abc-123");
  // An unsafe id (spaces, quotes) is replaced, not echoed into headers and logs.
  const auto replaced = request(port(), "GET", "/healthz", {}, {{"X-Request-Id", "bad id \"x\""}});
  EXPECT_EQ(replaced.header("x-request-id").size(), 32u);
}

TEST_F(HttpCore, ReadyzExplainsMissingModels) {
  const auto response = request(port(), "GET", "/readyz");
  EXPECT_EQ(response.status, 503);
  const json body = json::parse(response.body);
  EXPECT_EQ(body["status"], "not_ready");
  ASSERT_FALSE(body["reasons"].empty());
  bool names_vision = false;
  for (const auto& reason : body["reasons"]) {
    names_vision |= reason.get<std::string>().find("vision.model_path") != std::string::npos;
  }
  EXPECT_TRUE(names_vision) << response.body;
  EXPECT_EQ(body["models"].size(), 3u);
}

TEST_F(HttpCore, ModelsListIsOpenAiShaped) {
  const auto response = request(port(), "GET", "/v1/models");
  ASSERT_EQ(response.status, 200);
  const json body = json::parse(response.body);
  EXPECT_EQ(body["object"], "list");
  ASSERT_EQ(body["data"].size(), 3u);
  for (const auto& model : body["data"]) {
    EXPECT_EQ(model["object"], "model");
    EXPECT_TRUE(model["id"].is_string());
    EXPECT_TRUE(model["created"].is_number_integer());
    EXPECT_EQ(model["owned_by"], "mmserve");
    EXPECT_EQ(model["status"], "missing");
  }
  const auto one = request(port(), "GET", "/v1/models/whisper-base.en");
  EXPECT_EQ(one.status, 200);
  EXPECT_EQ(json::parse(one.body)["service"], "speech");
  expect_openai_error(request(port(), "GET", "/v1/models/no-such-model"), 404);
}

TEST_F(HttpCore, UnknownPathIs404Json) {
  const auto error = expect_openai_error(request(port(), "GET", "/v2/nothing"), 404);
  EXPECT_EQ(error["code"], "unknown_url");
  EXPECT_NE(error["message"].get<std::string>().find("/v2/nothing"), std::string::npos);
  expect_still_serving(port());
}

TEST_F(HttpCore, WrongMethodIs405WithAllow) {
  const auto response = request(port(), "DELETE", "/healthz");
  expect_openai_error(response, 405);
  EXPECT_EQ(response.header("allow"), "GET");
}

TEST_F(HttpCore, MalformedJsonIs400) {
  const auto error = expect_openai_error(
      request(port(), "POST", "/v1/chat/completions", "{\"messages\": [", {{"Content-Type", "application/json"}}), 400);
  EXPECT_EQ(error["code"], "invalid_json");
  expect_openai_error(request(port(), "POST", "/v1/chat/completions", "[1,2]"), 400);
  expect_openai_error(request(port(), "POST", "/v1/chat/completions", ""), 400);
  expect_still_serving(port());
}

TEST_F(HttpCore, InvalidChatFieldsNameTheParameter) {
  const auto error = expect_openai_error(
      request(port(), "POST", "/v1/chat/completions", R"({"messages":[{"role":"user","content":42}]})"), 400);
  EXPECT_EQ(error["param"], "messages[0].content");
  EXPECT_EQ(error["type"], "invalid_request_error");
}

TEST_F(HttpCore, ChatWithoutLoadedModelIs503WithRetryAfter) {
  const auto response = request(port(), "POST", "/v1/chat/vision", kValidChat);
  const auto error = expect_openai_error(response, 503);
  EXPECT_EQ(error["code"], "model_not_loaded");
  EXPECT_FALSE(response.header("retry-after").empty());
  const auto unknown = request(port(), "POST", "/v1/chat/completions",
                               R"({"model":"gpt-7","messages":[{"role":"user","content":"hi"}]})");
  EXPECT_EQ(expect_openai_error(unknown, 404)["code"], "model_not_found");
}

TEST_F(HttpCore, OversizeBodyRejectedBeforeItIsSent) {
  // Headers promise 10 MiB against a 64 KiB limit; not a byte of body is sent,
  // so a 413 can only come from the Content-Length check.
  Connection connection(port());
  connection.send_raw("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 10485760\r\n\r\n");
  const auto response = connection.read_response();
  const auto error = expect_openai_error(response, 413);
  EXPECT_EQ(error["code"], "payload_too_large");
  EXPECT_EQ(response.header("connection"), "close");
  expect_still_serving(port());
}

TEST_F(HttpCore, ChunkedBodyOverLimitIs413) {
  Connection connection(port());
  connection.send_raw("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
  const std::string piece(16 * 1024, 'a');
  Response response;
  bool answered = false;
  try {
    for (int i = 0; i < 8; ++i) { // 128 KiB in chunks, twice the limit
      connection.send_raw("4000\r\n" + piece + "\r\n");
    }
  } catch (const std::exception&) {
    // The server may stop reading and answer before all chunks are written.
  }
  response = connection.read_response();
  answered = true;
  ASSERT_TRUE(answered);
  expect_openai_error(response, 413);
  expect_still_serving(port());
}

TEST_F(HttpCore, ChunkedRequestBodyIsDecoded) {
  Connection connection(port());
  const std::string first = kValidChat.substr(0, 20), second = kValidChat.substr(20);
  char sizes[64];
  std::snprintf(sizes, sizeof sizes, "%zx", first.size());
  std::string raw = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  raw += std::string(sizes) + "\r\n" + first + "\r\n";
  std::snprintf(sizes, sizeof sizes, "%zx", second.size());
  raw += std::string(sizes) + "\r\n" + second + "\r\n0\r\n\r\n";
  connection.send_raw(raw);
  // A valid request reassembled from chunks reaches the model check (503), not the JSON parser (400).
  expect_openai_error(connection.read_response(), 503);
}

TEST_F(HttpCore, KeepAliveServesSeveralRequestsOnOneConnection) {
  Connection connection(port());
  for (int i = 0; i < 5; ++i) {
    const auto response = connection.request("GET", "/healthz");
    EXPECT_EQ(response.status, 200);
    EXPECT_NE(response.header("connection"), "close");
  }
  // An error answer that consumed its body keeps the connection too.
  EXPECT_EQ(connection.request("POST", "/v1/chat/completions", "{bad").status, 400u);
  EXPECT_EQ(connection.request("GET", "/healthz").status, 200u);
}

TEST_F(HttpCore, MalformedHttpIs400AndServerSurvives) {
  Connection connection(port());
  connection.send_raw("THIS IS NOT HTTP\r\n\r\n");
  expect_openai_error(connection.read_response(), 400);
  Connection bad_length(port());
  bad_length.send_raw("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n");
  expect_openai_error(bad_length.read_response(), 400);
  expect_still_serving(port());
}

TEST_F(HttpCore, OversizeHeadersAre431) {
  Connection connection(port());
  connection.send_raw("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(8 * 1024, 'h') + "\r\n\r\n");
  expect_openai_error(connection.read_response(), 431);
  expect_still_serving(port());
}

TEST_F(HttpCore, ClientVanishingMidBodyDoesNotHurt) {
  {
    Connection connection(port());
    connection.send_raw("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"messages\"");
  } // closed with 990 bytes missing
  expect_still_serving(port());
}

TEST_F(HttpCore, IdleKeepAliveConnectionsAreClosed) {
  Connection connection(port());
  EXPECT_EQ(connection.request("GET", "/healthz").status, 200u);
  EXPECT_TRUE(connection.closed_by_peer(std::chrono::seconds(5))); // idle_timeout is 2 s
}

TEST_F(HttpCore, ConnectionLimitAnswers503) {
  // Connections the start-up probes closed are counted until the server has
  // seen them close: wait until only the scrape's own connection is open.
  for (int i = 0; i < 200; ++i) {
    if (request(port(), "GET", "/metrics").body.find("\nhttp_connections_open 1\n") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50)); // and the scrape's own close
  std::vector<std::unique_ptr<Connection>> held;
  for (int i = 0; i < 4; ++i) {
    held.push_back(std::make_unique<Connection>(port()));
    EXPECT_EQ(held.back()->request("GET", "/healthz").status, 200u); // now counted as open
  }
  Connection extra(port());
  extra.send_raw("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  const auto error = expect_openai_error(extra.read_response(), 503);
  EXPECT_EQ(error["code"], "too_many_connections");
  held.clear();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  expect_still_serving(port());
}

TEST(HttpCoreLogging, JsonAccessLogLinesAreValidJson) {
  ServerProcess server("logging: {format: json}\n");
  request(server.port(), "GET", "/healthz", {}, {{"X-Request-Id", "json-log-check"}});
  request(server.port(), "GET", "/v1/models/\"quoted\"");
  server.signal(SIGTERM);
  ASSERT_EQ(server.wait_exit(std::chrono::seconds(10)), 0);
  const std::string log = server.log();
  size_t lines = 0;
  bool saw_request = false;
  size_t start = 0;
  while (start < log.size()) {
    const size_t end = log.find('\n', start);
    const std::string line = log.substr(start, end - start);
    start = end == std::string::npos ? log.size() : end + 1;
    if (line.empty()) continue;
    ++lines;
    const json parsed = json::parse(line); // throws (fails the test) on an invalid line
    EXPECT_TRUE(parsed.contains("level"));
    EXPECT_TRUE(parsed.contains("message"));
    if (parsed.value("request_id", "") == "json-log-check") {
      saw_request = true;
      EXPECT_EQ(parsed["status"], 200);
      EXPECT_EQ(parsed["path"], "/healthz");
    }
  }
  EXPECT_GT(lines, 3u);
  EXPECT_TRUE(saw_request) << log;
}
