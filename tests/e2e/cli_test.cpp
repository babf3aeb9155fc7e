// The command line and configuration, through the real binary.
#include "test_server.hpp"

#include <gtest/gtest.h>

using namespace mmserve::test;

namespace {
bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}
} // namespace

TEST(Cli, HelpForEveryRole) {
  for (const char* role : {"serve", "gateway", "vision", "speech", "image"}) {
    const auto result = run_mmserve({role, "--help"});
    EXPECT_EQ(result.exit_code, 0) << role << result.output;
    EXPECT_TRUE(contains(result.output, "--config")) << role << result.output;
  }
  const auto top = run_mmserve({"--help"});
  EXPECT_EQ(top.exit_code, 0);
  for (const char* role : {"serve", "gateway", "vision", "speech", "image"}) {
    EXPECT_TRUE(contains(top.output, role)) << top.output;
  }
}

TEST(Cli, UnknownFlagFailsFast) {
  const auto result = run_mmserve({"serve", "--no-such-flag"});
  EXPECT_NE(result.exit_code, 0);
  EXPECT_TRUE(contains(result.output, "--no-such-flag")) << result.output;
}

TEST(Cli, NoRoleFails) {
  const auto result = run_mmserve({});
  EXPECT_NE(result.exit_code, 0);
}

TEST(Cli, InvalidConfigValueNamesKeyAndAllowedValues) {
  const std::string dir = make_temp_dir("mmserve-cli");
  write_file(dir + "/bad.yaml", "speech:\n  device: gpu\n");
  const auto result = run_mmserve({"serve", "--config", dir + "/bad.yaml"});
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_TRUE(contains(result.output, "speech.device")) << result.output;
  EXPECT_TRUE(contains(result.output, "cpu, cuda, auto")) << result.output;

  write_file(dir + "/unknown.yaml", "server:\n  prot: 1\n");
  const auto unknown = run_mmserve({"serve", "--config", dir + "/unknown.yaml"});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_TRUE(contains(unknown.output, "server.prot")) << unknown.output;
}

TEST(Cli, MissingConfigFileFails) {
  const auto result = run_mmserve({"serve", "--config", "/nonexistent/mmserve.yaml"});
  EXPECT_NE(result.exit_code, 0);
  EXPECT_TRUE(contains(result.output, "/nonexistent/mmserve.yaml")) << result.output;
}

TEST(Cli, SeedEnvironmentOverridesConfig) {
  const auto vision =
      run_mmserve({"vision", "--print-config"}, {{"MODEL_PATH", "/models/llava-v1.6-34b"}, {"LOAD_8BIT", "true"}});
  ASSERT_EQ(vision.exit_code, 0) << vision.output;
  EXPECT_TRUE(contains(vision.output, "model_path: /models/llava-v1.6-34b")) << vision.output;
  EXPECT_TRUE(contains(vision.output, "load_8bit: true")) << vision.output;

  const auto speech = run_mmserve({"speech", "--print-config"},
                                  {{"MODEL_SIZE", "large-v3"}, {"DEVICE", "cuda"}, {"COMPUTE_TYPE", "float16"}});
  ASSERT_EQ(speech.exit_code, 0) << speech.output;
  EXPECT_TRUE(contains(speech.output, "model_size: large-v3")) << speech.output;
  EXPECT_TRUE(contains(speech.output, "device: cuda")) << speech.output;

  const auto image = run_mmserve(
      {"image", "--print-config"},
      {{"MODEL_PATH", "/models/sd-xl-base-1.0"}, {"ENABLE_ATTENTION_SLICING", "true"}, {"ENABLE_VAE_TILING", "true"}});
  ASSERT_EQ(image.exit_code, 0) << image.output;
  EXPECT_TRUE(contains(image.output, "model_path: /models/sd-xl-base-1.0")) << image.output;
  EXPECT_TRUE(contains(image.output, "attention_slicing: true")) << image.output;
  EXPECT_TRUE(contains(image.output, "vae_tiling: true")) << image.output;
}

TEST(Cli, BadEnvironmentValueFails) {
  const auto result = run_mmserve({"speech", "--print-config"}, {{"DEVICE", "tpu"}});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_TRUE(contains(result.output, "DEVICE")) << result.output;
  const auto ambiguous = run_mmserve({"serve", "--print-config"}, {{"MODEL_PATH", "/models/x"}});
  EXPECT_EQ(ambiguous.exit_code, 2);
  EXPECT_TRUE(contains(ambiguous.output, "MODEL_PATH")) << ambiguous.output;
}

TEST(Cli, VllmStyleFlagsFromTheSeed) {
  // The seed's qwen-vl Deployment args, verbatim.
  const auto result = run_mmserve({"vision", "--model=/models/Qwen-VL-Chat", "--trust-remote-code", "--dtype=float16",
                                   "--max-model-len=8192", "--print-config"});
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(contains(result.output, "model_path: /models/Qwen-VL-Chat")) << result.output;
  EXPECT_TRUE(contains(result.output, "dtype: float16")) << result.output;
  EXPECT_TRUE(contains(result.output, "max_model_len: 8192")) << result.output;
  const auto bad_dtype = run_mmserve({"vision", "--dtype=int3", "--print-config"});
  EXPECT_NE(bad_dtype.exit_code, 0);
  EXPECT_TRUE(contains(bad_dtype.output, "dtype")) << bad_dtype.output;
}

TEST(Cli, TrustRemoteCodeIsLoggedAsNotNeeded) {
  ServerProcess server("", "vision", {}, {"--trust-remote-code"});
  server.signal(SIGTERM);
  ASSERT_EQ(server.wait_exit(std::chrono::seconds(10)), 0);
  EXPECT_TRUE(contains(server.log(), "--trust-remote-code accepted and not needed")) << server.log();
}

TEST(Cli, PortInUseFailsWithAddress) {
  ServerProcess first("");
  const auto result = run_mmserve({"serve", "--port", std::to_string(first.port())});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_TRUE(contains(result.output, std::to_string(first.port()))) << result.output;
}

TEST(Cli, ShippedDefaultConfigEqualsBuiltInDefaults) {
  const std::string source = MMSERVE_SOURCE_DIR;
  const auto shipped = run_mmserve({"serve", "--config", source + "/config/mmserve.yaml", "--print-config"});
  const auto builtin = run_mmserve({"serve", "--print-config"});
  ASSERT_EQ(shipped.exit_code, 0) << shipped.output;
  EXPECT_EQ(shipped.output, builtin.output);
}

TEST(Cli, SeedImageProcessorConfigMapIsReadAsItStands) {
  // The seed's ConfigMap data, verbatim, mounted as a file.
  const std::string dir = make_temp_dir("mmserve-media");
  write_file(dir + "/config.yaml", R"(preprocessing:
  max_image_size: 1024
  supported_formats:
    - jpeg
    - png
    - webp
    - gif
  resize_mode: "fit"  # fit/crop/pad
  normalize: true
storage:
  temp_dir: /tmp/images
  max_cache_size: 10Gi
  cleanup_interval: 3600
)");
  write_file(dir + "/mmserve.yaml", "media_config_file: " + dir + "/config.yaml\n");
  const auto result = run_mmserve({"serve", "--config", dir + "/mmserve.yaml", "--print-config"});
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(contains(result.output, "max_cache_size: 10737418240")) << result.output;
  EXPECT_TRUE(contains(result.output, "resize_mode: fit")) << result.output;

  write_file(dir + "/config.yaml", "preprocessing:\n  resize_mode: stretch\n");
  const auto bad = run_mmserve({"serve", "--config", dir + "/mmserve.yaml", "--print-config"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_TRUE(contains(bad.output, "preprocessing.resize_mode")) << bad.output;
  EXPECT_TRUE(contains(bad.output, "fit, crop, pad")) << bad.output;
}
