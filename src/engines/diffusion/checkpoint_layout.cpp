#include "engines/diffusion/checkpoint_layout.hpp"

#include "engines/diffusion/safetensors.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <set>
#include <stdexcept>
#include <utility>

namespace mmserve::diffusion {
namespace {

const std::string kUnet = "model.diffusion_model.";
const std::string kVae = "first_stage_model.";

std::vector<std::string> split(const std::string& name) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', start)) {
    parts.push_back(name.substr(start, dot - start));
    start = dot + 1;
  }
  parts.push_back(name.substr(start));
  return parts;
}

std::string join(const std::vector<std::string>& parts, size_t from) {
  std::string joined;
  for (size_t i = from; i < parts.size(); ++i)
    joined += (i > from ? "." : "") + parts[i];
  return joined;
}

// A block index; -1 when the part is not a number.
int index_of(const std::string& part) {
  const auto digit = [](unsigned char c) { return std::isdigit(c) != 0; };
  if (part.empty() || part.size() > 6 || !std::all_of(part.begin(), part.end(), digit)) return -1;
  return std::stoi(part);
}

// `tail` with its leading module renamed by the first matching rule; empty: no rule matched.
std::string rename_head(const std::string& tail, const std::vector<std::pair<std::string, std::string>>& rules) {
  for (const auto& [from, to] : rules) {
    if (tail.starts_with(from + ".")) return to + tail.substr(from.size());
  }
  return {};
}

ModelWeights::View view(std::string name) {
  ModelWeights::View result;
  result.name = std::move(name);
  return result;
}

const std::vector<std::pair<std::string, std::string>> kUnetResnet = {
    {"in_layers.0", "norm1"},  {"in_layers.2", "conv1"},  {"emb_layers.1", "time_emb_proj"},
    {"out_layers.0", "norm2"}, {"out_layers.3", "conv2"}, {"skip_connection", "conv_shortcut"}};
const std::vector<std::string> kUnetResnetRequired = {
    "in_layers.0.weight",  "in_layers.0.bias",  "in_layers.2.weight",  "in_layers.2.bias", "emb_layers.1.weight",
    "out_layers.0.weight", "out_layers.0.bias", "out_layers.3.weight", "out_layers.3.bias"};
const std::vector<std::string> kTransformerBlockRequired = [] {
  std::vector<std::string> names{"ff.net.0.proj.weight", "ff.net.2.weight"};
  for (const char* norm : {"norm1", "norm2", "norm3"}) {
    names.push_back(fmt::format("{}.weight", norm));
    names.push_back(fmt::format("{}.bias", norm));
  }
  for (const char* attention : {"attn1", "attn2"}) {
    for (const char* projection : {"to_q", "to_k", "to_v", "to_out.0"})
      names.push_back(fmt::format("{}.{}.weight", attention, projection));
  }
  return names;
}();
const std::vector<std::string> kVaeResnetRequired = {"norm1.weight", "norm1.bias", "conv1.weight", "conv1.bias",
                                                     "norm2.weight", "norm2.bias", "conv2.weight", "conv2.bias"};

} // namespace

CheckpointLayout::CheckpointLayout(const std::string& path) : path_(path) {
  {
    const SafetensorsFile file(path);
    for (const auto& [name, info] : file.tensors()) {
      // Integer buffers (position_ids, step counters) are never weights: never read.
      if (info.dtype != "F32" && info.dtype != "F16" && info.dtype != "BF16") continue;
      shapes_.emplace(name, info.shape);
      sizes_.emplace(name, info.end - info.begin);
    }
  }
  if (!any(kUnet)) {
    throw std::runtime_error(
        fmt::format("'{}' is not a Stable Diffusion checkpoint: it has no {}* tensors (a diffusers model is loaded "
                    "by its folder)",
                    path_, kUnet));
  }
  if (any("conditioner.embedders.1.model.")) {
    family_ = "sdxl";
  } else if (any("conditioner.embedders.0.model.")) {
    throw std::runtime_error(fmt::format("'{}' is an SDXL refiner checkpoint, which is not supported", path_));
  } else if (any("cond_stage_model.model.")) {
    family_ = "sd2";
  } else if (any("cond_stage_model.transformer.")) {
    family_ = "sd1";
  } else {
    throw std::runtime_error(fmt::format("'{}' has no text encoder (cond_stage_model.* or conditioner.embedders.*): "
                                         "not an SD 1.x, 2.x or SDXL checkpoint",
                                         path_));
  }
  map_unet();
  map_vae();
  if (family_ == "sd1") map_text(Component::text_encoder, "cond_stage_model.transformer.", false);
  if (family_ == "sd2") map_text(Component::text_encoder, "cond_stage_model.model.", true);
  if (family_ == "sdxl") {
    map_text(Component::text_encoder, "conditioner.embedders.0.transformer.", false);
    map_text(Component::text_encoder_2, "conditioner.embedders.1.model.", true);
  }

  nlohmann::json& unet = config_[Component::unet];
  unet["norm_num_groups"] = 32;
  unet["norm_eps"] = 1e-5;
  if (family_ == "sd1") {
    unet["attention_head_dim"] = 8; // heads, as diffusers' SD 1.x configs name them
    unet["sample_size"] = 64;
  }
  if (family_ == "sdxl") {
    // label_emb takes the pooled text embedding and 6 sinusoidal time ids.
    const int64_t inputs = dim(kUnet + "label_emb.0.0.weight", 1);
    const int64_t pooled = config_[Component::text_encoder_2].value("projection_dim", 0);
    if (inputs <= pooled || (inputs - pooled) % 6 != 0) {
      throw std::runtime_error(fmt::format("'{}': label_emb takes {} numbers, not a pooled {} and 6 time ids "
                                           "(an SDXL variant that is not supported)",
                                           path_, inputs, pooled));
    }
    unet["addition_embed_type"] = "text_time";
    unet["addition_time_embed_dim"] = (inputs - pooled) / 6;
    unet["sample_size"] = 128;
  }
  nlohmann::json& vae = config_[Component::vae];
  vae["norm_num_groups"] = 32;
  vae["scaling_factor"] = family_ == "sdxl" ? 0.13025 : 0.18215;
  spdlog::debug("image: '{}' is {}; {} of its {} tensors used", path_, family_, entries_.size(), shapes_.size());
}

bool CheckpointLayout::any(const std::string& prefix) const {
  const auto found = shapes_.lower_bound(prefix);
  return found != shapes_.end() && found->first.starts_with(prefix);
}

void CheckpointLayout::require(const std::string& prefix, const std::vector<std::string>& suffixes) const {
  for (const auto& suffix : suffixes) {
    if (!shapes_.contains(prefix + suffix)) {
      throw std::runtime_error(
          fmt::format("'{}' has no float tensor '{}{}': a partial or damaged checkpoint?", path_, prefix, suffix));
    }
  }
}

int64_t CheckpointLayout::dim(const std::string& name, size_t axis) const {
  const auto& shape = shapes_.at(name);
  if (axis >= shape.size() || shape[axis] <= 0) {
    throw std::runtime_error(
        fmt::format("'{}': tensor '{}' has {} dimensions, not the shape its layout needs", path_, name, shape.size()));
  }
  return shape[axis];
}

void CheckpointLayout::add(const std::string& name, Component component, std::vector<ModelWeights::View> views,
                           int layer) {
  Entry entry{component, layer, std::move(views), 0};
  const auto& shape = shapes_.at(name);
  const uint64_t size = sizes_.at(name);
  for (const auto& v : entry.views) {
    // A slice of rows reads its share of the tensor.
    entry.bytes += v.rows >= 0 && !shape.empty() && shape[0] > 0 ? size / shape[0] * v.rows : size;
  }
  entries_[name] = std::move(entry);
}

void CheckpointLayout::map_unet() {
  // What sits at input_blocks.K.S / output_blocks.K.S / middle_block.N, by the module names under it.
  std::map<int, std::map<int, std::string>> inputs, outputs;
  std::map<int, std::string> middle;
  for (auto it = shapes_.lower_bound(kUnet); it != shapes_.end() && it->first.starts_with(kUnet); ++it) {
    const auto parts = split(it->first.substr(kUnet.size()));
    const auto kind = [](const std::string& module) -> std::string {
      if (module == "op") return "downsample";
      if (module == "conv") return "upsample";
      if (module == "in_layers" || module == "out_layers" || module == "emb_layers" || module == "skip_connection")
        return "resnet";
      return "attention";
    };
    if ((parts[0] == "input_blocks" || parts[0] == "output_blocks") && parts.size() >= 5) {
      const int k = index_of(parts[1]), s = index_of(parts[2]);
      if (k < 0 || s < 0 || (parts[0] == "input_blocks" && k == 0)) continue; // input_blocks.0.0: conv_in
      (parts[0] == "input_blocks" ? inputs : outputs)[k][s] = kind(parts[3]);
    } else if (parts[0] == "middle_block" && parts.size() >= 4 && index_of(parts[1]) >= 0) {
      middle[index_of(parts[1])] = kind(parts[2]);
    }
  }
  // Down blocks end at their downsampler (the last has none); up blocks at their upsampler.
  std::map<std::string, std::pair<std::string, std::string>> units; // "input_blocks.K.S" -> (internal prefix, kind)
  int block = 0, slot = 0;
  for (const auto& [k, subs] : inputs) {
    const std::string at = fmt::format("input_blocks.{}", k);
    if (subs.contains(0) && subs.at(0) == "downsample") {
      units[at + ".0"] = {fmt::format("down_blocks.{}.downsamplers.0", block++), "downsample"};
      slot = 0;
      continue;
    }
    for (const auto& [s, kind] : subs) {
      const char* list = kind == "resnet" ? "resnets" : "attentions";
      units[fmt::format("{}.{}", at, s)] = {fmt::format("down_blocks.{}.{}.{}", block, list, slot), kind};
    }
    ++slot;
  }
  block = slot = 0;
  for (const auto& [k, subs] : outputs) {
    bool upsample = false;
    for (const auto& [s, kind] : subs) {
      const std::string at = fmt::format("output_blocks.{}.{}", k, s);
      if (kind == "upsample") {
        units[at] = {fmt::format("up_blocks.{}.upsamplers.0", block), kind};
        upsample = true;
      } else {
        const char* list = kind == "resnet" ? "resnets" : "attentions";
        units[at] = {fmt::format("up_blocks.{}.{}.{}", block, list, slot), kind};
      }
    }
    if (upsample) {
      ++block;
      slot = 0;
    } else {
      ++slot;
    }
  }
  int resnets = 0, attentions = 0;
  for (const auto& [n, kind] : middle) {
    units[fmt::format("middle_block.{}", n)] = {kind == "resnet" ? fmt::format("mid_block.resnets.{}", resnets++)
                                                                 : fmt::format("mid_block.attentions.{}", attentions++),
                                                kind == "resnet" ? "resnet" : "attention"};
  }

  require(kUnet, {"input_blocks.0.0.weight", "time_embed.0.weight", "time_embed.2.weight", "out.0.weight", "out.0.bias",
                  "out.2.weight"});
  if (family_ == "sdxl") require(kUnet, {"label_emb.0.0.weight", "label_emb.0.2.weight"});
  for (const auto& [at, unit] : units) {
    const std::string prefix = kUnet + at + ".";
    const std::string& kind = unit.second;
    if (kind == "resnet") require(prefix, kUnetResnetRequired);
    if (kind == "downsample") require(prefix, {"op.weight"});
    if (kind == "upsample") require(prefix, {"conv.weight"});
    if (kind == "attention") {
      require(prefix, {"norm.weight", "norm.bias", "proj_in.weight", "proj_out.weight"});
      for (int b = 0; any(fmt::format("{}transformer_blocks.{}.", prefix, b)); ++b)
        require(fmt::format("{}transformer_blocks.{}.", prefix, b), kTransformerBlockRequired);
    }
  }

  const std::vector<std::pair<std::string, std::string>> top = {{"input_blocks.0.0", "conv_in"},
                                                                {"time_embed.0", "time_embedding.linear_1"},
                                                                {"time_embed.2", "time_embedding.linear_2"},
                                                                {"label_emb.0.0", "add_embedding.linear_1"},
                                                                {"label_emb.0.2", "add_embedding.linear_2"},
                                                                {"out.0", "conv_norm_out"},
                                                                {"out.2", "conv_out"}};
  for (auto it = shapes_.lower_bound(kUnet); it != shapes_.end() && it->first.starts_with(kUnet); ++it) {
    const std::string rest = it->first.substr(kUnet.size());
    std::string name = rename_head(rest, top);
    if (name.empty()) {
      const auto parts = split(rest);
      const size_t depth = parts[0] == "middle_block" ? 2 : 3;
      if (parts.size() <= depth) continue;
      const auto unit = units.find(join({parts.begin(), parts.begin() + depth}, 0));
      if (unit == units.end()) continue;
      const auto& [prefix, kind] = unit->second;
      const std::string tail = join(parts, depth);
      if (kind == "resnet") {
        name = rename_head(tail, kUnetResnet);
        if (!name.empty()) name = prefix + "." + name;
      } else if (kind == "downsample") {
        name = tail.starts_with("op.") ? prefix + ".conv." + tail.substr(3) : std::string();
      } else {
        name = prefix + "." + tail; // transformers and upsamplers keep their names
      }
    }
    if (!name.empty()) add(it->first, Component::unet, {view(name)});
  }
}

void CheckpointLayout::map_vae() {
  if (!any(kVae)) return; // a checkpoint without its VAE: usable with TAESD
  int ups = 0;            // the decoder's up levels: numbered bottom-up here, top-down in diffusers
  const std::string up = kVae + "decoder.up.";
  for (auto it = shapes_.lower_bound(up); it != shapes_.end() && it->first.starts_with(up); ++it)
    ups = std::max(ups, index_of(split(it->first.substr(up.size()))[0]) + 1);
  require(kVae, {"decoder.conv_in.weight", "decoder.conv_out.weight", "decoder.norm_out.weight",
                 "decoder.norm_out.bias", "post_quant_conv.weight"});
  const std::vector<std::pair<std::string, std::string>> attention = {
      {"norm", "group_norm"}, {"q", "to_q"}, {"k", "to_k"}, {"v", "to_v"}, {"proj_out", "to_out.0"}};
  std::set<std::string> resnets, attentions; // the file's prefixes, checked whole below
  for (auto it = shapes_.lower_bound(kVae); it != shapes_.end() && it->first.starts_with(kVae); ++it) {
    const auto parts = split(it->first.substr(kVae.size()));
    const std::string& part = parts[0];
    const bool coder = (part == "encoder" || part == "decoder") && parts.size() >= 3;
    // encoder.down.N / decoder.up.N: diffusers numbers the decoder's levels from the bottom.
    const bool level = coder && (parts[1] == "down" || parts[1] == "up") && index_of(parts[2]) >= 0;
    const int index = !level ? -1 : parts[1] == "down" ? index_of(parts[2]) : ups - 1 - index_of(parts[2]);
    ModelWeights::View mapped;
    std::string resnet; // a resnet's internal prefix; its own names follow from parts[tail]
    size_t tail = 0;
    if (part == "quant_conv" || part == "post_quant_conv") {
      mapped.name = join(parts, 0);
    } else if (level && parts.size() >= 6 && parts[3] == "block") {
      resnet = fmt::format("{}.{}_blocks.{}.resnets.{}", part, parts[1], index, parts[4]);
      tail = 5;
    } else if (level && parts.size() >= 5 && (parts[3] == "downsample" || parts[3] == "upsample")) {
      mapped.name = fmt::format("{}.{}_blocks.{}.{}rs.0.{}", part, parts[1], index, parts[3], join(parts, 4));
    } else if (coder && parts[1] == "mid" && parts.size() >= 4 && (parts[2] == "block_1" || parts[2] == "block_2")) {
      resnet = fmt::format("{}.mid_block.resnets.{}", part, parts[2] == "block_1" ? 0 : 1);
      tail = 3;
    } else if (coder && parts[1] == "mid" && parts.size() == 5 && parts[2] == "attn_1") {
      attentions.insert(kVae + join({parts.begin(), parts.begin() + 3}, 0) + ".");
      const std::string renamed = rename_head(join(parts, 3), attention);
      if (!renamed.empty()) mapped.name = fmt::format("{}.mid_block.attentions.0.{}", part, renamed);
      // q, k, v and proj_out are 1x1 convolutions here, Linear layers in diffusers.
      const auto& shape = shapes_.at(it->first);
      if (parts[3] != "norm" && shape.size() == 4) mapped.shape = {shape[0], shape[1]};
    } else if (coder && parts[1] == "norm_out") {
      mapped.name = part + ".conv_norm_out." + join(parts, 2);
    } else if (coder && (parts[1] == "conv_in" || parts[1] == "conv_out")) {
      mapped.name = join(parts, 0);
    }
    if (!resnet.empty()) {
      resnets.insert(kVae + join({parts.begin(), parts.begin() + static_cast<std::ptrdiff_t>(tail)}, 0) + ".");
      std::string own = join(parts, tail);
      if (own.starts_with("nin_shortcut.")) own = "conv_shortcut." + own.substr(13);
      mapped.name = resnet + "." + own;
    }
    if (!mapped.name.empty()) add(it->first, Component::vae, {std::move(mapped)});
  }
  for (const auto& prefix : resnets)
    require(prefix, kVaeResnetRequired);
  for (const auto& prefix : attentions)
    require(prefix, {"norm.weight", "norm.bias", "q.weight", "k.weight", "v.weight", "proj_out.weight"});
}

void CheckpointLayout::map_text(Component component, const std::string& prefix, bool open_clip) {
  // Where transformers' names start; old transformers saved CLIPTextModel without the "text_model." level.
  const std::string hf = open_clip || !any(prefix + "text_model.") ? prefix : prefix + "text_model.";
  const std::string layers_at = open_clip ? prefix + "transformer.resblocks." : hf + "encoder.layers.";
  const std::string token = hf + (open_clip ? "token_embedding.weight" : "embeddings.token_embedding.weight");
  require(hf, open_clip ? std::vector<std::string>{"token_embedding.weight", "positional_embedding", "ln_final.weight",
                                                   "ln_final.bias"}
                        : std::vector<std::string>{"embeddings.token_embedding.weight",
                                                   "embeddings.position_embedding.weight", "final_layer_norm.weight",
                                                   "final_layer_norm.bias"});
  const bool projection = component == Component::text_encoder_2;
  if (projection) require(prefix, {"text_projection"});
  int layers = 0;
  while (any(fmt::format("{}{}.", layers_at, layers))) {
    require(fmt::format("{}{}.", layers_at, layers),
            open_clip ? std::vector<std::string>{"ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias",
                                                 "attn.out_proj.weight", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight",
                                                 "mlp.c_proj.weight"}
                      : std::vector<std::string>{"layer_norm1.weight", "layer_norm1.bias", "self_attn.q_proj.weight",
                                                 "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                                 "self_attn.out_proj.weight", "layer_norm2.weight", "layer_norm2.bias",
                                                 "mlp.fc1.weight", "mlp.fc2.weight"});
    ++layers;
  }
  if (layers == 0) throw std::runtime_error(fmt::format("'{}' has no layers under '{}'", path_, layers_at));

  const std::vector<std::pair<std::string, std::string>> resblock = {{"ln_1", "layer_norm1"},
                                                                     {"ln_2", "layer_norm2"},
                                                                     {"attn.out_proj", "self_attn.out_proj"},
                                                                     {"mlp.c_fc", "mlp.fc1"},
                                                                     {"mlp.c_proj", "mlp.fc2"}};
  for (auto it = shapes_.lower_bound(prefix); it != shapes_.end() && it->first.starts_with(prefix); ++it) {
    const std::string rest = it->first.substr(prefix.size());
    int layer = -1;
    if (it->first.starts_with(layers_at)) layer = index_of(split(it->first.substr(layers_at.size()))[0]);
    if (!open_clip) {
      // position_ids: a buffer, sometimes stored as floats.
      if (it->first.starts_with(hf) && !rest.ends_with("position_ids"))
        add(it->first, component, {view("text_model." + it->first.substr(hf.size()))}, layer);
      continue;
    }
    std::vector<ModelWeights::View> views;
    if (rest == "token_embedding.weight") {
      views.push_back(view("text_model.embeddings.token_embedding.weight"));
    } else if (rest == "positional_embedding") {
      views.push_back(view("text_model.embeddings.position_embedding.weight"));
    } else if (rest == "ln_final.weight" || rest == "ln_final.bias") {
      views.push_back(view("text_model.final_layer_norm." + rest.substr(9)));
    } else if (rest == "text_projection" && projection) {
      // OpenCLIP multiplies x @ W with W [D, P]; a Linear's weight is [P, D].
      views.push_back(view("text_projection.weight"));
      views.back().transpose = true;
    } else if (layer >= 0) {
      const std::string tail = join(split(it->first.substr(layers_at.size())), 1);
      const std::string base = fmt::format("text_model.encoder.layers.{}.", layer);
      if (tail == "attn.in_proj_weight" || tail == "attn.in_proj_bias") {
        // q, k and v stacked on dim 0.
        const int64_t rows = dim(it->first, 0);
        if (rows % 3 != 0) throw std::runtime_error(fmt::format("'{}': '{}' is not 3 stacked parts", path_, it->first));
        const char* what = tail.ends_with("weight") ? "weight" : "bias";
        for (int i = 0; i < 3; ++i) {
          views.push_back(view(fmt::format("{}self_attn.{}_proj.{}", base, "qkv"[i], what)));
          views.back().first_row = i * rows / 3;
          views.back().rows = rows / 3;
        }
      } else if (const std::string renamed = rename_head(tail, resblock); !renamed.empty()) {
        views.push_back(view(base + renamed));
      }
    }
    if (!views.empty()) add(it->first, component, std::move(views), layer);
  }

  nlohmann::json& config = config_[component];
  const int hidden = static_cast<int>(dim(token, 1));
  const int heads = hidden % 64 == 0 ? hidden / 64 : 1;
  config["hidden_size"] = hidden;
  config["num_attention_heads"] = heads;
  // SD 2.x conditions on OpenCLIP's penultimate layer, final-normed: diffusers' config drops the last layer.
  config["num_hidden_layers"] = family_ == "sd2" ? std::max(1, layers - 1) : layers;
  config["hidden_act"] = open_clip ? "gelu" : "quick_gelu";
  config["layer_norm_eps"] = 1e-5;
  if (projection) config["projection_dim"] = dim(prefix + "text_projection", 1);
}

bool CheckpointLayout::has(Component component) const {
  return std::any_of(entries_.begin(), entries_.end(),
                     [component](const auto& entry) { return entry.second.component == component; });
}

ModelWeights::Mapping CheckpointLayout::mapping(Component component, int text_layers) const {
  return [this, component, text_layers](const std::string& name, const TensorInfo&) {
    const auto found = entries_.find(name);
    if (found == entries_.end() || found->second.component != component) return std::vector<ModelWeights::View>{};
    if (text_layers > 0 && found->second.layer >= text_layers) return std::vector<ModelWeights::View>{};
    return found->second.views;
  };
}

uint64_t CheckpointLayout::bytes(Component component, int text_layers) const {
  uint64_t total = 0;
  for (const auto& [name, entry] : entries_) {
    if (entry.component == component && (text_layers <= 0 || entry.layer < text_layers)) total += entry.bytes;
  }
  return total;
}

const nlohmann::json& CheckpointLayout::config(Component component) const {
  static const nlohmann::json empty = nlohmann::json::object();
  const auto found = config_.find(component);
  return found == config_.end() ? empty : found->second;
}

} // namespace mmserve::diffusion
