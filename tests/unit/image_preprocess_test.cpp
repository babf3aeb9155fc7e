// The media module's image preprocessing on images libvips itself writes in
// every format and layout the issue names (alpha, grey, 16-bit, CMYK, all
// eight EXIF orientations, animated GIF), on odd sizes, and on hostile files
// (decompression bombs, truncation, polyglots).
#include "core/api_error.hpp"
#include "media/image_preprocess.hpp"

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

// Odd sizes: the centre, the rounding of the short side and the bars are
// where off-by-one errors live.
TEST_F(ImagePreprocess, FitCropAndPadOnOddSizes) {
  const std::string odd = save(two_halves(301, 199), ".png"); // red 150 columns, blue 151
  PreprocessPolicy policy;
  policy.max_image_size = 101;
  RgbImage out = preprocess_image(odd, policy, "p");
  EXPECT_EQ(out.width, 101u);
  EXPECT_EQ(out.height, 67u); // 199 * 101 / 301 = 66.8
  EXPECT_EQ(pixel(out, 0, 0), (std::array<int, 3>{255, 0, 0}));
  EXPECT_EQ(pixel(out, 100, 66), (std::array<int, 3>{0, 0, 255}));

  policy.resize_mode = ResizeMode::crop;
  out = preprocess_image(odd, policy, "p");
  EXPECT_EQ(out.width, 101u);
  EXPECT_EQ(out.height, 101u);
  // The centre 199 columns start at x = 51: 99 red, then 100 blue.
  EXPECT_EQ(pixel(out, 0, 50), (std::array<int, 3>{255, 0, 0}));
  EXPECT_EQ(pixel(out, 100, 50), (std::array<int, 3>{0, 0, 255}));

  policy.resize_mode = ResizeMode::pad;
  policy.background = {0, 255, 0};
  out = preprocess_image(odd, policy, "p");
  EXPECT_EQ(out.width, 101u);
  EXPECT_EQ(out.height, 101u);
  // 67 rows of image in 101: 17 rows of bar above, 17 below.
  EXPECT_EQ(pixel(out, 50, 16), (std::array<int, 3>{0, 255, 0}));
  EXPECT_EQ(pixel(out, 0, 17)[0], 255);
  EXPECT_EQ(pixel(out, 50, 84), (std::array<int, 3>{0, 255, 0}));
  EXPECT_EQ(pixel(out, 100, 83)[2], 255);

  // No bound: crop still takes the centre square of a small odd image.
  policy.resize_mode = ResizeMode::crop;
  policy.max_image_size = 0;
  out = preprocess_image(save(two_halves(7, 3), ".png"), policy, "p");
  EXPECT_EQ(out.width, 3u);
  EXPECT_EQ(out.height, 3u);
  EXPECT_EQ(pixel(out, 0, 1), (std::array<int, 3>{255, 0, 0})); // column 2 of 7: red (0..2)
  EXPECT_EQ(pixel(out, 2, 1), (std::array<int, 3>{0, 0, 255})); // column 4: blue (3..6)
}

// Found by the image fuzzer's geometry check: JPEG shrink-on-load was sized
// on the longest side, so crop (sized on the shortest) of a panorama came
// out far below max_image_size.
TEST_F(ImagePreprocess, CropOfAWideJpegKeepsTheBound) {
  PreprocessPolicy policy;
  policy.max_image_size = 256;
  policy.resize_mode = ResizeMode::crop;
  const RgbImage out = preprocess_image(save(two_halves(2048, 320), ".jpg"), policy, "p");
  EXPECT_EQ(out.width, 256u);
  EXPECT_EQ(out.height, 256u);
}

// Found by the image fuzzer: a shrink-on-load that takes a side to 0 pixels
// makes Debian's libvips abort the whole process (16448x1 with shrink 2).
// A line of an image is shrunk after decoding instead.
TEST_F(ImagePreprocess, AOnePixelHighJpegIsNotShrunkOnLoadToNothing) {
  PreprocessPolicy policy;
  policy.max_image_size = 256;
  for (const int height : {1, 3}) {
    const RgbImage out = preprocess_image(save(two_halves(4096, height), ".jpg"), policy, "p");
    EXPECT_EQ(out.width, 256u) << height;
    EXPECT_GE(out.height, 1u) << height;
    EXPECT_EQ(out.pixels.size(), static_cast<size_t>(out.width) * out.height * 3);
  }
}

// Stored 48x32 in four quadrants; every EXIF orientation must come out as
// the image is meant to be seen (the EXIF 2.32 table, section 4.6.4).
TEST_F(ImagePreprocess, AllEightExifOrientations) {
  using Rgb = std::array<int, 3>;
  const Rgb red{255, 0, 0}, green{0, 255, 0}, blue{0, 0, 255}, white{255, 255, 255};
  const auto block = [](const Rgb& c) {
    return VImage::black(24, 16, VImage::option()->set("bands", 3))
        .new_from_image({double(c[0]), double(c[1]), double(c[2])});
  };
  VImage stored = block(red)
                      .join(block(green), VIPS_DIRECTION_HORIZONTAL)
                      .join(block(blue).join(block(white), VIPS_DIRECTION_HORIZONTAL), VIPS_DIRECTION_VERTICAL)
                      .cast(VIPS_FORMAT_UCHAR)
                      .copy(VImage::option()->set("interpretation", VIPS_INTERPRETATION_sRGB));
  struct Case {
    int orientation;
    Rgb top_left, top_right, bottom_left, bottom_right;
  };
  const Case cases[] = {
      {1, red, green, blue, white}, // as stored
      {2, green, red, white, blue}, // mirrored left-right
      {3, white, blue, green, red}, // rotated 180
      {4, blue, white, red, green}, // mirrored top-bottom
      {5, red, blue, green, white}, // transposed
      {6, blue, red, white, green}, // rotated 90 clockwise
      {7, white, green, blue, red}, // transversed
      {8, green, white, red, blue}, // rotated 90 anticlockwise
  };
  for (const Case& c : cases) {
    VImage tagged = stored.copy();
    tagged.set("orientation", c.orientation);
    const RgbImage out = preprocess_image(save(tagged, ".jpg", VImage::option()->set("Q", 100)), {}, "p");
    const bool turned = c.orientation >= 5;
    EXPECT_EQ(out.width, turned ? 32u : 48u) << c.orientation;
    EXPECT_EQ(out.height, turned ? 48u : 32u) << c.orientation;
    const auto near = [&](const Rgb& got, const Rgb& want, const char* corner) {
      for (int i = 0; i < 3; ++i)
        EXPECT_NEAR(got[i], want[i], 8) << "orientation " << c.orientation << ", " << corner;
    };
    near(pixel(out, 3, 3), c.top_left, "top left");
    near(pixel(out, out.width - 4, 3), c.top_right, "top right");
    near(pixel(out, 3, out.height - 4), c.bottom_left, "bottom left");
    near(pixel(out, out.width - 4, out.height - 4), c.bottom_right, "bottom right");
  }
}

// Every supported format in every colour model it can store: the left half
// must come out red and the right half blue (or the background where
// transparent), at the stored size.
TEST_F(ImagePreprocess, EveryFormatAndColourModel) {
  const VImage rgb = two_halves(32, 16);
  // Alpha: the right half fully transparent.
  const VImage half_alpha = VImage::black(16, 16)
                                .new_from_image(255)
                                .cast(VIPS_FORMAT_UCHAR)
                                .join(VImage::black(16, 16).cast(VIPS_FORMAT_UCHAR), VIPS_DIRECTION_HORIZONTAL);
  const VImage rgba = rgb.bandjoin(half_alpha);
  const auto as = [](VImage image, VipsInterpretation interpretation) {
    return image.copy(VImage::option()->set("interpretation", interpretation));
  };
  const VImage grey = as(rgb.colourspace(VIPS_INTERPRETATION_B_W), VIPS_INTERPRETATION_B_W);
  const VImage grey_alpha = grey.bandjoin(half_alpha);
  const VImage rgb16 = as((rgb.cast(VIPS_FORMAT_USHORT) * 257).cast(VIPS_FORMAT_USHORT), VIPS_INTERPRETATION_RGB16);
  const VImage rgba16 = as((rgba.cast(VIPS_FORMAT_USHORT) * 257).cast(VIPS_FORMAT_USHORT), VIPS_INTERPRETATION_RGB16);
  const VImage grey16 = as((grey.cast(VIPS_FORMAT_USHORT) * 257).cast(VIPS_FORMAT_USHORT), VIPS_INTERPRETATION_GREY16);
  const VImage cmyk = as(rgb.icc_export(VImage::option()->set("output_profile", "cmyk")), VIPS_INTERPRETATION_CMYK);
  enum class Right { blue, background, grey };
  struct Case {
    const char* name;
    VImage image;
    const char* suffix;
    vips::VOption* options;
    Right right;
    int tolerance;
  };
  const std::array<unsigned char, 3> background = {0, 255, 0};
  const Case cases[] = {
      {"jpeg rgb", rgb, ".jpg", VImage::option()->set("Q", 95), Right::blue, 12},
      {"jpeg grey", grey, ".jpg", VImage::option()->set("Q", 95), Right::grey, 12},
      {"jpeg cmyk", cmyk, ".jpg", VImage::option()->set("Q", 95), Right::blue, 12},
      {"png rgb", rgb, ".png", nullptr, Right::blue, 0},
      {"png rgba", rgba, ".png", nullptr, Right::background, 0},
      {"png grey", grey, ".png", nullptr, Right::grey, 0},
      {"png grey+alpha", grey_alpha, ".png", nullptr, Right::background, 0},
      {"png rgb 16-bit", rgb16, ".png", nullptr, Right::blue, 0},
      {"png rgba 16-bit", rgba16, ".png", nullptr, Right::background, 0},
      {"png grey 16-bit", grey16, ".png", nullptr, Right::grey, 0},
      {"png palette", rgb, ".png", VImage::option()->set("palette", true), Right::blue, 2},
      {"webp lossy", rgb, ".webp", VImage::option()->set("Q", 95), Right::blue, 16},
      {"webp lossless", rgb, ".webp", VImage::option()->set("lossless", true), Right::blue, 0},
      {"webp alpha", rgba, ".webp", VImage::option()->set("lossless", true), Right::background, 0},
      {"gif", rgb, ".gif", nullptr, Right::blue, 2},
      {"gif transparency", rgba, ".gif", nullptr, Right::background, 2},
  };
  PreprocessPolicy policy;
  policy.background = background;
  const int grey_left = static_cast<int>(grey.getpoint(2, 8)[0]);
  const int grey_right = static_cast<int>(grey.getpoint(30, 8)[0]);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const RgbImage out = preprocess_image(save(c.image, c.suffix, c.options), policy, "p");
    ASSERT_EQ(out.width, 32u);
    ASSERT_EQ(out.height, 16u);
    const bool is_grey = c.right == Right::grey || std::string(c.name).find("grey") != std::string::npos;
    std::array<int, 3> left =
        is_grey ? std::array<int, 3>{grey_left, grey_left, grey_left} : std::array<int, 3>{255, 0, 0};
    std::array<int, 3> right = {0, 0, 255};
    if (c.image.interpretation() == VIPS_INTERPRETATION_CMYK) {
      // Saturated sRGB red and blue lie outside the CMYK gamut: the reference
      // is libvips' own CMYK to sRGB conversion of the stored ink values.
      const VImage reference = c.image.colourspace(VIPS_INTERPRETATION_sRGB);
      for (int i = 0; i < 3; ++i) {
        left[i] = static_cast<int>(reference.getpoint(4, 8)[i] + 0.5);
        right[i] = static_cast<int>(reference.getpoint(27, 8)[i] + 0.5);
      }
    }
    if (c.right == Right::grey) right = {grey_right, grey_right, grey_right};
    if (c.right == Right::background) right = {background[0], background[1], background[2]};
    for (int i = 0; i < 3; ++i) {
      EXPECT_NEAR(pixel(out, 4, 8)[i], left[i], c.tolerance) << "left, channel " << i;
      EXPECT_NEAR(pixel(out, 27, 8)[i], right[i], c.tolerance) << "right, channel " << i;
    }
  }
}

// Decompression bombs: a few bytes whose header claims billions of pixels
// are refused from the header alone, before a decoder allocates anything.
TEST_F(ImagePreprocess, DecompressionBombsAreRefusedFromTheHeader) {
  const auto refused = [](const std::string& bytes) {
    std::string code;
    const int status = api_status([&] { preprocess_image(bytes, {}, "p"); }, &code);
    return status == 400 && code == "image_too_large";
  };
  // PNG: a real 1x1 image whose IHDR claims 100000x100000 (the CRC is not
  // checked by the header bound, which runs first).
  std::string png = save(two_halves(2, 1), ".png");
  const char big[] = {0x00, 0x01, static_cast<char>(0x86), static_cast<char>(0xA0)}; // 100000
  png.replace(16, 4, big, 4);
  png.replace(20, 4, big, 4);
  EXPECT_TRUE(refused(png));
  // JPEG: SOF0 claiming 65000x65000.
  std::string jpeg = save(two_halves(16, 16), ".jpg");
  const size_t sof = jpeg.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  jpeg[sof + 5] = jpeg[sof + 7] = static_cast<char>(0xFD);
  jpeg[sof + 6] = jpeg[sof + 8] = static_cast<char>(0xE8);
  EXPECT_TRUE(refused(jpeg));
  // GIF: logical screen 65535x65535.
  std::string gif = save(two_halves(4, 4), ".gif");
  gif.replace(6, 4, "\xFF\xFF\xFF\xFF", 4);
  EXPECT_TRUE(refused(gif));
  // A real 9000x8000 PNG (72 Mpixel, past the default 64 Mpixel): about 80 kB.
  const std::string real =
      save(VImage::black(9000, 8000).cast(VIPS_FORMAT_UCHAR), ".png", VImage::option()->set("compression", 1));
  EXPECT_LT(real.size(), 4u << 20);
  EXPECT_TRUE(refused(real));
}

TEST_F(ImagePreprocess, TruncatedFilesAreInvalidInEveryFormat) {
  for (const char* suffix : {".jpg", ".png", ".webp", ".gif"}) {
    const std::string whole = save(two_halves(64, 64), suffix);
    // Cut inside the pixel data (a PNG cut inside IEND still holds every pixel).
    for (const size_t keep : {whole.size() / 2, whole.size() - 20}) {
      std::string code;
      EXPECT_EQ(api_status([&] { preprocess_image(whole.substr(0, keep), {}, "p"); }, &code), 400)
          << suffix << " cut to " << keep << " of " << whole.size();
      EXPECT_EQ(code, "invalid_image") << suffix;
    }
  }
}

// Files that are two things at once decode as what their magic bytes say,
// or are refused; never as the other thing.
TEST_F(ImagePreprocess, PolyglotFiles) {
  const std::string png = save(two_halves(32, 16), ".png");
  // PNG with a ZIP archive appended (a classic polyglot): the PNG part decodes.
  const std::string zip = std::string("PK\x03\x04", 4) + std::string(26, '\0') + "payload.txt" + "not an image";
  RgbImage out = preprocess_image(png + zip, {}, "p");
  EXPECT_EQ(out.width, 32u);
  EXPECT_EQ(pixel(out, 2, 8), (std::array<int, 3>{255, 0, 0}));
  // ZIP first, PNG after: not an image.
  EXPECT_EQ(api_status([&] { preprocess_image(zip + png, {}, "p"); }), 415);
  // GIF header with a script after it (the GIFAR/JS trick): a GIF that does not decode.
  std::string code;
  EXPECT_EQ(api_status([&] { preprocess_image("GIF89a/*\x00\x00*/=1;alert(1)//", {}, "p"); }, &code), 400);
  EXPECT_EQ(code, "invalid_image");
  // JPEG magic in front of a PNG: sniffed as JPEG, refused when it does not decode as one.
  EXPECT_EQ(api_status([&] { preprocess_image("\xFF\xD8\xFF" + png, {}, "p"); }, &code), 400);
  EXPECT_EQ(code, "invalid_image");
  // ... and refused as the format the configuration does not allow.
  PreprocessPolicy png_only;
  png_only.formats = {"png"};
  EXPECT_EQ(api_status([&] { preprocess_image("\xFF\xD8\xFF" + png, png_only, "p"); }), 415);
}

TEST_F(ImagePreprocess, ReportsTheTimeOfEachStep) {
  PreprocessTimings timings;
  PreprocessPolicy policy;
  policy.max_image_size = 64;
  preprocess_image(save(two_halves(640, 480), ".jpg"), policy, "p", &timings);
  EXPECT_GT(timings.decode, 0.0);
  EXPECT_GT(timings.resize, 0.0);
  EXPECT_LT(timings.decode + timings.resize, 10.0);
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

// The generation parameters travel in the PNG (A1111's "parameters" text
// chunk; libvips writes it compressed, as zTXt), read back by libvips' loader.
TEST_F(ImagePreprocess, PngCarriesTextChunks) {
  const RgbImage source = preprocess_image(save(two_halves(32, 16), ".png"), {}, "p");
  const std::string text = "a red fox\nSteps: 4, Sampler: Euler a, Seed: 7";
  const std::string encoded = encode_image(source, "png", 90, {{"parameters", text}});
  EXPECT_NE(encoded.find(std::string("zTXtparameters") + '\0'), std::string::npos);
  const VImage back = VImage::new_from_buffer(encoded.data(), encoded.size(), "");
  EXPECT_EQ(std::string(back.get_string("png-comment-0-parameters")), text);
  EXPECT_EQ(preprocess_image(encoded, {}, "p").pixels, source.pixels); // still the same image
  EXPECT_THROW(encode_image(source, "png", 90, {{"bad key", "x"}}), std::invalid_argument);
  EXPECT_THROW(encode_image(source, "jpeg", 90, {{"parameters", "x"}}), std::invalid_argument);
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
