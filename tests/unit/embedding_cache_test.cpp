#include "engines/vlm/embedding_cache.hpp"

#include <gtest/gtest.h>

using mmserve::vlm::EmbeddingCache;

namespace {
EmbeddingCache::Embedding floats(size_t n, float value) {
  return std::make_shared<const std::vector<float>>(n, value);
}
} // namespace

TEST(EmbeddingCache, HitsReturnWhatWasStored) {
  EmbeddingCache cache(1024);
  cache.insert("a", floats(4, 1.5f));
  ASSERT_NE(cache.find("a"), nullptr);
  EXPECT_EQ((*cache.find("a"))[3], 1.5f);
  EXPECT_EQ(cache.find("b"), nullptr);
  EXPECT_EQ(cache.bytes(), 16u);
}

TEST(EmbeddingCache, EvictsLeastRecentlyUsedWithinTheBound) {
  EmbeddingCache cache(3 * 40); // room for three 10-float embeddings
  cache.insert("a", floats(10, 0));
  cache.insert("b", floats(10, 0));
  cache.insert("c", floats(10, 0));
  ASSERT_NE(cache.find("a"), nullptr); // a is now the most recent; b the least
  cache.insert("d", floats(10, 0));
  EXPECT_EQ(cache.find("b"), nullptr);
  EXPECT_NE(cache.find("a"), nullptr);
  EXPECT_NE(cache.find("c"), nullptr);
  EXPECT_NE(cache.find("d"), nullptr);
  EXPECT_LE(cache.bytes(), 120u);
  EXPECT_EQ(cache.size(), 3u);
}

TEST(EmbeddingCache, RefusesOversizeAndReplacesSameKey) {
  EmbeddingCache cache(100);
  cache.insert("huge", floats(100, 0)); // 400 bytes > 100
  EXPECT_EQ(cache.find("huge"), nullptr);
  EXPECT_EQ(cache.bytes(), 0u);
  cache.insert("k", floats(5, 1));
  cache.insert("k", floats(10, 2));
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(cache.bytes(), 40u);
  EXPECT_EQ((*cache.find("k"))[0], 2.0f);
}
