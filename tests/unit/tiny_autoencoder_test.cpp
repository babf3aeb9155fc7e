// TAESD on ggml against an independent numpy implementation
// (tools/taesd_reference.py) on the real trained weights, and a round trip
// of a real photograph through the encoder and decoder.
#include "engines/diffusion/safetensors.hpp"
#include "engines/diffusion/tiny_autoencoder.hpp"
#include "media/image_preprocess.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

using namespace mmserve::diffusion;
namespace fs = std::filesystem;

namespace {

fs::path models_dir() {
  const char* env = std::getenv("MMSERVE_TEST_MODELS");
  return env ? fs::path(env) : fs::path(MMSERVE_SOURCE_DIR) / "../shared/models";
}

void write_floats(const fs::path& path, const std::vector<float>& values) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(values.size() * sizeof(float)));
}

std::vector<float> read_floats(const fs::path& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  std::vector<float> values(static_cast<size_t>(in.tellg()) / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(values.size() * sizeof(float)));
  return values;
}

// The numpy reference's output for `input`.
std::vector<float> reference(const std::string& mode, const fs::path& weights, const Planar& input) {
  const fs::path dir = fs::temp_directory_path() / ("mmserve-taesd-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  write_floats(dir / "in.f32", input.values);
  const std::string command = "/usr/bin/python3 " + std::string(MMSERVE_SOURCE_DIR) + "/tools/taesd_reference.py " +
                              mode + " " + weights.string() + " " + (dir / "in.f32").string() + " " +
                              (dir / "out.f32").string() + " " + std::to_string(input.channels) + " " +
                              std::to_string(input.height) + " " + std::to_string(input.width);
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
  auto values = read_floats(dir / "out.f32");
  fs::remove_all(dir);
  return values;
}

Planar random_planar(int channels, int height, int width, unsigned seed, float lo, float hi) {
  std::mt19937 generator(seed);
  std::uniform_real_distribution<float> uniform(lo, hi);
  Planar planar{channels, height, width, {}};
  planar.values.resize(static_cast<size_t>(channels) * height * width);
  for (auto& value : planar.values)
    value = uniform(generator);
  return planar;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  return worst;
}

class TinyAutoencoderTest : public ::testing::Test {
protected:
  void SetUp() override {
    encoder_ = models_dir() / "taesd_encoder.safetensors";
    decoder_ = models_dir() / "taesd_decoder.safetensors";
    if (!fs::exists(encoder_) || !fs::exists(decoder_)) GTEST_SKIP() << "TAESD weights absent in " << models_dir();
  }
  fs::path encoder_, decoder_;
};

} // namespace

TEST_F(TinyAutoencoderTest, DecoderMatchesTheNumpyReference) {
  const TinyAutoencoder taesd("", decoder_.string(), 2);
  EXPECT_EQ(taesd.latent_channels(), 4);
  // Latents as a denoiser leaves them: about unit variance, some past the clamp.
  const Planar latent = random_planar(4, 6, 5, 7, -4.f, 4.f);
  const Planar image = taesd.decode(latent);
  ASSERT_EQ(image.channels, 3);
  ASSERT_EQ(image.height, 48);
  ASSERT_EQ(image.width, 40);
  const auto expected = reference("decode", decoder_, latent);
  ASSERT_EQ(expected.size(), image.values.size());
  EXPECT_LT(max_abs_diff(image.values, expected), 1e-3);
}

TEST_F(TinyAutoencoderTest, EncoderMatchesTheNumpyReference) {
  const TinyAutoencoder taesd(encoder_.string(), "", 2);
  const Planar image = random_planar(3, 32, 24, 11, 0.f, 1.f);
  const Planar latent = taesd.encode(image);
  ASSERT_EQ(latent.channels, 4);
  ASSERT_EQ(latent.height, 4);
  ASSERT_EQ(latent.width, 3);
  const auto expected = reference("encode", encoder_, image);
  ASSERT_EQ(expected.size(), latent.values.size());
  EXPECT_LT(max_abs_diff(latent.values, expected), 1e-3);
}

TEST_F(TinyAutoencoderTest, APhotographSurvivesTheRoundTrip) {
  const fs::path photo = models_dir() / "../media/newspaper-moon.jpeg";
  if (!fs::exists(photo)) GTEST_SKIP() << "test photo absent: " << photo;
  std::ifstream in(photo, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), {});
  mmserve::media::init_image_library();
  mmserve::media::PreprocessPolicy policy;
  policy.max_image_size = 256;
  policy.resize_mode = mmserve::media::ResizeMode::crop;
  const auto rgb = mmserve::media::preprocess_image(bytes, policy, "image");
  const int width = static_cast<int>(rgb.width / 8 * 8), height = static_cast<int>(rgb.height / 8 * 8);
  Planar image{3, height, width, std::vector<float>(static_cast<size_t>(3) * height * width)};
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < 3; ++c)
        image.values[(static_cast<size_t>(c) * height + y) * width + x] =
            rgb.pixels[(static_cast<size_t>(y) * rgb.width + x) * 3 + c] / 255.f;

  const TinyAutoencoder taesd(encoder_.string(), decoder_.string(), 2);
  const Planar back = taesd.decode(taesd.encode(image));
  ASSERT_EQ(back.values.size(), image.values.size());
  double squared = 0;
  for (size_t i = 0; i < image.values.size(); ++i) {
    const double diff = std::clamp(back.values[i], 0.f, 1.f) - image.values[i];
    squared += diff * diff;
  }
  const double psnr = 10 * std::log10(1.0 / (squared / image.values.size()));
  // The baseline a broken codec would not beat: each channel's mean colour everywhere.
  double baseline_squared = 0;
  const size_t plane = static_cast<size_t>(height) * width;
  for (int c = 0; c < 3; ++c) {
    double mean = 0;
    for (size_t i = 0; i < plane; ++i)
      mean += image.values[c * plane + i];
    mean /= plane;
    for (size_t i = 0; i < plane; ++i)
      baseline_squared += (image.values[c * plane + i] - mean) * (image.values[c * plane + i] - mean);
  }
  const double baseline = 10 * std::log10(1.0 / (baseline_squared / image.values.size()));
  std::cout << "TAESD round trip of a 256 px newspaper photograph: PSNR " << psnr << " dB (mean colour: " << baseline
            << " dB)\n";
  EXPECT_GT(psnr, baseline + 5) << "the reconstruction is hardly better than the mean colour"; // measured: +6.4 dB
}

TEST_F(TinyAutoencoderTest, SmoothImagesComeBackClose) {
  // Soft colour gradients, what a latent codec keeps best.
  Planar image{3, 64, 64, std::vector<float>(3 * 64 * 64)};
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 64; ++y)
      for (int x = 0; x < 64; ++x)
        image.values[(static_cast<size_t>(c) * 64 + y) * 64 + x] =
            0.5f + 0.35f * std::sin(0.07f * (x + 1) * (c + 1) + 0.05f * y * (3 - c));
  const TinyAutoencoder taesd(encoder_.string(), decoder_.string(), 2);
  const Planar back = taesd.decode(taesd.encode(image));
  double squared = 0;
  for (size_t i = 0; i < image.values.size(); ++i)
    squared += std::pow(std::clamp(back.values[i], 0.f, 1.f) - image.values[i], 2);
  const double psnr = 10 * std::log10(1.0 / (squared / image.values.size()));
  std::cout << "TAESD round trip of smooth gradients: PSNR " << psnr << " dB\n";
  EXPECT_GT(psnr, 20.0); // measured: 21.8 dB (64 px: the borders weigh much)
}

TEST(Safetensors, RejectsFilesThatLie) {
  const fs::path dir = fs::temp_directory_path() / ("mmserve-safetensors-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const auto write = [&](const std::string& name, const std::string& header, size_t data_bytes) {
    std::ofstream out(dir / name, std::ios::binary);
    const uint64_t size = header.size();
    out.write(reinterpret_cast<const char*>(&size), 8);
    out << header << std::string(data_bytes, '\0');
    return (dir / name).string();
  };
  // A range past the end of the file, a size that disagrees with the shape, a header longer than the file.
  EXPECT_THROW(SafetensorsFile(write("a", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8)),
               SafetensorsError);
  EXPECT_THROW(SafetensorsFile(write("b", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", 16)),
               SafetensorsError);
  EXPECT_THROW(SafetensorsFile(write("c", "{", 0)), SafetensorsError);
  const SafetensorsFile good(write("d", R"({"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})", 4));
  EXPECT_EQ(good.to_f32("w"), (std::vector<float>{0.f, 0.f}));
  EXPECT_THROW(good.info("missing"), SafetensorsError);
  fs::remove_all(dir);
}
