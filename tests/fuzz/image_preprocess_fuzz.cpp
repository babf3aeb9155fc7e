// libFuzzer target: arbitrary bytes through the image entry point the
// vision API runs on every uploaded image (sniff, header bound, libvips
// decode, orientation, colour, resize). Besides crashes and sanitizer
// reports it checks what callers rely on: the pixel buffer matches the
// stated size and the resize mode's geometry holds.
#include "core/api_error.hpp"
#include "media/image_preprocess.hpp"

#include <vips/vips8>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

using namespace mmserve;
using namespace mmserve::media;

namespace {

constexpr int kMaxSide = 64;

[[noreturn]] void fail(const char* what, uint32_t width, uint32_t height) {
  std::fprintf(stderr, "invariant broken: %s (output %ux%u)\n", what, width, height);
  std::abort();
}

// The displayed size (EXIF orientation applied) from the header alone.
std::pair<int, int> source_size(std::string_view bytes) {
  vips::VImage image = vips::VImage::new_from_buffer(bytes.data(), bytes.size(), "");
  int width = image.width();
  int height = image.height();
  if (image.get_typeof("orientation") != 0 && image.get_int("orientation") >= 5) std::swap(width, height);
  return {width, height};
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  setenv("VIPS_CONCURRENCY", "1", 0); // one worker: reproducible runs, no contention with the fuzzer
  init_image_library();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  PreprocessPolicy policy;
  policy.max_image_size = kMaxSide;
  policy.max_pixels = 4096ull * 4096ull; // bounded work per input
  policy.max_frames = 64;
  policy.resize_mode = static_cast<ResizeMode>(size % 3); // every mode, without a control byte
  RgbImage out;
  try {
    out = preprocess_image(bytes, policy, "image");
  } catch (const ApiError& error) {
    if (error.status() != 400 && error.status() != 415) fail("unexpected status", 0, 0);
    return 0;
  }
  const uint32_t w = out.width;
  const uint32_t h = out.height;
  if (w == 0 || h == 0) fail("empty image", w, h);
  if (out.pixels.size() != static_cast<size_t>(w) * h * 3) fail("pixel buffer size", w, h);
  const auto [src_w, src_h] = source_size(bytes);
  const uint32_t longest = static_cast<uint32_t>(std::min(kMaxSide, std::max(src_w, src_h)));
  const uint32_t shortest = static_cast<uint32_t>(std::min(kMaxSide, std::min(src_w, src_h)));
  switch (policy.resize_mode) {
  case ResizeMode::fit:
    if (std::max(w, h) != longest) fail("fit: longest side", w, h);
    break;
  case ResizeMode::crop:
    if (w != h || w != shortest) fail("crop: square of the shortest side", w, h);
    break;
  case ResizeMode::pad:
    if (w != h || w != longest) fail("pad: square of the longest side", w, h);
    break;
  }
  if (normalize_image(out).size() != out.pixels.size()) fail("tensor size", w, h);
  return 0;
}
