// Vision-encoder outputs by image content hash, so an image seen before skips
// the encoder. Bounded in bytes, least recently used out first. Used by the
// scheduler thread only, hence no lock.
#pragma once

#include "core/lru_cache.hpp"

#include <vector>

namespace mmserve::vlm {

class EmbeddingCache : public LruCache<std::vector<float>> {
public:
  using Embedding = Value;
  explicit EmbeddingCache(uint64_t max_bytes)
      : LruCache(max_bytes, [](const std::vector<float>& floats) { return floats.size() * sizeof(float); }) {}
};

} // namespace mmserve::vlm
