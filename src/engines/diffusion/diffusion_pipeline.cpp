#include "engines/diffusion/diffusion_pipeline.hpp"

#include "core/text.hpp"
#include "engines/diffusion/checkpoint_layout.hpp"
#include "engines/diffusion/clip_text_encoder.hpp"
#include "engines/diffusion/clip_tokenizer.hpp"
#include "engines/diffusion/sampler.hpp"
#include "engines/diffusion/tiny_autoencoder.hpp"
#include "engines/diffusion/unet.hpp"
#include "engines/diffusion/vae.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

namespace mmserve::diffusion {
namespace fs = std::filesystem;

const char* phase_name(Phase phase) {
  switch (phase) {
  case Phase::text_encode: return "text_encode";
  case Phase::denoise: return "denoise";
  case Phase::vae_decode: return "vae_decode";
  }
  return "unknown";
}

namespace {

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(fmt::format("cannot open '{}'", path.string()));
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& error) {
    throw std::runtime_error(fmt::format("'{}' is not valid JSON: {}", path.string(), error.what()));
  }
}

// A component's weights: the plain file, else the fp16 variant diffusers also publishes.
fs::path component_weights(const fs::path& folder, const std::string& stem) {
  for (const std::string& name : {stem + ".safetensors", stem + ".fp16.safetensors"}) {
    if (fs::is_regular_file(folder / name)) return folder / name;
  }
  throw std::runtime_error(fmt::format("'{}' has no {}.safetensors (diffusers layout expected; .bin weights are "
                                       "not read: convert them to safetensors)",
                                       folder.string(), stem));
}

// Turbo models are distilled for one step without guidance; LCM models for a few.
void distilled_defaults(ModelDefaults& defaults, std::string name, const nlohmann::json& scheduler) {
  name = text::lowered(name);
  if (scheduler.value("_class_name", "") == "LCMScheduler") {
    defaults.steps = 4;
    defaults.guidance_scale = 1.0f;
    defaults.sampler = "lcm";
  } else if (name.find("turbo") != std::string::npos) {
    defaults.steps = 1;
    defaults.guidance_scale = 0.0f;
    defaults.sampler = "euler_a";
  }
}

// A single file's configs: the folder named as the checkpoint without
// .safetensors, beside it (the same model's diffusers folder, or just its
// config.json files, tokenizer/ and scheduler/); none: the real models' values.
fs::path single_file_config_dir(const fs::path& file) {
  fs::path folder = file;
  folder.replace_extension();
  std::error_code ec;
  return fs::is_directory(folder, ec) ? folder : fs::path();
}

// The weights cannot tell the prediction type (SD 2.x 768-v models predict v,
// 512-base ones noise). In order: the config folder's scheduler, the
// checkpoint's own inference YAML (`<checkpoint>.yaml`, as the webui reads it:
// model.params.parameterization "v"), a scheduler_config.json beside it, else
// the family's usual (v for SD 2.x, noise otherwise). `source` says which.
nlohmann::json single_file_scheduler(const fs::path& file, const fs::path& configs, const std::string& family,
                                     std::string& source) {
  if (!configs.empty() && fs::is_regular_file(configs / "scheduler" / "scheduler_config.json")) {
    source = (configs / "scheduler" / "scheduler_config.json").string();
    return read_json(configs / "scheduler" / "scheduler_config.json");
  }
  fs::path yaml = file;
  yaml.replace_extension(".yaml");
  if (fs::is_regular_file(yaml)) {
    nlohmann::json scheduler = nlohmann::json::object();
    try {
      const YAML::Node params = YAML::LoadFile(yaml.string())["model"]["params"];
      const bool v = params["parameterization"] && params["parameterization"].as<std::string>() == "v";
      scheduler["prediction_type"] = v ? "v_prediction" : "epsilon";
      if (params["linear_start"]) scheduler["beta_start"] = params["linear_start"].as<double>();
      if (params["linear_end"]) scheduler["beta_end"] = params["linear_end"].as<double>();
    } catch (const YAML::Exception& error) {
      throw std::runtime_error(fmt::format("'{}': {}", yaml.string(), error.what()));
    }
    source = yaml.string();
    return scheduler;
  }
  const fs::path beside = file.parent_path() / "scheduler_config.json";
  if (fs::is_regular_file(beside)) {
    source = beside.string();
    return read_json(beside);
  }
  source = "the family's default";
  return {{"prediction_type", family == "sd2" ? "v_prediction" : "epsilon"}};
}

// Component errors (a config value, a missing tensor) name the checkpoint.
template <class Make> auto naming(const fs::path& file, Make&& make) {
  try {
    return make();
  } catch (const std::runtime_error& error) {
    const std::string what = error.what();
    if (what.find(file.string()) != std::string::npos) throw;
    throw std::runtime_error(fmt::format("'{}': {}", file.string(), what));
  }
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::vector<uint8_t> to_rgb8(const HostTensor& image, bool signed_range) {
  const int64_t width = image.ne[0], height = image.ne[1];
  const size_t plane = static_cast<size_t>(width * height);
  std::vector<uint8_t> rgb(plane * 3);
  for (size_t i = 0; i < plane; ++i) {
    for (size_t c = 0; c < 3; ++c) {
      float value = image.values[c * plane + i];
      if (signed_range) value = (value + 1.0f) * 0.5f;
      rgb[i * 3 + c] = static_cast<uint8_t>(std::lround(std::clamp(value, 0.0f, 1.0f) * 255.0f));
    }
  }
  return rgb;
}

} // namespace

struct DiffusionPipeline::Impl {
  PipelineOptions options;
  std::string family = "sd1";
  ModelDefaults defaults;
  int threads = 1;
  BackendPtr backend;
  NoiseSchedule schedule;
  std::unique_ptr<ClipTokenizer> tokenizer, tokenizer_2;
  std::unique_ptr<ClipTextEncoder> text_encoder, text_encoder_2;
  std::unique_ptr<UNet> unet;
  std::unique_ptr<Vae> vae;
  std::unique_ptr<TinyAutoencoder> taesd; // previews, and the decoder when options.vae == "taesd"
  bool zeros_for_empty_negative = false;  // SDXL's force_zeros_for_empty_prompt

  void load_diffusers(const fs::path& root, const std::function<void(float)>& progress);
  void load_single_file(const fs::path& file, const std::function<void(float)>& progress);
  void find_taesd(const fs::path& root);

  struct Conditioning {
    HostTensor context; // [C, T, 1]
    HostTensor pooled;  // SDXL [P, 1]
  };
  Conditioning encode_prompt(const std::string& text, bool zeros) const;
  HostTensor model_output(const std::vector<float>& input, double timestep, int64_t width, int64_t height,
                          const Conditioning& cond, const Conditioning* uncond, float guidance) const;
  // TAESD: the decoder when image.vae is taesd, and the step previews.
  GeneratedImage taesd_decode(const std::vector<float>& latent, int64_t width, int64_t height) const;
  GeneratedImage decode(const std::vector<float>& latent, int64_t width, int64_t height) const;
};

void DiffusionPipeline::Impl::load_diffusers(const fs::path& root, const std::function<void(float)>& progress) {
  const nlohmann::json index = read_json(root / "model_index.json");
  const std::string pipeline_class = index.value("_class_name", "");
  const bool xl = pipeline_class.find("XL") != std::string::npos || index.contains("text_encoder_2");
  zeros_for_empty_negative = xl && index.value("force_zeros_for_empty_prompt", true);

  struct Part {
    std::string folder, stem;
    fs::path file;
  };
  std::vector<Part> parts{{"text_encoder", "model", {}}, {"unet", "diffusion_pytorch_model", {}}};
  if (xl) parts.push_back({"text_encoder_2", "model", {}});
  if (options.vae != "taesd") parts.push_back({"vae", "diffusion_pytorch_model", {}});
  uint64_t total = 0;
  for (auto& part : parts) {
    part.file = component_weights(root / part.folder, part.stem);
    total += fs::file_size(part.file);
  }
  uint64_t done = 0;
  const auto load = [&](const Part& part) {
    auto weights = std::make_shared<ModelWeights>();
    weights->quantize_matrices_to_q8_0(options.quantize == "q8_0");
    weights->load({part.file.string()}, backend.get(), {}, [&](uint64_t read) {
      if (progress && total > 0) progress(static_cast<float>(done + read) / static_cast<float>(total));
    });
    done += fs::file_size(part.file);
    return weights;
  };

  for (const auto& part : parts) {
    const fs::path folder = root / part.folder;
    if (part.folder == "text_encoder" || part.folder == "text_encoder_2") {
      auto config = ClipTextConfig::from_json(read_json(folder / "config.json"));
      auto encoder = std::make_unique<ClipTextEncoder>(config, load(part));
      (part.folder == "text_encoder" ? text_encoder : text_encoder_2) = std::move(encoder);
    } else if (part.folder == "unet") {
      const nlohmann::json config = read_json(folder / "config.json");
      unet = std::make_unique<UNet>(UNetConfig::from_json(config), load(part));
      const int sample_size = config.value("sample_size", 64);
      defaults.width = defaults.height = sample_size * 8;
    } else {
      const nlohmann::json config = read_json(folder / "config.json");
      VaeConfig vae_config;
      vae_config.groups = config.value("norm_num_groups", vae_config.groups);
      vae_config.scaling_factor = config.value("scaling_factor", vae_config.scaling_factor);
      vae_config.attention_slicing = options.attention_slicing;
      vae = std::make_unique<Vae>(vae_config, load(part));
    }
  }
  tokenizer = std::make_unique<ClipTokenizer>(root / "tokenizer");
  if (xl) tokenizer_2 = std::make_unique<ClipTokenizer>(root / "tokenizer_2");

  const nlohmann::json scheduler = read_json(root / "scheduler" / "scheduler_config.json");
  schedule = NoiseSchedule::from_json(scheduler);
  family =
      xl ? "sdxl" : (schedule.prediction == "v_prediction" || text_encoder->config().hidden == 1024 ? "sd2" : "sd1");
  if (xl && !unet->sdxl()) throw std::runtime_error("an SDXL pipeline whose unet lacks the text_time conditioning");

  std::string name = root.filename().string();
  if (name.empty()) name = root.parent_path().filename().string();
  distilled_defaults(defaults, name, scheduler);
  if (progress) progress(1.0f);
}

void DiffusionPipeline::Impl::load_single_file(const fs::path& file, const std::function<void(float)>& progress) {
  const CheckpointLayout layout(file.string());
  family = layout.family();
  const bool xl = family == "sdxl";
  const fs::path configs = single_file_config_dir(file);
  // A config folder's file over what the weights tell.
  const auto config = [&](Component component, const fs::path& relative) {
    nlohmann::json merged = layout.config(component);
    if (!configs.empty() && fs::is_regular_file(configs / relative)) merged.update(read_json(configs / relative));
    return merged;
  };

  // Single files carry no vocabulary: find the tokenizers before reading gigabytes.
  const auto tokenizer_dir = [&](const std::string& name) {
    std::vector<fs::path> candidates;
    if (!configs.empty()) candidates.push_back(configs / name);
    candidates.push_back(file.parent_path() / name);
    for (const auto& folder : candidates) {
      if (fs::is_regular_file(folder / "vocab.json")) return folder;
    }
    const bool open_clip = name == "tokenizer_2" || family == "sd2";
    std::string places = candidates.front().string();
    if (candidates.size() > 1) places += " or " + candidates.back().string();
    throw std::runtime_error(
        fmt::format("'{}' carries no tokenizer: put {}'s vocab.json and merges.txt{} in {}", file.string(),
                    open_clip ? (xl ? "OpenCLIP ViT-bigG/14" : "OpenCLIP ViT-H/14") : "CLIP ViT-L/14",
                    open_clip ? " (and a special_tokens_map.json with pad_token \"!\")" : "", places));
  };
  const fs::path tokenizer_path = tokenizer_dir("tokenizer");
  const fs::path tokenizer_2_path = xl ? tokenizer_dir("tokenizer_2") : fs::path();

  std::string source;
  const nlohmann::json scheduler = single_file_scheduler(file, configs, family, source);
  schedule = naming(file, [&] { return NoiseSchedule::from_json(scheduler); });
  spdlog::info("image: '{}' is {}; it predicts {} (from {})", file.string(), family, schedule.prediction, source);
  if (xl) {
    const fs::path index = configs / "model_index.json";
    zeros_for_empty_negative =
        configs.empty() || !fs::is_regular_file(index) || read_json(index).value("force_zeros_for_empty_prompt", true);
  }

  const auto text_config = [&](Component component, const char* folder) {
    return naming(file, [&] { return ClipTextConfig::from_json(config(component, fs::path(folder) / "config.json")); });
  };
  const ClipTextConfig text_config_1 = text_config(Component::text_encoder, "text_encoder");
  const ClipTextConfig text_config_2 = xl ? text_config(Component::text_encoder_2, "text_encoder_2") : ClipTextConfig();
  const nlohmann::json unet_config = config(Component::unet, "unet/config.json");
  const bool full_vae = options.vae != "taesd";
  if (full_vae && !layout.has(Component::vae)) {
    throw std::runtime_error(fmt::format("'{}' has no VAE (first_stage_model.*): set image.vae to taesd, or use a "
                                         "checkpoint that includes its VAE",
                                         file.string()));
  }
  const uint64_t total = layout.bytes(Component::text_encoder, text_config_1.layers) + layout.bytes(Component::unet) +
                         (xl ? layout.bytes(Component::text_encoder_2, text_config_2.layers) : 0) +
                         (full_vae ? layout.bytes(Component::vae) : 0);
  uint64_t done = 0;
  const auto load = [&](Component component, int text_layers) {
    auto weights = std::make_shared<ModelWeights>();
    weights->quantize_matrices_to_q8_0(options.quantize == "q8_0");
    weights->load_mapped({file.string()}, backend.get(), layout.mapping(component, text_layers), [&](uint64_t read) {
      if (progress && total > 0) progress(static_cast<float>(done + read) / static_cast<float>(total));
    });
    done += layout.bytes(component, text_layers);
    return weights;
  };

  text_encoder = naming(file, [&] {
    return std::make_unique<ClipTextEncoder>(text_config_1, load(Component::text_encoder, text_config_1.layers));
  });
  unet = naming(file,
                [&] { return std::make_unique<UNet>(UNetConfig::from_json(unet_config), load(Component::unet, 0)); });
  // SD 2.x: 768 pixels for the v models, 512 for the base one.
  const int sample_size = unet_config.value("sample_size", schedule.prediction == "v_prediction" ? 96 : 64);
  defaults.width = defaults.height = sample_size * 8;
  if (xl) {
    text_encoder_2 = naming(file, [&] {
      return std::make_unique<ClipTextEncoder>(text_config_2, load(Component::text_encoder_2, text_config_2.layers));
    });
    if (!unet->sdxl()) throw std::runtime_error(fmt::format("'{}': an SDXL UNet without label_emb", file.string()));
  }
  if (full_vae) {
    const nlohmann::json vae_json = config(Component::vae, "vae/config.json");
    VaeConfig vae_config;
    vae_config.groups = vae_json.value("norm_num_groups", vae_config.groups);
    vae_config.scaling_factor = vae_json.value("scaling_factor", vae_config.scaling_factor);
    vae_config.attention_slicing = options.attention_slicing;
    vae = naming(file, [&] { return std::make_unique<Vae>(vae_config, load(Component::vae, 0)); });
  }
  tokenizer = std::make_unique<ClipTokenizer>(tokenizer_path);
  if (xl) tokenizer_2 = std::make_unique<ClipTokenizer>(tokenizer_2_path);
  distilled_defaults(defaults, file.stem().string(), scheduler);
  if (progress) progress(1.0f);
}

void DiffusionPipeline::Impl::find_taesd(const fs::path& root) {
  const std::string prefix = family == "sdxl" ? "taesdxl" : "taesd";
  std::vector<fs::path> folders;
  if (!options.taesd_dir.empty()) {
    folders.emplace_back(options.taesd_dir);
  } else {
    folders = {root / "taesd", root.parent_path()};
  }
  for (const auto& folder : folders) {
    const fs::path decoder = folder / (prefix + "_decoder.safetensors");
    if (!fs::is_regular_file(decoder)) continue;
    const fs::path encoder = folder / (prefix + "_encoder.safetensors");
    taesd = std::make_unique<TinyAutoencoder>(fs::is_regular_file(encoder) ? encoder.string() : std::string(),
                                              decoder.string(), threads);
    spdlog::info("image: TAESD decoder {} ({})", decoder.string(),
                 options.vae == "taesd" ? "decodes every image" : "live previews");
    return;
  }
  if (options.vae == "taesd") {
    throw std::runtime_error(fmt::format("image.vae is taesd but no {}_decoder.safetensors was found in {}", prefix,
                                         options.taesd_dir.empty()
                                             ? (root / "taesd").string() + " or " + root.parent_path().string()
                                             : options.taesd_dir));
  }
}

DiffusionPipeline::Impl::Conditioning DiffusionPipeline::Impl::encode_prompt(const std::string& text,
                                                                             bool zeros) const {
  Conditioning result;
  const auto chunks = tokenizer->encode_chunks(text);
  if (!text_encoder_2) {
    result.context = text_encoder->encode(chunks, 0, false, tokenizer->eos_id(), backend.get(), threads).hidden;
  } else {
    // SDXL: both encoders' penultimate states side by side, the pooled state of the second.
    const auto first = text_encoder->encode(chunks, 1, false, tokenizer->eos_id(), backend.get(), threads).hidden;
    auto chunks_2 = tokenizer_2->encode_chunks(text);
    const auto second = text_encoder_2->encode(chunks_2, 1, true, tokenizer_2->eos_id(), backend.get(), threads);
    const int64_t a = first.ne[0], b = second.hidden.ne[0], tokens = first.ne[1];
    if (second.hidden.ne[1] != tokens) throw std::runtime_error("SDXL: the two tokenizers disagree on chunks");
    result.context.ne = {a + b, tokens};
    result.context.values.resize(static_cast<size_t>((a + b) * tokens));
    for (int64_t t = 0; t < tokens; ++t) {
      std::copy_n(&first.values[static_cast<size_t>(t * a)], a,
                  &result.context.values[static_cast<size_t>(t * (a + b))]);
      std::copy_n(&second.hidden.values[static_cast<size_t>(t * b)], b,
                  &result.context.values[static_cast<size_t>(t * (a + b) + a)]);
    }
    result.pooled = second.pooled;
    result.pooled.ne = {result.pooled.elements(), 1};
  }
  result.context.ne = {result.context.ne[0], result.context.ne[1], 1};
  if (zeros) {
    std::fill(result.context.values.begin(), result.context.values.end(), 0.0f);
    std::fill(result.pooled.values.begin(), result.pooled.values.end(), 0.0f);
  }
  return result;
}

HostTensor DiffusionPipeline::Impl::model_output(const std::vector<float>& input, double timestep, int64_t width,
                                                 int64_t height, const Conditioning& cond, const Conditioning* uncond,
                                                 float guidance) const {
  // With guidance, the unconditional and conditional passes run as one batch of two.
  const int64_t batch = uncond ? 2 : 1;
  UNetInput in;
  in.timestep = static_cast<float>(timestep);
  in.latent.ne = {width, height, 4, batch};
  in.context.ne = {cond.context.ne[0], cond.context.ne[1], batch};
  for (int64_t n = 0; n < batch; ++n) {
    const Conditioning& c = (uncond && n == 0) ? *uncond : cond;
    in.latent.values.insert(in.latent.values.end(), input.begin(), input.end());
    in.context.values.insert(in.context.values.end(), c.context.values.begin(), c.context.values.end());
    if (unet->sdxl()) {
      in.pooled.values.insert(in.pooled.values.end(), c.pooled.values.begin(), c.pooled.values.end());
      const float h = static_cast<float>(height * 8), w = static_cast<float>(width * 8);
      in.time_ids.insert(in.time_ids.end(), {h, w, 0.0f, 0.0f, h, w}); // original size, crop, target size
    }
  }
  if (unet->sdxl()) in.pooled.ne = {cond.pooled.ne[0], batch};
  const int64_t slice = options.attention_slicing ? 1024 : 0;
  HostTensor out = unet->predict(in, backend.get(), threads, slice);
  if (!uncond) return out;
  const size_t size = input.size();
  HostTensor guided{{width, height, 4, 1}, std::vector<float>(size)};
  for (size_t i = 0; i < size; ++i)
    guided.values[i] = out.values[i] + guidance * (out.values[size + i] - out.values[i]);
  return guided;
}

GeneratedImage DiffusionPipeline::Impl::taesd_decode(const std::vector<float>& latent, int64_t width,
                                                     int64_t height) const {
  const Planar rgb = taesd->decode(Planar{4, static_cast<int>(height), static_cast<int>(width), latent});
  GeneratedImage image;
  image.width = rgb.width;
  image.height = rgb.height;
  image.rgb = to_rgb8(HostTensor{{rgb.width, rgb.height, 3, 1}, rgb.values}, false);
  return image;
}

GeneratedImage DiffusionPipeline::Impl::decode(const std::vector<float>& latent, int64_t width, int64_t height) const {
  GeneratedImage image;
  if (options.vae == "taesd" || !vae) return taesd_decode(latent, width, height);
  const int tile = options.vae_tiling ? 32 : 0; // 256-pixel tiles
  const HostTensor rgb = vae->decode(HostTensor{{width, height, 4, 1}, latent}, backend.get(), threads, tile);
  image.width = static_cast<int>(rgb.ne[0]);
  image.height = static_cast<int>(rgb.ne[1]);
  image.rgb = to_rgb8(rgb, true);
  return image;
}

DiffusionPipeline::DiffusionPipeline(PipelineOptions options, const std::function<void(float)>& progress)
    : impl_(std::make_unique<Impl>()) {
  Impl& impl = *impl_;
  impl.options = std::move(options);
  if (impl.options.quantize != "none" && impl.options.quantize != "q8_0") {
    throw std::runtime_error(fmt::format("image.quantize '{}' (none or q8_0 expected)", impl.options.quantize));
  }
  if (impl.options.vae != "auto" && impl.options.vae != "full" && impl.options.vae != "taesd") {
    throw std::runtime_error(fmt::format("image.vae '{}' (auto, full or taesd expected)", impl.options.vae));
  }
  impl.threads = impl.options.threads > 0 ? impl.options.threads
                                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  impl.backend = make_backend(impl.options.use_gpu);
  const fs::path path(impl.options.model_path);
  std::error_code ec;
  if (fs::is_directory(path, ec) && fs::is_regular_file(path / "model_index.json", ec)) {
    impl.load_diffusers(path, progress);
  } else if (fs::is_regular_file(path, ec) && path.extension() == ".safetensors") {
    impl.load_single_file(path, progress);
  } else {
    throw std::runtime_error(fmt::format("'{}' is neither a diffusers folder (model_index.json) nor a single-file "
                                         ".safetensors checkpoint (.ckpt pickles are not read: convert them)",
                                         path.string()));
  }
  impl.find_taesd(path);
}

DiffusionPipeline::~DiffusionPipeline() = default;

std::string DiffusionPipeline::family() const {
  return impl_->family;
}

const ModelDefaults& DiffusionPipeline::defaults() const {
  return impl_->defaults;
}

bool DiffusionPipeline::has_preview() const {
  return impl_->taesd != nullptr;
}

std::vector<GeneratedImage> DiffusionPipeline::generate(const GenerationRequest& request,
                                                        const PipelineObserver& observer) {
  const Impl& impl = *impl_;
  const int width = request.width > 0 ? request.width : impl.defaults.width;
  const int height = request.height > 0 ? request.height : impl.defaults.height;
  const int steps = request.steps > 0 ? request.steps : impl.defaults.steps;
  const float guidance = request.guidance_scale >= 0 ? request.guidance_scale : impl.defaults.guidance_scale;
  const std::string sampler = request.sampler.empty() ? impl.defaults.sampler : canonical_sampler(request.sampler);
  if (width % 8 || height % 8 || width < 64 || height < 64) {
    throw std::invalid_argument(
        fmt::format("size {}x{}: each side must be a multiple of 8, at least 64", width, height));
  }
  // The UNet halves the latent at each downsampler: its sides must divide evenly.
  const int multiple = 8 * impl.unet->downscale();
  if (width % multiple || height % multiple) {
    throw std::invalid_argument(
        fmt::format("size {}x{}: each side must be a multiple of {} for this model", width, height, multiple));
  }
  if (steps < 1 || steps > 1000) throw std::invalid_argument(fmt::format("steps {}: 1 to 1000", steps));
  if (sampler.empty()) {
    throw std::invalid_argument(
        fmt::format("unknown sampler '{}'; one of: {}", request.sampler, fmt::join(sampler_names(), ", ")));
  }
  if (request.batch < 1) throw std::invalid_argument("batch must be at least 1");
  const auto phase_done = [&observer](Phase phase, Clock::time_point start) {
    if (observer.on_phase) observer.on_phase(phase, seconds_since(start));
  };

  auto started = Clock::now();
  const bool guided = guidance > 1.0f;
  Impl::Conditioning cond = impl.encode_prompt(request.prompt, false);
  std::optional<Impl::Conditioning> uncond;
  if (guided) {
    uncond =
        impl.encode_prompt(request.negative_prompt, impl.zeros_for_empty_negative && request.negative_prompt.empty());
    // Both passes share a batch: pad the shorter prompt with empty chunks (encoded once).
    auto& a = cond.context;
    auto& b = uncond->context;
    if (a.ne[1] != b.ne[1]) {
      const auto pad = impl.encode_prompt("", false).context;
      while (a.ne[1] != b.ne[1]) {
        auto& shorter = a.ne[1] < b.ne[1] ? a : b;
        shorter.values.insert(shorter.values.end(), pad.values.begin(), pad.values.end());
        shorter.ne[1] += pad.ne[1];
      }
    }
  }
  phase_done(Phase::text_encode, started);

  const int64_t latent_w = width / 8, latent_h = height / 8;
  std::vector<GeneratedImage> images;
  for (int index = 0; index < request.batch; ++index) {
    const uint64_t seed = request.seed + static_cast<uint64_t>(index);
    GaussianNoise rng(seed);
    std::vector<float> noise = rng.sample(static_cast<size_t>(latent_w * latent_h * 4));
    started = Clock::now();
    auto step_started = Clock::now();
    const ModelCall model = [&](const std::vector<float>& input, double timestep) {
      return impl.model_output(input, timestep, latent_w, latent_h, cond, uncond ? &*uncond : nullptr, guidance).values;
    };
    const StepReport report = [&](int step, const std::vector<float>& denoised) {
      const double step_seconds = seconds_since(step_started);
      step_started = Clock::now();
      if (!observer.on_step) return true;
      StepInfo info;
      info.image_index = index;
      info.step = step;
      info.steps = steps;
      info.step_seconds = step_seconds;
      if (impl.taesd) {
        info.preview = [&impl, &denoised, latent_w, latent_h] {
          return impl.taesd_decode(denoised, latent_w, latent_h);
        };
      }
      return observer.on_step(info);
    };
    std::vector<float> latent;
    try {
      latent = run_sampler(sampler, impl.schedule, steps, std::move(noise), rng, model, report);
    } catch (const SamplerCancelled&) {
      throw GenerationCancelled();
    }
    phase_done(Phase::denoise, started);
    started = Clock::now();
    GeneratedImage image = impl.decode(latent, latent_w, latent_h);
    image.seed = seed;
    phase_done(Phase::vae_decode, started);
    images.push_back(std::move(image));
  }
  return images;
}

} // namespace mmserve::diffusion
