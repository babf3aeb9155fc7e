// Test support: a small real HTTP/1.1 server on a loopback port, on its own
// thread, whose routes a test scripts (bytes, redirects, delays, statuses).
// It stands in for the web servers that image URLs point at.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace mmserve::test {

struct ScriptedResponse {
  unsigned status = 200;
  std::map<std::string, std::string> headers;
  std::string body;
  std::chrono::milliseconds delay{0};      // before the response head is sent
  std::optional<uint64_t> declared_length; // a Content-Length other than body.size()
  bool ranges = false;                     // answer "Range: bytes=N-" with 206 and the tail (416 past the end)
};

class StaticHttpServer {
public:
  explicit StaticHttpServer(const std::string& address = "127.0.0.1");
  ~StaticHttpServer();
  StaticHttpServer(const StaticHttpServer&) = delete;
  StaticHttpServer& operator=(const StaticHttpServer&) = delete;

  void route(const std::string& path, ScriptedResponse response);
  uint16_t port() const { return port_; }
  std::string url(const std::string& path) const;
  int hits(const std::string& path);
  // The headers of the last request for `path` (lower-case names).
  std::map<std::string, std::string> last_request_headers(const std::string& path);

private:
  void serve(boost::asio::ip::tcp::socket socket);

  boost::asio::io_context ioc_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::string address_;
  uint16_t port_ = 0;
  std::mutex mutex_;
  std::map<std::string, ScriptedResponse> routes_;
  std::map<std::string, int> hits_;
  std::map<std::string, std::map<std::string, std::string>> last_headers_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

} // namespace mmserve::test
