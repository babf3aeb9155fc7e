#include "media/image_preprocess.hpp"

#include "core/api_error.hpp"

#include <vips/vips8>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <mutex>
#include <stdexcept>

namespace mmserve::media {
namespace {

using vips::VImage;

// What libvips can decode in this build, by sniffed name.
bool decodable(const std::string& format) {
  static const std::vector<std::string> kLoaders = {"jpeg", "png", "webp", "gif", "tiff", "heif", "avif", "bmp"};
  return std::find(kLoaders.begin(), kLoaders.end(), format) != kLoaders.end();
}

// Width and height as a PNG, GIF or JPEG header states them, read directly:
// absurd sizes are refused by name before any decoder sees them.
std::optional<std::pair<uint64_t, uint64_t>> header_dimensions(std::string_view b, const std::string& format) {
  const auto byte = [&](size_t i) { return static_cast<uint64_t>(static_cast<unsigned char>(b[i])); };
  if (format == "png" && b.size() >= 24 && b.substr(12, 4) == "IHDR") {
    return std::make_pair(byte(16) << 24 | byte(17) << 16 | byte(18) << 8 | byte(19),
                          byte(20) << 24 | byte(21) << 16 | byte(22) << 8 | byte(23));
  }
  if (format == "gif" && b.size() >= 10) return std::make_pair(byte(6) | byte(7) << 8, byte(8) | byte(9) << 8);
  if (format == "jpeg") {
    // Walk the marker segments to the first start-of-frame (SOF0..SOF15 but DHT, JPG, DAC).
    size_t i = 2;
    while (i + 9 < b.size() && byte(i) == 0xFF) {
      const uint64_t marker = byte(i + 1);
      const size_t length = static_cast<size_t>(byte(i + 2) << 8 | byte(i + 3));
      if (marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC) {
        return std::make_pair(byte(i + 7) << 8 | byte(i + 8), byte(i + 5) << 8 | byte(i + 6));
      }
      if (length < 2) break;
      i += 2 + length;
    }
  }
  return std::nullopt;
}

std::vector<double> colour(const std::array<unsigned char, 3>& rgb) {
  return {static_cast<double>(rgb[0]), static_cast<double>(rgb[1]), static_cast<double>(rgb[2])};
}

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Sequential access: decoders stream top to bottom instead of keeping the
// whole image for random reads (the pipeline is materialised once, below).
VImage load(std::string_view bytes, int jpeg_shrink) {
  auto* options = VImage::option()->set("fail_on", VIPS_FAIL_ON_ERROR)->set("access", VIPS_ACCESS_SEQUENTIAL);
  if (jpeg_shrink > 1) options->set("shrink", jpeg_shrink);
  return VImage::new_from_buffer(bytes.data(), bytes.size(), "", options);
}

// The side the resize mode scales to max_side: the longest for fit and pad,
// the shortest for crop (its centre square).
int governing_side(int width, int height, ResizeMode mode) {
  return mode == ResizeMode::crop ? std::min(width, height) : std::max(width, height);
}

// The largest JPEG DCT shrink (2, 4, 8) that keeps the governing side at
// or above the target, so large photos never decode at full size, and the
// shorter side at a pixel or more: Debian's libvips 8.14 aborts the process
// (an assertion, not an error) when a shrink takes a side to 0, as a
// 16448x1 JPEG with shrink 2 did under the fuzzer.
int jpeg_shrink_for(int side, int shortest, int target) {
  int shrink = 1;
  while (shrink < 8 && side / (shrink * 2) >= target && shortest / (shrink * 2) >= 1)
    shrink *= 2;
  return shrink;
}

// Orientation is applied later, on the materialised image: rotating needs
// random access, which a sequential decoder does not give.
VImage to_srgb8(VImage image, const std::array<unsigned char, 3>& background) {
  if (image.interpretation() != VIPS_INTERPRETATION_sRGB) image = image.colourspace(VIPS_INTERPRETATION_sRGB);
  if (image.has_alpha()) image = image.flatten(VImage::option()->set("background", colour(background)));
  if (image.format() != VIPS_FORMAT_UCHAR) image = image.cast(VIPS_FORMAT_UCHAR);
  if (image.bands() > 3) image = image.extract_band(0, VImage::option()->set("n", 3));
  if (image.bands() == 1) image = image.bandjoin({image, image});
  return image;
}

VImage shrink_to(VImage image, int max_side) {
  const int longest = std::max(image.width(), image.height());
  if (max_side <= 0 || longest <= max_side) return image;
  const double scale = static_cast<double>(max_side) / longest;
  return image.resize(scale, VImage::option()->set("kernel", VIPS_KERNEL_LANCZOS3));
}

VImage apply_resize_mode(VImage image, const PreprocessPolicy& policy) {
  switch (policy.resize_mode) {
  case ResizeMode::fit: return shrink_to(image, policy.max_image_size);
  case ResizeMode::crop: {
    const int side = std::min(image.width(), image.height());
    image = image.extract_area((image.width() - side) / 2, (image.height() - side) / 2, side, side);
    return shrink_to(image, policy.max_image_size);
  }
  case ResizeMode::pad: {
    image = shrink_to(image, policy.max_image_size);
    const int side = std::max(image.width(), image.height());
    return image.embed(
        (side - image.width()) / 2, (side - image.height()) / 2, side, side,
        VImage::option()->set("extend", VIPS_EXTEND_BACKGROUND)->set("background", colour(policy.background)));
  }
  }
  return image;
}

} // namespace

std::optional<ResizeMode> parse_resize_mode(std::string_view name) {
  if (name == "fit") return ResizeMode::fit;
  if (name == "crop") return ResizeMode::crop;
  if (name == "pad") return ResizeMode::pad;
  return std::nullopt;
}

std::optional<std::string> sniff_image_format(std::string_view b) {
  auto starts = [&](std::string_view magic) { return b.size() >= magic.size() && b.substr(0, magic.size()) == magic; };
  if (starts("\xFF\xD8\xFF")) return "jpeg";
  if (starts("\x89PNG\r\n\x1A\n")) return "png";
  if (starts("GIF87a") || starts("GIF89a")) return "gif";
  if (b.size() >= 12 && b.substr(0, 4) == "RIFF" && b.substr(8, 4) == "WEBP") return "webp";
  if (starts("BM")) return "bmp";
  if (starts(std::string_view("II*\0", 4)) || starts(std::string_view("MM\0*", 4))) return "tiff";
  if (b.size() >= 12 && b.substr(4, 4) == "ftyp") {
    const auto brand = b.substr(8, 4);
    if (brand == "avif" || brand == "avis") return "avif";
    if (brand == "heic" || brand == "heix" || brand == "mif1" || brand == "msf1") return "heif";
  }
  return std::nullopt;
}

void init_image_library() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (VIPS_INIT("mmserve") != 0)
      throw std::runtime_error(std::string("libvips failed to initialise: ") + vips_error_buffer());
    // Each request's pipeline runs once: caching operations would only hold
    // memory (and references to request buffers) past the request.
    vips_cache_set_max(0);
  });
}

RgbImage preprocess_image(std::string_view bytes, const PreprocessPolicy& policy, const std::string& param,
                          PreprocessTimings* timings) {
  init_image_library();
  const auto started = Clock::now();
  std::vector<std::string> supported;
  for (const auto& format : policy.formats) {
    if (decodable(format)) supported.push_back(format);
  }
  const auto format = sniff_image_format(bytes);
  if (!format || std::find(supported.begin(), supported.end(), *format) == supported.end()) {
    throw ApiError::unsupported_media_type(fmt::format("Unsupported image format{}: supported formats are {}.",
                                                       format ? " '" + *format + "'" : "", fmt::join(supported, ", ")),
                                           param, "unsupported_image_format");
  }
  const auto invalid = [&](const std::string& why) {
    return ApiError::bad_request(fmt::format("The {} image could not be decoded: {}", *format, why), param,
                                 "invalid_image");
  };
  const auto check_pixels = [&](uint64_t width, uint64_t height) {
    if (width * height > policy.max_pixels) {
      throw ApiError::bad_request(
          fmt::format("The image is {}x{} pixels; at most {} pixels are accepted.", width, height, policy.max_pixels),
          param, "image_too_large");
    }
  };
  if (const auto size = header_dimensions(bytes, *format)) check_pixels(size->first, size->second);
  try {
    // Loading reads the header only; pixels are decoded when written out.
    VImage image = load(bytes, 1);
    const uint64_t width = static_cast<uint64_t>(image.width());
    const uint64_t height = static_cast<uint64_t>(image.height());
    check_pixels(width, height);
    if (image.get_typeof("n-pages") != 0 && image.get_int("n-pages") > policy.max_frames) {
      throw ApiError::bad_request(
          fmt::format("The image has {} frames; at most {} are accepted.", image.get_int("n-pages"), policy.max_frames),
          param, "image_too_large");
    }
    if (*format == "jpeg" && policy.max_image_size > 0) {
      const int side = governing_side(static_cast<int>(width), static_cast<int>(height), policy.resize_mode);
      const int shrink = jpeg_shrink_for(side, static_cast<int>(std::min(width, height)), policy.max_image_size);
      if (shrink > 1) image = load(bytes, shrink);
    }
    // Decode: the (shrunk-on-load) pixels as 8-bit sRGB in memory.
    image = to_srgb8(image, policy.background).copy_memory().autorot();
    if (timings) timings->decode = seconds_since(started);
    const auto decoded = Clock::now();
    image = apply_resize_mode(image, policy);
    size_t size = 0;
    auto* memory = static_cast<unsigned char*>(image.write_to_memory(&size));
    RgbImage result;
    result.width = static_cast<uint32_t>(image.width());
    result.height = static_cast<uint32_t>(image.height());
    result.pixels.assign(memory, memory + size);
    g_free(memory);
    if (result.pixels.size() != static_cast<size_t>(result.width) * result.height * 3) {
      throw invalid("unexpected pixel layout after conversion");
    }
    if (timings) timings->resize = seconds_since(decoded);
    return result;
  } catch (const vips::VError& error) {
    std::string why = error.what();
    while (!why.empty() && (why.back() == '\n' || why.back() == ' '))
      why.pop_back();
    throw invalid(why.empty() ? "the data is corrupt" : why);
  }
}

std::string encode_image(const RgbImage& image, std::string_view format, int quality, const TextChunks& text) {
  init_image_library();
  if (image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3) {
    throw std::invalid_argument("encode_image: pixel buffer does not match width x height x 3");
  }
  std::string suffix;
  if (format == "png")
    suffix = ".png";
  else if (format == "jpeg" || format == "jpg")
    suffix = ".jpg";
  else if (format == "webp")
    suffix = ".webp";
  else
    throw std::invalid_argument(fmt::format("encode_image: unknown format '{}' (png, jpeg, webp)", format));
  VImage source =
      VImage::new_from_memory(const_cast<unsigned char*>(image.pixels.data()), image.pixels.size(),
                              static_cast<int>(image.width), static_cast<int>(image.height), 3, VIPS_FORMAT_UCHAR);
  if (!text.empty() && suffix != ".png") throw std::invalid_argument("encode_image: text chunks are for png only");
  for (size_t i = 0; i < text.size(); ++i) {
    const auto& [key, value] = text[i];
    // libvips writes "png-comment-<index>-<key>" metadata as zTXt chunks; it reads the key up to a blank.
    const bool printable = std::all_of(key.begin(), key.end(), [](char c) { return c > ' ' && c <= '~'; });
    if (key.empty() || key.size() > 79 || !printable)
      throw std::invalid_argument(fmt::format("encode_image: invalid PNG text key '{}'", key));
    source.set(fmt::format("png-comment-{}-{}", i, key).c_str(), value.c_str());
  }
  auto* options = VImage::option();
  if (suffix != ".png") options->set("Q", std::clamp(quality, 1, 100));
  void* buffer = nullptr;
  size_t size = 0;
  source.write_to_buffer(suffix.c_str(), &buffer, &size, options);
  std::string encoded(static_cast<const char*>(buffer), size);
  g_free(buffer);
  return encoded;
}

std::vector<float> normalize_image(const RgbImage& image, const std::array<float, 3>& mean,
                                   const std::array<float, 3>& std) {
  const size_t plane = static_cast<size_t>(image.width) * image.height;
  std::vector<float> tensor(plane * 3);
  for (size_t i = 0; i < plane; ++i) {
    for (size_t c = 0; c < 3; ++c) {
      tensor[c * plane + i] = (static_cast<float>(image.pixels[i * 3 + c]) / 255.0f - mean[c]) / std[c];
    }
  }
  return tensor;
}

} // namespace mmserve::media
