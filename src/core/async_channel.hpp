// Hands items from an engine thread to a coroutine on an Asio executor
// without blocking either: push() from any thread, co_await next_batch() on
// the executor the channel was made for.
#pragma once

#include "core/task.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>

#include <memory>
#include <mutex>
#include <vector>

namespace mmserve {

template <typename T> class AsyncChannel : public std::enable_shared_from_this<AsyncChannel<T>> {
public:
  explicit AsyncChannel(const boost::asio::any_io_executor& executor)
      : timer_(executor, std::chrono::steady_clock::time_point::max()) {}

  // Any thread.
  void push(T item) {
    {
      std::lock_guard lock(mutex_);
      items_.push_back(std::move(item));
    }
    // The wake-up runs on the consumer's executor, so it cannot slip between
    // the consumer's emptiness check and its wait.
    boost::asio::post(timer_.get_executor(), [self = this->shared_from_this()] { self->timer_.cancel(); });
  }

  // On the channel's executor: everything pushed so far, waiting while empty;
  // empty only when `deadline` passed first.
  Task<std::vector<T>>
  next_batch(std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max()) {
    for (;;) {
      {
        std::lock_guard lock(mutex_);
        if (!items_.empty()) {
          std::vector<T> out;
          out.swap(items_);
          co_return out;
        }
      }
      if (std::chrono::steady_clock::now() >= deadline) co_return std::vector<T>{};
      timer_.expires_at(deadline);
      boost::system::error_code ec;
      co_await timer_.async_wait(boost::asio::redirect_error(use_task, ec));
    }
  }

private:
  boost::asio::steady_timer timer_;
  std::mutex mutex_;
  std::vector<T> items_;
};

} // namespace mmserve
