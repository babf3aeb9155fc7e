#include "core/config.hpp"

#include <gtest/gtest.h>

using namespace mmserve;

namespace {
std::string error_of(const std::string& yaml) {
  try {
    parse_config(yaml, "test.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}
} // namespace

TEST(Config, DefaultsMatchTheSeed) {
  const Config config = parse_config("", "empty");
  EXPECT_EQ(config.server.max_body_bytes, 100ull << 20);  // proxy-body-size: 100m
  EXPECT_DOUBLE_EQ(config.server.request_timeout_s, 300); // proxy-read-timeout: 300
  EXPECT_EQ(config.media.max_image_size, 1024);
  EXPECT_EQ(config.media.resize_mode, "fit");
  EXPECT_EQ(config.media.max_cache_bytes, 10ull << 30);
  EXPECT_DOUBLE_EQ(config.media.cleanup_interval_s, 3600);
  EXPECT_EQ(config.media.supported_formats, (std::vector<std::string>{"jpeg", "png", "webp", "gif"}));
}

TEST(Config, ReadsEverySection) {
  const Config config = parse_config(R"(
models_dir: /models
server: {host: 0.0.0.0, port: 8000, max_body_size: 100m, request_timeout: 300, shutdown_grace_period: 45s}
logging: {level: debug, format: json, access_log: false}
vision: {model_path: /models/llava-v1.6-34b, load_8bit: true, dtype: float16, max_model_len: 8192}
speech: {model_size: large-v3, device: cuda, compute_type: float16}
image: {model_path: /models/sd-xl-base-1.0, attention_slicing: true, vae_tiling: true, outputs_dir: /outputs}
media:
  preprocessing: {max_image_size: 1024, supported_formats: [jpeg, png], resize_mode: pad, normalize: false}
  storage: {temp_dir: /tmp/images, max_cache_size: 10Gi, cleanup_interval: 3600}
)",
                                     "full.yaml");
  EXPECT_EQ(config.server.host, "0.0.0.0");
  EXPECT_EQ(config.server.port, 8000);
  EXPECT_DOUBLE_EQ(config.server.shutdown_grace_s, 45);
  EXPECT_EQ(config.logging.format, "json");
  EXPECT_FALSE(config.logging.access_log);
  EXPECT_TRUE(config.vision.load_8bit);
  EXPECT_EQ(config.vision.max_model_len, 8192);
  EXPECT_EQ(config.speech.model_size, "large-v3");
  EXPECT_EQ(config.speech.device, "cuda");
  EXPECT_TRUE(config.image.attention_slicing);
  EXPECT_EQ(config.image.outputs_dir, "/outputs");
  EXPECT_EQ(config.media.resize_mode, "pad");
  EXPECT_FALSE(config.media.normalize);
  EXPECT_EQ(config.media.supported_formats.size(), 2u);
}

TEST(Config, UnknownKeyNamesKeyAndAllowed) {
  const auto message = error_of("server:\n  prot: 80\n");
  EXPECT_NE(message.find("server.prot"), std::string::npos) << message;
  EXPECT_NE(message.find("unknown key"), std::string::npos) << message;
  EXPECT_NE(message.find("port"), std::string::npos) << message; // the allowed list
  EXPECT_NE(error_of("bogus: 1\n").find("bogus"), std::string::npos);
}

TEST(Config, BadEnumNamesAllowedValues) {
  const auto message = error_of("speech:\n  device: gpu\n");
  EXPECT_NE(message.find("speech.device"), std::string::npos) << message;
  EXPECT_NE(message.find("'gpu'"), std::string::npos) << message;
  EXPECT_NE(message.find("cpu, cuda, auto"), std::string::npos) << message;
  const auto image_device = error_of("image: {device: tpu}");
  EXPECT_NE(image_device.find("image.device"), std::string::npos) << image_device;
  EXPECT_NE(image_device.find("cpu, cuda, auto"), std::string::npos) << image_device;
  const auto quantize = error_of("image: {quantize: q4_0}");
  EXPECT_NE(quantize.find("image.quantize"), std::string::npos) << quantize;
  EXPECT_NE(quantize.find("none, q8_0"), std::string::npos) << quantize;
}

TEST(Config, BadValues) {
  EXPECT_NE(error_of("server: {port: 70000}").find("server.port"), std::string::npos);
  EXPECT_NE(error_of("server: {port: eighty}").find("server.port"), std::string::npos);
  EXPECT_NE(error_of("server: {max_body_size: 10XB}").find("server.max_body_size"), std::string::npos);
  EXPECT_NE(error_of("vision: {load_8bit: maybe}").find("vision.load_8bit"), std::string::npos);
  EXPECT_NE(error_of("media: {preprocessing: {resize_mode: stretch}}").find("media.preprocessing.resize_mode"),
            std::string::npos);
  EXPECT_NE(error_of("media: {preprocessing: {supported_formats: [bmp]}}").find("'bmp'"), std::string::npos);
  EXPECT_NE(error_of("server: [1, 2]").find("server"), std::string::npos);
  EXPECT_NE(error_of("server: {port: [1]}").find("single value"), std::string::npos);
  EXPECT_NE(error_of("server: {port: 1\n").find("not valid YAML"), std::string::npos);
  EXPECT_NE(error_of("media: {fetch: {allow_networks: [10.0.0.0/33]}}").find("media.fetch.allow_networks"),
            std::string::npos);
  EXPECT_NE(error_of("media: {fetch: {allow_networks: 10.0.0.0/8}}").find("must be a list"), std::string::npos);
  EXPECT_NE(error_of("media: {preprocessing: {background: white}}").find("#rrggbb"), std::string::npos);
  EXPECT_NE(error_of("vision: {tensor_split: [1, -2]}").find("vision.tensor_split"), std::string::npos);
  EXPECT_NE(error_of("media: {fetch: {retries: 3}}").find("unknown key"), std::string::npos);
}

TEST(Config, FetchAndSplitSettings) {
  const Config config = parse_config("vision: {tensor_split: [3, 1]}\n"
                                     "media: {fetch: {allow_networks: [127.0.0.0/8, 'fd00::/8'], timeout: 2s, "
                                     "max_bytes: 5Mi, max_redirects: 0}, preprocessing: {background: '#102030'}}",
                                     "test.yaml");
  EXPECT_EQ(config.vision.tensor_split, (std::vector<double>{3, 1}));
  EXPECT_EQ(config.media.fetch_allow_networks, (std::vector<std::string>{"127.0.0.0/8", "fd00::/8"}));
  EXPECT_EQ(config.media.fetch_timeout_s, 2);
  EXPECT_EQ(config.media.fetch_max_bytes, 5ull << 20);
  EXPECT_EQ(config.media.fetch_max_redirects, 0);
  EXPECT_EQ(config.media.background, "#102030");
}

TEST(Environment, SeedVariablesOverrideForTheirRole) {
  Config config;
  const auto applied =
      apply_environment(config, Role::vision, {{"MODEL_PATH", "/models/llava-v1.6-34b"}, {"LOAD_8BIT", "true"}});
  EXPECT_EQ(config.vision.model_path, "/models/llava-v1.6-34b");
  EXPECT_TRUE(config.vision.load_8bit);
  EXPECT_EQ(applied.size(), 2u);

  Config image;
  apply_environment(
      image, Role::image,
      {{"MODEL_PATH", "/models/sd-xl-base-1.0"}, {"ENABLE_ATTENTION_SLICING", "true"}, {"ENABLE_VAE_TILING", "true"}});
  EXPECT_EQ(image.image.model_path, "/models/sd-xl-base-1.0");
  EXPECT_TRUE(image.image.attention_slicing);
  EXPECT_TRUE(image.image.vae_tiling);

  Config speech;
  apply_environment(speech, Role::speech,
                    {{"MODEL_SIZE", "large-v3"}, {"DEVICE", "cuda"}, {"COMPUTE_TYPE", "float16"}});
  EXPECT_EQ(speech.speech.model_size, "large-v3");
  EXPECT_EQ(speech.speech.device, "cuda");
  EXPECT_EQ(speech.speech.compute_type, "float16");
}

TEST(Environment, BadValuesAndAmbiguityFailWithNames) {
  Config config;
  try {
    apply_environment(config, Role::speech, {{"DEVICE", "tpu"}});
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("DEVICE"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("cpu, cuda, auto"), std::string::npos);
  }
  EXPECT_THROW(apply_environment(config, Role::vision, {{"LOAD_8BIT", "sure"}}), ConfigError);
  EXPECT_THROW(apply_environment(config, Role::serve, {{"MODEL_PATH", "/models/x"}}), ConfigError);
}

TEST(Config, DumpRoundTrips) {
  Config config = parse_config("server: {port: 9000}\nvision: {model_path: /m, dtype: bfloat16}\n", "in");
  finalize_config(config);
  const Config again = parse_config(dump_config(config), "dump");
  EXPECT_EQ(again.server.port, 9000);
  EXPECT_EQ(again.vision.model_path, "/m");
  EXPECT_EQ(again.vision.dtype, "bfloat16");
  EXPECT_EQ(again.server.max_body_bytes, config.server.max_body_bytes);
}

TEST(Config, RegistryModelsBudgetAndAdminKeys) {
  const Config defaults = parse_config("", "empty");
  EXPECT_EQ(defaults.registry.memory_budget, 0u); // auto
  EXPECT_TRUE(defaults.registry.include_store);
  const Config config = parse_config(R"(
registry:
  memory_budget: 12Gi
  idle_unload: 15m
  admin_api_keys: [{name: ops, sha256: 16175223C8DDCE5ACE0493C948569C211B03C4C6BB3D3E484434999448CFFE01}]
  models:
    - {name: small, service: vision, path: /models/small.gguf, mmproj: /models/mmproj.gguf, preload: true}
    - {name: large-v3, service: speech, path: /models/ggml-large-v3.bin}
)",
                                     "registry.yaml");
  EXPECT_EQ(config.registry.memory_budget, 12ull << 30);
  EXPECT_DOUBLE_EQ(config.registry.idle_unload_s, 900);
  ASSERT_EQ(config.registry.admin_api_keys.size(), 1u);
  EXPECT_EQ(config.registry.admin_api_keys[0].sha256,
            "16175223c8ddce5ace0493c948569c211b03c4c6bb3d3e484434999448cffe01");
  ASSERT_EQ(config.registry.models.size(), 2u);
  EXPECT_EQ(config.registry.models[0].mmproj, "/models/mmproj.gguf");
  EXPECT_TRUE(config.registry.models[0].preload);
  EXPECT_EQ(config.registry.models[1].service, "speech");
  EXPECT_FALSE(config.registry.models[1].preload);
  // Round trip through --print-config.
  const Config again = parse_config(dump_config(config), "dump");
  EXPECT_EQ(again.registry.memory_budget, 12ull << 30);
  EXPECT_EQ(again.registry.models.size(), 2u);
  EXPECT_EQ(parse_config(dump_config(defaults), "dump").registry.memory_budget, 0u);

  EXPECT_NE(error_of("registry: {memory_budget: lots}").find("registry.memory_budget"), std::string::npos);
  EXPECT_NE(error_of("registry: {models: [{name: a, service: audio, path: /x}]}").find("registry.models[0].service"),
            std::string::npos);
  EXPECT_NE(error_of("registry: {models: [{name: a, service: vision}]}").find("needs path"), std::string::npos);
  EXPECT_NE(error_of("registry: {models: [{name: a, service: vision, path: /x}, {name: a, service: speech, path: /y}]}")
                .find("repeats the name 'a'"),
            std::string::npos);
  EXPECT_NE(error_of("registry: {memory_budgt: 1Gi}").find("registry.memory_budgt: unknown key"), std::string::npos);
}

TEST(Config, RegistryRescanInterval) {
  EXPECT_DOUBLE_EQ(parse_config("", "empty").registry.rescan_interval_s, 10);
  const Config config = parse_config("registry: {rescan_interval: 500ms}", "rescan.yaml");
  EXPECT_DOUBLE_EQ(config.registry.rescan_interval_s, 0.5);
  EXPECT_DOUBLE_EQ(parse_config(dump_config(config), "dump").registry.rescan_interval_s, 0.5);
  EXPECT_DOUBLE_EQ(parse_config("registry: {rescan_interval: 0}", "off.yaml").registry.rescan_interval_s, 0);
  EXPECT_NE(error_of("registry: {rescan_interval: soon}").find("registry.rescan_interval"), std::string::npos);
  EXPECT_NE(error_of("registry: {rescan_interval: -1s}").find("registry.rescan_interval"), std::string::npos);
}

TEST(Config, RegistryGpuMemoryBudget) {
  const Config defaults = parse_config("", "empty");
  EXPECT_TRUE(defaults.registry.gpu_memory_budget.empty()); // auto
  const Config each = parse_config("registry: {gpu_memory_budget: 20Gi}", "each.yaml");
  EXPECT_EQ(each.registry.gpu_memory_budget, std::vector<uint64_t>{20ull << 30});
  EXPECT_TRUE(each.registry.gpu_memory_budget_each);
  const Config listed = parse_config("registry: {gpu_memory_budget: [20Gi, 8Gi]}", "list.yaml");
  EXPECT_EQ(listed.registry.gpu_memory_budget, (std::vector<uint64_t>{20ull << 30, 8ull << 30}));
  EXPECT_FALSE(listed.registry.gpu_memory_budget_each);
  // Round trips through --print-config, and a later layer's auto resets it.
  for (const Config* config : {&defaults, &each, &listed}) {
    const Config again = parse_config(dump_config(*config), "dump");
    EXPECT_EQ(again.registry.gpu_memory_budget, config->registry.gpu_memory_budget);
    EXPECT_EQ(again.registry.gpu_memory_budget_each, config->registry.gpu_memory_budget_each);
  }
  EXPECT_TRUE(parse_config("registry: {gpu_memory_budget: auto}", "auto.yaml").registry.gpu_memory_budget.empty());
  EXPECT_NE(error_of("registry: {gpu_memory_budget: lots}").find("registry.gpu_memory_budget"), std::string::npos);
  EXPECT_NE(error_of("registry: {gpu_memory_budget: 0}").find("registry.gpu_memory_budget"), std::string::npos);
  EXPECT_NE(error_of("registry: {gpu_memory_budget: [8Gi, none]}").find("registry.gpu_memory_budget"),
            std::string::npos);
}
