// The coroutine type of every asynchronous function here: Asio's awaitable
// bound to the io_context executor type. Every coroutine runs on an
// io_context (one per I/O thread, or a client's own); naming its executor
// type instead of Asio's default, the type-erased any_io_executor, lets each
// completion resume its coroutine directly, where the type-erased executor
// wraps it in a heap-allocated function object and calls through a table.
#pragma once

#include <utility> // Boost 1.74's awaitable.hpp uses std::exchange without it

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace mmserve {

using IoExecutor = boost::asio::io_context::executor_type;
template <typename T = void> using Task = boost::asio::awaitable<T, IoExecutor>;
// The completion token that makes an Asio operation a Task.
inline constexpr boost::asio::use_awaitable_t<IoExecutor> use_task;

} // namespace mmserve
