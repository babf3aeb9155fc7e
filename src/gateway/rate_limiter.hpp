// Token buckets per client (an API key or an address): each bucket holds up
// to `burst` requests and refills at `requests_per_second`. The number of
// buckets is bounded: full buckets are forgotten first, since a fresh bucket
// is full too.
#pragma once

#include "core/config.hpp"

#include <chrono>
#include <cstddef>
#include <mutex>
#include <string>
#include <unordered_map>

namespace mmserve::gateway {

struct RateDecision {
  bool allowed = true;
  double limit = 0;               // the bucket's size (X-RateLimit-Limit)
  double remaining = 0;           // whole requests left (X-RateLimit-Remaining)
  double reset_seconds = 0;       // until the bucket is full again (X-RateLimit-Reset)
  double retry_after_seconds = 0; // until one request is allowed, when refused
};

class RateLimiter {
public:
  using Clock = std::chrono::steady_clock;
  explicit RateLimiter(size_t max_buckets = 100'000) : max_buckets_(max_buckets) {}

  // Takes one request from `client`'s bucket. A limit of 0 requests per second allows everything.
  RateDecision take(const std::string& client, const RateLimit& limit, Clock::time_point now = Clock::now());
  size_t buckets() const;

private:
  struct Bucket {
    double tokens = 0;
    Clock::time_point updated;
    double capacity = 0;
    double rate = 0;
  };
  void forget_some(Clock::time_point now);

  const size_t max_buckets_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, Bucket> buckets_;
};

} // namespace mmserve::gateway
