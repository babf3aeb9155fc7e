// Input images kept in the media temp cache (storage/temp_cache) across
// restarts and replicas sharing the folder, so an image seen before is
// neither fetched nor decoded again:
//
// - fetched bytes, content-addressed (key = SHA-256 of the bytes, which is
//   also the image id the engine caches use);
// - URL -> content hash links, only when the response's Cache-Control lets
//   a shared cache keep it (s-maxage or max-age > 0, and no no-store,
//   no-cache or private), and only for that long;
// - preprocessed RGB pixels, keyed by the content hash and everything in
//   the preprocessing policy that shapes the pixels.
#pragma once

#include "media/image_preprocess.hpp"
#include "storage/temp_cache.hpp"

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace mmserve::media {

// How long a shared cache may keep a response with this Cache-Control;
// nullopt when it may not.
std::optional<std::chrono::seconds> shared_cache_lifetime(std::string_view cache_control);

// The pixels as stored on disk, and back (nullopt when malformed).
std::string serialize_rgb(const RgbImage& image);
std::optional<RgbImage> deserialize_rgb(std::string_view bytes);

class ImageDiskCache {
public:
  explicit ImageDiskCache(std::shared_ptr<storage::TempCache> cache) : cache_(std::move(cache)) {}

  // The content hash `url` was fetched to, while that is fresh.
  std::optional<std::string> url_content_hash(const std::string& url);
  // When Cache-Control lets a shared cache keep the response: the bytes by
  // content, and the link from the URL until the response goes stale.
  void remember_fetch(const std::string& url, const std::string& content_hash, std::string_view bytes,
                      std::string_view cache_control);
  std::optional<std::string> content(const std::string& content_hash);

  std::shared_ptr<const RgbImage> decoded(const std::string& content_hash, const PreprocessPolicy& policy);
  void store_decoded(const std::string& content_hash, const PreprocessPolicy& policy, const RgbImage& image);

  storage::TempCache& cache() { return *cache_; }

private:
  std::shared_ptr<storage::TempCache> cache_;
};

} // namespace mmserve::media
