// The media module's image preprocessing on images libvips itself writes in
// every layout the issue names (alpha, grey, 16-bit, CMYK, EXIF rotation,
// animated GIF), and the address policy of URL fetches.
#include "core/api_error.hpp"
#include "media/image_preprocess.hpp"
#include "media/url_fetch.hpp"

#include <gtest/gtest.h>
#include <vips/vips8>

using namespace mmserve;
using namespace mmserve::media;
using vips::VImage;

namespace {

// A w x h sRGB image: left half red, right half blue.
VImage two_halves(int width, int height) {
  VImage red = VImage::black(width / 2, height, VImage::option()->set("bands", 3)).new_from_image({255, 0, 0});
  VImage blue = VImage::black(width - width / 2, height, VImage::option()->set("bands", 3)).new_from_image({0, 0, 255});
  return red.insert(blue, width / 2, 0, VImage::option()->set("expand", true))
      .cast(VIPS_FORMAT_UCHAR)
      .copy(VImage::option()->set("interpretation", VIPS_INTERPRETATION_sRGB));
}

std::string save(const VImage& image, const char* suffix, vips::VOption* options = nullptr) {
  void* buffer = nullptr;
  size_t size = 0;
  image.write_to_buffer(suffix, &buffer, &size, options);
  std::string bytes(static_cast<char*>(buffer), size);
  g_free(buffer);
  return bytes;
}

std::array<int, 3> pixel(const RgbImage& image, uint32_t x, uint32_t y) {
  const size_t i = (static_cast<size_t>(y) * image.width + x) * 3;
  return {image.pixels[i], image.pixels[i + 1], image.pixels[i + 2]};
}

int api_status(const std::function<void()>& action, std::string* code = nullptr) {
  try {
    action();
  } catch (const ApiError& error) {
    if (code) *code = error.code();
    return error.status();
  }
  return 0;
}

class ImagePreprocess : public ::testing::Test {
protected:
  void SetUp() override { init_image_library(); }
};

} // namespace

TEST_F(ImagePreprocess, FitKeepsAspectInsideTheBox) {
  PreprocessPolicy policy;
  policy.max_image_size = 100;
  const RgbImage out = preprocess_image(save(two_halves(400, 200), ".png"), policy, "p");
  EXPECT_EQ(out.width, 100u);
  EXPECT_EQ(out.height, 50u);
  EXPECT_EQ(out.pixels.size(), 100u * 50u * 3u);
  EXPECT_EQ(pixel(out, 5, 25), (std::array<int, 3>{255, 0, 0}));
  EXPECT_EQ(pixel(out, 95, 25), (std::array<int, 3>{0, 0, 255}));
  // Smaller images are not enlarged.
  const RgbImage small = preprocess_image(save(two_halves(40, 20), ".png"), policy, "p");
  EXPECT_EQ(small.width, 40u);
  EXPECT_EQ(small.height, 20u);
}

TEST_F(ImagePreprocess, CropTakesTheCentreSquare) {
  PreprocessPolicy policy;
  policy.max_image_size = 50;
  policy.resize_mode = ResizeMode::crop;
  const RgbImage out = preprocess_image(save(two_halves(400, 100), ".png"), policy, "p");
  EXPECT_EQ(out.width, 50u);
  EXPECT_EQ(out.height, 50u);
  // The centre square straddles the red/blue border in the middle.
  EXPECT_EQ(pixel(out, 2, 25), (std::array<int, 3>{255, 0, 0}));
  EXPECT_EQ(pixel(out, 47, 25), (std::array<int, 3>{0, 0, 255}));
}

TEST_F(ImagePreprocess, PadLetterboxesWithTheConfiguredColour) {
  PreprocessPolicy policy;
  policy.max_image_size = 100;
  policy.resize_mode = ResizeMode::pad;
  policy.background = {0, 255, 0};
  const RgbImage out = preprocess_image(save(two_halves(200, 100), ".png"), policy, "p");
  EXPECT_EQ(out.width, 100u);
  EXPECT_EQ(out.height, 100u);
  EXPECT_EQ(pixel(out, 50, 2), (std::array<int, 3>{0, 255, 0}));  // top bar
  EXPECT_EQ(pixel(out, 50, 97), (std::array<int, 3>{0, 255, 0})); // bottom bar
  EXPECT_EQ(pixel(out, 5, 50), (std::array<int, 3>{255, 0, 0}));
}

TEST_F(ImagePreprocess, AlphaIsCompositedOnTheBackground) {
  VImage rgba = two_halves(20, 10).bandjoin(VImage::black(20, 10).new_from_image(0).cast(VIPS_FORMAT_UCHAR));
  PreprocessPolicy policy;
  policy.background = {10, 20, 30};
  const RgbImage out = preprocess_image(save(rgba, ".png"), policy, "p");
  EXPECT_EQ(pixel(out, 3, 3), (std::array<int, 3>{10, 20, 30})); // fully transparent
}

TEST_F(ImagePreprocess, GreySixteenBitAndCmykBecomeRgb8) {
  VImage grey = VImage::black(16, 8)
                    .new_from_image(128)
                    .cast(VIPS_FORMAT_UCHAR)
                    .copy(VImage::option()->set("interpretation", VIPS_INTERPRETATION_B_W));
  RgbImage out = preprocess_image(save(grey, ".png"), {}, "p");
  EXPECT_EQ(pixel(out, 1, 1), (std::array<int, 3>{128, 128, 128}));

  VImage rgb16 = (two_halves(16, 8).cast(VIPS_FORMAT_USHORT) * 257)
                     .cast(VIPS_FORMAT_USHORT)
                     .copy(VImage::option()->set("interpretation", VIPS_INTERPRETATION_RGB16));
  out = preprocess_image(save(rgb16, ".png"), {}, "p");
  EXPECT_EQ(pixel(out, 1, 1), (std::array<int, 3>{255, 0, 0}));

  // CMYK JPEG: pure cyan ink comes out cyan-ish (red low, green and blue high).
  VImage cmyk = VImage::black(16, 8, VImage::option()->set("bands", 4))
                    .new_from_image({255, 0, 0, 0})
                    .cast(VIPS_FORMAT_UCHAR)
                    .copy(VImage::option()->set("interpretation", VIPS_INTERPRETATION_CMYK));
  out = preprocess_image(save(cmyk, ".jpg"), {}, "p");
  const auto cyan = pixel(out, 8, 4);
  EXPECT_LT(cyan[0], 100);
  EXPECT_GT(cyan[1], 100);
  EXPECT_GT(cyan[2], 150);
}

TEST_F(ImagePreprocess, ExifOrientationIsApplied) {
  // Stored 40x20 with orientation 6 (rotate 90° clockwise to display): shown 20x40.
  VImage stored = two_halves(40, 20).copy();
  stored.set("orientation", 6);
  const RgbImage out = preprocess_image(save(stored, ".jpg"), {}, "p");
  EXPECT_EQ(out.width, 20u);
  EXPECT_EQ(out.height, 40u);
}

TEST_F(ImagePreprocess, WebpAndAnimatedGifFirstFrame) {
  RgbImage out = preprocess_image(save(two_halves(30, 10), ".webp", VImage::option()->set("lossless", true)), {}, "p");
  EXPECT_EQ(out.width, 30u);
  EXPECT_EQ(pixel(out, 2, 5), (std::array<int, 3>{255, 0, 0}));
  // Three 10x10 frames stacked vertically: red, blue, red.
  VImage frames = two_halves(20, 10)
                      .extract_area(0, 0, 10, 10)
                      .join(two_halves(20, 10).extract_area(10, 0, 10, 10), VIPS_DIRECTION_VERTICAL);
  frames = frames.join(two_halves(20, 10).extract_area(0, 0, 10, 10), VIPS_DIRECTION_VERTICAL).copy();
  frames.set("page-height", 10);
  const std::string gif = save(frames, ".gif");
  out = preprocess_image(gif, {}, "p");
  EXPECT_EQ(out.width, 10u);
  EXPECT_EQ(out.height, 10u);
  EXPECT_EQ(pixel(out, 5, 5)[0], 255);
  PreprocessPolicy few_frames;
  few_frames.max_frames = 2;
  std::string code;
  EXPECT_EQ(api_status([&] { preprocess_image(gif, few_frames, "p"); }, &code), 400);
  EXPECT_EQ(code, "image_too_large");
}

TEST_F(ImagePreprocess, RefusesWhatItShould) {
  std::string code;
  PreprocessPolicy png_only;
  png_only.formats = {"png"};
  EXPECT_EQ(api_status([&] { preprocess_image(save(two_halves(8, 8), ".jpg"), png_only, "p"); }, &code), 415);
  EXPECT_EQ(code, "unsupported_image_format");
  EXPECT_EQ(api_status([&] { preprocess_image("plain text", {}, "p"); }, &code), 415);
  PreprocessPolicy few_pixels;
  few_pixels.max_pixels = 100;
  EXPECT_EQ(api_status([&] { preprocess_image(save(two_halves(20, 20), ".jpg"), few_pixels, "p"); }, &code), 400);
  EXPECT_EQ(code, "image_too_large");
  const std::string png = save(two_halves(64, 64), ".png");
  EXPECT_EQ(api_status([&] { preprocess_image(png.substr(0, png.size() / 2), {}, "p"); }, &code), 400);
  EXPECT_EQ(code, "invalid_image");
}

TEST_F(ImagePreprocess, LargeJpegsShrinkOnLoadToTheBound) {
  PreprocessPolicy policy;
  policy.max_image_size = 256;
  const RgbImage out = preprocess_image(save(two_halves(2048, 1024), ".jpg"), policy, "p");
  EXPECT_EQ(out.width, 256u);
  EXPECT_EQ(out.height, 128u);
}

TEST_F(ImagePreprocess, EncodersRoundTrip) {
  const RgbImage source = preprocess_image(save(two_halves(32, 16), ".png"), {}, "p");
  for (const char* format : {"png", "jpeg", "webp"}) {
    const std::string encoded = encode_image(source, format, 95);
    EXPECT_EQ(sniff_image_format(encoded), std::string(format == std::string("jpeg") ? "jpeg" : format));
    const RgbImage back = preprocess_image(encoded, {}, "p");
    EXPECT_EQ(back.width, 32u);
    EXPECT_EQ(back.height, 16u);
    EXPECT_NEAR(pixel(back, 4, 8)[0], 255, 12) << format;
    EXPECT_NEAR(pixel(back, 28, 8)[2], 255, 12) << format;
  }
  EXPECT_EQ(encode_image(source, "png"), encode_image(source, "png")); // deterministic
  EXPECT_THROW(encode_image(source, "bmp"), std::invalid_argument);
}

TEST_F(ImagePreprocess, NormalizeUsesClipMeanAndStdInChwOrder) {
  RgbImage image;
  image.width = 2;
  image.height = 1;
  image.pixels = {255, 0, 0, 0, 0, 255};
  const auto tensor = normalize_image(image);
  ASSERT_EQ(tensor.size(), 6u);
  EXPECT_NEAR(tensor[0], (1.0f - kClipMean[0]) / kClipStd[0], 1e-5); // R of pixel 0
  EXPECT_NEAR(tensor[1], (0.0f - kClipMean[0]) / kClipStd[0], 1e-5); // R of pixel 1
  EXPECT_NEAR(tensor[5], (1.0f - kClipMean[2]) / kClipStd[2], 1e-5); // B of pixel 1
}

TEST(UrlFetchPolicy, InternalAddressesAreRecognised) {
  namespace ip = boost::asio::ip;
  for (const char* internal :
       {"127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fd00:ec2::254", "fc00::1", "ff02::1",
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe"}) {
    EXPECT_TRUE(is_internal_address(ip::make_address(internal))) << internal;
  }
  for (const char* external :
       {"8.8.8.8", "1.1.1.1", "172.32.0.1", "192.169.0.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"}) {
    EXPECT_FALSE(is_internal_address(ip::make_address(external))) << external;
  }
}

TEST(UrlFetchPolicy, NetworksParseAndMatch) {
  namespace ip = boost::asio::ip;
  const auto loopback = parse_network("127.0.0.0/8");
  ASSERT_TRUE(loopback);
  EXPECT_TRUE(loopback->contains(ip::make_address("127.9.9.9")));
  EXPECT_TRUE(loopback->contains(ip::make_address("::ffff:127.0.0.1")));
  EXPECT_FALSE(loopback->contains(ip::make_address("128.0.0.1")));
  const auto host = parse_network("10.1.2.3");
  ASSERT_TRUE(host);
  EXPECT_EQ(host->prefix, 32);
  EXPECT_FALSE(host->contains(ip::make_address("10.1.2.4")));
  const auto ula = parse_network("fd00::/8");
  ASSERT_TRUE(ula);
  EXPECT_TRUE(ula->contains(ip::make_address("fd12::1")));
  EXPECT_FALSE(ula->contains(ip::make_address("fe80::1")));
  for (const char* bad : {"", "10.0.0.0/33", "::/129", "10.0.0/8", "example.com", "10.0.0.0/", "10.0.0.0/x"}) {
    EXPECT_FALSE(parse_network(bad)) << bad;
  }
}
