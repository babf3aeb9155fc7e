// Input images in the media temp cache: which responses may be kept and
// for how long (Cache-Control, as a shared cache reads it), the pixels'
// disk format, URL links that expire, and decoded entries keyed by the
// preprocessing policy.
#include "media/image_disk_cache.hpp"

#include <gtest/gtest.h>

#include <filesystem>

namespace fs = std::filesystem;
using namespace mmserve::media;
using std::chrono::seconds;

TEST(SharedCacheLifetime, FollowsCacheControlAsASharedCache) {
  EXPECT_EQ(shared_cache_lifetime("max-age=3600"), seconds(3600));
  EXPECT_EQ(shared_cache_lifetime("public, max-age=60, s-maxage=600"), seconds(600)); // s-maxage wins
  EXPECT_EQ(shared_cache_lifetime("Public, Max-Age=\"120\""), seconds(120));
  EXPECT_FALSE(shared_cache_lifetime("")); // no freshness given: not kept
  EXPECT_FALSE(shared_cache_lifetime("max-age=0"));
  EXPECT_FALSE(shared_cache_lifetime("max-age=3600, no-store"));
  EXPECT_FALSE(shared_cache_lifetime("no-cache, max-age=3600"));
  EXPECT_FALSE(shared_cache_lifetime("private, max-age=3600")); // one user's response, never shared
  EXPECT_FALSE(shared_cache_lifetime("max-age=soon"));
}

TEST(RgbSerialization, RoundTripsAndRejectsMalformedBytes) {
  RgbImage image;
  image.width = 3;
  image.height = 2;
  image.pixels = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18};
  const auto bytes = serialize_rgb(image);
  const auto back = deserialize_rgb(bytes);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->width, 3u);
  EXPECT_EQ(back->height, 2u);
  EXPECT_EQ(back->pixels, image.pixels);
  EXPECT_FALSE(deserialize_rgb(bytes.substr(0, bytes.size() - 1))); // truncated
  EXPECT_FALSE(deserialize_rgb("not pixels at all"));
}

class ImageDiskCacheTest : public ::testing::Test {
protected:
  void SetUp() override {
    char pattern[] = "/tmp/mmserve-image-disk-cache-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
    mmserve::storage::TempCacheOptions options;
    options.dir = dir_;
    options.max_bytes = 1 << 20;
    options.cleanup_interval = std::chrono::milliseconds(0);
    temp_ = std::make_shared<mmserve::storage::TempCache>(options);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
  std::shared_ptr<mmserve::storage::TempCache> temp_;
};

TEST_F(ImageDiskCacheTest, UrlLinksOnlyWhenCacheableAndContentByHash) {
  ImageDiskCache cache(temp_);
  const std::string bytes = "jpeg bytes";
  const auto hash = mmserve::storage::TempCache::content_key(bytes);
  cache.remember_fetch("http://images/a.jpg", hash, bytes, "no-store");
  EXPECT_FALSE(cache.url_content_hash("http://images/a.jpg"));
  EXPECT_EQ(temp_->stats().entries, 0u);
  cache.remember_fetch("http://images/a.jpg", hash, bytes, "max-age=600");
  EXPECT_EQ(cache.url_content_hash("http://images/a.jpg"), hash);
  EXPECT_EQ(cache.content(hash), bytes);
  EXPECT_FALSE(cache.url_content_hash("http://images/other.jpg"));
  // A second replica on the same folder sees the same link.
  ImageDiskCache replica(std::make_shared<mmserve::storage::TempCache>(temp_->options()));
  EXPECT_EQ(replica.url_content_hash("http://images/a.jpg"), hash);
}

TEST_F(ImageDiskCacheTest, DecodedPixelsAreKeyedByThePolicyThatMadeThem) {
  ImageDiskCache cache(temp_);
  RgbImage image;
  image.width = 1;
  image.height = 1;
  image.pixels = {9, 8, 7};
  PreprocessPolicy fit;
  const std::string hash(64, 'a');
  cache.store_decoded(hash, fit, image);
  const auto found = cache.decoded(hash, fit);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->pixels, image.pixels);
  PreprocessPolicy crop = fit;
  crop.resize_mode = ResizeMode::crop;
  EXPECT_FALSE(cache.decoded(hash, crop));
  PreprocessPolicy smaller = fit;
  smaller.max_image_size = 512;
  EXPECT_FALSE(cache.decoded(hash, smaller));
  EXPECT_FALSE(cache.decoded(std::string(64, 'b'), fit));
}
