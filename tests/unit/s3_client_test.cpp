// The S3 client and output store without a server: options from config
// and the AWS environment variables, addressing, clear errors for an
// unreachable endpoint, and the local output store. The same client
// against a real S3-compatible server: tests/node/s3_storage.test.mjs.
#include "core/config.hpp"
#include "storage/digest.hpp"
#include "storage/output_store.hpp"
#include "storage/s3_client.hpp"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <filesystem>

namespace fs = std::filesystem;
using namespace mmserve::storage;

namespace {

uint16_t closed_port() {
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor acceptor(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
  return acceptor.local_endpoint().port(); // closed again when the acceptor goes
}

} // namespace

TEST(S3Options, FileValuesWinAndEnvironmentFillsBlanks) {
  mmserve::S3Config config;
  config.bucket = "outputs";
  const std::map<std::string, std::string> env = {{"AWS_ENDPOINT_URL", "http://generic:9000"},
                                                  {"AWS_ENDPOINT_URL_S3", "http://minio:9000"},
                                                  {"AWS_DEFAULT_REGION", "eu-west-1"},
                                                  {"AWS_REGION", "eu-central-1"},
                                                  {"AWS_ACCESS_KEY_ID", "AKID"},
                                                  {"AWS_SECRET_ACCESS_KEY", "SECRET"},
                                                  {"AWS_SESSION_TOKEN", "TOKEN"}};
  auto options = s3_options(config, env);
  EXPECT_EQ(options.endpoint, "http://minio:9000"); // the S3-specific variable first
  EXPECT_EQ(options.region, "eu-central-1");        // AWS_REGION before AWS_DEFAULT_REGION
  EXPECT_EQ(options.credentials.access_key_id, "AKID");
  EXPECT_EQ(options.credentials.secret_access_key, "SECRET");
  EXPECT_EQ(options.credentials.session_token, "TOKEN");

  config.endpoint = "https://s3.example.com";
  config.region = "auto";
  config.access_key_id = "FILEKEY";
  config.secret_access_key = "FILESECRET";
  options = s3_options(config, env);
  EXPECT_EQ(options.endpoint, "https://s3.example.com");
  EXPECT_EQ(options.region, "auto");
  // Credentials come as a set: the file's key never pairs with the environment's token.
  EXPECT_EQ(options.credentials.access_key_id, "FILEKEY");
  EXPECT_EQ(options.credentials.session_token, "");

  EXPECT_EQ(s3_options(mmserve::S3Config{}, {}).region, "us-east-1");
  config.endpoint = "ftp://nope";
  EXPECT_THROW(s3_options(config, env), mmserve::ConfigError);
  config.endpoint = "";
  config.part_size = 1 << 20;
  EXPECT_THROW(s3_options(config, env), mmserve::ConfigError);
}

TEST(S3Client, PathStyleForCustomEndpointsVirtualHostForAws) {
  S3Options options;
  options.bucket = "my-bucket";
  options.endpoint = "http://127.0.0.1:9000";
  EXPECT_EQ(S3Client(options).object_url("a b/c+d.png"), "http://127.0.0.1:9000/my-bucket/a%20b/c%2Bd.png");
  options.addressing = Addressing::virtual_host;
  EXPECT_EQ(S3Client(options).object_url("k"), "http://my-bucket.127.0.0.1:9000/k");
  options.endpoint = "";
  options.region = "eu-west-1";
  options.addressing = Addressing::automatic;
  EXPECT_EQ(S3Client(options).object_url("k"), "https://my-bucket.s3.eu-west-1.amazonaws.com/k");
  options.bucket = "dotted.bucket"; // would break the TLS wildcard: path style
  EXPECT_EQ(S3Client(options).object_url("k"), "https://s3.eu-west-1.amazonaws.com/dotted.bucket/k");
  options.bucket = "";
  EXPECT_THROW(S3Client{options}, std::invalid_argument);
}

TEST(S3Client, UnreachableEndpointIsAClearError) {
  S3Options options;
  options.bucket = "b";
  options.endpoint = "http://127.0.0.1:" + std::to_string(closed_port());
  options.credentials = {"AKID", "SECRET", ""};
  options.timeout = std::chrono::milliseconds(2000);
  S3Client client(options);
  try {
    client.put_object("k", "bytes");
    FAIL() << "no error";
  } catch (const S3Error& error) {
    EXPECT_EQ(error.status(), 0u);
    const std::string message = error.what();
    EXPECT_NE(message.find("unreachable"), std::string::npos) << message;
    EXPECT_NE(message.find("127.0.0.1"), std::string::npos) << message;
    EXPECT_NE(message.find("refused"), std::string::npos) << message;
  }
  options.endpoint = "http://no-such-host.invalid:9000";
  EXPECT_THROW(S3Client(options).get_object("k"), S3Error);
}

TEST(OutputStore, LocalStoreNamesByContentAndWritesOnce) {
  char pattern[] = "/tmp/mmserve-outputs-XXXXXX";
  ASSERT_NE(::mkdtemp(pattern), nullptr);
  const fs::path dir = fs::path(pattern) / "outputs";
  auto store = make_local_output_store(dir, "/outputs");
  const auto saved = store->save("png bytes", "png", "image/png");
  EXPECT_EQ(saved.name, mmserve::storage::sha256_hex("png bytes") + ".png");
  EXPECT_TRUE(valid_output_name(saved.name));
  EXPECT_EQ(saved.url, "/outputs/" + saved.name);
  EXPECT_EQ(saved.location, (dir / saved.name).string());
  EXPECT_EQ(store->load(saved.name), "png bytes");
  EXPECT_EQ(store->save("png bytes", "png", "image/png").name, saved.name);
  EXPECT_FALSE(store->load(std::string(64, 'a') + ".png"));
  EXPECT_THROW(store->load("../../etc/passwd"), std::invalid_argument);
  EXPECT_THROW(store->save("x", "p/ng", "image/png"), std::invalid_argument);
  fs::remove_all(pattern);
}

TEST(OutputStore, ConfigurationPicksTheBackendAndChecksS3Settings) {
  mmserve::Config config;
  config.image.outputs_dir = "/tmp/mmserve-outputs-config-test";
  EXPECT_EQ(make_output_store(config, {})->url_of(std::string(64, 'a') + ".png"),
            "/outputs/" + std::string(64, 'a') + ".png");
  config.storage.outputs.backend = "s3";
  EXPECT_THROW(make_output_store(config, {}), mmserve::ConfigError); // no bucket
  config.storage.s3.bucket = "b";
  EXPECT_THROW(make_output_store(config, {}), mmserve::ConfigError); // no credentials
  config.storage.s3.endpoint = "http://127.0.0.1:9000";
  auto store = make_output_store(config, {{"AWS_ACCESS_KEY_ID", "AKID"}, {"AWS_SECRET_ACCESS_KEY", "SECRET"}});
  const std::string url = store->url_of(std::string(64, 'b') + ".webp");
  EXPECT_TRUE(url.starts_with("http://127.0.0.1:9000/b/outputs/" + std::string(64, 'b') + ".webp?X-Amz-Algorithm="))
      << url;
  EXPECT_NE(url.find("X-Amz-Expires=3600"), std::string::npos) << url;
  config.storage.outputs.base_url = "https://cdn.example.com/";
  store = make_output_store(config, {{"AWS_ACCESS_KEY_ID", "AKID"}, {"AWS_SECRET_ACCESS_KEY", "SECRET"}});
  EXPECT_EQ(store->url_of(std::string(64, 'b') + ".webp"),
            "https://cdn.example.com/outputs/" + std::string(64, 'b') + ".webp");
}
