// The models each service of this process serves: found on disk (its
// configured model, registry.models, the model store), registered with the
// loader that builds their engine, and looked for again while running.
#pragma once

#include "app/model_memory.hpp"
#include "core/config.hpp"
#include "core/model_registry.hpp"
#include "core/server_metrics.hpp"

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace mmserve {
namespace storage {
class OutputStore;
}
namespace image {
class ImageActivity;
}

// What every image model's service shares: where outputs go, and the
// process's one view of the generation running (progress, interrupt).
struct ImageShared {
  std::shared_ptr<storage::OutputStore> outputs;
  std::shared_ptr<image::ImageActivity> activity;
};

// The GPUs, found once: ggml's device list does not change while running.
const std::vector<GpuInfo>& process_gpus();

// Every model a service can serve: its configured one (loaded at start), the
// registry's extra models, and those pulled into the model store. Looked for
// again while running (every registry.rescan_interval, and when a request
// names a model that is unknown or missing), so a model put on disk after
// the start is served without a restart: a configured one that was missing
// (a volume filled after the pod started) and one pulled beside a running
// server; one removed from the store is dropped once it is not loaded.
class ModelFinder {
public:
  ModelFinder(ModelRegistry& registry, const Config& config, ServerMetrics& metrics)
      : registry_(registry), config_(config), metrics_(metrics) {}
  ModelFinder(const ModelFinder&) = delete;
  ModelFinder& operator=(const ModelFinder&) = delete;
  ~ModelFinder(); // stops the rescans

  // Registers the service's models (at start).
  void add_service(const std::string& service, const ImageShared& image_shared = {});
  // Looks again; true when it added or revived a model. A request's look
  // (on_demand) happens at most once a second, whatever asks.
  bool scan(bool on_demand);
  // Scans every interval on a thread of its own until destroyed.
  void start_rescans(double interval_s);

private:
  // How long a model's files must be left alone before it is taken.
  static constexpr std::chrono::seconds kSettleTime{2};

  struct Configured {
    std::string id;
    std::function<RegisteredModel()> make;
  };

  void add_configured(std::function<RegisteredModel()> make);
  // A store model that is also configured is listed once.
  void remember(const std::string& id);
  // With scan_mutex_ held: registers the store's models not registered yet
  // (true when any) and forgets those removed from it (`mmserve models rm`)
  // once they are not loaded.
  bool sync_store();

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

} // namespace mmserve
