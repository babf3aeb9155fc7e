#include "engines/diffusion/vae.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace mmserve::diffusion {
namespace {

constexpr float kVaeEps = 1e-6f; // diffusers' Encoder/Decoder resnets and norms

} // namespace

Vae::Vae(VaeConfig config, std::shared_ptr<ModelWeights> weights) : config_(config), weights_(std::move(weights)) {
  for (const char* required : {"decoder.conv_in.weight", "decoder.conv_out.weight", "post_quant_conv.weight"}) {
    if (!weights_->has(required)) throw std::runtime_error(fmt::format("vae weights lack '{}'", required));
  }
  if (config_.groups <= 0) throw std::runtime_error("vae config: norm_num_groups must be positive");
}

bool Vae::has_encoder() const {
  return weights_->has("encoder.conv_in.weight") && weights_->has("quant_conv.weight");
}

std::string Vae::attention_name(const std::string& prefix, const char* modern, const char* legacy) const {
  const std::string name = prefix + "." + modern;
  return weights_->has(name + ".weight") ? name : prefix + "." + legacy;
}

ggml_tensor* Vae::resnet(const Layers& nn, ggml_tensor* x, const std::string& prefix) const {
  ggml_context* ctx = nn.ctx();
  ggml_tensor* h = ggml_silu(ctx, nn.group_norm(x, prefix + ".norm1", config_.groups, kVaeEps));
  h = nn.conv2d(h, prefix + ".conv1");
  h = ggml_silu(ctx, nn.group_norm(h, prefix + ".norm2", config_.groups, kVaeEps));
  h = nn.conv2d(h, prefix + ".conv2");
  ggml_tensor* skip = weights_->has(prefix + ".conv_shortcut.weight") ? nn.conv2d(x, prefix + ".conv_shortcut") : x;
  return ggml_add(ctx, skip, h);
}

// resnet, single-head self-attention over all pixels, resnet.
ggml_tensor* Vae::mid_block(const Layers& nn, ggml_tensor* x, const std::string& prefix) const {
  ggml_context* ctx = nn.ctx();
  x = resnet(nn, x, prefix + ".resnets.0");
  const std::string attention = prefix + ".attentions.0";
  if (weights_->has(attention + ".group_norm.weight")) {
    const int64_t width = x->ne[0], height = x->ne[1];
    ggml_tensor* h = nn.image_to_tokens(nn.group_norm(x, attention + ".group_norm", config_.groups, kVaeEps));
    ggml_tensor* q = nn.linear(h, attention_name(attention, "to_q", "query"));
    ggml_tensor* k = nn.linear(h, attention_name(attention, "to_k", "key"));
    ggml_tensor* v = nn.linear(h, attention_name(attention, "to_v", "value"));
    h = nn.linear(nn.attention(q, k, v, 1, false, config_.attention_slicing ? 4096 : 0),
                  attention_name(attention, "to_out.0", "proj_attn"));
    x = ggml_add(ctx, x, nn.tokens_to_image(h, width, height));
  }
  return resnet(nn, x, prefix + ".resnets.1");
}

HostTensor Vae::decode_whole(const HostTensor& latent, ggml_backend_t backend, int threads) const {
  Graph graph(16384);
  Layers nn(graph.ctx(), *weights_);
  ggml_context* ctx = graph.ctx();
  ggml_tensor* x = ggml_scale(ctx, graph.input(latent), 1.0f / config_.scaling_factor);
  x = nn.conv2d(x, "post_quant_conv");
  x = nn.conv2d(x, "decoder.conv_in");
  x = mid_block(nn, x, "decoder.mid_block");
  const int ups = weights_->count("decoder.up_blocks.", ".resnets.0.conv1.weight");
  for (int i = 0; i < ups; ++i) {
    const std::string block = fmt::format("decoder.up_blocks.{}", i);
    const int resnets = weights_->count(block + ".resnets.", ".conv1.weight");
    for (int j = 0; j < resnets; ++j)
      x = resnet(nn, x, fmt::format("{}.resnets.{}", block, j));
    if (weights_->has(block + ".upsamplers.0.conv.weight")) {
      x = nn.conv2d(ggml_upscale(ctx, x, 2, GGML_SCALE_MODE_NEAREST), block + ".upsamplers.0.conv");
    }
  }
  x = ggml_silu(ctx, nn.group_norm(x, "decoder.conv_norm_out", config_.groups, kVaeEps));
  graph.output(nn.conv2d(x, "decoder.conv_out"));
  return std::move(graph.compute(backend, threads)[0]);
}

HostTensor Vae::decode(const HostTensor& latent, ggml_backend_t backend, int threads, int tile) const {
  if (latent.ne.size() != 4 || latent.ne[3] != 1) throw std::invalid_argument("vae: one latent [w,h,C,1] expected");
  const int64_t width = latent.ne[0], height = latent.ne[1], channels = latent.ne[2];
  if (tile <= 0 || (width <= tile && height <= tile)) return decode_whole(latent, backend, threads);

  const int64_t overlap = std::max<int64_t>(1, tile / 4);
  const int64_t stride = tile - overlap;
  const auto origins = [&](int64_t size) {
    std::vector<int64_t> starts;
    for (int64_t start = 0;; start += stride) {
      if (start + tile >= size) {
        starts.push_back(std::max<int64_t>(0, size - tile));
        break;
      }
      starts.push_back(start);
    }
    return starts;
  };
  const std::vector<int64_t> xs = origins(width), ys = origins(height);
  int64_t scale = 0; // pixels per latent pixel, known after the first tile
  HostTensor out;
  std::vector<float> weight_sum;
  for (const int64_t y0 : ys) {
    for (const int64_t x0 : xs) {
      const int64_t tw = std::min<int64_t>(tile, width - x0), th = std::min<int64_t>(tile, height - y0);
      HostTensor part{{tw, th, channels, 1}, {}};
      part.values.resize(static_cast<size_t>(tw * th * channels));
      for (int64_t c = 0; c < channels; ++c)
        for (int64_t y = 0; y < th; ++y)
          std::copy_n(&latent.values[static_cast<size_t>((c * height + y0 + y) * width + x0)], tw,
                      &part.values[static_cast<size_t>((c * th + y) * tw)]);
      const HostTensor decoded = decode_whole(part, backend, threads);
      if (scale == 0) {
        scale = decoded.ne[0] / tw;
        out.ne = {width * scale, height * scale, decoded.ne[2], 1};
        out.values.assign(static_cast<size_t>(out.elements()), 0.0f);
        weight_sum.assign(static_cast<size_t>(out.ne[0] * out.ne[1]), 0.0f);
      }
      const int64_t pw = tw * scale, ph = th * scale, ramp = overlap * scale;
      // Linear ramps where this tile overlaps a neighbour; full weight elsewhere.
      const auto edge_weight = [ramp](int64_t at, int64_t size, bool ramp_low, bool ramp_high) {
        float weight = 1.0f;
        if (ramp_low) weight = std::min(weight, (static_cast<float>(at) + 0.5f) / static_cast<float>(ramp));
        if (ramp_high) weight = std::min(weight, (static_cast<float>(size - at) - 0.5f) / static_cast<float>(ramp));
        return weight;
      };
      for (int64_t y = 0; y < ph; ++y) {
        const float wy = edge_weight(y, ph, y0 > 0, y0 + th < height);
        for (int64_t x = 0; x < pw; ++x) {
          const float weight = wy * edge_weight(x, pw, x0 > 0, x0 + tw < width);
          const int64_t ox = x0 * scale + x, oy = y0 * scale + y;
          weight_sum[static_cast<size_t>(oy * out.ne[0] + ox)] += weight;
          for (int64_t c = 0; c < out.ne[2]; ++c) {
            out.values[static_cast<size_t>((c * out.ne[1] + oy) * out.ne[0] + ox)] +=
                weight * decoded.values[static_cast<size_t>((c * ph + y) * pw + x)];
          }
        }
      }
    }
  }
  const size_t plane = weight_sum.size();
  for (size_t c = 0; c < static_cast<size_t>(out.ne[2]); ++c)
    for (size_t i = 0; i < plane; ++i)
      out.values[c * plane + i] /= std::max(weight_sum[i], 1e-6f);
  return out;
}

HostTensor Vae::encode(const HostTensor& image, ggml_backend_t backend, int threads) const {
  if (!has_encoder()) throw std::logic_error("vae: no encoder weights");
  if (image.ne.size() != 4 || image.ne[2] != 3 || image.ne[3] != 1) {
    throw std::invalid_argument("vae: one RGB image [W,H,3,1] expected");
  }
  Graph graph(16384);
  Layers nn(graph.ctx(), *weights_);
  ggml_context* ctx = graph.ctx();
  ggml_tensor* x = nn.conv2d(graph.input(image), "encoder.conv_in");
  const int downs = weights_->count("encoder.down_blocks.", ".resnets.0.conv1.weight");
  for (int i = 0; i < downs; ++i) {
    const std::string block = fmt::format("encoder.down_blocks.{}", i);
    const int resnets = weights_->count(block + ".resnets.", ".conv1.weight");
    for (int j = 0; j < resnets; ++j)
      x = resnet(nn, x, fmt::format("{}.resnets.{}", block, j));
    if (weights_->has(block + ".downsamplers.0.conv.weight")) {
      // diffusers pads right and bottom by one, then convolves with stride 2 and no padding.
      x = ggml_pad_ext(ctx, x, 0, 1, 0, 1, 0, 0, 0, 0);
      x = nn.conv2d(x, block + ".downsamplers.0.conv", 2, 0);
    }
  }
  x = mid_block(nn, x, "encoder.mid_block");
  x = ggml_silu(ctx, nn.group_norm(x, "encoder.conv_norm_out", config_.groups, kVaeEps));
  x = nn.conv2d(nn.conv2d(x, "encoder.conv_out"), "quant_conv");
  const int64_t latent_channels = x->ne[2] / 2;
  ggml_tensor* mean = ggml_view_4d(ctx, x, x->ne[0], x->ne[1], latent_channels, 1, x->nb[1], x->nb[2], x->nb[3], 0);
  graph.output(ggml_scale(ctx, ggml_cont(ctx, mean), config_.scaling_factor));
  return std::move(graph.compute(backend, threads)[0]);
}

} // namespace mmserve::diffusion
