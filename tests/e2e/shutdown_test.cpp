// Graceful shutdown: SIGTERM during a slow request.
#include "test_server.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <thread>

using namespace mmserve::test;

TEST(Shutdown, SigtermLetsASlowRequestFinishThenExitsZero) {
  ServerProcess server("server: {shutdown_grace_period: 20s}\n");
  const std::string body = R"({"messages":[{"role":"user","content":"Once upon a time there was a slow client"}]})";
  Connection slow(server.port());
  slow.send_raw("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                std::to_string(body.size()) + "\r\n\r\n" + body.substr(0, 10));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));

  server.signal(SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE(server.running()) << "exited with a request in flight:\n" << server.log();
  EXPECT_FALSE(can_connect(server.port())) << "new connections must be refused while draining";

  // The rest of the body trickles in over a second.
  for (size_t offset = 10; offset < body.size(); offset += 20) {
    slow.send_raw(body.substr(offset, 20));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  const auto response = slow.read_response();
  // The request was answered in full (the model is not loaded: a complete 503 JSON body).
  EXPECT_EQ(response.status, 503u);
  const auto parsed = nlohmann::json::parse(response.body);
  EXPECT_EQ(parsed["error"]["code"], "model_not_loaded");
  EXPECT_EQ(response.header("connection"), "close");

  const auto code = server.wait_exit(std::chrono::seconds(10));
  ASSERT_TRUE(code.has_value()) << server.log();
  EXPECT_EQ(*code, 0) << server.log();
  EXPECT_NE(server.log().find("draining: all requests finished"), std::string::npos) << server.log();
}

TEST(Shutdown, IdleServerExitsPromptlyOnSigint) {
  ServerProcess server("");
  Connection idle(server.port());
  EXPECT_EQ(idle.request("GET", "/healthz").status, 200u); // a keep-alive connection left open
  const auto started = std::chrono::steady_clock::now();
  server.signal(SIGINT);
  const auto code = server.wait_exit(std::chrono::seconds(10));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0);
  // Idle keep-alive connections do not hold the drain for the grace period.
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(5));
  EXPECT_TRUE(idle.closed_by_peer(std::chrono::seconds(1)));
}
