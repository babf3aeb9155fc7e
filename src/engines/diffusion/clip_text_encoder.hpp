// CLIP's text transformer (transformers' CLIPTextModel and
// CLIPTextModelWithProjection: OpenAI ViT-L/14 for SD 1.x, OpenCLIP ViT-H
// for SD 2.x, ViT-L + ViT-bigG for SDXL) on ggml. Each 77-token chunk is
// encoded on its own (causal mask) and the chunks are concatenated.
#pragma once

#include "engines/diffusion/ggml_graph.hpp"

#include <nlohmann/json_fwd.hpp>

#include <string>
#include <vector>

namespace mmserve::diffusion {

struct ClipTextConfig {
  int hidden = 768;
  int heads = 12;
  int layers = 12;
  std::string activation = "quick_gelu"; // quick_gelu gelu
  float eps = 1e-5f;
  // transformers' config.json; missing keys keep the defaults above.
  static ClipTextConfig from_json(const nlohmann::json& config);
};

struct ClipTextOutput {
  HostTensor hidden; // [hidden, 77 * chunks]
  HostTensor pooled; // [projection]: the first chunk's EOS state, projected (empty unless asked)
};

class ClipTextEncoder {
public:
  // Weights named as transformers saves them ("text_model.encoder.layers.0...", "text_projection.weight").
  ClipTextEncoder(ClipTextConfig config, std::shared_ptr<ModelWeights> weights);

  const ClipTextConfig& config() const { return config_; }
  bool has_projection() const;

  // `skip_layers` 0: the last layer's output through the final LayerNorm
  // (SD 1.x/2.x); 1: the penultimate layer's output, not normalised (SDXL).
  // `pooled`: also the projected EOS state (final layer, normalised; first EOS of chunk 0).
  ClipTextOutput encode(const std::vector<std::vector<int>>& chunks, int skip_layers, bool pooled, int eos_id,
                        ggml_backend_t backend, int threads) const;

private:
  ClipTextConfig config_;
  std::shared_ptr<ModelWeights> weights_;
};

} // namespace mmserve::diffusion
