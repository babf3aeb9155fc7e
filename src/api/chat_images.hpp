// The images of a chat request, from wherever the client put them (data:
// URI or http(s) URL) to preprocessed RGB pixels named by content hash,
// before the request reaches the engine. Fetching is asynchronous on the
// connection's executor; nothing here blocks on the network.
#pragma once

#include "api/chat_request.hpp"
#include "app/input_archive.hpp"
#include "core/config.hpp"
#include "core/lru_cache.hpp"
#include "core/server_metrics.hpp"
#include "core/task.hpp"
#include "engines/vlm/vlm_engine.hpp"
#include "media/image_disk_cache.hpp"
#include "media/image_preprocess.hpp"
#include "media/url_fetch.hpp"

#include <mutex>

namespace mmserve::api {

// Preprocessed images by content hash, shared by all requests: an image
// sent again skips decoding and resizing.
class DecodedImageCache {
public:
  explicit DecodedImageCache(uint64_t max_bytes)
      : cache_(max_bytes, [](const media::RgbImage& image) { return image.pixels.size(); }) {}
  std::shared_ptr<const media::RgbImage> find(const std::string& id) {
    std::lock_guard lock(mutex_);
    return cache_.find(id);
  }
  void insert(const std::string& id, std::shared_ptr<const media::RgbImage> image) {
    std::lock_guard lock(mutex_);
    cache_.insert(id, std::move(image));
  }

private:
  std::mutex mutex_;
  LruCache<media::RgbImage> cache_;
};

struct ChatImagePolicy {
  media::FetchPolicy fetch;
  media::PreprocessPolicy preprocess;
  std::shared_ptr<DecodedImageCache> decoded = std::make_shared<DecodedImageCache>(64ull << 20);
  // The media temp cache on disk (null: none): fetched images, URL links
  // and decoded pixels that outlive the process and are shared by replicas.
  std::shared_ptr<media::ImageDiskCache> disk;
  // Object storage for the uploaded images (null: not kept).
  std::shared_ptr<InputArchive> archive;
};
// Throws ConfigError for a value the config reader could not check alone.
ChatImagePolicy chat_image_policy(const MediaConfig& media, std::shared_ptr<storage::TempCache> disk_cache = nullptr);

// One entry per image part, in message order. Throws ApiError (400, 415).
Task<std::vector<vlm::ImageInput>> prepare_chat_images(const ChatRequest& request, const ChatImagePolicy& policy,
                                                       ServerMetrics& metrics);

} // namespace mmserve::api
