// A cache of shared, immutable values by string key, bounded in bytes,
// least recently used out first. Not thread-safe: callers own the locking.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>

namespace mmserve {

template <typename T> class LruCache {
public:
  using Value = std::shared_ptr<const T>;

  LruCache(uint64_t max_bytes, std::function<uint64_t(const T&)> size_of)
      : max_bytes_(max_bytes), size_of_(std::move(size_of)) {}

  // The value for `key`, refreshed as most recently used; null on a miss.
  Value find(const std::string& key) {
    const auto it = index_.find(key);
    if (it == index_.end()) return nullptr;
    order_.splice(order_.begin(), order_, it->second);
    return it->second->value;
  }

  // Stores a value, evicting the least recently used ones to stay within the
  // byte bound. One larger than the whole bound is not stored.
  void insert(const std::string& key, Value value) {
    if (key.empty() || !value) return;
    const uint64_t size = size_of_(*value);
    if (size > max_bytes_) return;
    if (const auto it = index_.find(key); it != index_.end()) {
      bytes_ -= it->second->bytes;
      order_.erase(it->second);
      index_.erase(it);
    }
    while (bytes_ + size > max_bytes_ && !order_.empty()) {
      bytes_ -= order_.back().bytes;
      index_.erase(order_.back().key);
      order_.pop_back();
    }
    order_.push_front({key, std::move(value), size});
    index_[key] = order_.begin();
    bytes_ += size;
  }

  uint64_t bytes() const { return bytes_; }
  size_t size() const { return index_.size(); }

private:
  struct Entry {
    std::string key;
    Value value;
    uint64_t bytes;
  };
  uint64_t max_bytes_;
  std::function<uint64_t(const T&)> size_of_;
  uint64_t bytes_ = 0;
  std::list<Entry> order_; // front: most recently used
  std::unordered_map<std::string, typename std::list<Entry>::iterator> index_;
};

} // namespace mmserve
