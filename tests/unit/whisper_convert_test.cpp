#include "engines/asr/whisper_convert.hpp"

#include "whisper.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <unistd.h>

namespace fs = std::filesystem;
using mmserve::asr::ensure_whisper_weights;
using mmserve::asr::whisper_file_ftype;
using mmserve::asr::whisper_weights_of_compute_type;
using mmserve::asr::WhisperWeights;

namespace {

constexpr int kF32 = 0, kF16 = 1, kQ8_0 = 7; // ggml_ftype

std::string contents(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool whisper_loads(const std::string& path) {
  whisper_log_set([](ggml_log_level, const char*, void*) {}, nullptr);
  whisper_context_params params = whisper_context_default_params();
  params.use_gpu = false;
  whisper_context* context = whisper_init_from_file_with_params(path.c_str(), params);
  if (!context) return false;
  whisper_free(context);
  return true;
}

class WhisperConvert : public ::testing::Test {
protected:
  void SetUp() override {
    if (!fs::exists(TINY_WHISPER)) GTEST_SKIP() << TINY_WHISPER << " was not generated (no for-tests-ggml-tiny.bin)";
    cache = fs::temp_directory_path() / ("mmserve-whisper-convert-" + std::to_string(getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(cache);
  }
  void TearDown() override {
    if (!cache.empty()) fs::remove_all(cache);
  }
  fs::path cache;
};

} // namespace

TEST(WhisperWeightsOfComputeType, NamesTheSeedsComputeTypes) {
  EXPECT_EQ(whisper_weights_of_compute_type("float32"), WhisperWeights::f32);
  EXPECT_EQ(whisper_weights_of_compute_type("float16"), WhisperWeights::f16);
  EXPECT_EQ(whisper_weights_of_compute_type("int8"), WhisperWeights::q8_0);
  EXPECT_EQ(whisper_weights_of_compute_type("int8_float16"), WhisperWeights::q8_0);
  EXPECT_THROW(whisper_weights_of_compute_type("bfloat16"), std::invalid_argument);
  EXPECT_THROW(whisper_weights_of_compute_type(""), std::invalid_argument);
}

TEST_F(WhisperConvert, ReadsTheHeadersFtypeAndRefusesOtherFiles) {
  EXPECT_EQ(whisper_file_ftype(TINY_WHISPER), kF16);
  fs::create_directories(cache);
  const fs::path text = cache / "not-a-model.bin";
  std::ofstream(text) << "certainly not a whisper model, but long enough to have a header";
  EXPECT_THROW(whisper_file_ftype(text.string()), std::runtime_error);
  EXPECT_THROW(whisper_file_ftype((cache / "missing.bin").string()), std::runtime_error);
  // Same magic as a whisper model, another layout.
  const fs::path vad = fs::path(MMSERVE_SOURCE_DIR) / "../shared/models/silero-vad-v6.2.0-ggml.bin";
  if (fs::exists(vad)) EXPECT_THROW(whisper_file_ftype(vad.string()), std::runtime_error);
}

TEST_F(WhisperConvert, ConvertsToQ8_0AndF32ThatWhisperCppLoads) {
  EXPECT_EQ(ensure_whisper_weights(TINY_WHISPER, cache.string(), WhisperWeights::f16), TINY_WHISPER);
  EXPECT_FALSE(fs::exists(cache)) << "a model already of the type is used as it is";

  const std::string q8 = ensure_whisper_weights(TINY_WHISPER, cache.string(), WhisperWeights::q8_0);
  EXPECT_EQ(fs::path(q8), cache / "tiny-whisper-random.q8_0.bin");
  EXPECT_EQ(whisper_file_ftype(q8), kQ8_0);
  EXPECT_LT(fs::file_size(q8), fs::file_size(TINY_WHISPER));
  EXPECT_TRUE(whisper_loads(q8));

  const std::string f32 = ensure_whisper_weights(TINY_WHISPER, cache.string(), WhisperWeights::f32);
  EXPECT_EQ(fs::path(f32), cache / "tiny-whisper-random.f32.bin");
  EXPECT_EQ(whisper_file_ftype(f32), kF32);
  EXPECT_GT(fs::file_size(f32), fs::file_size(TINY_WHISPER));
  EXPECT_TRUE(whisper_loads(f32));

  for (const auto& entry : fs::directory_iterator(cache))
    EXPECT_EQ(entry.path().string().find(".part-"), std::string::npos) << entry.path();
}

TEST_F(WhisperConvert, ReusesTheCachedFileUntilTheSourceChanges) {
  fs::create_directories(cache);
  const fs::path source = cache / "model.bin";
  fs::copy_file(TINY_WHISPER, source);
  const fs::path converted = ensure_whisper_weights(source.string(), (cache / "c").string(), WhisperWeights::q8_0);
  const auto written = fs::last_write_time(converted);

  EXPECT_EQ(ensure_whisper_weights(source.string(), (cache / "c").string(), WhisperWeights::q8_0), converted);
  EXPECT_EQ(fs::last_write_time(converted), written) << "reused, not rewritten";

  fs::last_write_time(source, written + std::chrono::seconds(5)); // the source changed after the conversion
  EXPECT_EQ(ensure_whisper_weights(source.string(), (cache / "c").string(), WhisperWeights::q8_0), converted);
  EXPECT_NE(fs::last_write_time(converted), written) << "converted again";
}

TEST_F(WhisperConvert, RefusesToConvertAQuantizedModel) {
  const std::string q8 = ensure_whisper_weights(TINY_WHISPER, cache.string(), WhisperWeights::q8_0);
  EXPECT_EQ(ensure_whisper_weights(q8, (cache / "again").string(), WhisperWeights::q8_0), q8);
  try {
    ensure_whisper_weights(q8, (cache / "again").string(), WhisperWeights::f16);
    ADD_FAILURE() << "converted a Q8_0 model to F16";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find("quantized (q8_0)"), std::string::npos) << error.what();
  }
  EXPECT_THROW(ensure_whisper_weights(q8, (cache / "again").string(), WhisperWeights::f32), std::runtime_error);
  EXPECT_FALSE(fs::exists(cache / "again"));
}

// From f32, the conv kernels are made F16 as whisper.cpp's loader wants them
// in a quantized model: the result is the same file as from f16.
TEST_F(WhisperConvert, QuantizesAnF32ModelToTheSameFileAsItsF16) {
  const std::string f32 = ensure_whisper_weights(TINY_WHISPER, cache.string(), WhisperWeights::f32);
  const std::string from_f32 = ensure_whisper_weights(f32, (cache / "from-f32").string(), WhisperWeights::q8_0);
  const std::string from_f16 = ensure_whisper_weights(TINY_WHISPER, cache.string(), WhisperWeights::q8_0);
  EXPECT_TRUE(whisper_loads(from_f32));
  EXPECT_TRUE(contents(from_f32) == contents(from_f16));
  // And back: f32 -> f16 gives the generator's f16 file again.
  const std::string f16 = ensure_whisper_weights(f32, (cache / "f16").string(), WhisperWeights::f16);
  EXPECT_TRUE(contents(f16) == contents(TINY_WHISPER));
}

// whisper.cpp's own quantizer is the reference: the same bytes.
TEST_F(WhisperConvert, WritesWhatWhisperCppsQuantizerWrites) {
  if (!fs::exists(WHISPER_QUANTIZE)) GTEST_SKIP() << WHISPER_QUANTIZE << " not built";
  const std::string ours = ensure_whisper_weights(TINY_WHISPER, cache.string(), WhisperWeights::q8_0);
  const fs::path theirs = cache / "whisper-quantize.q8_0.bin";
  const std::string command =
      std::string("'") + WHISPER_QUANTIZE + "' '" + TINY_WHISPER + "' '" + theirs.string() + "' q8_0 > /dev/null 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  EXPECT_EQ(fs::file_size(ours), fs::file_size(theirs));
  EXPECT_TRUE(contents(ours) == contents(theirs)) << "not byte-identical to whisper-quantize's output";
}
