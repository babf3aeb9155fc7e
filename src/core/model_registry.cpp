#include "core/model_registry.hpp"

#include "core/logging.hpp"
#include "core/task.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <fstream>
#include <stdexcept>
#include <unistd.h>

namespace mmserve {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;
// How long a request that was just answered may take to let go of its model.
constexpr auto kFinishingGrace = std::chrono::seconds(1);

std::string mib(uint64_t bytes) {
  return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / kMiB);
}

// cgroup v2 (memory.max) or v1 (memory.limit_in_bytes); nullopt when unlimited or absent.
std::optional<uint64_t> cgroup_memory_limit() {
  for (const char* file : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream in(file);
    std::string text;
    if (!(in >> text) || text == "max") continue;
    try {
      const uint64_t value = std::stoull(text);
      if (value > 0 && value < (1ull << 60)) return value; // v1 reports "no limit" as a huge number
    } catch (const std::exception&) {
    }
  }
  return std::nullopt;
}

} // namespace

// ---- lease ----------------------------------------------------------------------

ModelLease::ModelLease(ModelLease&& other) noexcept
    : registry_(std::exchange(other.registry_, nullptr)), id_(std::move(other.id_)), engine_(std::move(other.engine_)) {
}

ModelLease& ModelLease::operator=(ModelLease&& other) noexcept {
  if (this != &other) {
    release();
    registry_ = std::exchange(other.registry_, nullptr);
    id_ = std::move(other.id_);
    engine_ = std::move(other.engine_);
  }
  return *this;
}

ModelLease::~ModelLease() {
  release();
}

void ModelLease::release() {
  if (!registry_) return;
  engine_.reset();
  registry_->release(id_);
  registry_ = nullptr;
}

// ---- registry -------------------------------------------------------------------

uint64_t ModelRegistry::automatic_budget() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  uint64_t total = pages > 0 && page_size > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size) : 0;
  if (const auto limit = cgroup_memory_limit(); limit && (total == 0 || *limit < total)) total = *limit;
  if (total == 0) total = 8ull << 30;
  return total / 10 * 9;
}

ModelRegistry::ModelRegistry(ModelBoard& board, ServerMetrics& metrics, uint64_t memory_budget, double idle_unload_s,
                             std::vector<uint64_t> gpu_budgets)
    : board_(board), metrics_(metrics), memory_budget_(memory_budget ? memory_budget : automatic_budget()),
      gpu_budgets_(std::move(gpu_budgets)), idle_unload_s_(idle_unload_s) {
  metrics_.models_memory_budget_bytes.labels({}).set(static_cast<double>(memory_budget_));
  for (size_t gpu = 0; gpu < gpu_budgets_.size(); ++gpu) {
    metrics_.models_gpu_memory_budget_bytes.labels({std::to_string(gpu)}).set(static_cast<double>(gpu_budgets_[gpu]));
  }
  update_memory_gauge();
  if (idle_unload_s_ > 0) sweeper_ = std::thread([this] { sweep_idle(); });
}

ModelRegistry::~ModelRegistry() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  sweep_wakeup_.notify_all();
  if (sweeper_.joinable()) sweeper_.join();
  // Loader threads take the mutex when they finish: join them without it.
  for (auto& entry : entries_) {
    if (entry.loader.joinable()) entry.loader.join();
  }
  std::vector<std::shared_ptr<void>> engines;
  {
    std::lock_guard lock(mutex_);
    for (auto& entry : entries_)
      engines.push_back(std::move(entry.engine));
  }
  engines.clear(); // stops each engine's threads
}

void ModelRegistry::add(RegisteredModel model) {
  std::lock_guard lock(mutex_);
  for (const auto& entry : entries_) {
    if (entry.model.status.id == model.status.id) {
      throw std::invalid_argument(fmt::format("two models are named '{}' ({} and {}): names must be unique",
                                              model.status.id, entry.model.status.service, model.status.service));
    }
  }
  model.status.memory_bytes = model.memory_bytes;
  model.status.gpu_memory_bytes = model.gpu_memory_bytes;
  model.status.on_demand = static_cast<bool>(model.loader);
  auto& entry = entries_.emplace_back();
  entry.model = std::move(model);
  publish(entry);
  if (entry.model.status.state != ModelState::available && entry.model.status.state != ModelState::loaded) {
    log_event(spdlog::level::warn, "model not loadable",
              {{"service", entry.model.status.service},
               {"model", entry.model.status.id},
               {"state", model_state_name(entry.model.status.state)},
               {"detail", entry.model.status.detail}});
  }
}

bool ModelRegistry::revive(RegisteredModel model) {
  std::lock_guard lock(mutex_);
  auto it = std::find_if(entries_.begin(), entries_.end(),
                         [&](const Entry& entry) { return entry.model.status.id == model.status.id; });
  if (it == entries_.end() || it->model.status.state != ModelState::missing || !model.loader) return false;
  model.status.memory_bytes = model.memory_bytes;
  model.status.gpu_memory_bytes = model.gpu_memory_bytes;
  model.status.on_demand = true;
  it->model = std::move(model);
  publish(*it);
  log_event(spdlog::level::info, "model found",
            {{"service", it->model.status.service}, {"model", it->model.status.id}, {"path", it->model.status.path}});
  if (it->model.preload) {
    try {
      begin_load(*it);
    } catch (const ApiError& error) {
      log_event(spdlog::level::warn, "model not preloaded",
                {{"model", it->model.status.id}, {"reason", std::string(error.what())}});
    }
  }
  return true;
}

bool ModelRegistry::remove(const std::string& id) {
  std::lock_guard lock(mutex_);
  auto it =
      std::find_if(entries_.begin(), entries_.end(), [&](const Entry& entry) { return entry.model.status.id == id; });
  if (it == entries_.end()) return false;
  const ModelState state = it->model.status.state;
  if (state == ModelState::loaded || state == ModelState::loading || it->in_use > 0) return false;
  // A load that ended has left its thread finishing: it takes the lock no more.
  if (it->loader.joinable()) it->loader.join();
  board_.remove(it->model.status.service, id);
  log_event(spdlog::level::info, "model removed", {{"service", it->model.status.service}, {"model", id}});
  entries_.erase(it);
  return true;
}

bool ModelRegistry::discover_if_absent(const std::string& id) const {
  if (!discover_) return false;
  {
    std::lock_guard lock(mutex_);
    const auto it =
        std::find_if(entries_.begin(), entries_.end(), [&](const Entry& entry) { return entry.model.status.id == id; });
    if (it != entries_.end() && it->model.status.state != ModelState::missing) return false;
  }
  return discover_();
}

void ModelRegistry::preload() {
  std::lock_guard lock(mutex_);
  for (auto& entry : entries_) {
    if (!entry.model.preload || entry.model.status.state != ModelState::available) continue;
    try {
      begin_load(entry);
    } catch (const ApiError& error) {
      log_event(spdlog::level::warn, "model not preloaded",
                {{"model", entry.model.status.id}, {"reason", std::string(error.what())}});
    }
  }
}

ModelRegistry::Entry& ModelRegistry::find(const std::string& id) {
  for (auto& entry : entries_) {
    if (entry.model.status.id == id) return entry;
  }
  throw ApiError::not_found(fmt::format("The model '{}' does not exist.", id), "model_not_found");
}

const ModelRegistry::Entry& ModelRegistry::find(const std::string& id) const {
  return const_cast<ModelRegistry*>(this)->find(id);
}

std::string ModelRegistry::resolve(const std::string& service, const std::string& requested, const std::string& kind,
                                   std::initializer_list<const char*> aliases) const {
  const bool first = requested.empty() ||
                     std::any_of(aliases.begin(), aliases.end(), [&](const char* alias) { return requested == alias; });
  // With mutex_ held: the entry the request means, or null.
  const auto match = [&]() -> const Entry* {
    for (const auto& entry : entries_) {
      if (entry.model.status.service == service && (first || entry.model.status.id == requested)) return &entry;
    }
    return nullptr;
  };
  {
    std::lock_guard lock(mutex_);
    if (const Entry* entry = match(); entry && entry->model.status.state != ModelState::missing)
      return entry->model.status.id;
  }
  // A model pulled (or put on the volume) since the start is found before the answer is 404 or 503.
  if (discover_) discover_();
  std::lock_guard lock(mutex_);
  if (const Entry* entry = match()) return entry->model.status.id;
  std::vector<std::string> ids;
  for (const auto& entry : entries_) {
    if (entry.model.status.service == service) ids.push_back(entry.model.status.id);
  }
  throw ApiError::not_found(fmt::format("The model '{}' does not exist. Available {} models: {}.", requested, kind,
                                        ids.empty() ? std::string("none") : fmt::format("{}", fmt::join(ids, ", "))),
                            "model_not_found");
}

void ModelRegistry::check_servable(const std::string& service) const {
  auto refusal = refusal_of(service);
  if (refusal && discover_) { // its model may have been put on the volume since the start
    discover_();
    refusal = refusal_of(service);
  }
  if (refusal) throw *refusal;
}

std::optional<ApiError> ModelRegistry::refusal_of(const std::string& service) const {
  std::lock_guard lock(mutex_);
  const Entry* first = nullptr;
  for (const auto& entry : entries_) {
    if (entry.model.status.service != service) continue;
    const ModelState state = entry.model.status.state;
    if (state == ModelState::available || state == ModelState::loading || state == ModelState::loaded)
      return std::nullopt;
    if (!first) first = &entry;
  }
  if (!first) return ApiError::unavailable(fmt::format("No {} model is configured.", service), 30, "model_not_loaded");
  const auto& status = first->model.status;
  return ApiError::unavailable(fmt::format("The model '{}' is not loaded ({}){}{}.", status.id,
                                           model_state_name(status.state), status.detail.empty() ? "" : ": ",
                                           status.detail),
                               30, "model_not_loaded");
}

void ModelRegistry::begin_load(Entry& entry) {
  auto& status = entry.model.status;
  if (status.state == ModelState::loaded || status.state == ModelState::loading) return;
  if (status.state == ModelState::missing) {
    throw ApiError::unavailable(fmt::format("The model '{}' is not loaded (missing){}{}.", status.id,
                                            status.detail.empty() ? "" : ": ", status.detail),
                                30, "model_not_loaded");
  }
  for (size_t pool = 0; pool < pool_count(); ++pool) {
    const uint64_t needed = pool_need(entry.model, pool);
    if (needed > pool_budget(pool)) {
      throw ApiError(507,
                     fmt::format("The model '{}' needs about {} of {}, more than the whole {} budget of {} ({}): "
                                 "it can never be loaded here.",
                                 status.id, mib(needed), pool_name(pool),
                                 pool == 0 ? std::string("memory") : fmt::format("GPU {}", pool - 1),
                                 mib(pool_budget(pool)),
                                 pool == 0 ? "registry.memory_budget" : "registry.gpu_memory_budget"),
                     "server_error", "insufficient_memory");
    }
  }
  for (size_t gpu = pool_count() - 1; gpu < entry.model.gpu_memory_bytes.size(); ++gpu) {
    if (entry.model.gpu_memory_bytes[gpu] == 0) continue;
    throw ApiError(
        507, fmt::format("The model '{}' is placed on GPU {}, which this process has no budget for.", status.id, gpu),
        "server_error", "insufficient_memory");
  }
  // Room: unload idle models, least recently used first, skipping those
  // that free nothing where room is short. Nothing is unloaded unless
  // enough can be freed everywhere.
  std::vector<uint64_t> held = reserved_bytes();
  const auto short_pools = [&] {
    std::vector<size_t> pools;
    for (size_t pool = 0; pool < pool_count(); ++pool) {
      if (held[pool] + pool_need(entry.model, pool) > pool_budget(pool)) pools.push_back(pool);
    }
    return pools;
  };
  std::vector<Entry*> idle;
  for (auto& other : entries_) {
    if (other.model.status.state == ModelState::loaded && other.in_use == 0) idle.push_back(&other);
  }
  std::sort(idle.begin(), idle.end(), [](const Entry* a, const Entry* b) { return a->last_used < b->last_used; });
  std::vector<Entry*> victims;
  for (Entry* candidate : idle) {
    const auto shorts = short_pools();
    if (shorts.empty()) break;
    const bool helps =
        std::any_of(shorts.begin(), shorts.end(), [&](size_t pool) { return pool_need(candidate->model, pool) > 0; });
    if (!helps) continue;
    victims.push_back(candidate);
    for (size_t pool = 0; pool < pool_count(); ++pool)
      held[pool] -= pool_need(candidate->model, pool);
  }
  if (const auto shorts = short_pools(); !shorts.empty()) {
    const size_t pool = shorts.front();
    std::vector<std::string> busy;
    for (const auto& other : entries_) {
      const ModelState state = other.model.status.state;
      if (pool_need(other.model, pool) == 0) continue;
      if (state == ModelState::loading || (state == ModelState::loaded && other.in_use > 0))
        busy.push_back(other.model.status.id);
    }
    throw ApiError::unavailable(
        fmt::format("The model '{}' needs about {} of {}, but {} of its {} budget is held by models that are "
                    "serving requests or loading ({}). Retry shortly.",
                    status.id, mib(pool_need(entry.model, pool)), pool_name(pool), mib(held[pool]),
                    mib(pool_budget(pool)), fmt::join(busy, ", ")),
        5, "memory_budget_full");
  }
  std::vector<std::shared_ptr<void>> evicted;
  for (Entry* victim : victims)
    evicted.push_back(take_engine(*victim, "evicted"));
  status.state = ModelState::loading;
  status.progress = 0;
  status.detail.clear();
  publish(entry);
  update_memory_gauge();
  if (entry.loader.joinable()) entry.loader.join(); // the previous load, long finished
  entry.loader =
      std::thread([this, &entry, evicted = std::move(evicted)]() mutable { run_load(entry, std::move(evicted)); });
}

void ModelRegistry::run_load(Entry& entry, std::vector<std::shared_ptr<void>> evicted) {
  evicted.clear(); // the evicted models' memory goes back before this one takes its own
  ModelStatus status;
  EngineLoader loader;
  {
    std::lock_guard lock(mutex_);
    status = entry.model.status;
    loader = entry.model.loader;
  }
  log_event(spdlog::level::info, "loading model",
            {{"service", status.service}, {"model", status.id}, {"path", status.path}});
  const auto started = Clock::now();
  int last_percent = -1;
  try {
    auto engine = loader([&](float progress) {
      const int percent = static_cast<int>(progress * 100);
      if (percent / 10 == last_percent / 10 && percent != 100) return;
      last_percent = percent;
      std::lock_guard lock(mutex_);
      entry.model.status.progress = progress;
      publish(entry);
      spdlog::info("loading {} model '{}': {}%", status.service, status.id, percent);
    });
    if (!engine) throw std::runtime_error("the engine did not start");
    std::lock_guard lock(mutex_);
    entry.engine = std::move(engine);
    entry.model.status.state = ModelState::loaded;
    entry.model.status.progress = 1;
    entry.last_used = Clock::now();
    publish(entry);
    metrics_.model_loads_total.labels({status.service, status.id, "loaded"}).inc();
    log_event(spdlog::level::info, "model loaded",
              {{"service", status.service},
               {"model", status.id},
               {"seconds", std::chrono::duration<double>(Clock::now() - started).count()}});
  } catch (const std::exception& error) {
    std::lock_guard lock(mutex_);
    entry.model.status.state = ModelState::failed;
    entry.model.status.detail = error.what();
    publish(entry);
    update_memory_gauge();
    metrics_.model_loads_total.labels({status.service, status.id, "failed"}).inc();
    log_event(spdlog::level::err, "model failed to load",
              {{"service", status.service}, {"model", status.id}, {"detail", std::string(error.what())}});
  }
}

std::shared_ptr<void> ModelRegistry::take_engine(Entry& entry, const char* reason) {
  auto engine = std::move(entry.engine);
  entry.model.status.state = ModelState::available;
  entry.model.status.progress = 0;
  publish(entry);
  metrics_.model_unloads_total.labels({entry.model.status.service, entry.model.status.id, reason}).inc();
  log_event(spdlog::level::info, "model unloaded", {{"model", entry.model.status.id}, {"reason", reason}});
  return engine;
}

std::optional<ModelLease> ModelRegistry::try_lease(const std::string& id, bool start_load) {
  // start_load: an evicted or unloaded model loads again for whoever waits on it.
  std::lock_guard lock(mutex_);
  Entry& entry = find(id);
  const auto& status = entry.model.status;
  if (status.state == ModelState::loaded) {
    ++entry.in_use;
    entry.last_used = Clock::now();
    return ModelLease(this, id, entry.engine);
  }
  if (status.state == ModelState::failed) {
    throw ApiError::unavailable(fmt::format("The model '{}' failed to load: {}", id, status.detail), 30,
                                "model_not_loaded");
  }
  if (start_load) begin_load(entry);
  return std::nullopt;
}

Task<ModelLease> ModelRegistry::acquire(std::string id, http::Clock::time_point deadline) {
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor);
  // Room held by requests that are just finishing frees up within moments:
  // a full budget is waited out this long before it is an answer.
  const auto patience = std::min(deadline, Clock::now() + kFinishingGrace);
  for (;;) {
    std::optional<ModelLease> lease;
    try {
      lease = try_lease(id, true);
    } catch (const ApiError& error) {
      if (error.code() != "memory_budget_full" || Clock::now() >= patience) throw;
    }
    if (lease) co_return std::move(*lease);
    if (Clock::now() >= deadline) {
      throw ApiError::unavailable(fmt::format("The model '{}' is still loading.", id), 5, "model_not_loaded");
    }
    // Loads take seconds; a short poll keeps this free of callbacks across threads.
    timer.expires_after(std::min<Clock::duration>(std::chrono::milliseconds(50), deadline - Clock::now()));
    co_await timer.async_wait(use_task);
  }
}

void ModelRegistry::release(const std::string& id) {
  std::lock_guard lock(mutex_);
  for (auto& entry : entries_) {
    if (entry.model.status.id != id) continue;
    if (entry.in_use > 0) --entry.in_use;
    entry.last_used = Clock::now();
    return;
  }
}

ModelStatus ModelRegistry::load(const std::string& id) {
  discover_if_absent(id);
  std::lock_guard lock(mutex_);
  Entry& entry = find(id);
  if (entry.model.status.state == ModelState::failed) entry.model.status.state = ModelState::available; // retry
  begin_load(entry);
  return entry.model.status;
}

ModelStatus ModelRegistry::try_unload(const std::string& id) {
  std::shared_ptr<void> engine;
  ModelStatus status;
  {
    std::lock_guard lock(mutex_);
    Entry& entry = find(id);
    const ModelState state = entry.model.status.state;
    if (state == ModelState::loading) {
      throw ApiError(409, fmt::format("The model '{}' is loading; unload it once it has loaded.", id),
                     "invalid_request_error", "model_loading")
          .with_retry_after(5);
    }
    if (state == ModelState::loaded) {
      if (entry.in_use > 0) {
        throw ApiError(409,
                       fmt::format("The model '{}' is serving {} request{}; it stays loaded until they finish.", id,
                                   entry.in_use, entry.in_use == 1 ? "" : "s"),
                       "invalid_request_error", "model_in_use")
            .with_retry_after(1);
      }
      engine = take_engine(entry, "admin");
      update_memory_gauge();
    }
    status = entry.model.status;
  }
  engine.reset(); // outside the lock: stopping an engine joins its threads
  return status;
}

Task<ModelStatus> ModelRegistry::unload(std::string id) {
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor);
  const auto patience = Clock::now() + kFinishingGrace;
  for (;;) {
    try {
      co_return try_unload(id);
    } catch (const ApiError& error) {
      if (error.code() != "model_in_use" || Clock::now() >= patience) throw;
    }
    timer.expires_after(std::chrono::milliseconds(20));
    co_await timer.async_wait(use_task);
  }
}

ModelStatus ModelRegistry::status(const std::string& id) const {
  std::lock_guard lock(mutex_);
  return find(id).model.status;
}

void ModelRegistry::publish(const Entry& entry) {
  board_.publish(entry.model.status);
}

uint64_t ModelRegistry::pool_need(const RegisteredModel& model, size_t pool) {
  if (pool == 0) return model.memory_bytes;
  return pool - 1 < model.gpu_memory_bytes.size() ? model.gpu_memory_bytes[pool - 1] : 0;
}

std::string ModelRegistry::pool_name(size_t pool) {
  return pool == 0 ? std::string("host memory") : fmt::format("GPU {} memory", pool - 1);
}

std::vector<uint64_t> ModelRegistry::reserved_bytes() const {
  std::vector<uint64_t> reserved(pool_count(), 0);
  for (const auto& entry : entries_) {
    const ModelState state = entry.model.status.state;
    if (state != ModelState::loaded && state != ModelState::loading) continue;
    for (size_t pool = 0; pool < pool_count(); ++pool)
      reserved[pool] += pool_need(entry.model, pool);
  }
  return reserved;
}

void ModelRegistry::update_memory_gauge() {
  const auto reserved = reserved_bytes();
  metrics_.models_memory_bytes.labels({}).set(static_cast<double>(reserved[0]));
  for (size_t gpu = 0; gpu < gpu_budgets_.size(); ++gpu) {
    metrics_.models_gpu_memory_bytes.labels({std::to_string(gpu)}).set(static_cast<double>(reserved[gpu + 1]));
  }
}

void ModelRegistry::sweep_idle() {
  const auto ttl = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(idle_unload_s_));
  const auto period = std::min<Clock::duration>(std::chrono::seconds(1), ttl / 4 + std::chrono::milliseconds(1));
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    sweep_wakeup_.wait_for(lock, period, [this] { return stopping_; });
    if (stopping_) break;
    std::vector<std::shared_ptr<void>> engines;
    const auto now = Clock::now();
    for (auto& entry : entries_) {
      if (entry.model.status.state != ModelState::loaded || entry.in_use > 0 || now - entry.last_used < ttl) continue;
      engines.push_back(take_engine(entry, "idle"));
    }
    if (engines.empty()) continue;
    update_memory_gauge();
    lock.unlock();
    engines.clear();
    lock.lock();
  }
}

} // namespace mmserve
