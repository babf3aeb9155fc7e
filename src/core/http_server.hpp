// The HTTP/1.1 server every role runs: Boost.Beast on Asio C++20 coroutines,
// keep-alive, chunked bodies both ways, per-request deadlines, request IDs,
// access log, metrics, connection and size limits, graceful drain.
#pragma once

#include "core/config.hpp"
#include "core/router.hpp"
#include "core/server_metrics.hpp"
#include "core/task.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace mmserve::http {

class HttpServer {
public:
  HttpServer(const ServerConfig& config, bool access_log, Router& router, ServerMetrics& metrics);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and listens; throws std::runtime_error naming the address on failure.
  void listen();
  uint16_t port() const { return bound_port_; }

  // Serves on the configured number of threads until drain() has finished.
  void run();

  // Graceful shutdown, callable from any thread: stop accepting, close idle
  // keep-alive connections, let in-flight requests finish for up to
  // `grace`, then stop; run() then returns.
  void drain(std::chrono::milliseconds grace);
  bool draining() const { return draining_.load(); }
  const std::atomic<bool>& draining_flag() const { return draining_; }
  size_t active_requests() const { return active_requests_.load(); }

  // The first I/O context: the listener, signals, timers of the gateway's pools.
  net::io_context& io_context() { return ioc_; }
  // Stops every I/O context at once (a second signal).
  void stop();

  // Runs before the router for every request (the gateway: access control,
  // CORS, proxying). Returns true when it answered the request itself.
  using FrontHandler = std::function<Task<bool>(HttpExchange&)>;
  void set_front(FrontHandler front) { front_ = std::move(front); }

private:
  struct Connection;
  struct IoThread;

  Task<void> accept_loop();
  Task<void> serve_connection(TcpSocket stream, IoThread& thread);
  Task<void> refuse_connection(TcpSocket stream, IoThread& thread);
  Task<bool> handle_request(TcpSocket& stream, IoDeadline& deadline, beast::flat_buffer& buffer, RequestParser& parser,
                            const std::string& remote, IoThread& thread);
  Task<void> watch_drain(std::chrono::steady_clock::time_point deadline);
  void close_idle_connections();

  const ServerConfig config_;
  const bool access_log_;
  Router& router_;
  ServerMetrics& metrics_;
  metrics::Gauge& in_flight_; // found once, changed per request
  FrontHandler front_;
  // The next I/O context for a new connection, round robin: its index.
  size_t next_context();
  net::io_context& context(size_t index) { return index == 0 ? ioc_ : *more_contexts_[index - 1]; }

  // One single-threaded I/O context per io thread: a connection lives on
  // one of them from accept to close, so it needs no strand and its
  // completions never hop between threads.
  net::io_context ioc_;
  std::vector<std::unique_ptr<net::io_context>> more_contexts_;
  std::atomic<size_t> next_context_{0};
  // What each I/O thread keeps for the connections on it: same index as
  // its context (destroyed before the contexts).
  std::vector<std::unique_ptr<IoThread>> io_threads_;
  net::ip::tcp::acceptor acceptor_;
  uint16_t bound_port_ = 0;
  std::atomic<bool> draining_{false};
  std::atomic<size_t> active_requests_{0};
  std::atomic<size_t> open_connections_{0};
  std::mutex connections_mutex_;
  uint64_t next_connection_id_ = 0;
  std::unordered_map<uint64_t, std::weak_ptr<Connection>> connections_;
};

// A random 128-bit id in hex, or the client's X-Request-Id when it is sane.
std::string choose_request_id(std::string_view client_value);

} // namespace mmserve::http
