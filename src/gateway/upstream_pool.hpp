// A pool of upstream endpoints for one gateway pool (a Kubernetes Service):
// names resolved to addresses again every resolve_interval, kept-alive
// connections per endpoint, least-outstanding-requests choice, active health
// checks on /readyz and passive ejection after consecutive failures with an
// exponential back-off.
#pragma once

#include "core/config.hpp"
#include "core/http_exchange.hpp"
#include "core/server_metrics.hpp"
#include "core/task.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace mmserve::gateway {

namespace net = boost::asio;
namespace beast = boost::beast;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

// One kept-alive HTTP/1.1 connection to an endpoint, on one I/O thread
// (`deadlines` is that thread's sweeper).
struct UpstreamConnection {
  UpstreamConnection(http::IoExecutor executor, http::DeadlineSweeper& deadlines)
      : stream(std::move(executor)), deadline(deadlines, stream) {}
  http::TcpSocket stream;
  // Bounds each operation (connect, send, each read); lifted while the connection idles.
  http::IoDeadline deadline;
  beast::flat_buffer buffer;
  // Response bodies pass through here; kept with the connection so that a
  // request costs no fresh allocation (and no zeroing) of it.
  std::unique_ptr<char[]> relay_buffer;
  Clock::time_point idle_since;
  bool reused = false;
};

// One address of a pool.
struct Endpoint {
  tcp::endpoint address;
  std::string label; // "10.1.2.3:8000 (llava-service)"
  std::atomic<int> outstanding{0};
  // Written under the pool's mutex; atomic so that a success with nothing
  // to reset (nearly every request) can skip the lock.
  std::atomic<int> consecutive_failures{0};
  std::atomic<int> ejections{0};
  // The rest is guarded by the pool's mutex.
  bool healthy = true; // the last active health check (true until one says otherwise)
  Clock::time_point ejected_until{};
  std::vector<std::unique_ptr<UpstreamConnection>> idle;
};

class UpstreamPool;

// An endpoint chosen for one request; its outstanding count is held until the lease ends.
class Lease {
public:
  Lease(UpstreamPool& pool, std::shared_ptr<Endpoint> endpoint);
  ~Lease();
  Lease(Lease&& other) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  Lease& operator=(Lease&& other) noexcept;
  Endpoint& endpoint() const { return *endpoint_; }

private:
  void release();
  UpstreamPool* pool_;
  std::shared_ptr<Endpoint> endpoint_;
};

class UpstreamPool {
public:
  UpstreamPool(std::string name, const std::vector<std::string>& urls, const GatewayConfig& config,
               net::io_context& ioc, ServerMetrics& metrics);
  ~UpstreamPool();
  UpstreamPool(const UpstreamPool&) = delete;
  UpstreamPool& operator=(const UpstreamPool&) = delete;

  const std::string& name() const { return name_; }
  // Starts resolving again and health checking, on the server's io_context.
  void start();
  void stop();

  // The usable endpoint with the fewest outstanding requests, skipping
  // `tried`; nullopt when none is usable.
  std::optional<Lease> pick(const std::set<const Endpoint*>& tried);
  // A kept-alive connection to the endpoint, still open and driven by
  // `executor` (the asking request's I/O context), or nullptr.
  std::unique_ptr<UpstreamConnection> take_idle(Endpoint& endpoint, const http::IoExecutor& executor);
  void give_back(Endpoint& endpoint, std::unique_ptr<UpstreamConnection> connection);
  void report_success(Endpoint& endpoint);
  // `kind`: connect, timeout, send, read (the metric's label).
  void report_failure(Endpoint& endpoint, const std::string& kind);

  // Why no endpoint is usable, for the 503's message, and seconds until one may be.
  std::string unavailable_reason() const;
  int retry_after_seconds() const;
  size_t endpoint_count() const;
  net::io_context& io_context() { return ioc_; }
  const GatewayConfig& config() const { return config_; }

private:
  friend class Lease;
  struct Target {
    UpstreamAddress address;
    bool literal = false; // an IP address: never resolved again
  };
  void resolve_now_blocking();
  // New addresses for a target (endpoints whose address stays keep their state); on error, the old ones stay.
  void apply_resolution(const Target& target, const boost::system::error_code& ec,
                        const tcp::resolver::results_type& results);
  Task<void> resolve_loop();
  Task<void> health_loop();
  Task<bool> check_health(tcp::endpoint address);
  void update_gauges();

  const std::string name_;
  const GatewayConfig& config_;
  net::io_context& ioc_;
  ServerMetrics& metrics_;
  metrics::Gauge& in_flight_; // this pool's series, found once
  std::vector<Target> targets_;
  mutable std::mutex mutex_;
  // Per target: its current endpoints. An endpoint dropped by DNS lives on
  // while a lease holds it.
  std::vector<std::vector<std::shared_ptr<Endpoint>>> endpoints_;
  std::string last_resolve_error_;
  size_t next_start_ = 0; // rotates ties between equally loaded endpoints
  std::shared_ptr<std::atomic<bool>> stopped_ = std::make_shared<std::atomic<bool>>(false);
  std::shared_ptr<net::steady_timer> resolve_timer_;
  std::shared_ptr<net::steady_timer> health_timer_;
};

} // namespace mmserve::gateway
