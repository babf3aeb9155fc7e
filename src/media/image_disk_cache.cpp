#include "media/image_disk_cache.hpp"
#include "core/text.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstring>

namespace mmserve::media {
namespace {

constexpr char kRgbMagic[8] = {'M', 'M', 'R', 'G', 'B', '8', 1, 0}; // format version in the last two bytes

std::optional<int64_t> parse_seconds(std::string_view text) {
  if (text.size() >= 2 && text.front() == '"' && text.back() == '"') text = text.substr(1, text.size() - 2);
  if (text.empty() || text.size() > 12 || text.find_first_not_of("0123456789") != std::string_view::npos) {
    return std::nullopt;
  }
  return std::stoll(std::string(text));
}

std::string url_key(const std::string& url) {
  return storage::TempCache::content_key("mmserve url v1\n" + url);
}

// Everything in the policy that can change the pixels (or whether the
// image is accepted at all).
std::string decoded_key(const std::string& content_hash, const PreprocessPolicy& policy) {
  const char* mode = policy.resize_mode == ResizeMode::fit    ? "fit"
                     : policy.resize_mode == ResizeMode::crop ? "crop"
                                                              : "pad";
  return storage::TempCache::content_key(fmt::format(
      "mmserve rgb8 v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}", content_hash, fmt::join(policy.formats, ","),
      policy.max_image_size, mode, policy.max_pixels, policy.max_frames, fmt::join(policy.background, ",")));
}

void put_u32(std::string& out, uint32_t value) {
  for (int i = 0; i < 4; ++i)
    out += static_cast<char>((value >> (8 * i)) & 0xFF);
}

uint32_t get_u32(std::string_view bytes, size_t at) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i)
    value |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[at + i])) << (8 * i);
  return value;
}

} // namespace

std::optional<std::chrono::seconds> shared_cache_lifetime(std::string_view cache_control) {
  std::optional<int64_t> max_age, s_maxage;
  size_t start = 0;
  while (start <= cache_control.size()) {
    auto end = cache_control.find(',', start);
    if (end == std::string_view::npos) end = cache_control.size();
    const std::string directive = text::lowered(text::trim_blanks(cache_control.substr(start, end - start)));
    start = end + 1;
    const auto eq = directive.find('=');
    const std::string name(text::trim_blanks(std::string_view(directive).substr(0, eq)));
    const std::string_view value =
        eq == std::string::npos ? std::string_view() : text::trim_blanks(std::string_view(directive).substr(eq + 1));
    if (name == "no-store" || name == "no-cache" || name == "private") return std::nullopt;
    if (name == "max-age") max_age = parse_seconds(value);
    if (name == "s-maxage") s_maxage = parse_seconds(value);
  }
  const auto seconds = s_maxage ? s_maxage : max_age; // s-maxage is the one meant for shared caches
  if (!seconds || *seconds <= 0) return std::nullopt;
  return std::chrono::seconds(*seconds);
}

std::string serialize_rgb(const RgbImage& image) {
  std::string out(kRgbMagic, sizeof kRgbMagic);
  put_u32(out, image.width);
  put_u32(out, image.height);
  out.append(reinterpret_cast<const char*>(image.pixels.data()), image.pixels.size());
  return out;
}

std::optional<RgbImage> deserialize_rgb(std::string_view bytes) {
  constexpr size_t header = sizeof kRgbMagic + 8;
  if (bytes.size() < header || std::memcmp(bytes.data(), kRgbMagic, sizeof kRgbMagic) != 0) return std::nullopt;
  RgbImage image;
  image.width = get_u32(bytes, sizeof kRgbMagic);
  image.height = get_u32(bytes, sizeof kRgbMagic + 4);
  if (bytes.size() - header != uint64_t{image.width} * image.height * 3) return std::nullopt;
  image.pixels.assign(bytes.begin() + header, bytes.end());
  return image;
}

std::optional<std::string> ImageDiskCache::url_content_hash(const std::string& url) {
  const auto link = cache_->get(url_key(url));
  if (!link) return std::nullopt;
  // "<unix expiry> <content hash>"
  const auto space = link->find(' ');
  if (space == std::string::npos) return std::nullopt;
  const auto expires = parse_seconds(std::string_view(*link).substr(0, space));
  const std::string hash = link->substr(space + 1);
  const auto now =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch());
  if (!expires || *expires <= now.count() || !storage::TempCache::valid_key(hash)) return std::nullopt;
  return hash;
}

void ImageDiskCache::remember_fetch(const std::string& url, const std::string& content_hash, std::string_view bytes,
                                    std::string_view cache_control) {
  // Without a link from the URL the bytes would only be found again by
  // their hash, which the decoded pixels already cover.
  const auto lifetime = shared_cache_lifetime(cache_control);
  if (!lifetime) return;
  if (!cache_->put(content_hash, bytes)) return;
  const auto expires = std::chrono::duration_cast<std::chrono::seconds>(
                           (std::chrono::system_clock::now() + *lifetime).time_since_epoch())
                           .count();
  cache_->put(url_key(url), fmt::format("{} {}", expires, content_hash));
}

std::optional<std::string> ImageDiskCache::content(const std::string& content_hash) {
  return cache_->get_content(content_hash);
}

std::shared_ptr<const RgbImage> ImageDiskCache::decoded(const std::string& content_hash,
                                                        const PreprocessPolicy& policy) {
  const auto bytes = cache_->get(decoded_key(content_hash, policy));
  if (!bytes) return nullptr;
  auto image = deserialize_rgb(*bytes);
  if (!image) return nullptr;
  return std::make_shared<const RgbImage>(std::move(*image));
}

void ImageDiskCache::store_decoded(const std::string& content_hash, const PreprocessPolicy& policy,
                                   const RgbImage& image) {
  cache_->put(decoded_key(content_hash, policy), serialize_rgb(image));
}

} // namespace mmserve::media
