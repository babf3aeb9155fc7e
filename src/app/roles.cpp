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
#include "app/model_memory.hpp"
#include "app/service_models.hpp"
#include "core/http_server.hpp"
#include "core/logging.hpp"
#include "core/model_board.hpp"
#include "core/model_registry.hpp"
#include "core/version.hpp"
#include "engines/vlm/vlm_engine.hpp"
#include "storage/output_store.hpp"

#include <boost/asio/signal_set.hpp>
#include <chrono>
#include <csignal>
#include <optional>

namespace mmserve {
namespace {

bool runs(Role role, Role service, bool enabled) {
  return enabled && (role == Role::serve || role == service);
}

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
