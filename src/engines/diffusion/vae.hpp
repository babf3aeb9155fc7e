// diffusers' AutoencoderKL on ggml: the decoder (latent -> RGB) and the
// encoder (RGB -> latent mean, for img2img). Tiled decoding keeps memory
// bounded at large sizes: overlapping latent tiles, decoded one at a time,
// blended with linear ramps across the overlaps so no seam shows.
#pragma once

#include "engines/diffusion/ggml_graph.hpp"

#include <memory>

namespace mmserve::diffusion {

struct VaeConfig {
  int groups = 32;
  float scaling_factor = 0.18215f; // SDXL: 0.13025
  bool attention_slicing = false;  // the mid block's attention over all pixels, in slices of 4096 queries
};

class Vae {
public:
  // Weights named as diffusers saves them (decoder.*, encoder.*, post_quant_conv.*, quant_conv.*);
  // the mid attention's old names (query, key, value, proj_attn) are accepted too.
  Vae(VaeConfig config, std::shared_ptr<ModelWeights> weights);
  const VaeConfig& config() const { return config_; }
  bool has_encoder() const;

  // latent [w, h, C, 1] as sampled (scaled by scaling_factor) -> RGB [8w, 8h, 3, 1] in about [-1, 1].
  // tile > 0: decode tiles of tile x tile latent pixels (overlap tile / 4).
  HostTensor decode(const HostTensor& latent, ggml_backend_t backend, int threads, int tile = 0) const;
  // RGB [W, H, 3, 1] in [-1, 1] -> the latent mean, times scaling_factor.
  HostTensor encode(const HostTensor& image, ggml_backend_t backend, int threads) const;

private:
  HostTensor decode_whole(const HostTensor& latent, ggml_backend_t backend, int threads) const;
  ggml_tensor* resnet(const Layers& nn, ggml_tensor* x, const std::string& prefix) const;
  ggml_tensor* mid_block(const Layers& nn, ggml_tensor* x, const std::string& prefix) const;
  std::string attention_name(const std::string& prefix, const char* modern, const char* legacy) const;

  VaeConfig config_;
  std::shared_ptr<ModelWeights> weights_;
};

} // namespace mmserve::diffusion
