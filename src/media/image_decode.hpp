// Turns untrusted image bytes into RGB8 pixels, safely: the format is sniffed
// from magic bytes (never from names or declared types), checked against the
// configured formats, and the pixel count is bounded from the header before
// anything is decoded (decompression bombs). Nothing is shelled out.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mmserve::media {

struct RgbImage {
  uint32_t width = 0;
  uint32_t height = 0;
  std::vector<unsigned char> pixels; // width * height * 3
};

// "jpeg", "png", "gif", "webp", or nullopt when the bytes are none of these.
std::optional<std::string> sniff_image_format(std::string_view bytes);

// Throws ApiError: 415 for a format outside `allowed` (or one this build
// cannot decode), 400 `image_too_large` past `max_pixels`, 400
// `invalid_image` for bytes that do not decode. `param` names the field.
RgbImage decode_image(std::string_view bytes, const std::vector<std::string>& allowed, uint64_t max_pixels,
                      const std::string& param);

} // namespace mmserve::media
