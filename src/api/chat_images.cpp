#include "api/chat_images.hpp"

#include "core/api_error.hpp"
#include "core/base64.hpp"
#include "core/task.hpp"

#include "hash/hash.h"

#include <chrono>
#include <fmt/format.h>

namespace mmserve::api {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string bytes_of_data_uri(const std::string& url, const std::string& param) {
  const auto comma = url.find(',');
  if (comma == std::string::npos || url.substr(0, comma).find(";base64") == std::string::npos) {
    throw ApiError::bad_request("Invalid data URI: expected data:<type>;base64,<data>.", param, "invalid_image");
  }
  auto bytes = decode_base64(std::string_view(url).substr(comma + 1));
  if (!bytes || bytes->empty())
    throw ApiError::bad_request("Invalid base64 in the image data URI.", param, "invalid_image");
  return std::move(*bytes);
}

struct RememberedImage {
  vlm::ImageInput input; // id, and the pixels when they were cached
  std::string bytes;     // the fetched bytes when only they were cached
};

// An http(s) image fetched before and still fresh, from the disk cache:
// its pixels (nothing to fetch or decode) or its bytes (nothing to fetch).
std::optional<RememberedImage> remembered_url_image(const ChatImagePolicy& policy, const std::string& url) {
  if (!policy.disk) return std::nullopt;
  auto hash = policy.disk->url_content_hash(url);
  if (!hash) return std::nullopt;
  RememberedImage found;
  found.input.id = *hash;
  found.input.image = policy.decoded->find(*hash);
  if (!found.input.image) found.input.image = policy.disk->decoded(*hash, policy.preprocess);
  if (found.input.image) return found;
  auto bytes = policy.disk->content(*hash);
  if (!bytes) return std::nullopt; // evicted: fetch again
  found.bytes = std::move(*bytes);
  return found;
}

} // namespace

ChatImagePolicy chat_image_policy(const MediaConfig& media, std::shared_ptr<storage::TempCache> disk_cache) {
  ChatImagePolicy policy;
  if (disk_cache) policy.disk = std::make_shared<media::ImageDiskCache>(std::move(disk_cache));
  policy.fetch.max_bytes = media.fetch_max_bytes;
  policy.fetch.timeout = std::chrono::milliseconds(static_cast<int64_t>(media.fetch_timeout_s * 1000));
  policy.fetch.max_redirects = media.fetch_max_redirects;
  policy.fetch.ca_file = media.fetch_ca_file;
  for (const auto& text : media.fetch_allow_networks) {
    const auto network = media::parse_network(text);
    if (!network) throw ConfigError("media.fetch.allow_networks: invalid network '" + text + "'");
    policy.fetch.allow_networks.push_back(*network);
  }
  policy.preprocess.formats = media.supported_formats;
  policy.preprocess.max_image_size = media.max_image_size;
  policy.preprocess.resize_mode = media::parse_resize_mode(media.resize_mode).value_or(media::ResizeMode::fit);
  policy.preprocess.max_pixels = media.max_pixels;
  if (const auto colour = parse_hex_colour(media.background)) policy.preprocess.background = *colour;
  return policy;
}

Task<std::vector<vlm::ImageInput>> prepare_chat_images(const ChatRequest& request, const ChatImagePolicy& policy,
                                                       ServerMetrics& metrics) {
  std::vector<vlm::ImageInput> images;
  for (size_t m = 0; m < request.messages.size(); ++m) {
    const auto& parts = request.messages[m].parts;
    for (size_t p = 0; p < parts.size(); ++p) {
      if (parts[p].kind != ChatContentPart::Kind::image_url) continue;
      const std::string param = fmt::format("messages[{}].content[{}].image_url.url", m, p);
      const std::string& url = parts[p].url;
      std::string bytes;
      vlm::ImageInput input;
      // The content hash names the image for the decoded-image, encoder-output and KV caches.
      if (url.starts_with("data:")) {
        bytes = bytes_of_data_uri(url, param);
      } else if (auto known = remembered_url_image(policy, url)) {
        input = std::move(known->input);
        bytes = std::move(known->bytes); // empty when the pixels were on disk
      } else {
        const auto started = Clock::now();
        auto fetched = co_await media::fetch_url(url, policy.fetch, param);
        metrics.image_processing_seconds.labels({"vision", "fetch"}).observe(seconds_since(started));
        bytes = std::move(fetched.bytes);
        if (bytes.empty()) {
          throw ApiError::bad_request(fmt::format("The image at '{}' is empty.", url), param, "invalid_image");
        }
        input.id = hash_sha256_hex(bytes.data(), bytes.size());
        if (policy.disk) policy.disk->remember_fetch(url, input.id, bytes, fetched.cache_control);
      }
      if (input.id.empty()) input.id = hash_sha256_hex(bytes.data(), bytes.size());
      if (!input.image) input.image = policy.decoded->find(input.id);
      if (!input.image && policy.disk) input.image = policy.disk->decoded(input.id, policy.preprocess);
      if (!input.image) {
        // Timed by step (decode, resize) only when the work is done, not for cache hits.
        media::PreprocessTimings timings;
        input.image =
            std::make_shared<const media::RgbImage>(media::preprocess_image(bytes, policy.preprocess, param, &timings));
        metrics.image_processing_seconds.labels({"vision", "decode"}).observe(timings.decode);
        metrics.image_processing_seconds.labels({"vision", "resize"}).observe(timings.resize);
        if (policy.disk) policy.disk->store_decoded(input.id, policy.preprocess, *input.image);
        // Kept once it is known to be an image (a first sight: later ones hit the caches above).
        if (policy.archive && !bytes.empty()) {
          const std::string format = media::sniff_image_format(bytes).value_or("bin");
          policy.archive->submit("vision", bytes, format == "jpeg" ? "jpg" : format, "image/" + format);
        }
      }
      policy.decoded->insert(input.id, input.image);
      if (!bytes.empty()) metrics.image_size_bytes.labels({"vision"}).observe(static_cast<double>(bytes.size()));
      images.push_back(std::move(input));
    }
  }
  co_return images;
}

} // namespace mmserve::api
