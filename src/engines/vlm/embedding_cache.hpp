// Vision-encoder outputs by image content hash, so an image seen before skips
// the encoder. Bounded in bytes, least recently used out first. Used by the
// scheduler thread only, hence no lock.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace mmserve::vlm {

class EmbeddingCache {
public:
  using Embedding = std::shared_ptr<const std::vector<float>>;

  explicit EmbeddingCache(uint64_t max_bytes) : max_bytes_(max_bytes) {}

  // The embedding for `key`, refreshed as most recently used; null on a miss.
  Embedding find(const std::string& key);
  // Stores an embedding, evicting the least recently used ones to stay within
  // the byte bound. One larger than the whole bound is not stored.
  void insert(const std::string& key, Embedding embedding);

  uint64_t bytes() const { return bytes_; }
  size_t size() const { return index_.size(); }

private:
  struct Entry {
    std::string key;
    Embedding embedding;
  };
  static uint64_t size_of(const Embedding& embedding) { return embedding->size() * sizeof(float); }

  uint64_t max_bytes_;
  uint64_t bytes_ = 0;
  std::list<Entry> order_; // front: most recently used
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;
};

} // namespace mmserve::vlm
