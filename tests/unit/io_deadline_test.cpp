// IoDeadline and DeadlineSweeper on real loopback sockets: a read that gets
// nothing ends as a timeout once its deadline passes (within the sweeper's
// interval), a lifted or settled deadline cancels nothing, and data that
// arrives in time completes the read normally.
#include "core/io_deadline.hpp"

#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <gtest/gtest.h>

#include <array>
#include <optional>

namespace {

using namespace mmserve::http;
using tcp = net::ip::tcp;
using namespace std::chrono_literals;

// Two connected sockets on one single-threaded io_context, as a server's connection would be.
struct SocketPair {
  net::io_context context{1};
  TcpSocket near{context.get_executor()};
  TcpSocket far{context.get_executor()};
  DeadlineSweeper sweeper{context};

  SocketPair() {
    tcp::acceptor acceptor(context, tcp::endpoint(net::ip::address_v4::loopback(), 0));
    near.connect(acceptor.local_endpoint());
    acceptor.accept(far);
  }
};

TEST(IoDeadline, AReadPastItsDeadlineEndsAsATimeoutWithinOneSweep) {
  SocketPair sockets;
  IoDeadline deadline(sockets.sweeper, sockets.near);
  std::array<char, 16> buffer{};
  std::optional<boost::system::error_code> outcome;
  const auto started = Clock::now();
  Clock::duration took{};
  deadline.expires_after(200ms);
  EXPECT_EQ(sockets.sweeper.pending(), 1u);
  sockets.near.async_read_some(net::buffer(buffer), [&](boost::system::error_code ec, size_t) {
    took = Clock::now() - started;
    outcome = deadline.settle(ec);
  });
  sockets.context.run_for(5s);
  ASSERT_TRUE(outcome.has_value());
  EXPECT_EQ(*outcome, beast::error::timeout) << outcome->message();
  EXPECT_GE(took, 200ms - 20ms); // deadlines run on the coarse clock, a tick (1-10 ms) behind
  EXPECT_LT(took, 200ms + DeadlineSweeper::kInterval + 1s); // one sweep late at most (slack for a busy machine)
  EXPECT_EQ(sockets.sweeper.pending(), 0u);
}

TEST(IoDeadline, DataInTimeCompletesTheReadAndLiftsTheDeadline) {
  SocketPair sockets;
  IoDeadline deadline(sockets.sweeper, sockets.near);
  std::array<char, 5> buffer{};
  std::optional<boost::system::error_code> outcome;
  deadline.expires_after(2s);
  net::async_read(sockets.near, net::buffer(buffer),
                  [&](boost::system::error_code ec, size_t) { outcome = deadline.settle(ec); });
  net::write(sockets.far, net::buffer(std::string_view("hello")));
  sockets.context.run_for(1s);
  ASSERT_TRUE(outcome.has_value());
  EXPECT_FALSE(*outcome) << outcome->message();
  EXPECT_EQ(std::string_view(buffer.data(), buffer.size()), "hello");
  EXPECT_EQ(sockets.sweeper.pending(), 0u);
}

TEST(IoDeadline, ALiftedDeadlineCancelsNothing) {
  SocketPair sockets;
  IoDeadline deadline(sockets.sweeper, sockets.near);
  std::array<char, 5> buffer{};
  std::optional<boost::system::error_code> outcome;
  deadline.expires_after(100ms);
  deadline.lift();
  EXPECT_EQ(sockets.sweeper.pending(), 0u);
  net::async_read(sockets.near, net::buffer(buffer), [&](boost::system::error_code ec, size_t) { outcome = ec; });
  // Past the lifted deadline, then the data: the read still succeeds.
  net::steady_timer later(sockets.context, 400ms);
  later.async_wait([&](boost::system::error_code) { net::write(sockets.far, net::buffer(std::string_view("late!"))); });
  sockets.context.run_for(2s);
  ASSERT_TRUE(outcome.has_value());
  EXPECT_FALSE(*outcome) << outcome->message();
}

TEST(IoDeadline, ACancelOfAnotherKindStaysOperationAborted) {
  SocketPair sockets;
  IoDeadline deadline(sockets.sweeper, sockets.near);
  std::array<char, 5> buffer{};
  std::optional<boost::system::error_code> outcome;
  deadline.expires_after(10s);
  sockets.near.async_read_some(net::buffer(buffer),
                               [&](boost::system::error_code ec, size_t) { outcome = deadline.settle(ec); });
  net::post(sockets.context, [&] { sockets.near.cancel(); }); // a client hang-up, say
  sockets.context.run_for(1s);
  ASSERT_TRUE(outcome.has_value());
  EXPECT_EQ(*outcome, net::error::operation_aborted);
}

TEST(IoDeadline, ADeadlineOutlivingItsSweeperIsLetGo) {
  net::io_context context{1};
  TcpSocket socket{context.get_executor()};
  auto sweeper = std::make_unique<DeadlineSweeper>(context);
  IoDeadline deadline(*sweeper, socket);
  deadline.expires_after(1s);
  sweeper.reset(); // as at shutdown, before the io_context destroys the connections' coroutines
  deadline.lift(); // must not reach the destroyed sweeper (ASan/valgrind would see it)
}

} // namespace
