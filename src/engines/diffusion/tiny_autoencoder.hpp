// TAESD, the tiny autoencoder for Stable Diffusion latents (madebyollin/taesd:
// a few 3x3 convolutions, 1.2M parameters per half), on ggml's CPU backend.
// The decoder turns a denoised latent into RGB for previews or as the fast
// `image.vae: taesd` choice; the encoder turns an image into a latent for
// img2img. Weights: the original sequential layout (`1.weight`,
// `3.conv.0.weight`, ...) in .safetensors, F32/F16/BF16.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace mmserve::diffusion {

// Planar float images: channel after channel, each row-major (PyTorch's CHW).
struct Planar {
  int channels = 0, height = 0, width = 0;
  std::vector<float> values;
};

class TinyAutoencoder {
public:
  // Either path may be empty (that half is then unavailable). Throws
  // std::runtime_error naming the file and the problem.
  TinyAutoencoder(const std::string& encoder_path, const std::string& decoder_path, int threads = 0);
  ~TinyAutoencoder();
  TinyAutoencoder(const TinyAutoencoder&) = delete;
  TinyAutoencoder& operator=(const TinyAutoencoder&) = delete;

  int latent_channels() const;
  // latent (latent_channels x h x w) -> RGB in [0, 1] (3 x 8h x 8w).
  Planar decode(const Planar& latent) const;
  // RGB in [0, 1] (3 x H x W, both multiples of 8) -> latent (latent_channels x H/8 x W/8).
  Planar encode(const Planar& image) const;

private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

} // namespace mmserve::diffusion
