#include "media/image_decode.hpp"

#include "core/api_error.hpp"

#include <stb/stb_image.h> // the implementation is compiled into llama.cpp's libmtmd

#include <algorithm>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <memory>

namespace mmserve::media {
namespace {

// The formats this build can decode (WebP arrives with the libvips media module).
const std::vector<std::string> kDecodable = {"jpeg", "png", "gif"};

// Width and height as the PNG or GIF header states them, read directly so
// that absurd sizes are named as such (stb_image only says "invalid").
std::optional<std::pair<uint64_t, uint64_t>> header_dimensions(std::string_view b, const std::string& format) {
  const auto byte = [&](size_t i) { return static_cast<uint64_t>(static_cast<unsigned char>(b[i])); };
  if (format == "png" && b.size() >= 24 && b.substr(12, 4) == "IHDR") {
    return std::make_pair(byte(16) << 24 | byte(17) << 16 | byte(18) << 8 | byte(19),
                          byte(20) << 24 | byte(21) << 16 | byte(22) << 8 | byte(23));
  }
  if (format == "gif" && b.size() >= 10) return std::make_pair(byte(6) | byte(7) << 8, byte(8) | byte(9) << 8);
  return std::nullopt;
}

} // namespace

std::optional<std::string> sniff_image_format(std::string_view b) {
  auto starts = [&](std::string_view magic) { return b.size() >= magic.size() && b.substr(0, magic.size()) == magic; };
  if (starts("\xFF\xD8\xFF")) return "jpeg";
  if (starts("\x89PNG\r\n\x1A\n")) return "png";
  if (starts("GIF87a") || starts("GIF89a")) return "gif";
  if (b.size() >= 12 && b.substr(0, 4) == "RIFF" && b.substr(8, 4) == "WEBP") return "webp";
  return std::nullopt;
}

RgbImage decode_image(std::string_view bytes, const std::vector<std::string>& allowed, uint64_t max_pixels,
                      const std::string& param) {
  std::vector<std::string> supported;
  for (const auto& format : allowed) {
    if (std::find(kDecodable.begin(), kDecodable.end(), format) != kDecodable.end()) supported.push_back(format);
  }
  const auto format = sniff_image_format(bytes);
  if (!format || std::find(supported.begin(), supported.end(), *format) == supported.end()) {
    throw ApiError::unsupported_media_type(fmt::format("Unsupported image format{}: supported formats are {}.",
                                                       format ? " '" + *format + "'" : "", fmt::join(supported, ", ")),
                                           param);
  }
  if (bytes.size() > static_cast<size_t>(INT32_MAX)) {
    throw ApiError::bad_request("The image is too large.", param, "image_too_large");
  }
  const auto too_large = [&](uint64_t width, uint64_t height) {
    return ApiError::bad_request(
        fmt::format("The image is {}x{} pixels; at most {} pixels are accepted.", width, height, max_pixels), param,
        "image_too_large");
  };
  if (const auto size = header_dimensions(bytes, *format); size && size->first * size->second > max_pixels) {
    throw too_large(size->first, size->second);
  }
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int length = static_cast<int>(bytes.size());
  int width = 0, height = 0, channels = 0;
  if (!stbi_info_from_memory(data, length, &width, &height, &channels) || width <= 0 || height <= 0) {
    throw ApiError::bad_request(fmt::format("The {} image could not be read: its header is invalid.", *format), param,
                                "invalid_image");
  }
  if (static_cast<uint64_t>(width) * static_cast<uint64_t>(height) > max_pixels) {
    throw ApiError::bad_request(
        fmt::format("The image is {}x{} pixels; at most {} pixels are accepted.", width, height, max_pixels), param,
        "image_too_large");
  }
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(stbi_load_from_memory(data, length, &width, &height, &channels, 3),
                                                   stbi_image_free);
  if (!pixels) {
    throw ApiError::bad_request(fmt::format("The {} image could not be decoded: {}.", *format, stbi_failure_reason()),
                                param, "invalid_image");
  }
  RgbImage image;
  image.width = static_cast<uint32_t>(width);
  image.height = static_cast<uint32_t>(height);
  image.pixels.assign(pixels.get(), pixels.get() + static_cast<size_t>(width) * static_cast<size_t>(height) * 3);
  return image;
}

} // namespace mmserve::media
