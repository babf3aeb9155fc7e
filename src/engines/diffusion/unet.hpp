// diffusers' UNet2DConditionModel on ggml: SD 1.x/2.x and SDXL (its
// "text_time" added conditioning). The block structure (how many blocks,
// resnets, attentions and transformer layers) is read from the weights;
// config.json adds what the weights cannot tell: attention heads.
#pragma once

#include "engines/diffusion/ggml_graph.hpp"

#include <nlohmann/json_fwd.hpp>

#include <memory>
#include <vector>

namespace mmserve::diffusion {

struct UNetConfig {
  // Heads per down block (up blocks use them reversed, the mid block the
  // last). diffusers' config names this attention_head_dim for SD 1.x/2.x
  // while meaning heads when num_attention_heads is absent; a positive
  // head_dim instead gives heads = channels / head_dim (single-file SD 2.x, SDXL).
  std::vector<int> heads;
  int head_dim = 0;
  int groups = 32;
  float eps = 1e-5f;
  int addition_time_embed_dim = 0; // SDXL: the size-and-crop embedding per number
  static UNetConfig from_json(const nlohmann::json& config);
};

struct UNetInput {
  HostTensor latent;           // [W, H, 4, N]
  float timestep = 0;          // one for the batch
  HostTensor context;          // [C, T, N]
  HostTensor pooled;           // SDXL: [P, N]
  std::vector<float> time_ids; // SDXL: 6 per batch item
};

class UNet {
public:
  UNet(UNetConfig config, std::shared_ptr<ModelWeights> weights);
  bool sdxl() const { return config_.addition_time_embed_dim > 0; }
  int64_t context_dim() const;
  // The latent shrinks by this much at the bottom: its sides must be multiples of it.
  int downscale() const;
  // query_slice > 0: attention over that many queries at a time.
  HostTensor predict(const UNetInput& input, ggml_backend_t backend, int threads, int64_t query_slice = 0) const;

private:
  struct Block {
    std::string prefix;
    int resnets = 0;
    std::vector<int> transformer_layers; // per resnet; empty: no attention
    bool resample = false;               // downsampler / upsampler
    int heads = 1;
  };
  ggml_tensor* resnet(const Layers& nn, ggml_tensor* x, ggml_tensor* emb, const std::string& prefix) const;
  ggml_tensor* transformer(const Layers& nn, ggml_tensor* x, ggml_tensor* context, const std::string& prefix,
                           int layers, int heads, int64_t query_slice) const;
  int heads_for(int64_t channels, int configured) const;

  UNetConfig config_;
  std::shared_ptr<ModelWeights> weights_;
  std::vector<Block> down_, up_;
  Block mid_;
};

// diffusers' get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0): [cos, sin].
std::vector<float> timestep_embedding(float timestep, int dim);

} // namespace mmserve::diffusion
