#include "engines/vlm/embedding_cache.hpp"

namespace mmserve::vlm {

EmbeddingCache::Embedding EmbeddingCache::find(const std::string& key) {
  const auto it = index_.find(key);
  if (it == index_.end()) return nullptr;
  order_.splice(order_.begin(), order_, it->second);
  return it->second->embedding;
}

void EmbeddingCache::insert(const std::string& key, Embedding embedding) {
  if (key.empty() || !embedding) return;
  const uint64_t size = size_of(embedding);
  if (size > max_bytes_) return;
  if (const auto it = index_.find(key); it != index_.end()) {
    bytes_ -= size_of(it->second->embedding);
    order_.erase(it->second);
    index_.erase(it);
  }
  while (bytes_ + size > max_bytes_ && !order_.empty()) {
    bytes_ -= size_of(order_.back().embedding);
    index_.erase(order_.back().key);
    order_.pop_back();
  }
  order_.push_front({key, std::move(embedding)});
  index_[key] = order_.begin();
  bytes_ += size;
}

} // namespace mmserve::vlm
