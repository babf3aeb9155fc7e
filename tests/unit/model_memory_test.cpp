// Where a model's memory estimate goes with GPUs: llama.cpp's placement for
// vision models (layers split by tensor_split or free memory, the projector
// on the first GPU, input embeddings and the image cache on the host),
// whisper and diffusion models whole on the first GPU, and the per-GPU
// budgets. The GPU lists are written out here (this machine has none); the
// model files are the generated test models.
#include "app/model_memory.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <numeric>

using namespace mmserve;

namespace {

constexpr uint64_t MiB = 1ull << 20;

bool have_test_models() {
  return std::filesystem::exists(TINY_LLAMA) && std::filesystem::exists(TINY_MMPROJ) &&
         std::filesystem::exists(TINY_WHISPER) && std::filesystem::exists(TINY_SD);
}

std::vector<GpuInfo> two_gpus(uint64_t free0, uint64_t free1) {
  return {{"CUDA0", 24000 * MiB, free0}, {"CUDA1", 24000 * MiB, free1}};
}

uint64_t sum(const std::vector<uint64_t>& values) {
  return std::accumulate(values.begin(), values.end(), uint64_t{0});
}

} // namespace

TEST(ModelMemory, VisionLayersFollowFreeMemoryOrTensorSplit) {
  if (!have_test_models()) GTEST_SKIP() << "generated test models absent (build target mmserve_test_models)";
  VisionConfig config;
  const auto on_cpu = estimate_vision_memory(TINY_LLAMA, TINY_MMPROJ, config);
  EXPECT_TRUE(on_cpu.gpu_bytes.empty());
  EXPECT_GT(on_cpu.host_bytes, config.image_cache_bytes);

  // Free memory 3:1 and no tensor_split: llama.cpp splits the layers 3:1.
  const auto split = estimate_vision_memory(TINY_LLAMA, TINY_MMPROJ, config, two_gpus(12000 * MiB, 4000 * MiB));
  ASSERT_EQ(split.gpu_bytes.size(), 2u);
  const uint64_t projector = std::filesystem::file_size(TINY_MMPROJ);
  EXPECT_NEAR(static_cast<double>(split.gpu_bytes[0] - projector), 3.0 * static_cast<double>(split.gpu_bytes[1]), 4);
  // Moved, not lost: the same total, plus the host's own compute buffer.
  EXPECT_NEAR(static_cast<double>(split.host_bytes + sum(split.gpu_bytes)),
              static_cast<double>(on_cpu.host_bytes + 32 * MiB), 4);
  // The host keeps the input embeddings and the image-embedding cache.
  EXPECT_GT(split.host_bytes, config.image_cache_bytes + 32 * MiB);

  config.tensor_split = {1, 1};
  const auto even = estimate_vision_memory(TINY_LLAMA, TINY_MMPROJ, config, two_gpus(12000 * MiB, 4000 * MiB));
  EXPECT_NEAR(static_cast<double>(even.gpu_bytes[0] - projector), static_cast<double>(even.gpu_bytes[1]), 2);

  config.tensor_split.clear();
  config.gpu_count = 1;
  const auto first_only = estimate_vision_memory(TINY_LLAMA, TINY_MMPROJ, config, two_gpus(12000 * MiB, 4000 * MiB));
  ASSERT_EQ(first_only.gpu_bytes.size(), 2u);
  EXPECT_EQ(first_only.gpu_bytes[1], 0u);
  EXPECT_NEAR(static_cast<double>(first_only.gpu_bytes[0]), static_cast<double>(sum(split.gpu_bytes)),
              4); // all on GPU 0
}

TEST(ModelMemory, SpeechAndImageGoWholeOnTheFirstGpuUnlessCpu) {
  if (!have_test_models()) GTEST_SKIP() << "generated test models absent (build target mmserve_test_models)";
  SpeechConfig speech;
  const auto speech_cpu = estimate_speech_memory(TINY_WHISPER, speech);
  const auto speech_gpu = estimate_speech_memory(TINY_WHISPER, speech, two_gpus(1000 * MiB, 1000 * MiB));
  EXPECT_TRUE(speech_cpu.gpu_bytes.empty());
  ASSERT_EQ(speech_gpu.gpu_bytes.size(), 1u);
  EXPECT_EQ(speech_gpu.gpu_bytes[0], speech_cpu.host_bytes);
  speech.device = "cpu";
  EXPECT_TRUE(estimate_speech_memory(TINY_WHISPER, speech, two_gpus(1000 * MiB, 1000 * MiB)).gpu_bytes.empty());

  ImageConfig image;
  const auto image_cpu = estimate_image_memory(TINY_SD, image);
  const auto image_gpu = estimate_image_memory(TINY_SD, image, two_gpus(1000 * MiB, 1000 * MiB));
  ASSERT_EQ(image_gpu.gpu_bytes.size(), 1u);
  EXPECT_EQ(image_gpu.gpu_bytes[0], image_cpu.host_bytes);
  image.device = "cpu";
  EXPECT_TRUE(estimate_image_memory(TINY_SD, image, two_gpus(1000 * MiB, 1000 * MiB)).gpu_bytes.empty());
}

TEST(ModelMemory, GpuBudgetsFromConfigOrNinetyPercent) {
  const auto gpus = two_gpus(1000 * MiB, 1000 * MiB);
  RegistryConfig config;
  EXPECT_EQ(gpu_budgets(config, gpus), (std::vector<uint64_t>{24000 * MiB / 10 * 9, 24000 * MiB / 10 * 9}));
  config.gpu_memory_budget = {8000 * MiB};
  EXPECT_EQ(gpu_budgets(config, gpus), (std::vector<uint64_t>{8000 * MiB, 24000 * MiB / 10 * 9}));
  config.gpu_memory_budget_each = true;
  EXPECT_EQ(gpu_budgets(config, gpus), (std::vector<uint64_t>{8000 * MiB, 8000 * MiB}));
  EXPECT_TRUE(gpu_budgets(config, {}).empty());
}
