#include "app/roles.hpp"

#include "core/task.hpp"
#include "gateway/gateway.hpp"
#include "playground/playground_routes.hpp"

#include "api/chat_completion.hpp"
#include "api/chat_routes.hpp"
#include "api/image_routes.hpp"
#include "api/model_routes.hpp"
#include "api/speech_routes.hpp"
#include "api/system_routes.hpp"
#include "app/image_service.hpp"
#include "app/media_cache.hpp"
#include "app/model_discovery.hpp"
#include "app/model_memory.hpp"
#include "app/model_store.hpp"
#include "core/http_server.hpp"
#include "core/logging.hpp"
#include "core/model_board.hpp"
#include "core/model_registry.hpp"
#include "core/version.hpp"
#include "engines/asr/whisper_convert.hpp"
#include "engines/asr/whisper_engine.hpp"
#include "engines/vlm/quantize.hpp"
#include "engines/vlm/vlm_engine.hpp"
#include "storage/output_store.hpp"

#include "ggml-backend.h"

#include <boost/asio/signal_set.hpp>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

namespace mmserve {
namespace {

bool runs(Role role, Role service, bool enabled) {
  return enabled && (role == Role::serve || role == service);
}

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

// The GPUs, found once: ggml's device list does not change while running.
const std::vector<GpuInfo>& process_gpus() {
  static const std::vector<GpuInfo> gpus = [] {
    vlm::init_engine_backend();
    return detect_gpus();
  }();
  return gpus;
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

// What every image model's service shares: where outputs go, and the
// process's one view of the generation running (progress, interrupt).
struct ImageShared {
  std::shared_ptr<storage::OutputStore> outputs;
  std::shared_ptr<image::ImageActivity> activity;
};

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

// Every model a service can serve: its configured one (loaded at start), the
// registry's extra models, and those pulled into the model store. Looked for
// again while running (every registry.rescan_interval, and when a request
// names a model that is unknown or missing), so a model put on disk after
// the start is served without a restart: a configured one that was missing
// (a volume filled after the pod started) and one pulled beside a running
// server; one removed from the store is dropped once it is not loaded.
class ModelFinder {
  // How long a model's files must be left alone before it is taken.
  static constexpr std::chrono::seconds kSettleTime{2};

public:
  ModelFinder(ModelRegistry& registry, const Config& config, ServerMetrics& metrics)
      : registry_(registry), config_(config), metrics_(metrics) {}
  ModelFinder(const ModelFinder&) = delete;
  ModelFinder& operator=(const ModelFinder&) = delete;
  ~ModelFinder() {
    {
      std::lock_guard lock(wakeup_mutex_);
      stopping_ = true;
    }
    wakeup_.notify_all();
    if (rescans_.joinable()) rescans_.join();
  }

  void add_service(const std::string& service, const ImageShared& image_shared = {}) {
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

  // Looks again; true when it added or revived a model. A request's look
  // (on_demand) happens at most once a second, whatever asks.
  bool scan(bool on_demand) {
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

  // Scans every interval on a thread of its own until destroyed.
  void start_rescans(double interval_s) {
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

private:
  struct Configured {
    std::string id;
    std::function<RegisteredModel()> make;
  };

  void add_configured(std::function<RegisteredModel()> make) {
    RegisteredModel model = make();
    const std::string id = model.status.id;
    registry_.add(std::move(model));
    remember(id);
    configured_.push_back({id, std::move(make)});
  }
  // A store model that is also configured is listed once.
  void remember(const std::string& id) { known_paths_.insert(canonical_or_empty(registry_.status(id).path)); }

  // With scan_mutex_ held: registers the store's models not registered yet
  // (true when any) and forgets those removed from it (`mmserve models rm`)
  // once they are not loaded.
  bool sync_store() {
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
      if (pulled.path.empty() || known_paths_.contains(canonical_or_empty(pulled.path))) continue;
      try {
        registry_.add(make_named_model(pulled, config_, metrics_, image_shared_));
        remember(pulled.name);
        pulled_.emplace(pulled.name, canonical_or_empty(pulled.path));
        added = true;
      } catch (const std::exception& error) { // a repeated name, unreadable weights
        spdlog::warn("model store: {} (skipped)", error.what());
        skipped_.insert(manifest.name); // said once
      }
    }
    return added;
  }

  ModelRegistry& registry_;
  const Config& config_;
  ServerMetrics& metrics_;
  ImageShared image_shared_;
  std::set<std::string> services_;
  std::mutex scan_mutex_; // one scan at a time; guards what follows
  std::vector<Configured> configured_;
  std::set<std::string> known_paths_;
  std::map<std::string, std::string> pulled_; // store models registered: name -> canonical path
  std::set<std::string> skipped_;
  std::chrono::steady_clock::time_point last_demand_scan_{};
  std::mutex wakeup_mutex_;
  std::condition_variable wakeup_;
  bool stopping_ = false;
  std::thread rescans_;
};

} // namespace

int run_role(Role role, const Config& config) {
  ServerMetrics metrics;
  ModelBoard board(metrics);
  http::Router router;

  const bool vision = runs(role, Role::vision, config.vision.enabled);
  const bool speech = runs(role, Role::speech, config.speech.enabled);
  const bool image = runs(role, Role::image, config.image.enabled);
  // Reset by hand after the server stops: engines post their last events to its io_context.
  std::optional<ModelRegistry> registry;
  std::vector<uint64_t> gpu_memory_budgets;
  if (vision || speech || image) {
    gpu_memory_budgets = gpu_budgets(config.registry, process_gpus());
    for (size_t gpu = 0; gpu < gpu_memory_budgets.size(); ++gpu) {
      const auto& info = process_gpus()[gpu];
      spdlog::info("GPU {} ({}): {:.0f} MiB, {:.0f} MiB free; models may use {:.0f} MiB", gpu, info.name,
                   static_cast<double>(info.total_bytes) / (1 << 20), static_cast<double>(info.free_bytes) / (1 << 20),
                   static_cast<double>(gpu_memory_budgets[gpu]) / (1 << 20));
    }
  }
  registry.emplace(board, metrics, config.registry.memory_budget, config.registry.idle_unload_s,
                   std::move(gpu_memory_budgets));
  std::optional<ModelFinder> finder; // stopped before the registry goes
  finder.emplace(*registry, config, metrics);
  if (vision) finder->add_service("vision");
  if (speech) finder->add_service("speech");
  ImageShared image_shared;
  if (image) {
    image_shared = {storage::make_output_store(config, process_environment()),
                    std::make_shared<image::ImageActivity>(metrics)};
    finder->add_service("image", image_shared);
  }
  registry->preload();
  if (vision || speech || image) {
    registry->set_discoverer([&finder] {
      try {
        return finder->scan(true);
      } catch (const std::exception& error) { // the request goes on with the models there are
        spdlog::warn("looking for new models: {}", error.what());
        return false;
      }
    });
    finder->start_rescans(config.registry.rescan_interval_s);
  }
  if (vision) metrics.queue_depth.labels({"vision"}).set(0);
  if (speech) metrics.queue_depth.labels({"speech"}).set(0);
  if (image) metrics.queue_depth.labels({"image"}).set(0);

  // Declared before the server, so it outlives the coroutine frames the
  // server's io_contexts destroy last (a request cut off by the grace period
  // still holds an upstream lease).
  std::optional<gateway::Gateway> front;
  http::HttpServer server(config.server, config.logging.access_log, router, metrics);
  api::register_system_routes(router, board, metrics, server.draining_flag(), role != Role::gateway);
  // The page for people: where every service of this process (or behind this gateway) is one click away.
  if (config.server.playground && (role == Role::serve || role == Role::gateway))
    playground::register_playground_routes(router);
  // The gateway fronts `serve` (its remote pools, auth, limits, CORS) and is all the `gateway` role runs.
  if (role == Role::serve || role == Role::gateway) {
    front.emplace(config.gateway, server.io_context(), metrics);
    front->set_local_models([&board] {
      nlohmann::json list = nlohmann::json::array();
      for (const auto& model : board.snapshot())
        list.push_back(api::model_object(model));
      return list;
    });
    server.set_front([&front](http::HttpExchange& exchange) { return front->handle(exchange); });
    front->start();
  }
  // storage.inputs: uploads kept in the bucket (null: not kept).
  const std::shared_ptr<InputArchive> archive =
      vision || speech ? make_input_archive(config, process_environment(), metrics) : nullptr;
  api::ChatImagePolicy image_policy =
      api::chat_image_policy(config.media, vision ? open_media_cache(config.media, metrics) : nullptr);
  image_policy.archive = archive;
  if (vision) {
    api::register_chat_routes(router,
                              [&registry, &image_policy, &metrics](const api::ChatRequest& request,
                                                                   http::HttpExchange& exchange) -> Task<void> {
                                const std::string id = registry->resolve("vision", request.model, "chat");
                                // The lease keeps the model loaded until the answer is written.
                                const ModelLease lease = co_await registry->acquire(id, exchange.deadline());
                                co_await api::run_chat_completion(lease.get<vlm::VlmEngine>(), request, image_policy,
                                                                  metrics, exchange);
                              });
  }
  if (speech) api::register_speech_routes(router, *registry, config.speech.max_audio_bytes, archive);
  if (image) {
    api::register_image_routes(router, {*registry,
                                        board,
                                        image_shared.activity,
                                        image_shared.outputs,
                                        config.storage.outputs.backend == "local",
                                        {config.image.max_width, config.image.max_height, config.image.max_batch}});
  }
  if (vision || speech || image) api::register_model_admin_routes(router, *registry, config.registry.admin_api_keys);

  server.listen();
  nlohmann::json services = nlohmann::json::array();
  for (auto [name, enabled] : {std::pair{"vision", vision}, {"speech", speech}, {"image", image}}) {
    if (enabled) services.push_back(name);
  }
  log_event(spdlog::level::info, "mmserve listening",
            {{"role", role_name(role)},
             {"version", kVersion},
             {"address", config.server.host},
             {"port", server.port()},
             {"services", services}});

  boost::asio::signal_set signals(server.io_context(), SIGINT, SIGTERM);
  int signals_seen = 0;
  std::function<void(const boost::system::error_code&, int)> on_signal = [&](const boost::system::error_code& ec,
                                                                             int signal_number) {
    if (ec) return;
    if (++signals_seen == 1) {
      spdlog::info("received {}, shutting down gracefully (send again to stop at once)",
                   signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
      server.drain(std::chrono::milliseconds(static_cast<int64_t>(config.server.shutdown_grace_s * 1000)));
    } else {
      spdlog::warn("received a second signal: stopping now");
      server.stop();
      return;
    }
    signals.async_wait(on_signal);
  };
  signals.async_wait(on_signal);

  server.run();
  if (front) front->stop();
  // Engines stop while the server's io_context still exists (stopped): their
  // last events for requests cut off by the grace period are posted to it.
  registry->set_discoverer({});
  finder.reset();
  registry.reset();
  spdlog::info("mmserve stopped");
  return 0;
}

} // namespace mmserve
