#include "gateway/rate_limiter.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace mmserve::gateway {

RateDecision RateLimiter::take(const std::string& client, const RateLimit& limit, Clock::time_point now) {
  RateDecision decision;
  if (limit.requests_per_second <= 0) return decision;
  const double capacity = limit.burst > 0 ? limit.burst : std::max(1.0, limit.requests_per_second);
  const double rate = limit.requests_per_second;

  std::lock_guard lock(mutex_);
  auto it = buckets_.find(client);
  if (it == buckets_.end()) {
    if (buckets_.size() >= max_buckets_) forget_some(now);
    it = buckets_.emplace(client, Bucket{capacity, now, capacity, rate}).first;
  }
  Bucket& bucket = it->second;
  const double elapsed = std::chrono::duration<double>(now - bucket.updated).count();
  bucket.tokens = std::min(capacity, bucket.tokens + std::max(0.0, elapsed) * rate);
  bucket.updated = now;
  bucket.capacity = capacity;
  bucket.rate = rate;

  decision.limit = capacity;
  if (bucket.tokens >= 1.0) {
    bucket.tokens -= 1.0;
  } else {
    decision.allowed = false;
    decision.retry_after_seconds = (1.0 - bucket.tokens) / rate;
  }
  decision.remaining = std::floor(bucket.tokens);
  decision.reset_seconds = (capacity - bucket.tokens) / rate;
  return decision;
}

size_t RateLimiter::buckets() const {
  std::lock_guard lock(mutex_);
  return buckets_.size();
}

void RateLimiter::forget_some(Clock::time_point now) {
  // Buckets that have refilled are the same as new ones: drop them first.
  std::erase_if(buckets_, [now](const auto& entry) {
    const Bucket& b = entry.second;
    return b.tokens + std::chrono::duration<double>(now - b.updated).count() * b.rate >= b.capacity;
  });
  if (buckets_.size() < max_buckets_) return;
  // Still full (many clients within one refill time): drop the least recently seen half.
  std::vector<std::pair<Clock::time_point, std::string>> by_age;
  by_age.reserve(buckets_.size());
  for (const auto& [name, bucket] : buckets_)
    by_age.emplace_back(bucket.updated, name);
  const auto middle = by_age.begin() + static_cast<std::ptrdiff_t>(by_age.size() / 2);
  std::nth_element(by_age.begin(), middle, by_age.end());
  for (auto it = by_age.begin(); it != middle; ++it)
    buckets_.erase(it->second);
}

} // namespace mmserve::gateway
