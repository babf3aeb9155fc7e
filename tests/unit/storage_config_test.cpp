// The configuration keys of the media temp cache and object storage.
#include "app/input_archive.hpp"
#include "core/config.hpp"

#include <gtest/gtest.h>

using namespace mmserve;

namespace {
// The message parse_config fails with, or "no error".
std::string error_of(const std::string& yaml) {
  try {
    parse_config(yaml, "f.yaml");
  } catch (const ConfigError& error) {
    return error.what();
  }
  return "no error";
}
} // namespace

TEST(StorageConfig, DefaultsAndKeys) {
  const Config defaults = parse_config("", "defaults");
  EXPECT_TRUE(defaults.media.cache_enabled);
  EXPECT_EQ(defaults.media.cache_max_age_s, 86400);
  EXPECT_EQ(defaults.storage.outputs.backend, "local");
  EXPECT_EQ(defaults.storage.s3.part_size, 8u << 20);

  const Config config = parse_config(R"(
media:
  storage: {enabled: false, temp_dir: /cache, max_cache_size: 1Gi, cleanup_interval: 10m, max_age: 2h}
storage:
  s3:
    endpoint: http://minio:9000
    region: eu-west-1
    bucket: outputs
    addressing: path
    access_key_id: AKID
    secret_access_key: SECRET
    part_size: 16Mi
    timeout: 30s
  outputs: {backend: s3, base_url: "https://cdn.example.com/", key_prefix: gen/, presign_expiry: 2h}
)",
                                     "test");
  EXPECT_FALSE(config.media.cache_enabled);
  EXPECT_EQ(config.media.cleanup_interval_s, 600);
  EXPECT_EQ(config.media.cache_max_age_s, 7200);
  EXPECT_EQ(config.storage.s3.endpoint, "http://minio:9000");
  EXPECT_EQ(config.storage.s3.addressing, "path");
  EXPECT_EQ(config.storage.s3.part_size, 16u << 20);
  EXPECT_EQ(config.storage.s3.timeout_s, 30);
  EXPECT_EQ(config.storage.outputs.backend, "s3");
  EXPECT_EQ(config.storage.outputs.key_prefix, "gen/");
  EXPECT_EQ(config.storage.outputs.presign_expiry_s, 7200);
  // Secrets never appear in --print-config output.
  const std::string dump = dump_config(config);
  EXPECT_EQ(dump.find("SECRET"), std::string::npos);
  EXPECT_NE(dump.find("secret_access_key: (set)"), std::string::npos) << dump;
}

TEST(StorageConfig, BadValuesNameTheKey) {
  EXPECT_NE(error_of("storage: {s3: {part_size: 1Mi}}").find("storage.s3.part_size"), std::string::npos);
  EXPECT_NE(error_of("storage: {s3: {addressing: dns}}").find("auto, path, virtual"), std::string::npos);
  EXPECT_NE(error_of("storage: {outputs: {backend: gcs}}").find("local, s3"), std::string::npos);
  EXPECT_NE(error_of("storage: {outputs: {presign_expiry: 200h}}").find("604800"), std::string::npos);
  EXPECT_NE(error_of("storage: {s3: {bucket_name: x}}").find("unknown key"), std::string::npos);
}

TEST(StorageConfig, InputsKeysAndRefusals) {
  const Config defaults = parse_config("", "defaults");
  EXPECT_EQ(defaults.storage.inputs.backend, "none");
  EXPECT_EQ(defaults.storage.inputs.max_pending, 256u << 20);
  ServerMetrics metrics;
  EXPECT_EQ(make_input_archive(defaults, {}, metrics), nullptr); // none: nothing kept, no thread

  const Config config =
      parse_config("storage: {inputs: {backend: s3, key_prefix: up/, max_pending: 64Mi}}\n", "inputs.yaml");
  EXPECT_EQ(config.storage.inputs.key_prefix, "up/");
  EXPECT_EQ(config.storage.inputs.max_pending, 64u << 20);
  EXPECT_NE(dump_config(config).find("key_prefix: up/"), std::string::npos);
  EXPECT_NE(error_of("storage: {inputs: {backend: ftp}}").find("storage.inputs.backend"), std::string::npos);
  EXPECT_NE(error_of("storage: {inputs: {max_pending: lots}}").find("storage.inputs.max_pending"), std::string::npos);
  EXPECT_NE(error_of("storage: {inputs: {bucket: x}}").find("unknown key"), std::string::npos);
  // s3 needs a bucket and credentials, said before the server starts.
  try {
    make_input_archive(config, {}, metrics);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& error) {
    EXPECT_NE(std::string(error.what()).find("storage.s3.bucket is empty"), std::string::npos) << error.what();
  }
  Config with_bucket = config;
  with_bucket.storage.s3.bucket = "inputs";
  try {
    make_input_archive(with_bucket, {}, metrics);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& error) {
    EXPECT_NE(std::string(error.what()).find("no credentials are set"), std::string::npos) << error.what();
  }
}
