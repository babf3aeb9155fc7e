#include "core/io_deadline.hpp"

#include <time.h>

namespace mmserve::http {

Clock::time_point coarse_now() {
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
  return Clock::time_point(std::chrono::seconds(now.tv_sec) + std::chrono::nanoseconds(now.tv_nsec));
}

void IoDeadline::expires_at(Clock::time_point when) {
  when_ = when;
  expired_ = false;
  if (!listed()) sweeper_.add(this);
}

boost::system::error_code IoDeadline::settle(boost::system::error_code ec) {
  if (expired_ && ec == net::error::operation_aborted) ec = beast::error::timeout;
  expired_ = false;
  lift();
  return ec;
}

void IoDeadline::lift() {
  if (listed()) sweeper_.deadlines_.erase(this);
}

void DeadlineSweeper::add(IoDeadline* deadline) {
  deadlines_.push_front(deadline);
  arm();
}

void DeadlineSweeper::arm() {
  if (armed_ || deadlines_.empty()) return;
  armed_ = true;
  timer_.expires_after(kInterval);
  timer_.async_wait([this](const boost::system::error_code& ec) {
    armed_ = false;
    if (ec) return; // the server is going away
    sweep();
    arm();
  });
}

void DeadlineSweeper::sweep() {
  const auto now = coarse_now();
  for (auto* deadline = deadlines_.front(); deadline;) {
    auto* const next = IntrusiveList<IoDeadline>::next(deadline);
    if (deadline->when_ <= now) {
      deadlines_.erase(deadline);
      deadline->expired_ = true;
      boost::system::error_code ignored;
      deadline->socket_.cancel(ignored); // the pending operations end with operation_aborted
    }
    deadline = next;
  }
}

} // namespace mmserve::http
