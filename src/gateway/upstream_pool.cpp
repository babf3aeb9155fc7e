#include "gateway/upstream_pool.hpp"

#include "core/logging.hpp"
#include "core/task.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <poll.h>

#include <algorithm>
#include <cmath>

namespace mmserve::gateway {
namespace bhttp = boost::beast::http;

namespace {

std::chrono::milliseconds millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
}

std::string endpoint_label(const tcp::endpoint& address, const std::string& host) {
  const std::string ip =
      address.address().is_v6() ? "[" + address.address().to_string() + "]" : address.address().to_string();
  const std::string text = fmt::format("{}:{}", ip, address.port());
  return host == address.address().to_string() ? text : fmt::format("{} ({})", text, host);
}

// A kept-alive connection the upstream has closed (or sent unexpected bytes
// on) must not carry the next request.
bool still_open(http::TcpSocket& stream) {
  pollfd watch{};
  watch.fd = stream.native_handle();
  watch.events = POLLIN | POLLRDHUP;
  return ::poll(&watch, 1, 0) == 0;
}

} // namespace

Lease::Lease(UpstreamPool& pool, std::shared_ptr<Endpoint> endpoint) : pool_(&pool), endpoint_(std::move(endpoint)) {
  ++endpoint_->outstanding;
  pool_->in_flight_.inc();
}

Lease::Lease(Lease&& other) noexcept : pool_(other.pool_), endpoint_(std::move(other.endpoint_)) {}

Lease& Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    release();
    pool_ = other.pool_;
    endpoint_ = std::move(other.endpoint_);
  }
  return *this;
}

Lease::~Lease() {
  release();
}

void Lease::release() {
  if (!endpoint_) return;
  --endpoint_->outstanding;
  pool_->in_flight_.dec();
  endpoint_.reset();
}

UpstreamPool::UpstreamPool(std::string name, const std::vector<std::string>& urls, const GatewayConfig& config,
                           net::io_context& ioc, ServerMetrics& metrics)
    : name_(std::move(name)), config_(config), ioc_(ioc), metrics_(metrics),
      in_flight_(metrics.upstream_requests_in_flight.labels({name_})) {
  for (const auto& url : urls) {
    const auto address = parse_upstream_url(url);
    if (!address) throw std::invalid_argument("gateway pool " + name_ + ": not an http://host:port URL: " + url);
    boost::system::error_code ec;
    net::ip::make_address(address->host, ec);
    targets_.push_back({*address, !ec});
  }
  endpoints_.resize(targets_.size());
  in_flight_.set(0);
  resolve_now_blocking();
}

UpstreamPool::~UpstreamPool() {
  stop();
}

void UpstreamPool::resolve_now_blocking() {
  tcp::resolver resolver(ioc_);
  for (size_t i = 0; i < targets_.size(); ++i) {
    const auto& target = targets_[i];
    boost::system::error_code ec;
    const auto results = resolver.resolve(target.address.host, std::to_string(target.address.port), ec);
    apply_resolution(target, ec, results);
  }
  update_gauges();
}

void UpstreamPool::apply_resolution(const Target& target, const boost::system::error_code& ec,
                                    const tcp::resolver::results_type& results) {
  const size_t index = static_cast<size_t>(&target - targets_.data());
  std::lock_guard lock(mutex_);
  if (ec) {
    // Keep the last known addresses: a DNS hiccup must not empty the pool.
    last_resolve_error_ = fmt::format("{} did not resolve: {}", target.address.host, ec.message());
    spdlog::warn("gateway pool {}: {}; trying again every {} s", name_, last_resolve_error_,
                 config_.resolve_interval_s);
    return;
  }
  std::vector<tcp::endpoint> addresses;
  for (const auto& entry : results)
    addresses.push_back(entry.endpoint());
  auto& current = endpoints_[index];
  std::vector<std::shared_ptr<Endpoint>> next;
  for (const auto& address : addresses) {
    if (std::any_of(next.begin(), next.end(), [&](const auto& e) { return e->address == address; })) continue;
    const auto kept =
        std::find_if(current.begin(), current.end(), [&](const auto& e) { return e->address == address; });
    if (kept != current.end()) {
      next.push_back(*kept);
      continue;
    }
    auto endpoint = std::make_shared<Endpoint>();
    endpoint->address = address;
    endpoint->label = endpoint_label(address, target.address.host);
    spdlog::info("gateway pool {}: endpoint {} added", name_, endpoint->label);
    next.push_back(std::move(endpoint));
  }
  for (const auto& old : current) {
    if (std::none_of(next.begin(), next.end(), [&](const auto& e) { return e == old; })) {
      spdlog::info("gateway pool {}: endpoint {} removed (no longer resolved)", name_, old->label);
      old->idle.clear();
    }
  }
  current = std::move(next);
  last_resolve_error_.clear();
}

void UpstreamPool::start() {
  stopped_->store(false);
  resolve_timer_ = std::make_shared<net::steady_timer>(ioc_);
  health_timer_ = std::make_shared<net::steady_timer>(ioc_);
  if (std::any_of(targets_.begin(), targets_.end(), [](const Target& t) { return !t.literal; })) {
    net::co_spawn(ioc_, resolve_loop(), net::detached);
  }
  net::co_spawn(ioc_, health_loop(), net::detached);
}

void UpstreamPool::stop() {
  stopped_->store(true);
  if (resolve_timer_) resolve_timer_->cancel();
  if (health_timer_) health_timer_->cancel();
  // After stop the pool holds no I/O object: the loops' frames keep their
  // own timer references, and kept-alive connections (which belong to the
  // server's io_contexts, several of them) close now, while those contexts
  // exist. The pool may then outlive the contexts.
  resolve_timer_.reset();
  health_timer_.reset();
  std::vector<std::unique_ptr<UpstreamConnection>> closing;
  {
    std::lock_guard lock(mutex_);
    for (auto& group : endpoints_) {
      for (auto& endpoint : group) {
        for (auto& connection : endpoint->idle)
          closing.push_back(std::move(connection));
        endpoint->idle.clear();
      }
    }
  }
}

Task<void> UpstreamPool::resolve_loop() {
  const auto stopped = stopped_;
  const auto timer = resolve_timer_;
  tcp::resolver resolver(ioc_);
  while (!stopped->load()) {
    timer->expires_after(millis(config_.resolve_interval_s));
    boost::system::error_code ec;
    co_await timer->async_wait(net::redirect_error(use_task, ec));
    if (stopped->load()) co_return;
    for (const auto& target : targets_) {
      if (target.literal) continue;
      const auto results = co_await resolver.async_resolve(target.address.host, std::to_string(target.address.port),
                                                           net::redirect_error(use_task, ec));
      if (stopped->load()) co_return;
      apply_resolution(target, ec, results);
    }
    update_gauges();
  }
}

Task<bool> UpstreamPool::check_health(tcp::endpoint address) {
  beast::tcp_stream stream(ioc_);
  boost::system::error_code ec;
  const auto timeout = std::min(millis(config_.health_interval_s), millis(std::max(config_.connect_timeout_s, 1.0)));
  stream.expires_after(timeout);
  co_await stream.async_connect(address, net::redirect_error(use_task, ec));
  if (ec) co_return false;
  bhttp::request<bhttp::empty_body> request{bhttp::verb::get, config_.health_path, 11};
  request.set(bhttp::field::host, address.address().to_string());
  request.set(bhttp::field::user_agent, "mmserve-gateway-health-check");
  request.keep_alive(false);
  co_await bhttp::async_write(stream, request, net::redirect_error(use_task, ec));
  if (ec) co_return false;
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(64 * 1024);
  co_await bhttp::async_read(stream, buffer, parser, net::redirect_error(use_task, ec));
  stream.socket().close(ec);
  co_return parser.is_header_done() && parser.get().result_int() == 200;
}

Task<void> UpstreamPool::health_loop() {
  const auto stopped = stopped_;
  const auto timer = health_timer_;
  while (!stopped->load()) {
    std::vector<std::shared_ptr<Endpoint>> all;
    {
      std::lock_guard lock(mutex_);
      for (const auto& group : endpoints_)
        all.insert(all.end(), group.begin(), group.end());
    }
    for (const auto& endpoint : all) {
      const bool healthy = co_await check_health(endpoint->address);
      if (stopped->load()) co_return;
      std::lock_guard lock(mutex_);
      if (healthy != endpoint->healthy) {
        if (healthy)
          spdlog::info("gateway pool {}: endpoint {} is healthy again", name_, endpoint->label);
        else
          spdlog::warn("gateway pool {}: endpoint {} failed its health check ({})", name_, endpoint->label,
                       config_.health_path);
        endpoint->healthy = healthy;
        if (!healthy) endpoint->idle.clear();
      }
    }
    update_gauges();
    timer->expires_after(millis(config_.health_interval_s));
    boost::system::error_code ec;
    co_await timer->async_wait(net::redirect_error(use_task, ec));
  }
}

std::optional<Lease> UpstreamPool::pick(const std::set<const Endpoint*>& tried) {
  const auto now = Clock::now();
  std::lock_guard lock(mutex_);
  size_t total = 0;
  for (const auto& group : endpoints_)
    total += group.size();
  if (total == 0) return std::nullopt;
  // The endpoint at flat index i across the groups (a pool has a handful).
  auto at = [this](size_t i) -> const std::shared_ptr<Endpoint>& {
    for (const auto& group : endpoints_) {
      if (i < group.size()) return group[i];
      i -= group.size();
    }
    throw std::logic_error("endpoint index out of range");
  };
  const std::shared_ptr<Endpoint>* best = nullptr;
  const size_t start = next_start_++ % total;
  for (size_t i = 0; i < total; ++i) {
    const auto& candidate = at((start + i) % total);
    if (tried.contains(candidate.get()) || !candidate->healthy || candidate->ejected_until > now) continue;
    if (!best || candidate->outstanding.load() < (*best)->outstanding.load()) best = &candidate;
  }
  if (!best) return std::nullopt;
  return Lease(*this, *best);
}

std::unique_ptr<UpstreamConnection> UpstreamPool::take_idle(Endpoint& endpoint, const http::IoExecutor& executor) {
  const auto now = Clock::now();
  for (;;) {
    std::unique_ptr<UpstreamConnection> connection;
    {
      std::lock_guard lock(mutex_);
      for (auto it = endpoint.idle.end(); it != endpoint.idle.begin();) {
        --it;
        if ((*it)->stream.get_executor() != executor) continue;
        connection = std::move(*it);
        endpoint.idle.erase(it);
        break;
      }
    }
    if (!connection) return nullptr;
    // Checked outside the lock (a system call): the other I/O threads' requests need it meanwhile.
    if (now - connection->idle_since < millis(config_.idle_connection_timeout_s) && still_open(connection->stream)) {
      connection->reused = true;
      return connection;
    }
  }
}

void UpstreamPool::give_back(Endpoint& endpoint, std::unique_ptr<UpstreamConnection> connection) {
  connection->idle_since = Clock::now();
  connection->deadline.lift();
  std::lock_guard lock(mutex_);
  if (stopped_->load() || !endpoint.healthy || static_cast<int>(endpoint.idle.size()) >= config_.max_idle_connections)
    return;
  // Oldest first out: drop connections idle for too long.
  std::erase_if(endpoint.idle, [&](const auto& c) {
    return connection->idle_since - c->idle_since >= millis(config_.idle_connection_timeout_s);
  });
  endpoint.idle.push_back(std::move(connection));
}

void UpstreamPool::report_success(Endpoint& endpoint) {
  if (endpoint.consecutive_failures.load() == 0 && endpoint.ejections.load() == 0) return;
  std::lock_guard lock(mutex_);
  endpoint.consecutive_failures = 0;
  endpoint.ejections = 0;
}

void UpstreamPool::report_failure(Endpoint& endpoint, const std::string& kind) {
  metrics_.upstream_errors_total.labels({name_, kind}).inc();
  bool ejected = false;
  {
    std::lock_guard lock(mutex_);
    if (++endpoint.consecutive_failures >= config_.max_fails) {
      const double backoff = std::min(config_.eject_max_time_s,
                                      config_.eject_time_s * std::pow(2.0, std::min(endpoint.ejections.load(), 30)));
      endpoint.ejected_until = Clock::now() + millis(backoff);
      ++endpoint.ejections;
      endpoint.consecutive_failures = 0;
      endpoint.idle.clear();
      ejected = true;
      spdlog::warn("gateway pool {}: endpoint {} ejected for {:.3g} s after {} consecutive failures (last: {})", name_,
                   endpoint.label, backoff, config_.max_fails, kind);
    }
  }
  if (ejected) {
    metrics_.upstream_ejections_total.labels({name_}).inc();
    update_gauges();
  }
}

std::string UpstreamPool::unavailable_reason() const {
  std::lock_guard lock(mutex_);
  size_t total = 0, unhealthy = 0, ejected = 0;
  const auto now = Clock::now();
  for (const auto& group : endpoints_) {
    for (const auto& endpoint : group) {
      ++total;
      if (!endpoint->healthy)
        ++unhealthy;
      else if (endpoint->ejected_until > now)
        ++ejected;
    }
  }
  if (total == 0) {
    return fmt::format("pool '{}' has no endpoints{}", name_,
                       last_resolve_error_.empty() ? std::string() : " (" + last_resolve_error_ + ")");
  }
  return fmt::format("pool '{}' has no healthy endpoint ({} of {} failing health checks on {}, {} ejected after "
                     "errors)",
                     name_, unhealthy, total, config_.health_path, ejected);
}

int UpstreamPool::retry_after_seconds() const {
  std::lock_guard lock(mutex_);
  const auto now = Clock::now();
  double soonest = config_.health_interval_s;
  for (const auto& group : endpoints_) {
    for (const auto& endpoint : group) {
      if (endpoint->healthy && endpoint->ejected_until > now)
        soonest = std::min(soonest, std::chrono::duration<double>(endpoint->ejected_until - now).count());
    }
  }
  return std::max(1, static_cast<int>(std::ceil(soonest)));
}

size_t UpstreamPool::endpoint_count() const {
  std::lock_guard lock(mutex_);
  size_t total = 0;
  for (const auto& group : endpoints_)
    total += group.size();
  return total;
}

void UpstreamPool::update_gauges() {
  double usable = 0, unhealthy = 0, ejected = 0;
  {
    std::lock_guard lock(mutex_);
    const auto now = Clock::now();
    for (const auto& group : endpoints_) {
      for (const auto& endpoint : group) {
        if (!endpoint->healthy)
          ++unhealthy;
        else if (endpoint->ejected_until > now)
          ++ejected;
        else
          ++usable;
      }
    }
  }
  metrics_.upstream_endpoints.labels({name_, "usable"}).set(usable);
  metrics_.upstream_endpoints.labels({name_, "unhealthy"}).set(unhealthy);
  metrics_.upstream_endpoints.labels({name_, "ejected"}).set(ejected);
}

} // namespace mmserve::gateway
