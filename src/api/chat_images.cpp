#include "api/chat_images.hpp"

#include "core/api_error.hpp"
#include "core/base64.hpp"

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

} // namespace

ChatImagePolicy chat_image_policy(const MediaConfig& media) {
  ChatImagePolicy policy;
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

boost::asio::awaitable<std::vector<vlm::ImageInput>>
prepare_chat_images(const ChatRequest& request, const ChatImagePolicy& policy, ServerMetrics& metrics) {
  std::vector<vlm::ImageInput> images;
  for (size_t m = 0; m < request.messages.size(); ++m) {
    const auto& parts = request.messages[m].parts;
    for (size_t p = 0; p < parts.size(); ++p) {
      if (parts[p].kind != ChatContentPart::Kind::image_url) continue;
      const std::string param = fmt::format("messages[{}].content[{}].image_url.url", m, p);
      const std::string& url = parts[p].url;
      std::string bytes;
      if (url.starts_with("data:")) {
        bytes = bytes_of_data_uri(url, param);
      } else {
        const auto started = Clock::now();
        auto fetched = co_await media::fetch_url(url, policy.fetch, param);
        metrics.image_processing_seconds.labels({"vision", "fetch"}).observe(seconds_since(started));
        bytes = std::move(fetched.bytes);
        if (bytes.empty()) {
          throw ApiError::bad_request(fmt::format("The image at '{}' is empty.", url), param, "invalid_image");
        }
      }
      const auto started = Clock::now();
      vlm::ImageInput input;
      // The content hash names the image for the decoded-image, encoder-output and KV caches.
      input.id = hash_sha256_hex(bytes.data(), bytes.size());
      input.image = policy.decoded->find(input.id);
      if (!input.image) {
        input.image = std::make_shared<const media::RgbImage>(media::preprocess_image(bytes, policy.preprocess, param));
        policy.decoded->insert(input.id, input.image);
      }
      metrics.image_size_bytes.labels({"vision"}).observe(static_cast<double>(bytes.size()));
      metrics.image_processing_seconds.labels({"vision", "preprocess"}).observe(seconds_since(started));
      images.push_back(std::move(input));
    }
  }
  co_return images;
}

} // namespace mmserve::api
