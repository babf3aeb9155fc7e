#include "app/roles.hpp"

#include "gateway/gateway.hpp"
#include "playground/playground_routes.hpp"

#include "api/chat_completion.hpp"
#include "api/chat_routes.hpp"
#include "api/speech_routes.hpp"
#include "api/system_routes.hpp"
#include "app/media_cache.hpp"
#include "app/model_discovery.hpp"
#include "core/http_server.hpp"
#include "core/logging.hpp"
#include "core/model_board.hpp"
#include "core/version.hpp"
#include "engines/asr/whisper_convert.hpp"
#include "engines/asr/whisper_engine.hpp"
#include "engines/vlm/quantize.hpp"
#include "engines/vlm/vlm_engine.hpp"

#include "ggml-backend.h"

#include <boost/asio/signal_set.hpp>
#include <csignal>
#include <thread>

namespace mmserve {
namespace {

bool runs(Role role, Role service, bool enabled) {
  return enabled && (role == Role::serve || role == service);
}

void publish_and_report(ModelBoard& board, const ModelStatus& status) {
  board.publish(status);
  if (status.state == ModelState::loaded) return;
  log_event(spdlog::level::warn, "model not loaded",
            {{"service", status.service},
             {"model", status.id},
             {"state", model_state_name(status.state)},
             {"detail", status.detail}});
}

// A service's engine, loaded on its own thread so the server answers
// /healthz and /readyz (with progress) while a large model loads.
template <typename Engine> class BackgroundModel {
public:
  using Progress = std::function<void(float)>;
  using Loader = std::function<std::shared_ptr<Engine>(const Progress&)>;

  BackgroundModel(ModelBoard& board, ModelStatus status, Loader loader) : board_(board), status_(std::move(status)) {
    if (status_.state != ModelState::available) {
      publish_and_report(board_, status_);
      return;
    }
    board_.publish(status_); // loading starts right away
    loader_ = std::thread([this, loader = std::move(loader)] { load(loader); });
  }
  ~BackgroundModel() {
    if (loader_.joinable()) loader_.join();
    std::lock_guard lock(mutex_);
    engine_.reset(); // stops the engine's threads
  }

  std::shared_ptr<Engine> engine() {
    std::lock_guard lock(mutex_);
    return engine_;
  }

private:
  void load(const Loader& loader) {
    ModelStatus status = status_;
    status.state = ModelState::loading;
    status.detail.clear();
    board_.publish(status);
    log_event(spdlog::level::info, "loading model",
              {{"service", status.service}, {"model", status.id}, {"path", status.path}});
    int last_percent = -1;
    const auto started = std::chrono::steady_clock::now();
    try {
      auto engine = loader([&](float progress) {
        const int percent = static_cast<int>(progress * 100);
        if (percent / 10 == last_percent / 10 && percent != 100) return;
        last_percent = percent;
        status.progress = progress;
        board_.publish(status);
        spdlog::info("loading {} model '{}': {}%", status.service, status.id, percent);
      });
      {
        std::lock_guard lock(mutex_);
        engine_ = std::move(engine);
      }
      status.state = ModelState::loaded;
      status.progress = 1;
      board_.publish(status);
      log_event(spdlog::level::info, "model loaded",
                {{"service", status.service},
                 {"model", status.id},
                 {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()}});
    } catch (const std::exception& error) {
      status.state = ModelState::failed;
      status.detail = error.what();
      publish_and_report(board_, status);
    }
  }

  ModelBoard& board_;
  ModelStatus status_;
  std::mutex mutex_;
  std::shared_ptr<Engine> engine_;
  std::thread loader_;
};

using VisionModel = BackgroundModel<vlm::VlmEngine>;
using SpeechModel = BackgroundModel<asr::WhisperEngine>;

void start_vision(std::optional<VisionModel>& model, const Config& config, ModelBoard& board, ServerMetrics& metrics) {
  VisionModelFiles files;
  ModelStatus status = discover_vision_model(config.vision, &files);
  vlm::EngineOptions options;
  options.model_id = status.id;
  options.model_path = files.model;
  options.mmproj_path = files.mmproj;
  options.context_per_slot = config.vision.max_model_len;
  options.parallel = config.vision.parallel;
  options.max_queue = config.vision.max_queue;
  options.threads = config.vision.threads;
  options.gpu_count = config.vision.gpu_count;
  options.tensor_split = config.vision.tensor_split;
  options.image_cache_bytes = config.vision.image_cache_bytes;
  if (config.vision.dtype != "auto" && config.vision.load_8bit) {
    spdlog::info("vision.dtype {} is overridden by LOAD_8BIT: the weights load as Q8_0", config.vision.dtype);
  }
  const std::string cache_dir = config.models_dir + "/cache";
  model.emplace(board, status,
                [options, cache_dir, dtype = config.vision.dtype, load_8bit = config.vision.load_8bit,
                 &metrics](const VisionModel::Progress& progress) mutable {
                  if (load_8bit) {
                    options.model_path = vlm::ensure_q8_0(options.model_path, cache_dir);
                  } else if (dtype != "auto") {
                    // vLLM converts weights to --dtype at load; here the GGUF is converted once into the cache.
                    options.model_path =
                        vlm::ensure_weight_type(options.model_path, cache_dir, vlm::weight_type_of_dtype(dtype));
                  }
                  return std::make_shared<vlm::VlmEngine>(options, metrics, progress);
                });
}

// DEVICE=cuda|auto use the first GPU when this build has a GPU backend.
bool speech_uses_gpu(const std::string& device) {
  if (device == "cpu") return false;
  vlm::init_engine_backend();
  const bool have_gpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU) != nullptr;
  if (device == "cuda" && !have_gpu) {
    spdlog::warn("speech.device cuda: this build has no GPU backend (build with -DMMSERVE_CUDA=ON); running on CPU");
  }
  return have_gpu;
}

void start_speech(std::optional<SpeechModel>& model, const Config& config, ModelBoard& board, ServerMetrics& metrics) {
  const ModelStatus status = discover_speech_model(config.speech);
  asr::AsrOptions options;
  options.model_id = status.id;
  options.model_path = status.path;
  options.vad_model_path = config.speech.vad_model_path;
  options.parallel = config.speech.parallel;
  options.max_queue = config.speech.max_queue;
  options.threads = config.speech.threads;
  options.beam_size = config.speech.beam_size;
  options.best_of = config.speech.best_of;
  options.audio_limits.max_bytes = config.speech.max_audio_bytes;
  options.audio_limits.max_seconds = config.speech.max_audio_seconds;
  model.emplace(board, status,
                [options, device = config.speech.device, compute_type = config.speech.compute_type,
                 cache_dir = config.models_dir + "/cache", &metrics](const SpeechModel::Progress&) mutable {
                  // COMPUTE_TYPE picks the weights; a missing type is made once into the model cache.
                  options.model_path = asr::ensure_whisper_weights(options.model_path, cache_dir,
                                                                   asr::whisper_weights_of_compute_type(compute_type));
                  options.use_gpu = speech_uses_gpu(device);
                  return std::make_shared<asr::WhisperEngine>(options, metrics);
                });
}

} // namespace

int run_role(Role role, const Config& config) {
  ServerMetrics metrics;
  ModelBoard board(metrics);
  http::Router router;

  const bool vision = runs(role, Role::vision, config.vision.enabled);
  const bool speech = runs(role, Role::speech, config.speech.enabled);
  const bool image = runs(role, Role::image, config.image.enabled);
  std::optional<VisionModel> vision_model;
  std::optional<SpeechModel> speech_model;
  if (vision) start_vision(vision_model, config, board, metrics);
  if (speech) start_speech(speech_model, config, board, metrics);
  if (image) publish_and_report(board, discover_image_model(config.image));
  if (vision) metrics.queue_depth.labels({"vision"}).set(0);
  if (speech) metrics.queue_depth.labels({"speech"}).set(0);
  if (image) metrics.queue_depth.labels({"image"}).set(0);

  http::HttpServer server(config.server, config.logging.access_log, router, metrics);
  api::register_system_routes(router, board, metrics, server.draining_flag(), role != Role::gateway);
  // The page for people: where every service of this process (or behind this gateway) is one click away.
  if (config.server.playground && (role == Role::serve || role == Role::gateway))
    playground::register_playground_routes(router);
  // The gateway fronts `serve` (its remote pools, auth, limits, CORS) and is all the `gateway` role runs.
  std::optional<gateway::Gateway> front;
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
  const api::ChatImagePolicy image_policy =
      api::chat_image_policy(config.media, vision ? open_media_cache(config.media, metrics) : nullptr);
  if (vision) {
    api::register_chat_routes(
        router, board,
        [&vision_model, &image_policy, &metrics](const api::ChatRequest& request,
                                                 http::HttpExchange& exchange) -> http::net::awaitable<void> {
          auto engine = vision_model->engine();
          if (!engine) {
            throw ApiError::unavailable("The vision model is not loaded yet.", 5, "model_not_loaded");
          }
          co_await api::run_chat_completion(*engine, request, image_policy, metrics, exchange);
        });
  }

  if (speech) {
    api::register_speech_routes(
        router, board, [&speech_model] { return speech_model->engine(); }, config.speech.max_audio_bytes);
  }

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
  vision_model.reset();
  speech_model.reset();
  spdlog::info("mmserve stopped");
  return 0;
}

} // namespace mmserve
