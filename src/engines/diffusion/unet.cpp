#include "engines/diffusion/unet.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <stdexcept>

namespace mmserve::diffusion {
namespace {

std::vector<int> int_or_list(const nlohmann::json& value) {
  if (value.is_number_integer()) return {value.get<int>()};
  if (value.is_array()) return value.get<std::vector<int>>();
  return {};
}

// The transformer's GroupNorm uses 1e-6 (diffusers' Transformer2DModel).
constexpr float kTransformerGroupNormEps = 1e-6f;
constexpr float kLayerNormEps = 1e-5f;

} // namespace

UNetConfig UNetConfig::from_json(const nlohmann::json& config) {
  UNetConfig result;
  if (config.contains("num_attention_heads") && !config["num_attention_heads"].is_null()) {
    result.heads = int_or_list(config["num_attention_heads"]);
  } else if (config.contains("attention_head_dim")) {
    result.heads = int_or_list(config["attention_head_dim"]);
  }
  result.groups = config.value("norm_num_groups", result.groups);
  result.eps = config.value("norm_eps", result.eps);
  if (config.value("addition_embed_type", nlohmann::json()).is_string() &&
      config["addition_embed_type"] == "text_time") {
    result.addition_time_embed_dim = config.value("addition_time_embed_dim", 256);
  }
  if (result.heads.empty()) result.head_dim = 64;
  for (const int heads : result.heads) {
    if (heads <= 0) throw std::runtime_error("unet config: attention heads must be positive");
  }
  if (result.groups <= 0) throw std::runtime_error("unet config: norm_num_groups must be positive");
  return result;
}

std::vector<float> timestep_embedding(float timestep, int dim) {
  const int half = dim / 2;
  std::vector<float> embedding(static_cast<size_t>(dim), 0.0f);
  for (int i = 0; i < half; ++i) {
    const double frequency = std::exp(-std::log(10000.0) * i / half);
    const double angle = static_cast<double>(timestep) * frequency;
    embedding[i] = static_cast<float>(std::cos(angle));
    embedding[half + i] = static_cast<float>(std::sin(angle));
  }
  return embedding;
}

UNet::UNet(UNetConfig config, std::shared_ptr<ModelWeights> weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  const ModelWeights& w = *weights_;
  for (const char* required : {"conv_in.weight", "time_embedding.linear_1.weight", "conv_out.weight"}) {
    if (!w.has(required)) throw std::runtime_error(fmt::format("unet weights lack '{}'", required));
  }
  const auto describe = [&](const std::string& prefix, const char* resample) {
    Block block;
    block.prefix = prefix;
    block.resnets = w.count(prefix + ".resnets.", ".conv1.weight");
    const int attentions = w.count(prefix + ".attentions.", ".norm.weight");
    for (int i = 0; i < attentions; ++i)
      block.transformer_layers.push_back(
          w.count(fmt::format("{}.attentions.{}.transformer_blocks.", prefix, i), ".attn1.to_q.weight"));
    block.resample = w.has(fmt::format("{}.{}.0.conv.weight", prefix, resample));
    return block;
  };
  const int downs = w.count("down_blocks.", ".resnets.0.conv1.weight");
  const int ups = w.count("up_blocks.", ".resnets.0.conv1.weight");
  if (downs == 0 || ups != downs) throw std::runtime_error(fmt::format("unet: {} down and {} up blocks", downs, ups));
  const auto configured_heads = [this](int index) {
    if (config_.heads.empty()) return 0;
    return config_.heads[std::min<size_t>(static_cast<size_t>(index), config_.heads.size() - 1)];
  };
  for (int i = 0; i < downs; ++i) {
    down_.push_back(describe(fmt::format("down_blocks.{}", i), "downsamplers"));
    down_.back().heads = configured_heads(config_.heads.size() == 1 ? 0 : i);
  }
  for (int i = 0; i < ups; ++i) {
    up_.push_back(describe(fmt::format("up_blocks.{}", i), "upsamplers"));
    up_.back().heads = configured_heads(config_.heads.size() == 1 ? 0 : downs - 1 - i);
  }
  mid_ = describe("mid_block", "none");
  mid_.heads = configured_heads(config_.heads.size() == 1 ? 0 : downs - 1);
  if (sdxl() && !w.has("add_embedding.linear_1.weight")) throw std::runtime_error("unet: SDXL without add_embedding");
}

int64_t UNet::context_dim() const {
  for (const auto* blocks : {&down_, &up_}) {
    for (const auto& block : *blocks) {
      if (!block.transformer_layers.empty())
        return weights_->get(block.prefix + ".attentions.0.transformer_blocks.0.attn2.to_k.weight")->ne[0];
    }
  }
  return weights_->get("mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight")->ne[0];
}

int UNet::downscale() const {
  int factor = 1;
  for (const auto& block : down_)
    factor *= block.resample ? 2 : 1;
  return factor;
}

int UNet::heads_for(int64_t channels, int configured) const {
  if (configured > 0) return configured;
  return static_cast<int>(std::max<int64_t>(1, channels / (config_.head_dim > 0 ? config_.head_dim : 64)));
}

ggml_tensor* UNet::resnet(const Layers& nn, ggml_tensor* x, ggml_tensor* emb, const std::string& prefix) const {
  ggml_context* ctx = nn.ctx();
  ggml_tensor* h = ggml_silu(ctx, nn.group_norm(x, prefix + ".norm1", config_.groups, config_.eps));
  h = nn.conv2d(h, prefix + ".conv1");
  ggml_tensor* time = nn.linear(ggml_silu(ctx, emb), prefix + ".time_emb_proj"); // [C, N]
  h = ggml_add(ctx, h, ggml_reshape_4d(ctx, time, 1, 1, time->ne[0], time->ne[1]));
  h = ggml_silu(ctx, nn.group_norm(h, prefix + ".norm2", config_.groups, config_.eps));
  h = nn.conv2d(h, prefix + ".conv2");
  ggml_tensor* skip = nn.weights().has(prefix + ".conv_shortcut.weight") ? nn.conv2d(x, prefix + ".conv_shortcut") : x;
  return ggml_add(ctx, skip, h);
}

ggml_tensor* UNet::transformer(const Layers& nn, ggml_tensor* x, ggml_tensor* context, const std::string& prefix,
                               int layers, int heads, int64_t query_slice) const {
  ggml_context* ctx = nn.ctx();
  const int64_t width = x->ne[0], height = x->ne[1];
  ggml_tensor* residual = x;
  ggml_tensor* h = nn.group_norm(x, prefix + ".norm", config_.groups, kTransformerGroupNormEps);
  // SD 1.x projects with 1x1 convolutions, SD 2.x and SDXL with linear layers.
  const bool linear_projection = ggml_n_dims(nn.weights().get(prefix + ".proj_in.weight")) == 2;
  if (linear_projection) {
    h = nn.linear(nn.image_to_tokens(h), prefix + ".proj_in");
  } else {
    h = nn.image_to_tokens(nn.conv2d(h, prefix + ".proj_in"));
  }
  const int head_count = heads_for(h->ne[0], heads);
  for (int layer = 0; layer < layers; ++layer) {
    const std::string block = fmt::format("{}.transformer_blocks.{}", prefix, layer);
    ggml_tensor* n = nn.layer_norm(h, block + ".norm1", kLayerNormEps);
    ggml_tensor* attended = nn.attention(nn.linear(n, block + ".attn1.to_q"), nn.linear(n, block + ".attn1.to_k"),
                                         nn.linear(n, block + ".attn1.to_v"), head_count, false, query_slice);
    h = ggml_add(ctx, h, nn.linear(attended, block + ".attn1.to_out.0"));
    n = nn.layer_norm(h, block + ".norm2", kLayerNormEps);
    attended = nn.attention(nn.linear(n, block + ".attn2.to_q"), nn.linear(context, block + ".attn2.to_k"),
                            nn.linear(context, block + ".attn2.to_v"), head_count, false, query_slice);
    h = ggml_add(ctx, h, nn.linear(attended, block + ".attn2.to_out.0"));
    n = nn.layer_norm(h, block + ".norm3", kLayerNormEps);
    // GEGLU: the projection's first half times gelu of its second half.
    ggml_tensor* projected = nn.linear(n, block + ".ff.net.0.proj");
    const int64_t inner = projected->ne[0] / 2;
    ggml_tensor* value =
        ggml_view_3d(ctx, projected, inner, projected->ne[1], projected->ne[2], projected->nb[1], projected->nb[2], 0);
    ggml_tensor* gate = ggml_view_3d(ctx, projected, inner, projected->ne[1], projected->ne[2], projected->nb[1],
                                     projected->nb[2], inner * projected->nb[0]);
    ggml_tensor* ff = ggml_mul(ctx, ggml_cont(ctx, value), ggml_gelu_erf(ctx, ggml_cont(ctx, gate)));
    h = ggml_add(ctx, h, nn.linear(ff, block + ".ff.net.2"));
  }
  if (linear_projection) {
    h = nn.tokens_to_image(nn.linear(h, prefix + ".proj_out"), width, height);
  } else {
    h = nn.conv2d(nn.tokens_to_image(h, width, height), prefix + ".proj_out");
  }
  return ggml_add(ctx, h, residual);
}

HostTensor UNet::predict(const UNetInput& input, ggml_backend_t backend, int threads, int64_t query_slice) const {
  if (input.latent.ne.size() != 4 || input.context.ne.size() != 3 || input.latent.ne[3] != input.context.ne[2]) {
    throw std::invalid_argument("unet: latent [W,H,C,N] and context [C,T,N] with the same N expected");
  }
  const int64_t batch = input.latent.ne[3];
  Graph graph(65536);
  Layers nn(graph.ctx(), *weights_);
  ggml_context* ctx = graph.ctx();

  const int64_t time_dim = weights_->get("time_embedding.linear_1.weight")->ne[0];
  HostTensor time_host{{time_dim, 1}, timestep_embedding(input.timestep, static_cast<int>(time_dim))};
  ggml_tensor* emb = nn.linear(graph.input(time_host), "time_embedding.linear_1");
  emb = nn.linear(ggml_silu(ctx, emb), "time_embedding.linear_2"); // [E, 1]
  emb = ggml_repeat(ctx, emb, ggml_new_tensor_2d(ctx, GGML_TYPE_F32, emb->ne[0], batch));
  if (sdxl()) {
    const int dim = config_.addition_time_embed_dim;
    if (input.time_ids.size() != static_cast<size_t>(6 * batch) || input.pooled.elements() == 0) {
      throw std::invalid_argument("unet: SDXL needs pooled text embeddings and 6 time ids per image");
    }
    HostTensor added;
    const int64_t pooled_dim = input.pooled.ne[0];
    added.ne = {pooled_dim + 6 * static_cast<int64_t>(dim), batch};
    for (int64_t n = 0; n < batch; ++n) {
      added.values.insert(added.values.end(), input.pooled.values.begin() + n * pooled_dim,
                          input.pooled.values.begin() + (n + 1) * pooled_dim);
      for (int i = 0; i < 6; ++i) {
        const auto part = timestep_embedding(input.time_ids[static_cast<size_t>(n * 6 + i)], dim);
        added.values.insert(added.values.end(), part.begin(), part.end());
      }
    }
    ggml_tensor* aug = nn.linear(graph.input(added), "add_embedding.linear_1");
    emb = ggml_add(ctx, emb, nn.linear(ggml_silu(ctx, aug), "add_embedding.linear_2"));
  }
  ggml_tensor* context = graph.input(input.context);

  ggml_tensor* x = nn.conv2d(graph.input(input.latent), "conv_in");
  std::vector<ggml_tensor*> skips{x};
  for (const auto& block : down_) {
    for (int j = 0; j < block.resnets; ++j) {
      x = resnet(nn, x, emb, fmt::format("{}.resnets.{}", block.prefix, j));
      if (!block.transformer_layers.empty()) {
        x = transformer(nn, x, context, fmt::format("{}.attentions.{}", block.prefix, j),
                        block.transformer_layers[static_cast<size_t>(j)], block.heads, query_slice);
      }
      skips.push_back(x);
    }
    if (block.resample) {
      x = nn.conv2d(x, block.prefix + ".downsamplers.0.conv", 2, 1);
      skips.push_back(x);
    }
  }
  x = resnet(nn, x, emb, "mid_block.resnets.0");
  for (size_t j = 0; j < mid_.transformer_layers.size(); ++j) {
    x = transformer(nn, x, context, fmt::format("mid_block.attentions.{}", j), mid_.transformer_layers[j], mid_.heads,
                    query_slice);
    x = resnet(nn, x, emb, fmt::format("mid_block.resnets.{}", j + 1));
  }
  for (const auto& block : up_) {
    for (int j = 0; j < block.resnets; ++j) {
      if (skips.empty()) throw std::runtime_error("unet: more up-block resnets than skip connections");
      x = ggml_concat(ctx, x, skips.back(), 2);
      skips.pop_back();
      x = resnet(nn, x, emb, fmt::format("{}.resnets.{}", block.prefix, j));
      if (!block.transformer_layers.empty()) {
        x = transformer(nn, x, context, fmt::format("{}.attentions.{}", block.prefix, j),
                        block.transformer_layers[static_cast<size_t>(j)], block.heads, query_slice);
      }
    }
    if (block.resample) {
      x = ggml_upscale(ctx, x, 2, GGML_SCALE_MODE_NEAREST);
      x = nn.conv2d(x, block.prefix + ".upsamplers.0.conv");
    }
  }
  x = ggml_silu(ctx, nn.group_norm(x, "conv_norm_out", config_.groups, config_.eps));
  graph.output(nn.conv2d(x, "conv_out"));
  return std::move(graph.compute(backend, threads)[0]);
}

} // namespace mmserve::diffusion
