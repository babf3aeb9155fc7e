#include "engines/diffusion/clip_text_encoder.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <stdexcept>

namespace mmserve::diffusion {

ClipTextConfig ClipTextConfig::from_json(const nlohmann::json& config) {
  ClipTextConfig result;
  result.hidden = config.value("hidden_size", result.hidden);
  result.heads = config.value("num_attention_heads", result.heads);
  result.layers = config.value("num_hidden_layers", result.layers);
  result.activation = config.value("hidden_act", result.activation);
  result.eps = config.value("layer_norm_eps", result.eps);
  if (result.hidden <= 0 || result.heads <= 0 || result.hidden % result.heads || result.layers <= 0) {
    throw std::runtime_error(fmt::format("text encoder config: hidden_size {} with {} heads and {} layers",
                                         result.hidden, result.heads, result.layers));
  }
  if (result.activation != "quick_gelu" && result.activation != "gelu") {
    throw std::runtime_error(
        fmt::format("text encoder config: hidden_act '{}' (quick_gelu or gelu expected)", result.activation));
  }
  return result;
}

ClipTextEncoder::ClipTextEncoder(ClipTextConfig config, std::shared_ptr<ModelWeights> weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  const std::string last = fmt::format("text_model.encoder.layers.{}.mlp.fc2.weight", config_.layers - 1);
  if (!weights_->has("text_model.embeddings.token_embedding.weight") || !weights_->has(last)) {
    throw std::runtime_error(fmt::format("text encoder weights lack the embeddings or layer {}", config_.layers - 1));
  }
}

bool ClipTextEncoder::has_projection() const {
  return weights_->has("text_projection.weight");
}

ClipTextOutput ClipTextEncoder::encode(const std::vector<std::vector<int>>& chunks, int skip_layers, bool pooled,
                                       int eos_id, ggml_backend_t backend, int threads) const {
  if (chunks.empty()) throw std::invalid_argument("text encoder: no tokens");
  const int64_t length = static_cast<int64_t>(chunks.front().size());
  const int64_t positions = weights_->get("text_model.embeddings.position_embedding.weight")->ne[1];
  const int64_t vocabulary = weights_->get("text_model.embeddings.token_embedding.weight")->ne[1];
  std::vector<int32_t> ids;
  for (const auto& chunk : chunks) {
    if (static_cast<int64_t>(chunk.size()) != length || length > positions) {
      throw std::invalid_argument(fmt::format("text encoder: chunks of {} tokens expected", positions));
    }
    for (const int id : chunk) {
      if (id < 0 || id >= vocabulary) throw std::invalid_argument(fmt::format("text encoder: token id {}", id));
      ids.push_back(id);
    }
  }
  if (pooled && !has_projection()) throw std::logic_error("text encoder: no text_projection for a pooled output");

  Graph graph;
  Layers nn(graph.ctx(), *weights_);
  ggml_context* ctx = graph.ctx();
  const int64_t count = static_cast<int64_t>(chunks.size());
  const int64_t hidden = config_.hidden;

  ggml_tensor* x = ggml_get_rows(ctx, weights_->get("text_model.embeddings.token_embedding.weight"),
                                 graph.input_ids(ids)); // [C, 77 * chunks]
  x = ggml_reshape_3d(ctx, x, hidden, length, count);
  ggml_tensor* position = weights_->get("text_model.embeddings.position_embedding.weight");
  x = ggml_add(ctx, x, ggml_view_2d(ctx, position, hidden, length, position->nb[1], 0));

  const int run_layers = config_.layers - (pooled ? 0 : skip_layers);
  ggml_tensor* penultimate = nullptr;
  for (int layer = 0; layer < run_layers; ++layer) {
    if (layer == config_.layers - skip_layers) penultimate = x;
    const std::string prefix = fmt::format("text_model.encoder.layers.{}.", layer);
    ggml_tensor* h = nn.layer_norm(x, prefix + "layer_norm1", config_.eps);
    ggml_tensor* q = nn.linear(h, prefix + "self_attn.q_proj");
    ggml_tensor* k = nn.linear(h, prefix + "self_attn.k_proj");
    ggml_tensor* v = nn.linear(h, prefix + "self_attn.v_proj");
    h = nn.linear(nn.attention(q, k, v, config_.heads, true), prefix + "self_attn.out_proj");
    x = ggml_add(ctx, x, h);
    h = nn.layer_norm(x, prefix + "layer_norm2", config_.eps);
    h = nn.linear(h, prefix + "mlp.fc1");
    // quick_gelu as x * sigmoid(1.702 x): ggml_gelu_quick reads an F16 table (1e-3 relative error).
    h = config_.activation == "gelu" ? ggml_gelu_erf(ctx, h)
                                     : ggml_mul(ctx, h, ggml_sigmoid(ctx, ggml_scale(ctx, h, 1.702f)));
    x = ggml_add(ctx, x, nn.linear(h, prefix + "mlp.fc2"));
  }
  ggml_tensor* last = nn.layer_norm(x, "text_model.final_layer_norm", config_.eps);
  ggml_tensor* context = skip_layers == 0 ? last : (penultimate ? penultimate : x);
  graph.output(ggml_cont(ctx, ggml_reshape_2d(ctx, context, hidden, length * count)));
  if (pooled) {
    const auto& first = chunks.front();
    const auto eos = std::find(first.begin(), first.end(), eos_id);
    const int64_t at = eos == first.end() ? length - 1 : eos - first.begin();
    ggml_tensor* state = ggml_view_1d(ctx, last, hidden, at * last->nb[1]);
    graph.output(ggml_mul_mat(ctx, weights_->get("text_projection.weight"), ggml_cont(ctx, state)));
  }
  auto outputs = graph.compute(backend, threads);
  ClipTextOutput result;
  result.hidden = std::move(outputs[0]);
  if (pooled) result.pooled = std::move(outputs[1]);
  return result;
}

} // namespace mmserve::diffusion
