// `mmserve pull` and `mmserve models`, through the real binary, against a
// local server laid out like Hugging Face (/{repo}/resolve/{revision}/{file},
// X-Linked-Etag, Range, redirects to a CDN on another origin).
#include "static_http_server.hpp"
#include "storage/digest.hpp"
#include "test_server.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <random>
#include <set>

using namespace mmserve::test;
namespace fs = std::filesystem;

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string random_bytes(size_t size, unsigned seed) {
  std::mt19937 generator(seed);
  std::string bytes(size, '\0');
  for (auto& byte : bytes)
    byte = static_cast<char>(generator() & 0xff);
  return bytes;
}

std::string quoted(const std::string& text) {
  return "\"" + text + "\"";
}

class Pull : public ::testing::Test {
protected:
  void SetUp() override { models_ = make_temp_dir("mmserve-pull"); }
  void TearDown() override { fs::remove_all(models_); }
  ProcessResult mmserve(const std::vector<std::string>& args, const std::map<std::string, std::string>& extra = {}) {
    std::map<std::string, std::string> env{{"HF_ENDPOINT", hub_.url("")}, {"MMSERVE_MODELS", models_}};
    env.insert(extra.begin(), extra.end());
    return run_mmserve(args, env, std::chrono::seconds(30));
  }
  nlohmann::json manifest(const std::string& name) {
    return nlohmann::json::parse(read_file(models_ + "/manifests/" + name + ".json"));
  }

  StaticHttpServer hub_;
  std::string models_;
};

TEST_F(Pull, DownloadsVerifiesAndWritesTheManifest) {
  const std::string body = random_bytes(200 * 1024, 1);
  const std::string sha = mmserve::storage::sha256_hex(body);
  hub_.route("/acme/tiny-GGUF/resolve/main/tiny-q8.gguf", {200, {{"X-Linked-Etag", quoted(sha)}}, body});
  hub_.route("/api/models/acme/tiny-GGUF/revision/main",
             {200, {{"Content-Type", "application/json"}}, R"({"cardData": {"license": "apache-2.0"}})"});

  const auto result = mmserve({"pull", "acme/tiny-GGUF:tiny-q8.gguf"}, {{"HF_TOKEN", "hf_secret"}});
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(contains(result.output, "sha256 verified")) << result.output;
  EXPECT_TRUE(contains(result.output, "mmserve vision --model " + models_ + "/tiny-q8")) << result.output;
  EXPECT_EQ(read_file(models_ + "/tiny-q8/tiny-q8.gguf"), body);
  EXPECT_FALSE(fs::exists(models_ + "/tiny-q8/tiny-q8.gguf.part"));
  EXPECT_EQ(hub_.last_request_headers("/acme/tiny-GGUF/resolve/main/tiny-q8.gguf")["authorization"],
            "Bearer hf_secret");

  const auto doc = manifest("tiny-q8");
  EXPECT_EQ(doc["name"], "tiny-q8");
  EXPECT_EQ(doc["family"], "vision");
  EXPECT_EQ(doc["license"], "apache-2.0");
  EXPECT_EQ(doc["source"]["repo"], "acme/tiny-GGUF");
  EXPECT_EQ(doc["source"]["revision"], "main");
  ASSERT_EQ(doc["files"].size(), 1u);
  EXPECT_EQ(doc["files"][0]["path"], "tiny-q8/tiny-q8.gguf");
  EXPECT_EQ(doc["files"][0]["size"], body.size());
  EXPECT_EQ(doc["files"][0]["sha256"], sha);
  EXPECT_EQ(doc["files"][0]["url"], hub_.url("/acme/tiny-GGUF/resolve/main/tiny-q8.gguf"));
}

TEST_F(Pull, CatalogueNameFollowsARedirectToAnotherOriginWithoutTheToken) {
  StaticHttpServer cdn;
  const std::string body = random_bytes(64 * 1024, 2);
  const std::string sha = mmserve::storage::sha256_hex(body);
  // As Hugging Face: the resolve answer states the LFS sha256, the CDN an ETag of its own.
  hub_.route("/ggerganov/whisper.cpp/resolve/main/ggml-base.en.bin",
             {302, {{"Location", cdn.url("/blobs/abc?signature=x")}, {"X-Linked-Etag", quoted(sha)}}, ""});
  cdn.route("/blobs/abc?signature=x", {200, {{"ETag", quoted("d41d8cd98f00b204e9800998ecf8427e")}}, body});

  const auto result = mmserve({"pull", "base.en"}, {{"HF_TOKEN", "hf_secret"}});
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(cdn.hits("/blobs/abc?signature=x"), 1);
  EXPECT_EQ(cdn.last_request_headers("/blobs/abc?signature=x").count("authorization"), 0u);
  // Speech models land where `mmserve speech --model-size` looks.
  EXPECT_EQ(read_file(models_ + "/ggml-base.en.bin"), body);
  EXPECT_TRUE(contains(result.output, "mmserve speech --model-size base.en")) << result.output;
  const auto doc = manifest("whisper-base.en");
  EXPECT_EQ(doc["family"], "speech");
  EXPECT_EQ(doc["files"][0]["sha256"], sha);
}

TEST_F(Pull, ACutDownloadResumesWithRange) {
  const std::string body = random_bytes(300 * 1024, 3);
  const std::string path = "/acme/tiny-GGUF/resolve/main/tiny.gguf";
  const size_t cut = 100 * 1024;
  ScriptedResponse cut_short{200, {{"X-Linked-Etag", quoted(mmserve::storage::sha256_hex(body))}}, body.substr(0, cut)};
  cut_short.declared_length = body.size(); // the connection closes mid-body
  hub_.route(path, cut_short);

  const auto first = mmserve({"pull", "acme/tiny-GGUF:tiny.gguf"});
  EXPECT_NE(first.exit_code, 0) << first.output;
  EXPECT_TRUE(contains(first.output, "interrupted")) << first.output;
  EXPECT_TRUE(contains(first.output, "run the same command again")) << first.output;
  EXPECT_FALSE(fs::exists(models_ + "/tiny/tiny.gguf"));
  ASSERT_EQ(read_file(models_ + "/tiny/tiny.gguf.part"), body.substr(0, cut));
  EXPECT_FALSE(fs::exists(models_ + "/manifests/tiny.json"));

  ScriptedResponse whole{200, {{"X-Linked-Etag", quoted(mmserve::storage::sha256_hex(body))}}, body};
  whole.ranges = true;
  hub_.route(path, whole);
  const auto second = mmserve({"pull", "acme/tiny-GGUF:tiny.gguf"});
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_EQ(hub_.last_request_headers(path)["range"], "bytes=" + std::to_string(cut) + "-");
  EXPECT_TRUE(contains(second.output, "resumed")) << second.output;
  EXPECT_EQ(read_file(models_ + "/tiny/tiny.gguf"), body);
  EXPECT_FALSE(fs::exists(models_ + "/tiny/tiny.gguf.part"));
  EXPECT_EQ(manifest("tiny")["files"][0]["size"], body.size());
}

TEST_F(Pull, AServerWithoutRangeSupportRestartsFromZero) {
  const std::string body = random_bytes(50 * 1024, 4);
  fs::create_directories(models_ + "/tiny");
  write_file(models_ + "/tiny/tiny.gguf.part", "stale bytes from another file");
  hub_.route("/acme/tiny-GGUF/resolve/main/tiny.gguf", {200, {}, body}); // 200 to a Range request
  const auto result = mmserve({"pull", "acme/tiny-GGUF:tiny.gguf"});
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(contains(result.output, "no checksum offered")) << result.output;
  EXPECT_EQ(read_file(models_ + "/tiny/tiny.gguf"), body);
}

TEST_F(Pull, ChecksumMismatchLeavesNothing) {
  const std::string body = random_bytes(80 * 1024, 5);
  const std::string wrong = mmserve::storage::sha256_hex("something else");
  hub_.route("/acme/tiny-GGUF/resolve/main/tiny.gguf", {200, {{"X-Linked-Etag", quoted(wrong)}}, body});
  const auto result = mmserve({"pull", "acme/tiny-GGUF:tiny.gguf"});
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_TRUE(contains(result.output, "checksum mismatch")) << result.output;
  EXPECT_TRUE(contains(result.output, wrong)) << result.output;
  EXPECT_FALSE(fs::exists(models_ + "/tiny/tiny.gguf"));
  EXPECT_FALSE(fs::exists(models_ + "/tiny/tiny.gguf.part"));
  EXPECT_FALSE(fs::exists(models_ + "/manifests/tiny.json"));
}

TEST_F(Pull, NotFoundIsAClearError) {
  const auto result = mmserve({"pull", "acme/tiny-GGUF:missing.gguf"});
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_TRUE(contains(result.output, "not found (HTTP 404)")) << result.output;
  EXPECT_TRUE(contains(result.output, "/acme/tiny-GGUF/resolve/main/missing.gguf")) << result.output;
  EXPECT_FALSE(fs::exists(models_ + "/manifests/missing.json"));

  const auto unknown = mmserve({"pull", "no-such-model"});
  EXPECT_EQ(unknown.exit_code, 2) << unknown.output;
  EXPECT_TRUE(contains(unknown.output, "whisper-base.en")) << unknown.output;
}

TEST_F(Pull, ModelsListAndRemove) {
  const auto empty = mmserve({"models", "list"});
  ASSERT_EQ(empty.exit_code, 0) << empty.output;
  EXPECT_TRUE(contains(empty.output, "no models")) << empty.output;

  hub_.route("/acme/tiny-GGUF/resolve/main/tiny.gguf", {200, {}, random_bytes(3 * 1024, 6)});
  hub_.route("/acme/tiny-GGUF/resolve/main/mmproj-tiny.gguf", {200, {}, random_bytes(2 * 1024, 7)});
  ASSERT_EQ(mmserve({"pull", "acme/tiny-GGUF:tiny.gguf", "--name", "tiny-vlm"}).exit_code, 0);
  ASSERT_EQ(mmserve({"pull", "acme/tiny-GGUF:mmproj-tiny.gguf"}).exit_code, 0);

  const auto listed = mmserve({"models", "list"});
  ASSERT_EQ(listed.exit_code, 0) << listed.output;
  EXPECT_TRUE(contains(listed.output, "tiny-vlm")) << listed.output;
  EXPECT_TRUE(contains(listed.output, "3.0 KiB")) << listed.output;
  EXPECT_TRUE(contains(listed.output, "mmproj-tiny")) << listed.output;
  EXPECT_TRUE(contains(listed.output, "acme/tiny-GGUF@main")) << listed.output;

  const auto removed = mmserve({"models", "rm", "tiny-vlm"});
  ASSERT_EQ(removed.exit_code, 0) << removed.output;
  EXPECT_FALSE(fs::exists(models_ + "/tiny-vlm"));
  EXPECT_FALSE(fs::exists(models_ + "/manifests/tiny-vlm.json"));
  EXPECT_TRUE(fs::exists(models_ + "/mmproj-tiny/mmproj-tiny.gguf"));
  const auto after = mmserve({"models", "list"});
  EXPECT_FALSE(contains(after.output, "tiny-vlm")) << after.output;

  const auto again = mmserve({"models", "rm", "tiny-vlm"});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_TRUE(contains(again.output, "no model 'tiny-vlm'")) << again.output;
}

} // namespace

namespace {
std::string siblings_json(const std::vector<std::string>& files) {
  nlohmann::json siblings = nlohmann::json::array();
  for (const auto& file : files)
    siblings.push_back({{"rfilename", file}});
  return nlohmann::json{{"siblings", siblings}, {"cardData", {{"license", "mit"}}}}.dump();
}
} // namespace

TEST_F(Pull, AWholeGgufRepositoryGivesItsQ8ModelAndProjector) {
  const std::vector<std::string> files = {"README.md", "tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf", "mmproj-tiny-Q8_0.gguf",
                                          "mmproj-tiny-f16.gguf"};
  hub_.route("/api/models/acme/tiny-GGUF/revision/main", {200, {}, siblings_json(files)});
  for (size_t i = 0; i < files.size(); ++i)
    hub_.route("/acme/tiny-GGUF/resolve/main/" + files[i], {200, {}, random_bytes(1000 + i, 10 + i)});

  const auto result = mmserve({"pull", "acme/tiny-GGUF"});
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const auto doc = manifest("tiny-GGUF");
  EXPECT_EQ(doc["family"], "vision");
  EXPECT_EQ(doc["license"], "mit");
  ASSERT_EQ(doc["files"].size(), 2u) << doc.dump();
  EXPECT_EQ(doc["files"][0]["path"], "tiny-GGUF/tiny-Q8_0.gguf");
  EXPECT_EQ(doc["files"][1]["path"], "tiny-GGUF/mmproj-tiny-f16.gguf");
  EXPECT_EQ(read_file(models_ + "/tiny-GGUF/tiny-Q8_0.gguf"), random_bytes(1002, 12));
  EXPECT_FALSE(fs::exists(models_ + "/tiny-GGUF/tiny-Q4_K_M.gguf"));
}

TEST_F(Pull, ADiffusersRepositoryKeepsItsFoldersAndPrefersFp16Weights) {
  const std::vector<std::string> files = {"model_index.json",
                                          "README.md",
                                          "unet/config.json",
                                          "unet/diffusion_pytorch_model.safetensors",
                                          "unet/diffusion_pytorch_model.fp16.safetensors",
                                          "vae/config.json",
                                          "vae/diffusion_pytorch_model.safetensors",
                                          "text_encoder/model.safetensors",
                                          "text_encoder/pytorch_model.bin",
                                          "tokenizer/vocab.json",
                                          "tokenizer/merges.txt",
                                          "scheduler/scheduler_config.json"};
  hub_.route("/api/models/acme/tiny-sd/revision/main", {200, {}, siblings_json(files)});
  for (const auto& file : files)
    hub_.route("/acme/tiny-sd/resolve/main/" + file, {200, {}, "bytes of " + file});

  const auto result = mmserve({"pull", "acme/tiny-sd"});
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(contains(result.output, "mmserve image --model " + models_ + "/tiny-sd")) << result.output;
  const auto doc = manifest("tiny-sd");
  EXPECT_EQ(doc["family"], "image");
  std::set<std::string> pulled;
  for (const auto& file : doc["files"])
    pulled.insert(file["path"].get<std::string>());
  const std::set<std::string> expected = {"tiny-sd/model_index.json",
                                          "tiny-sd/unet/config.json",
                                          "tiny-sd/unet/diffusion_pytorch_model.fp16.safetensors",
                                          "tiny-sd/vae/config.json",
                                          "tiny-sd/vae/diffusion_pytorch_model.safetensors",
                                          "tiny-sd/text_encoder/model.safetensors",
                                          "tiny-sd/tokenizer/vocab.json",
                                          "tiny-sd/tokenizer/merges.txt",
                                          "tiny-sd/scheduler/scheduler_config.json"};
  EXPECT_EQ(pulled, expected);
  EXPECT_EQ(read_file(models_ + "/tiny-sd/unet/diffusion_pytorch_model.fp16.safetensors"),
            "bytes of unet/diffusion_pytorch_model.fp16.safetensors");
}

TEST_F(Pull, AnAmbiguousRepositoryAsksForAFile) {
  hub_.route("/api/models/acme/whispers/revision/main",
             {200, {}, siblings_json({"ggml-tiny.bin", "ggml-base.bin", "README.md"})});
  const auto result = mmserve({"pull", "acme/whispers"});
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_TRUE(contains(result.output, "several whisper.cpp models (ggml-tiny.bin, ggml-base.bin)")) << result.output;
  EXPECT_TRUE(contains(result.output, "mmserve pull acme/whispers:FILE")) << result.output;
  EXPECT_FALSE(fs::exists(models_ + "/manifests/whispers.json"));

  // A server that lists nothing: the user is told to name the file.
  const auto unlisted = mmserve({"pull", "acme/unlisted"});
  EXPECT_EQ(unlisted.exit_code, 2) << unlisted.output;
  EXPECT_TRUE(contains(unlisted.output, "pull REPO:FILE instead")) << unlisted.output;
}

TEST_F(Pull, FileNamesStayInsideTheModelFolderAndAreQuotedInUrls) {
  // A listing (the endpoint's word, not the user's) naming files outside the
  // model folder: those are ignored, the rest pulled. A name with a space
  // goes out percent-encoded, as Hugging Face's client sends it.
  const std::vector<std::string> served = {"model_index.json", "unet/diffusion_pytorch_model.safetensors",
                                           "tokenizer/special tokens.json"};
  std::vector<std::string> listed = served;
  listed.insert(listed.end(), {"../escaped.json", "/escaped-root.json", "./unet.json", "vae\\..\\..\\win.json"});
  hub_.route("/api/models/acme/sly-sd/revision/main", {200, {}, siblings_json(listed)});
  hub_.route("/acme/sly-sd/resolve/main/model_index.json", {200, {}, "{}"});
  hub_.route("/acme/sly-sd/resolve/main/unet/diffusion_pytorch_model.safetensors", {200, {}, "weights"});
  hub_.route("/acme/sly-sd/resolve/main/tokenizer/special%20tokens.json", {200, {}, "tokens"});
  for (const std::string escape : {"/acme/sly-sd/resolve/main/../escaped.json", "/acme/escaped.json",
                                   "/acme/sly-sd/resolve/main//escaped-root.json"}) {
    hub_.route(escape, {200, {}, "should never be fetched"});
  }
  const auto result = mmserve({"pull", "acme/sly-sd"});
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(contains(result.output, "ignoring 4 listed names that would land outside the model folder"))
      << result.output;
  EXPECT_EQ(read_file(models_ + "/sly-sd/tokenizer/special tokens.json"), "tokens");
  EXPECT_EQ(hub_.hits("/acme/sly-sd/resolve/main/tokenizer/special%20tokens.json"), 1);
  EXPECT_FALSE(fs::exists(models_ + "/escaped.json"));
  EXPECT_FALSE(fs::exists("/escaped-root.json"));
  EXPECT_EQ(manifest("sly-sd")["files"].size(), served.size());

  // The user's own REPO:FILE and REPO are held to the same rules.
  for (const std::string spec : {"acme/sly:../../evil.gguf", "acme/sly:/etc/evil.gguf", "acme/sly:a//b.gguf"}) {
    const auto refused = mmserve({"pull", spec});
    EXPECT_EQ(refused.exit_code, 2) << spec << ": " << refused.output;
    EXPECT_TRUE(contains(refused.output, "is not a file path inside a repository")) << refused.output;
  }
  const auto bad_repo = mmserve({"pull", "acme/sly/extra:model.gguf"});
  EXPECT_EQ(bad_repo.exit_code, 2) << bad_repo.output;
  EXPECT_TRUE(contains(bad_repo.output, "is not a Hugging Face repository id")) << bad_repo.output;
}
