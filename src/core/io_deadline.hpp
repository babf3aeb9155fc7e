// Deadlines for the socket operations of connections that live on one I/O
// thread, checked by one coarse sweeper per thread instead of a timer armed
// and cancelled around every read and write (Beast's basic_stream does that:
// a timer-queue insert, a cancel and often a timerfd update per operation,
// measurable on a proxy whose requests are small). Setting a deadline costs a
// clock read and two pointer writes; a deadline fires at most one sweep
// interval (100 ms) late.
#pragma once

#include "core/intrusive_list.hpp"
#include "core/task.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/error.hpp>

#include <chrono>

namespace mmserve::http {

namespace net = boost::asio;
namespace beast = boost::beast;

using Clock = std::chrono::steady_clock;
// Connections are bound to one single-threaded io_context from accept to
// close; sockets typed with its executor (instead of Asio's type-erased
// any_io_executor) keep each I/O operation's bookkeeping off the type-erased
// path, as Task does for the coroutines. A plain socket rather than Beast's
// basic_stream: IoDeadline bounds its operations, and basic_stream's per-
// operation timer checks, shared-state reference counts and buffer wrapping
// (which also turns each single-buffer recv into a recvmsg) would be paid
// for nothing.
using IoExecutor = mmserve::IoExecutor;
using TcpSocket = net::basic_stream_socket<net::ip::tcp, IoExecutor>;

class DeadlineSweeper;

// The monotonic clock to within a few milliseconds (CLOCK_MONOTONIC_COARSE:
// steady_clock's timeline, read without its cost), plenty for deadlines
// swept every 100 ms.
Clock::time_point coarse_now();

// When the pending operations on one socket must end. Used only from the
// socket's I/O thread; not movable (the sweeper holds its address).
class IoDeadline : public IntrusiveList<IoDeadline>::Hook {
public:
  IoDeadline(DeadlineSweeper& sweeper, TcpSocket& socket) : sweeper_(sweeper), socket_(socket) {}
  IoDeadline(const IoDeadline&) = delete;
  IoDeadline& operator=(const IoDeadline&) = delete;
  ~IoDeadline() { lift(); }

  // Operations started from now on must end by `when` (or they are cancelled).
  void expires_at(Clock::time_point when);
  void expires_after(Clock::duration timeout) { expires_at(coarse_now() + timeout); }
  // An operation's outcome: one the sweeper cancelled becomes
  // beast::error::timeout. The deadline is lifted.
  boost::system::error_code settle(boost::system::error_code ec);
  // No deadline until the next expires_*.
  void lift();
  DeadlineSweeper& sweeper() const { return sweeper_; }

private:
  friend class DeadlineSweeper;
  DeadlineSweeper& sweeper_;
  TcpSocket& socket_;
  Clock::time_point when_{};
  bool expired_ = false;
};

// Cancels the operations of sockets whose deadline has passed: every
// interval while any deadline is set. One per I/O context, used only from
// its thread, outliving the connections on it.
class DeadlineSweeper {
public:
  static constexpr std::chrono::milliseconds kInterval{100};
  explicit DeadlineSweeper(net::io_context& context) : timer_(context) {}
  DeadlineSweeper(const DeadlineSweeper&) = delete;
  DeadlineSweeper& operator=(const DeadlineSweeper&) = delete;
  // Deadlines set now (for tests).
  size_t pending() const { return deadlines_.size(); }

private:
  friend class IoDeadline;
  void add(IoDeadline* deadline);
  void arm();
  void sweep();

  net::steady_timer timer_;
  bool armed_ = false;
  // The deadlines set. Any still listed when the sweeper goes (connections
  // whose coroutines the io_context destroys later, at shutdown) are let go.
  IntrusiveList<IoDeadline> deadlines_;
};

} // namespace mmserve::http
