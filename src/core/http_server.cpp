#include "core/http_server.hpp"

#include "core/logging.hpp"
#include "core/task.hpp"
#include "core/version.hpp"
#include "storage/digest.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <array>
#include <optional>
#include <random>

namespace mmserve::http {

using tcp = net::ip::tcp;

struct HttpServer::Connection {
  TcpSocket* stream = nullptr;
  std::atomic<bool> idle{true};
};

namespace {

// The request metrics' series an I/O thread has counted into, found again
// without the families' lock, which every thread would otherwise take (and
// pass between cores) twice per request.
class RequestSeriesCache {
public:
  struct Series {
    metrics::Counter& requests;
    metrics::Histogram& duration;
  };
  Series find(ServerMetrics& metrics, std::string_view method, std::string_view route, unsigned status) {
    for (const auto& entry : entries_) {
      if (entry.status == status && entry.route == route && entry.method == method)
        return {*entry.requests, *entry.duration};
    }
    const std::string code = std::to_string(status);
    auto& requests = metrics.http_requests_total.labels({method, route, code});
    auto& duration = metrics.http_request_duration_seconds.labels({method, route});
    // Bounded: odd methods and codes past the limit are found the slow way.
    if (entries_.size() < kMaxEntries)
      entries_.push_back({std::string(method), std::string(route), status, &requests, &duration});
    return {requests, duration};
  }

private:
  static constexpr size_t kMaxEntries = 64;
  struct Entry {
    std::string method;
    std::string route;
    unsigned status;
    metrics::Counter* requests;
    metrics::Histogram* duration;
  };
  std::vector<Entry> entries_;
};

} // namespace

struct HttpServer::IoThread {
  explicit IoThread(net::io_context& context) : hangups(context), deadlines(context) {}
  HangupSweeper hangups;
  DeadlineSweeper deadlines;
  RequestSeriesCache series;
};

namespace {

bool is_quiet_close(const boost::system::error_code& ec) {
  return ec == bhttp::error::end_of_stream || ec == net::error::eof || ec == net::error::connection_reset ||
         ec == net::error::operation_aborted || ec == beast::error::timeout || ec == net::error::broken_pipe ||
         ec == net::error::bad_descriptor || ec == bhttp::error::partial_message;
}

std::chrono::milliseconds to_millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
}

// Answers a request that never became an exchange (unparseable, or refused
// at the door) and ends the connection.
Task<void> write_error_and_close(TcpSocket& stream, IoDeadline& deadline, const ApiError& error,
                                 const std::string& request_id) {
  bhttp::response<bhttp::string_body> response{static_cast<bhttp::status>(error.status()), 11};
  response.set(bhttp::field::server, std::string("mmserve/") + kVersion);
  response.set(bhttp::field::content_type, "application/json");
  response.set("X-Request-Id", request_id);
  if (error.retry_after_seconds() > 0)
    response.set(bhttp::field::retry_after, std::to_string(error.retry_after_seconds()));
  response.body() = error.to_json().dump() + "\n";
  response.prepare_payload();
  response.keep_alive(false);
  boost::system::error_code ec;
  deadline.expires_after(std::chrono::seconds(5));
  co_await bhttp::async_write(stream, response, net::redirect_error(use_task, ec));
  deadline.lift();
}

// After answering without reading the whole body (a 413, say), closing at
// once could reset the connection before the client reads the answer. Stop
// sending, then read and discard for a bounded time and size, then close.
Task<void> lingering_close(TcpSocket& stream, IoDeadline& deadline) {
  boost::system::error_code ec;
  stream.shutdown(tcp::socket::shutdown_send, ec);
  std::array<char, size_t{16} * 1024> discard{};
  size_t total = 0;
  deadline.expires_after(std::chrono::seconds(2));
  while (total < (4u << 20)) {
    const size_t n = co_await stream.async_read_some(net::buffer(discard), net::redirect_error(use_task, ec));
    if (ec) break;
    total += n;
  }
  deadline.lift();
  stream.close(ec);
}

} // namespace

std::string choose_request_id(std::string_view client_value) {
  const bool sane = !client_value.empty() && client_value.size() <= 128 &&
                    std::all_of(client_value.begin(), client_value.end(), [](char c) {
                      return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
                             c == ':' || c == '/' || c == '+' || c == '=';
                    });
  if (sane) return std::string(client_value);
  thread_local std::mt19937_64 random{std::random_device{}()};
  // Hex of the raw bits (no fmt: its format-string parsing cost more than the random numbers).
  const std::array<uint64_t, 2> bits{random(), random()};
  return storage::to_hex(std::string_view(reinterpret_cast<const char*>(bits.data()), sizeof(bits)));
}

HttpServer::HttpServer(const ServerConfig& config, bool access_log, Router& router, ServerMetrics& metrics)
    : config_(config), access_log_(access_log), router_(router), metrics_(metrics),
      in_flight_(metrics.http_requests_in_flight.labels({})), ioc_(1), acceptor_(ioc_) {
  for (int i = 1; i < config.io_threads; ++i)
    more_contexts_.push_back(std::make_unique<net::io_context>(1));
  for (size_t i = 0; i <= more_contexts_.size(); ++i)
    io_threads_.push_back(std::make_unique<IoThread>(context(i)));
}

size_t HttpServer::next_context() {
  return next_context_++ % (more_contexts_.size() + 1);
}

void HttpServer::stop() {
  ioc_.stop();
  for (auto& context : more_contexts_)
    context->stop();
}

HttpServer::~HttpServer() = default;

void HttpServer::listen() {
  boost::system::error_code ec;
  const auto address = net::ip::make_address(config_.host, ec);
  tcp::endpoint endpoint;
  if (ec) {
    // A host name: resolve it (e.g. "localhost").
    tcp::resolver resolver(ioc_);
    auto results = resolver.resolve(config_.host, std::to_string(config_.port), ec);
    if (ec || results.empty()) {
      throw std::runtime_error(fmt::format("cannot resolve server.host '{}': {}", config_.host, ec.message()));
    }
    endpoint = results.begin()->endpoint();
  } else {
    endpoint = tcp::endpoint(address, config_.port);
  }
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    throw std::runtime_error(fmt::format("cannot listen on {}:{}: {}", config_.host, config_.port, ec.message()));
  }
  bound_port_ = acceptor_.local_endpoint().port();
}

void HttpServer::run() {
  net::co_spawn(ioc_, accept_loop(), net::detached);
  std::vector<std::thread> threads;
  std::vector<net::executor_work_guard<net::io_context::executor_type>> keep_running;
  for (auto& context : more_contexts_) {
    keep_running.push_back(net::make_work_guard(*context));
    threads.emplace_back([&context] { context->run(); });
  }
  ioc_.run();
  // The first context stops when draining ends (or on a second signal): so do the others.
  stop();
  for (auto& thread : threads)
    thread.join();
}

Task<void> HttpServer::accept_loop() {
  for (;;) {
    boost::system::error_code ec;
    const size_t index = next_context();
    TcpSocket socket(context(index));
    co_await acceptor_.async_accept(socket, net::redirect_error(use_task, ec));
    if (ec) {
      if (ec == net::error::operation_aborted || !acceptor_.is_open()) co_return;
      spdlog::warn("accept failed: {}", ec.message());
      // Out of descriptors and the like: back off instead of spinning.
      net::steady_timer pause(co_await net::this_coro::executor, std::chrono::milliseconds(50));
      co_await pause.async_wait(net::redirect_error(use_task, ec));
      continue;
    }
    auto executor = socket.get_executor();
    if (open_connections_.load() >= static_cast<size_t>(config_.max_connections)) {
      net::co_spawn(executor, refuse_connection(std::move(socket), *io_threads_[index]), net::detached);
    } else {
      net::co_spawn(executor, serve_connection(std::move(socket), *io_threads_[index]), net::detached);
    }
  }
}

Task<void> HttpServer::refuse_connection(TcpSocket stream, IoThread& thread) {
  IoDeadline deadline(thread.deadlines, stream);
  co_await write_error_and_close(
      stream, deadline,
      ApiError::unavailable(fmt::format("Server is at its limit of {} connections.", config_.max_connections), 1,
                            "too_many_connections"),
      choose_request_id({}));
  co_await lingering_close(stream, deadline);
}

Task<void> HttpServer::serve_connection(TcpSocket stream, IoThread& thread) {
  boost::system::error_code ec;
  const auto peer = stream.remote_endpoint(ec);
  const std::string remote = ec ? std::string("unknown") : peer.address().to_string();
  // Responses go out in several writes (head, chunks, SSE events): without
  // TCP_NODELAY, Nagle's algorithm holds each small write for the client's
  // delayed ACK (40 ms).
  stream.set_option(tcp::no_delay(true), ec);
  IoDeadline deadline(thread.deadlines, stream);
  beast::flat_buffer buffer;

  auto connection = std::make_shared<Connection>();
  connection->stream = &stream;
  uint64_t id = 0;
  {
    std::lock_guard lock(connections_mutex_);
    id = ++next_connection_id_;
    connections_[id] = connection;
  }
  ++open_connections_;
  metrics_.http_connections_open.labels({}).inc();

  bool unread_body = false;
  for (;;) {
    std::optional<RequestParser> parser;
    parser.emplace();
    parser->header_limit(static_cast<uint32_t>(std::min<uint64_t>(config_.max_header_bytes, UINT32_MAX)));
    parser->body_limit(std::numeric_limits<uint64_t>::max()); // enforced per exchange, with a JSON 413
    connection->idle = true;
    if (draining_) break;
    deadline.expires_after(to_millis(config_.idle_timeout_s));
    co_await bhttp::async_read_header(stream, buffer, *parser, net::redirect_error(use_task, ec));
    ec = deadline.settle(ec);
    connection->idle = false;
    if (ec) {
      if (ec == bhttp::error::header_limit) {
        co_await write_error_and_close(
            stream, deadline,
            ApiError::header_too_large(
                fmt::format("Request headers are larger than the limit of {} bytes.", config_.max_header_bytes)),
            choose_request_id({}));
        unread_body = true;
      } else if (!is_quiet_close(ec) && buffer.size() > 0) {
        co_await write_error_and_close(
            stream, deadline,
            ApiError::bad_request("Malformed HTTP request: " + ec.message(), std::nullopt, "malformed_http"),
            choose_request_id({}));
        unread_body = true;
      }
      break;
    }
    const bool keep_alive = co_await handle_request(stream, deadline, buffer, *parser, remote, thread);
    if (!keep_alive) {
      unread_body = !parser->is_done();
      break;
    }
  }

  if (unread_body) {
    co_await lingering_close(stream, deadline);
  } else {
    stream.shutdown(tcp::socket::shutdown_both, ec);
    stream.close(ec);
  }
  {
    std::lock_guard lock(connections_mutex_);
    connections_.erase(id);
  }
  --open_connections_;
  metrics_.http_connections_open.labels({}).dec();
}

Task<bool> HttpServer::handle_request(TcpSocket& stream, IoDeadline& deadline, beast::flat_buffer& buffer,
                                      RequestParser& parser, const std::string& remote, IoThread& thread) {
  const auto started = Clock::now();
  const auto client_id = parser.get().find("X-Request-Id");
  const std::string request_id =
      choose_request_id(client_id == parser.get().end() ? std::string_view() : std::string_view(client_id->value()));
  ExchangeLimits limits;
  limits.max_body_bytes = config_.max_body_bytes;
  limits.deadline = started + to_millis(config_.request_timeout_s);
  limits.io_timeout = to_millis(std::min(config_.idle_timeout_s, config_.request_timeout_s));
  HttpExchange exchange(stream, deadline, buffer, parser, request_id, remote, limits, draining_, thread.hangups);

  ++active_requests_;
  in_flight_.inc();

  const std::string method(exchange.method_string());
  // Matched only when the front (the gateway) leaves the request to this process's routes.
  std::optional<RouteMatch> match;
  auto match_route = [&]() -> const RouteMatch& {
    if (!match) {
      match = router_.match(method, exchange.path());
      // Views, not a std::string temporary: the label must outlive the exchange.
      if (exchange.route_label().empty())
        exchange.set_route_label(match->route ? std::string_view(match->route->pattern)
                                              : std::string_view("unmatched"));
    }
    return *match;
  };

  std::optional<ApiError> failure;
  try {
    // Refuse an oversize body from its Content-Length, before reading it.
    if (const auto length = exchange.content_length(); length && *length > exchange.body_limit()) {
      throw ApiError::payload_too_large(fmt::format("Request body of {} bytes is larger than the limit of {} bytes.",
                                                    *length, exchange.body_limit()));
    }
    bool answered_by_front = false;
    if (front_) answered_by_front = co_await front_(exchange);
    if (answered_by_front) {
      if (!exchange.response_started()) throw ApiError::internal("The gateway produced no response.");
    } else if (!match_route().route) {
      if (!match->allowed_methods.empty()) {
        exchange.set_header("Allow", fmt::format("{}", fmt::join(match->allowed_methods, ", ")));
        throw ApiError::method_not_allowed(fmt::format("Method {} is not allowed for {} (allowed: {}).", method,
                                                       exchange.path(), fmt::join(match->allowed_methods, ", ")));
      }
      throw ApiError::not_found(
          fmt::format("Unknown request URL: {} {}. See docs/api.md for the endpoints.", method, exchange.path()),
          "unknown_url");
    } else {
      exchange.set_path_params(match->params);
      co_await match->route->handler(exchange);
      if (!exchange.response_started()) throw ApiError::internal("The handler produced no response.");
    }
  } catch (const ApiError& error) {
    failure = error;
  } catch (const ClientGone& gone) {
    exchange.force_close();
    spdlog::debug("request {}: {}", request_id, gone.what());
  } catch (const std::exception& error) {
    spdlog::error("request {} {} {} failed: {}", request_id, method, exchange.path(), error.what());
    failure = ApiError::internal("Internal server error (request id " + request_id + ").");
  }
  if (failure) {
    if (!exchange.response_started()) {
      try {
        co_await exchange.respond_error(*failure);
      } catch (const ClientGone&) {
        exchange.force_close();
      }
    } else {
      // Too late for a status code: the stream is cut so the client sees an error.
      exchange.force_close();
      spdlog::warn("request {}: error after the response started: {}", request_id, failure->what());
    }
  }
  if (!exchange.response_finished()) exchange.force_close();

  if (exchange.route_label().empty()) match_route(); // refused by the front before any route was chosen
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  const unsigned status = exchange.response_started() ? exchange.status() : 499; // 499: client closed request
  const std::string_view route = exchange.route_label();
  const auto series = thread.series.find(metrics_, method, route, status);
  series.requests.inc();
  series.duration.observe(seconds);
  in_flight_.dec();
  if (access_log_) {
    log_event(spdlog::level::info, "request",
              {{"request_id", request_id},
               {"remote", remote},
               {"method", method},
               {"path", std::string(exchange.path())},
               {"route", route},
               {"status", status},
               {"bytes_in", exchange.body_bytes_read()},
               {"bytes_out", exchange.bytes_sent()},
               {"duration_ms", std::round(seconds * 1e5) / 100.0}});
  }
  const bool keep_alive = exchange.keep_alive();
  --active_requests_;
  co_return keep_alive;
}

void HttpServer::drain(std::chrono::milliseconds grace) {
  net::post(acceptor_.get_executor(), [this, grace] {
    if (draining_.exchange(true)) return;
    boost::system::error_code ec;
    acceptor_.close(ec);
    spdlog::info("draining: stopped accepting; {} request(s) in flight, grace period {} ms", active_requests_.load(),
                 grace.count());
    close_idle_connections();
    net::co_spawn(ioc_, watch_drain(std::chrono::steady_clock::now() + grace), net::detached);
  });
}

void HttpServer::close_idle_connections() {
  std::vector<std::weak_ptr<Connection>> snapshot;
  {
    std::lock_guard lock(connections_mutex_);
    for (const auto& [id, weak] : connections_)
      snapshot.push_back(weak);
  }
  for (auto& weak : snapshot) {
    auto connection = weak.lock();
    if (!connection) continue;
    net::post(connection->stream->get_executor(), [weak] {
      if (auto live = weak.lock(); live && live->idle) live->stream->cancel();
    });
  }
}

Task<void> HttpServer::watch_drain(std::chrono::steady_clock::time_point deadline) {
  net::steady_timer timer(co_await net::this_coro::executor);
  for (;;) {
    if (active_requests_.load() == 0) {
      spdlog::info("draining: all requests finished");
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      spdlog::warn("draining: grace period over, {} request(s) still in flight are cut off", active_requests_.load());
      break;
    }
    // Connections that went idle after the first sweep.
    close_idle_connections();
    timer.expires_after(std::chrono::milliseconds(20));
    boost::system::error_code ec;
    co_await timer.async_wait(net::redirect_error(use_task, ec));
  }
  stop();
}

} // namespace mmserve::http
