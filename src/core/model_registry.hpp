// The models this process can serve, several per service, loaded on first
// use (or at start) and unloaded when idle, so that every loaded model of
// every service stays within one memory budget (and one per GPU). Requests lease a loaded
// model; a leased model is never evicted. Engines are type-erased here (the
// registry knows no engine); each service casts its lease back.
#pragma once

#include "core/http_exchange.hpp"
#include "core/model_board.hpp"
#include "core/server_metrics.hpp"
#include "core/task.hpp"

#include <condition_variable>
#include <functional>
#include <initializer_list>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace mmserve {

using LoadProgress = std::function<void(float)>;
// Builds a model's engine on a loader thread; throws when it cannot.
using EngineLoader = std::function<std::shared_ptr<void>(const LoadProgress&)>;

struct RegisteredModel {
  ModelStatus status;                     // id, service, path, created; state available (or missing: cannot load)
  uint64_t memory_bytes = 0;              // estimated host memory while loaded
  std::vector<uint64_t> gpu_memory_bytes; // estimated memory on each GPU (index: ggml's GPU order)
  EngineLoader loader;
  bool preload = false; // load at start rather than on first use
};

class ModelRegistry;

// A loaded model held for one request: not evicted or unloaded while held.
class ModelLease {
public:
  ModelLease() = default;
  ModelLease(ModelLease&& other) noexcept;
  ModelLease& operator=(ModelLease&& other) noexcept;
  ModelLease(const ModelLease&) = delete;
  ModelLease& operator=(const ModelLease&) = delete;
  ~ModelLease();

  template <typename Engine> Engine& get() const { return *static_cast<Engine*>(engine_.get()); }
  const std::string& id() const { return id_; }

private:
  friend class ModelRegistry;
  ModelLease(ModelRegistry* registry, std::string id, std::shared_ptr<void> engine)
      : registry_(registry), id_(std::move(id)), engine_(std::move(engine)) {}
  void release();

  ModelRegistry* registry_ = nullptr;
  std::string id_;
  std::shared_ptr<void> engine_;
};

class ModelRegistry {
public:
  // memory_budget: host bytes for every loaded model together (0: automatic);
  // gpu_budgets: the same per GPU, in ggml's GPU order (a GPU past the list
  // has no room); idle_unload_s: a model unused this long is unloaded (0: never).
  ModelRegistry(ModelBoard& board, ServerMetrics& metrics, uint64_t memory_budget, double idle_unload_s,
                std::vector<uint64_t> gpu_budgets = {});
  ~ModelRegistry(); // waits for loads in progress, then unloads everything
  ModelRegistry(const ModelRegistry&) = delete;
  ModelRegistry& operator=(const ModelRegistry&) = delete;

  // Ids are unique across services; a repeated id is refused (std::invalid_argument).
  void add(RegisteredModel model);
  // A model found on disk after the start takes the place of the missing
  // entry with its id (a volume filled after the pod started): published as
  // available, and loaded now when marked preload. False when no entry of
  // that id is missing.
  bool revive(RegisteredModel model);
  // Forgets a model whose files are gone (removed from the store), unless it
  // is loaded, loading or serving: false then, and it stays until unloaded.
  bool remove(const std::string& id);
  // Looks on disk for models that appeared since the start (the process's
  // model discovery adds or revives them), called outside the lock before a
  // request is told its model does not exist or is missing, and before an
  // admin load of such a model; it returns true when it found any. Set
  // before serving.
  void set_discoverer(std::function<bool()> discover) { discover_ = std::move(discover); }
  // Starts loading the models marked preload, in the order added, as far as
  // the budget allows (a refusal is logged and the model stays available).
  void preload();

  // The id a request's "model" names: empty or an alias picks the service's
  // first model. 404 (ApiError) listing the service's models otherwise;
  // `kind` words it ("chat", "speech").
  std::string resolve(const std::string& service, const std::string& requested, const std::string& kind,
                      std::initializer_list<const char*> aliases = {}) const;
  // 503 (ApiError) when no model of the service can be served at all.
  void check_servable(const std::string& service) const;

  // Leases `id`, loading it first when needed (evicting idle models to make
  // room) and waiting, without blocking the thread, until it is loaded or
  // `deadline` passes. Throws ApiError: 503 when it cannot load now or
  // failed, 507 when it can never fit the budget.
  Task<ModelLease> acquire(std::string id, http::Clock::time_point deadline);

  // Admin: start loading (no wait); unload, after waiting up to a second
  // for requests that are finishing (409 while it still serves some).
  ModelStatus load(const std::string& id);
  Task<ModelStatus> unload(std::string id);
  ModelStatus status(const std::string& id) const;

  // The budget "auto" means: 90% of the cgroup memory limit (a Kubernetes
  // container's limit) or of physical RAM, whichever is smaller.
  static uint64_t automatic_budget();

private:
  friend class ModelLease;
  using Clock = http::Clock;
  struct Entry {
    RegisteredModel model;
    std::shared_ptr<void> engine;
    int in_use = 0;
    Clock::time_point last_used{};
    std::thread loader;
  };

  // Why no model of `service` can be served (check_servable's 503), or nullopt.
  std::optional<ApiError> refusal_of(const std::string& service) const;
  // The discoverer's verdict when `id` is unknown or missing; false otherwise.
  bool discover_if_absent(const std::string& id) const;
  Entry& find(const std::string& id);
  const Entry& find(const std::string& id) const;
  // With mutex_ held: nothing when loaded or loading; else reserves memory
  // (evicting idle models, least recently used first) and starts the load.
  void begin_load(Entry& entry);
  void run_load(Entry& entry, std::vector<std::shared_ptr<void>> evicted);
  std::optional<ModelLease> try_lease(const std::string& id, bool start_load);
  void release(const std::string& id);
  ModelStatus try_unload(const std::string& id);
  // With mutex_ held: an unloaded entry's engine (to be destroyed outside
  // the lock), its status published and the unload counted.
  std::shared_ptr<void> take_engine(Entry& entry, const char* reason);
  // Memory is accounted in pools: 0 is host memory, 1 + i is GPU i.
  size_t pool_count() const { return 1 + gpu_budgets_.size(); }
  uint64_t pool_budget(size_t pool) const { return pool == 0 ? memory_budget_ : gpu_budgets_[pool - 1]; }
  static uint64_t pool_need(const RegisteredModel& model, size_t pool);
  static std::string pool_name(size_t pool);
  // With mutex_ held: the estimates of the models loaded or loading, per pool.
  std::vector<uint64_t> reserved_bytes() const;
  void publish(const Entry& entry);
  void update_memory_gauge();
  void sweep_idle();

  ModelBoard& board_;
  ServerMetrics& metrics_;
  const uint64_t memory_budget_;
  const std::vector<uint64_t> gpu_budgets_;
  const double idle_unload_s_;
  std::function<bool()> discover_;
  mutable std::mutex mutex_;
  std::list<Entry> entries_; // stable addresses: loader threads hold references
  bool stopping_ = false;
  std::condition_variable sweep_wakeup_;
  std::thread sweeper_;
};

} // namespace mmserve
