// Single-file Stable Diffusion checkpoints in the original Stability /
// CompVis layout (SD 1.x, SD 2.x and SDXL base: model.diffusion_model.*,
// first_stage_model.*, cond_stage_model.* / conditioner.embedders.*), read
// under the diffusers / transformers names the components use. The block
// structure comes from the file's names; what names cannot tell (heads,
// norm groups) defaults to the real models' values, as diffusers config.json
// keys that a config folder may override (the pipeline's job). Only the
// header is read here; ModelWeights reads the tensors through mapping().
#pragma once

#include "engines/diffusion/ggml_graph.hpp"

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

namespace mmserve::diffusion {

enum class Component { text_encoder, text_encoder_2, unet, vae };

class CheckpointLayout {
public:
  // Throws std::runtime_error naming the file when it is not an SD 1.x / 2.x
  // / SDXL base checkpoint, or lacks a tensor its structure needs.
  explicit CheckpointLayout(const std::string& path);

  const std::string& path() const { return path_; }
  const std::string& family() const { return family_; } // sd1 sd2 sdxl
  bool has(Component component) const;                  // text_encoder_2: SDXL; vae: unless the file has none

  // The component's tensors under internal names (valid while the layout
  // lives). Text encoders keep layers below `text_layers` (0: all): SD 2.x
  // runs all but OpenCLIP's last.
  ModelWeights::Mapping mapping(Component component, int text_layers = 0) const;
  // The file bytes that mapping reads (for load progress).
  uint64_t bytes(Component component, int text_layers = 0) const;

  // What the weights tell, as diffusers config.json keys: text encoders'
  // sizes (heads = hidden / 64), the UNet's heads (SD 1.x: 8; SD 2.x and
  // SDXL: none, i.e. 64 channels per head), groups and SDXL's time
  // embedding, the VAE's groups and scaling factor.
  const nlohmann::json& config(Component component) const;

private:
  struct Entry {
    Component component;
    int layer = -1; // text encoder layer
    std::vector<ModelWeights::View> views;
    uint64_t bytes = 0;
  };
  void map_unet();
  void map_vae();
  void map_text(Component component, const std::string& prefix, bool open_clip);
  void add(const std::string& name, Component component, std::vector<ModelWeights::View> views, int layer = -1);
  bool any(const std::string& prefix) const;
  int64_t dim(const std::string& name, size_t axis) const; // throws when the tensor lacks it
  void require(const std::string& prefix, const std::vector<std::string>& suffixes) const;

  std::string path_, family_;
  std::map<std::string, std::vector<int64_t>> shapes_; // the file's float tensors
  std::map<std::string, uint64_t> sizes_;              // their bytes
  std::map<std::string, Entry> entries_;               // by the file's name
  std::map<Component, nlohmann::json> config_;
};

} // namespace mmserve::diffusion
