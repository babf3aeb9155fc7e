#include "app/roles.hpp"

#include "api/chat_routes.hpp"
#include "api/system_routes.hpp"
#include "app/model_discovery.hpp"
#include "core/http_server.hpp"
#include "core/logging.hpp"
#include "core/model_board.hpp"
#include "core/version.hpp"

#include <boost/asio/signal_set.hpp>
#include <csignal>

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

} // namespace

int run_role(Role role, const Config& config) {
  if (role == Role::gateway) {
    spdlog::error("the gateway role (reverse proxy to remote service pools) is not in this build yet; "
                  "`mmserve serve` runs every service behind one listener");
    return 2;
  }

  ServerMetrics metrics;
  ModelBoard board(metrics);
  http::Router router;

  const bool vision = runs(role, Role::vision, config.vision.enabled);
  const bool speech = runs(role, Role::speech, config.speech.enabled);
  const bool image = runs(role, Role::image, config.image.enabled);
  if (vision) publish_and_report(board, discover_vision_model(config.vision));
  if (speech) publish_and_report(board, discover_speech_model(config.speech));
  if (image) publish_and_report(board, discover_image_model(config.image));
  if (vision) metrics.queue_depth.labels({"vision"}).set(0);
  if (speech) metrics.queue_depth.labels({"speech"}).set(0);
  if (image) metrics.queue_depth.labels({"image"}).set(0);

  http::HttpServer server(config.server, config.logging.access_log, router, metrics);
  api::register_system_routes(router, board, metrics, server.draining_flag());
  if (vision) api::register_chat_routes(router, board, nullptr);

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
      server.io_context().stop();
      return;
    }
    signals.async_wait(on_signal);
  };
  signals.async_wait(on_signal);

  server.run();
  spdlog::info("mmserve stopped");
  return 0;
}

} // namespace mmserve
