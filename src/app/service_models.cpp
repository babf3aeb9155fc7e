#include "app/service_models.hpp"

#include "app/image_service.hpp"
#include "app/model_discovery.hpp"
#include "app/model_store.hpp"
#include "core/logging.hpp"
#include "engines/asr/whisper_convert.hpp"
#include "engines/asr/whisper_engine.hpp"
#include "engines/vlm/quantize.hpp"
#include "engines/vlm/vlm_engine.hpp"
#include "storage/output_store.hpp"

#include <filesystem>

namespace mmserve {

// The GPUs, found once: ggml's device list does not change while running.
const std::vector<GpuInfo>& process_gpus() {
  static const std::vector<GpuInfo> gpus = [] {
    vlm::init_engine_backend();
    return detect_gpus();
  }();
  return gpus;
}

namespace {

// The engine loader of one vision model: LOAD_8BIT and --dtype convert the
// weights once into the model cache first.
EngineLoader vision_loader(const VisionModelFiles& files, const std::string& id, const Config& config,
                           ServerMetrics& metrics) {
  vlm::EngineOptions options;
  options.model_id = id;
  options.model_path = files.model;
  options.mmproj_path = files.mmproj;
  options.context_per_slot = config.vision.max_model_len;
  options.parallel = config.vision.parallel;
  options.max_queue = config.vision.max_queue;
  options.threads = config.vision.threads;
  options.gpu_count = config.vision.gpu_count;
  options.tensor_split = config.vision.tensor_split;
  options.image_cache_bytes = config.vision.image_cache_bytes;
  const std::string cache_dir = config.models_dir + "/cache";
  return [options, cache_dir, dtype = config.vision.dtype, load_8bit = config.vision.load_8bit,
          &metrics](const LoadProgress& progress) mutable -> std::shared_ptr<void> {
    if (load_8bit) {
      options.model_path = vlm::ensure_q8_0(options.model_path, cache_dir);
    } else if (dtype != "auto") {
      // vLLM converts weights to --dtype at load; here the GGUF is converted once into the cache.
      options.model_path = vlm::ensure_weight_type(options.model_path, cache_dir, vlm::weight_type_of_dtype(dtype));
    }
    return std::make_shared<vlm::VlmEngine>(options, metrics, progress);
  };
}

void set_memory_estimate(RegisteredModel& model, const MemoryEstimate& estimate) {
  model.memory_bytes = estimate.host_bytes;
  model.gpu_memory_bytes = estimate.gpu_bytes;
}

RegisteredModel make_vision_model(const VisionConfig& vision, const Config& config, ServerMetrics& metrics,
                                  bool preload) {
  VisionModelFiles files;
  RegisteredModel model;
  model.status = discover_vision_model(vision, &files);
  model.preload = preload;
  if (model.status.state == ModelState::available) {
    set_memory_estimate(model, estimate_vision_memory(files.model, files.mmproj, vision, process_gpus()));
    model.loader = vision_loader(files, model.status.id, config, metrics);
  }
  return model;
}

// DEVICE=cuda|auto use the first GPU when this build has a GPU backend.
// `key` (speech.device, image.device): auto uses a GPU when the build has one.
bool uses_gpu(const std::string& device, const char* key) {
  if (device == "cuda" && process_gpus().empty()) {
    spdlog::warn("{} cuda: this build has no GPU backend (build with -DMMSERVE_CUDA=ON); running on CPU", key);
  }
  return device_uses_gpu(device, process_gpus());
}

EngineLoader speech_loader(const std::string& path, const std::string& id, const Config& config,
                           ServerMetrics& metrics) {
  asr::AsrOptions options;
  options.model_id = id;
  options.model_path = path;
  options.vad_model_path = config.speech.vad_model_path;
  options.parallel = config.speech.parallel;
  options.max_queue = config.speech.max_queue;
  options.threads = config.speech.threads;
  options.beam_size = config.speech.beam_size;
  options.best_of = config.speech.best_of;
  options.audio_limits.max_bytes = config.speech.max_audio_bytes;
  options.audio_limits.max_seconds = config.speech.max_audio_seconds;
  return [options, device = config.speech.device, compute_type = config.speech.compute_type,
          cache_dir = config.models_dir + "/cache",
          &metrics](const LoadProgress& progress) mutable -> std::shared_ptr<void> {
    // COMPUTE_TYPE picks the weights; a missing type is made once into the model cache.
    options.model_path =
        asr::ensure_whisper_weights(options.model_path, cache_dir, asr::whisper_weights_of_compute_type(compute_type));
    options.use_gpu = uses_gpu(device, "speech.device");
    return std::make_shared<asr::WhisperEngine>(options, metrics, progress);
  };
}

RegisteredModel make_speech_model(const SpeechConfig& speech, const std::string& name, const Config& config,
                                  ServerMetrics& metrics, bool preload) {
  RegisteredModel model;
  model.status = discover_speech_model(speech);
  if (!name.empty()) model.status.id = name;
  model.preload = preload;
  if (model.status.state == ModelState::available) {
    set_memory_estimate(model, estimate_speech_memory(model.status.path, speech, process_gpus()));
    model.loader = speech_loader(model.status.path, model.status.id, config, metrics);
  }
  return model;
}

EngineLoader image_loader(const std::string& path, const std::string& id, const Config& config, ServerMetrics& metrics,
                          const ImageShared& shared) {
  image::ImageServiceOptions options;
  options.model_id = id;
  options.model_hash = image::short_model_hash(path);
  options.pipeline.model_path = path;
  options.pipeline.vae = config.image.vae;
  options.pipeline.taesd_dir = config.image.taesd_dir;
  options.pipeline.attention_slicing = config.image.attention_slicing;
  options.pipeline.vae_tiling = config.image.vae_tiling;
  options.pipeline.quantize = config.image.quantize;
  options.pipeline.use_gpu = uses_gpu(config.image.device, "image.device");
  options.pipeline.threads = config.image.threads;
  options.max_queue = config.image.max_queue;
  options.preview = config.image.preview;
  options.preview_interval_s = config.image.preview_interval_s;
  return [options, shared, &metrics](const LoadProgress& progress) -> std::shared_ptr<void> {
    return std::make_shared<image::ImageService>(options, shared.outputs, shared.activity, metrics, progress);
  };
}

RegisteredModel make_image_model(const ImageConfig& image, const std::string& name, const Config& config,
                                 ServerMetrics& metrics, const ImageShared& shared, bool preload) {
  RegisteredModel model;
  model.status = discover_image_model(image);
  if (!name.empty()) model.status.id = name;
  model.preload = preload;
  if (model.status.state == ModelState::available) {
    set_memory_estimate(model, estimate_image_memory(model.status.path, image, process_gpus()));
    model.loader = image_loader(model.status.path, model.status.id, config, metrics, shared);
  }
  return model;
}

std::string canonical_or_empty(const std::string& path) {
  if (path.empty()) return {};
  std::error_code ec;
  const auto canonical = std::filesystem::weakly_canonical(path, ec);
  return ec ? path : canonical.string();
}

// A model besides the service's own (registry.models, or pulled into the
// store), with the service's other settings.
RegisteredModel make_named_model(const RegistryModel& named, const Config& config, ServerMetrics& metrics,
                                 const ImageShared& image_shared) {
  if (named.service == "vision") {
    VisionConfig vision = config.vision;
    vision.model_path = named.path;
    vision.mmproj_path = named.mmproj;
    vision.model_name = named.name;
    return make_vision_model(vision, config, metrics, named.preload);
  }
  if (named.service == "image") {
    ImageConfig image = config.image;
    image.model_path = named.path;
    return make_image_model(image, named.name, config, metrics, image_shared, named.preload);
  }
  SpeechConfig speech = config.speech;
  speech.model_path = named.path;
  return make_speech_model(speech, named.name, config, metrics, named.preload);
}

} // namespace

ModelFinder::~ModelFinder() {
  {
    std::lock_guard lock(wakeup_mutex_);
    stopping_ = true;
  }
  wakeup_.notify_all();
  if (rescans_.joinable()) rescans_.join();
}

void ModelFinder::add_service(const std::string& service, const ImageShared& image_shared) {
  if (service == "image") image_shared_ = image_shared;
  if (service == "vision") {
    add_configured([this] { return make_vision_model(config_.vision, config_, metrics_, true); });
  } else if (service == "image") {
    add_configured([this] { return make_image_model(config_.image, "", config_, metrics_, image_shared_, true); });
  } else {
    add_configured([this] { return make_speech_model(config_.speech, "", config_, metrics_, true); });
  }
  for (const auto& extra : config_.registry.models) {
    if (extra.service == service)
      add_configured([this, extra] { return make_named_model(extra, config_, metrics_, image_shared_); });
  }
  services_.insert(service);
  std::lock_guard lock(scan_mutex_);
  sync_store();
}

bool ModelFinder::scan(bool on_demand) {
  std::lock_guard lock(scan_mutex_);
  const auto now = std::chrono::steady_clock::now();
  if (on_demand) {
    if (now - last_demand_scan_ < std::chrono::seconds(1)) return false;
    last_demand_scan_ = now;
  }
  bool found = false;
  for (const auto& source : configured_) {
    if (registry_.status(source.id).state != ModelState::missing) continue;
    RegisteredModel model = source.make();
    if (model.status.state != ModelState::available) continue;
    if (!model_files_settled(model.status.path, kSettleTime)) continue; // still arriving: the next look
    model.status.id = source.id; // the id clients were shown while it was missing
    if (registry_.revive(std::move(model))) {
      remember(source.id);
      found = true;
    }
  }
  return sync_store() || found;
}

void ModelFinder::start_rescans(double interval_s) {
  if (interval_s <= 0) return;
  rescans_ = std::thread([this, interval = std::chrono::duration<double>(interval_s)] {
    std::unique_lock lock(wakeup_mutex_);
    while (!wakeup_.wait_for(lock, interval, [this] { return stopping_; })) {
      lock.unlock();
      try {
        scan(false);
      } catch (const std::exception& error) {
        spdlog::warn("looking for new models: {}", error.what());
      }
      lock.lock();
    }
  });
}

void ModelFinder::add_configured(std::function<RegisteredModel()> make) {
  RegisteredModel model = make();
  const std::string id = model.status.id;
  registry_.add(std::move(model));
  remember(id);
  configured_.push_back({id, std::move(make)});
}

void ModelFinder::remember(const std::string& id) {
  known_paths_.insert(canonical_or_empty(registry_.status(id).path));
}

bool ModelFinder::sync_store() {
  if (!config_.registry.include_store || config_.models_dir.empty()) return false;
  const auto manifests = ModelStore(config_.models_dir).list();
  for (auto it = pulled_.begin(); it != pulled_.end();) {
    const bool listed = std::any_of(manifests.begin(), manifests.end(),
                                    [&](const ModelManifest& manifest) { return manifest.name == it->first; });
    if (listed || !registry_.remove(it->first)) {
      ++it;
      continue;
    }
    known_paths_.erase(it->second);
    it = pulled_.erase(it);
  }
  bool added = false;
  for (const auto& manifest : manifests) {
    if (!services_.contains(manifest.family) || skipped_.contains(manifest.name) || pulled_.contains(manifest.name))
      continue;
    RegistryModel pulled{manifest.name, manifest.family, "", "", false};
    for (const auto& file : manifest.files) {
      const std::string path = config_.models_dir + "/" + file.path;
      // A diffusers pipeline is its folder (the one with model_index.json).
      if (manifest.family == "image" && file.path.ends_with("model_index.json")) {
        pulled.path = std::filesystem::path(path).parent_path().string();
        break;
      }
      const bool projector = file.path.find("mmproj") != std::string::npos;
      if (projector && pulled.mmproj.empty()) pulled.mmproj = path;
      if (!projector && pulled.path.empty()) pulled.path = path;
    }
    if (pulled.path.empty()) continue;
    const std::string canonical = canonical_or_empty(pulled.path);
    if (known_paths_.contains(canonical)) continue;
    try {
      registry_.add(make_named_model(pulled, config_, metrics_, image_shared_));
      known_paths_.insert(canonical);
      pulled_.emplace(pulled.name, canonical);
      added = true;
    } catch (const std::exception& error) { // a repeated name, unreadable weights
      spdlog::warn("model store: {} (skipped)", error.what());
      skipped_.insert(manifest.name); // said once
    }
  }
  return added;
}

} // namespace mmserve
