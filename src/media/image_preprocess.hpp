// Untrusted image bytes to the RGB8 pixels an engine takes, with libvips:
// the format is sniffed from magic bytes (never from names or declared
// types) and checked against the configured list, the pixel count is
// bounded from the header before anything is decoded (decompression bombs),
// then EXIF orientation, conversion to 8-bit sRGB without alpha, and the
// seed's image-processor-config resize (max_image_size, resize_mode).
// Also the encoders for generated images and the normalised tensor.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mmserve::media {

struct RgbImage {
  uint32_t width = 0;
  uint32_t height = 0;
  std::vector<unsigned char> pixels; // width * height * 3, row-major RGB
};

enum class ResizeMode { fit, crop, pad };
std::optional<ResizeMode> parse_resize_mode(std::string_view name);

struct PreprocessPolicy {
  std::vector<std::string> formats = {"jpeg", "png", "webp", "gif"}; // preprocessing.supported_formats
  int max_image_size = 1024;                                         // longest side after preprocessing; 0: no bound
  ResizeMode resize_mode = ResizeMode::fit;                          // preprocessing.resize_mode
  uint64_t max_pixels = 8192ull * 8192ull;                           // header check, before decoding
  int max_frames = 1000;                                             // animated GIF/WebP: only the first frame is used
  std::array<unsigned char, 3> background = {255, 255, 255};         // alpha is composited on this; pad colour
};

// "jpeg", "png", "gif", "webp", "bmp", "tiff", "heif", "avif", or nullopt.
std::optional<std::string> sniff_image_format(std::string_view bytes);

// Once per process; safe to call again.
void init_image_library();

// Seconds spent in each step, for image_processing_seconds{step}: decode
// (sniff, header checks, decode with shrink-on-load, colour to sRGB8,
// orientation) and resize (the resize mode, out to RGB8).
struct PreprocessTimings {
  double decode = 0;
  double resize = 0;
};

// Throws ApiError: 415 `unsupported_image_format` naming the supported list,
// 400 `image_too_large` past max_pixels or max_frames, 400 `invalid_image`
// for bytes that do not decode. `param` names the request field.
RgbImage preprocess_image(std::string_view bytes, const PreprocessPolicy& policy, const std::string& param,
                          PreprocessTimings* timings = nullptr);

// Encoders for generated images. `quality` 1..100 (jpeg, webp); png ignores it.
// `text` (png only): key/value pairs written as PNG text chunks (libvips
// writes compressed zTXt ones; keys: 1-79 printable ASCII characters without
// blanks). Throws std::invalid_argument for an unknown format or a bad key.
using TextChunks = std::vector<std::pair<std::string, std::string>>;
std::string encode_image(const RgbImage& image, std::string_view format, int quality = 90, const TextChunks& text = {});

// CHW float tensor: (pixel / 255 - mean) / std per channel.
inline constexpr std::array<float, 3> kClipMean = {0.48145466f, 0.4578275f, 0.40821073f};
inline constexpr std::array<float, 3> kClipStd = {0.26862954f, 0.26130258f, 0.27577711f};
std::vector<float> normalize_image(const RgbImage& image, const std::array<float, 3>& mean = kClipMean,
                                   const std::array<float, 3>& std = kClipStd);

} // namespace mmserve::media
