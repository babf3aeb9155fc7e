// Model discovery on real folders: a missing model already has the id it
// will have, and a model being put on a volume is taken only once its files
// have stopped changing (no *.part download beside them, nothing written
// for the quiet time).
#include "app/model_discovery.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>

using namespace mmserve;
namespace fs = std::filesystem;

namespace {

class ModelDiscoveryTest : public ::testing::Test {
protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mmserve-discovery-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static void write(const fs::path& path, const std::string& text = "GGUF") {
    fs::create_directories(path.parent_path());
    std::ofstream(path) << text;
  }
  // Everything under `root` (and root) last written a minute ago.
  static void age(const fs::path& root) {
    const auto old = fs::file_time_type::clock::now() - std::chrono::minutes(1);
    for (const auto& entry : fs::recursive_directory_iterator(root))
      fs::last_write_time(entry.path(), old);
    fs::last_write_time(root, old);
  }

  fs::path dir_;
};

TEST_F(ModelDiscoveryTest, AMissingVisionModelHasTheIdItWillHave) {
  VisionConfig vision;
  vision.model_path = (dir_ / "SmolVLM-256M-Instruct").string();
  EXPECT_EQ(discover_vision_model(vision).id, "SmolVLM-256M-Instruct");
  EXPECT_EQ(discover_vision_model(vision).state, ModelState::missing);
  vision.model_path += "/"; // a folder named with its slash
  EXPECT_EQ(discover_vision_model(vision).id, "SmolVLM-256M-Instruct");
  write(dir_ / "SmolVLM-256M-Instruct" / "model-Q8_0.gguf");
  EXPECT_EQ(discover_vision_model(vision).id, "SmolVLM-256M-Instruct");
  EXPECT_EQ(discover_vision_model(vision).state, ModelState::available);

  vision.model_path = (dir_ / "single-Q8_0.gguf").string();
  EXPECT_EQ(discover_vision_model(vision).id, "single-Q8_0");
  vision.model_name = "served-name";
  EXPECT_EQ(discover_vision_model(vision).id, "served-name");
}

TEST_F(ModelDiscoveryTest, AFolderSettlesOnceNothingArrivesAnyMore) {
  const fs::path folder = dir_ / "pipeline";
  write(folder / "model_index.json", "{}");
  write(folder / "unet" / "diffusion_pytorch_model.safetensors");
  age(folder);
  EXPECT_TRUE(model_files_settled(folder.string(), std::chrono::seconds(2)));

  write(folder / "vae" / "diffusion_pytorch_model.safetensors.part"); // a pull still downloading
  age(folder);
  EXPECT_FALSE(model_files_settled(folder.string(), std::chrono::seconds(2)));
  fs::rename(folder / "vae" / "diffusion_pytorch_model.safetensors.part",
             folder / "vae" / "diffusion_pytorch_model.safetensors");
  EXPECT_FALSE(model_files_settled(folder.string(), std::chrono::seconds(2))); // just written
  age(folder);
  EXPECT_TRUE(model_files_settled(folder.string(), std::chrono::seconds(2)));

  write(folder / "text_encoder" / "model.safetensors"); // a copy going on
  EXPECT_FALSE(model_files_settled(folder.string(), std::chrono::seconds(2)));
}

TEST_F(ModelDiscoveryTest, AFileSettlesWithItsFolderButNotItsNeighboursFolders) {
  write(dir_ / "ggml-base.en.bin");
  write(dir_ / "cache" / "other.bin");
  age(dir_);
  EXPECT_TRUE(model_files_settled((dir_ / "ggml-base.en.bin").string(), std::chrono::seconds(2)));
  write(dir_ / "cache" / "fresh.bin"); // another service converting: not this model's files
  EXPECT_TRUE(model_files_settled((dir_ / "ggml-base.en.bin").string(), std::chrono::seconds(2)));
  write(dir_ / "mmproj-x.gguf.part"); // a download beside it
  EXPECT_FALSE(model_files_settled((dir_ / "ggml-base.en.bin").string(), std::chrono::seconds(2)));
}

} // namespace
