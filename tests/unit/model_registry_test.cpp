// The model registry's memory accounting with GPUs: host memory and each
// GPU are separate budgets, eviction frees room only where it is short, a
// leased model is never evicted, and a model that can never fit is refused.
// The registry never looks inside an engine, so the loaders here build a
// plain object: what is under test is which models load and unload.
#include "core/api_error.hpp"
#include "core/model_registry.hpp"
#include "core/task.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

using namespace mmserve;

namespace {

constexpr uint64_t MiB = 1ull << 20;

RegisteredModel model(const std::string& id, uint64_t host, std::vector<uint64_t> gpus) {
  RegisteredModel registered;
  registered.status.id = id;
  registered.status.service = "vision";
  registered.status.state = ModelState::available;
  registered.memory_bytes = host;
  registered.gpu_memory_bytes = std::move(gpus);
  registered.loader = [id](const LoadProgress& progress) {
    progress(1.0f);
    return std::static_pointer_cast<void>(std::make_shared<std::string>(id));
  };
  return registered;
}

ModelState wait_settled(ModelRegistry& registry, const std::string& id) {
  for (int i = 0; i < 500; ++i) {
    const ModelState state = registry.status(id).state;
    if (state != ModelState::loading) return state;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return ModelState::loading;
}

// Loads `id` through the admin path and waits until it has loaded.
void load(ModelRegistry& registry, const std::string& id) {
  registry.load(id);
  ASSERT_EQ(wait_settled(registry, id), ModelState::loaded) << id;
}

// The ApiError that loading `id` throws (its code), or "" when it loads.
std::string load_error(ModelRegistry& registry, const std::string& id, int* status = nullptr,
                       std::string* message = nullptr) {
  try {
    registry.load(id);
  } catch (const ApiError& error) {
    if (status) *status = error.status();
    if (message) *message = error.what();
    return error.code();
  }
  return "";
}

double gauge(metrics::GaugeFamily& family, const std::string& gpu) {
  return family.labels({gpu}).value();
}

} // namespace

TEST(ModelRegistryGpu, EvictsOnlyModelsThatFreeTheShortGpu) {
  ServerMetrics metrics;
  ModelBoard board(metrics);
  ModelRegistry registry(board, metrics, 1000 * MiB, 0, {100 * MiB});
  registry.add(model("host-only", 300 * MiB, {}));
  registry.add(model("gpu-a", 10 * MiB, {80 * MiB}));
  registry.add(model("gpu-b", 10 * MiB, {60 * MiB}));
  load(registry, "host-only"); // least recently used, but holds no GPU memory
  load(registry, "gpu-a");
  EXPECT_EQ(gauge(metrics.models_gpu_memory_bytes, "0"), 80.0 * MiB);
  load(registry, "gpu-b"); // 80 + 60 > 100 on GPU 0: gpu-a goes, host-only stays
  EXPECT_EQ(registry.status("host-only").state, ModelState::loaded);
  EXPECT_EQ(registry.status("gpu-a").state, ModelState::available);
  EXPECT_EQ(gauge(metrics.models_gpu_memory_bytes, "0"), 60.0 * MiB);
  EXPECT_EQ(gauge(metrics.models_gpu_memory_budget_bytes, "0"), 100.0 * MiB);
  EXPECT_EQ(metrics.models_memory_bytes.labels({}).value(), 310.0 * MiB);
}

TEST(ModelRegistryGpu, EachGpuIsItsOwnBudget) {
  ServerMetrics metrics;
  ModelBoard board(metrics);
  ModelRegistry registry(board, metrics, 1000 * MiB, 0, {100 * MiB, 100 * MiB});
  registry.add(model("on-gpu0", 10 * MiB, {90 * MiB, 0}));
  registry.add(model("on-gpu1", 10 * MiB, {0, 90 * MiB}));
  registry.add(model("split", 10 * MiB, {50 * MiB, 50 * MiB}));
  load(registry, "on-gpu0");
  load(registry, "on-gpu1"); // fits beside on-gpu0: nothing evicted
  EXPECT_EQ(registry.status("on-gpu0").state, ModelState::loaded);
  load(registry, "split"); // short on both GPUs: both go
  EXPECT_EQ(registry.status("on-gpu0").state, ModelState::available);
  EXPECT_EQ(registry.status("on-gpu1").state, ModelState::available);
  EXPECT_EQ(gauge(metrics.models_gpu_memory_bytes, "1"), 50.0 * MiB);
}

TEST(ModelRegistryGpu, NeverFitsIs507AndBusyGpuIs503) {
  ServerMetrics metrics;
  ModelBoard board(metrics);
  ModelRegistry registry(board, metrics, 1000 * MiB, 0, {100 * MiB});
  registry.add(model("too-big", 10 * MiB, {101 * MiB}));
  registry.add(model("on-missing-gpu", 10 * MiB, {0, 10 * MiB}));
  registry.add(model("holder", 10 * MiB, {70 * MiB}));
  registry.add(model("newcomer", 10 * MiB, {70 * MiB}));
  int status = 0;
  std::string message;
  EXPECT_EQ(load_error(registry, "too-big", &status, &message), "insufficient_memory");
  EXPECT_EQ(status, 507);
  EXPECT_NE(message.find("more than the whole GPU 0 budget of 100.0 MiB (registry.gpu_memory_budget)"),
            std::string::npos)
      << message;
  EXPECT_EQ(load_error(registry, "on-missing-gpu", &status), "insufficient_memory");
  EXPECT_EQ(status, 507);

  // A leased model is never evicted: the newcomer is refused with 503 and
  // loads once the lease is let go.
  load(registry, "holder");
  boost::asio::io_context io;
  std::optional<ModelLease> lease;
  boost::asio::co_spawn(
      io,
      [&]() -> mmserve::Task<void> {
        lease = co_await registry.acquire("holder", std::chrono::steady_clock::now() + std::chrono::seconds(5));
      },
      boost::asio::detached);
  io.run();
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(load_error(registry, "newcomer", &status, &message), "memory_budget_full");
  EXPECT_EQ(status, 503);
  EXPECT_NE(message.find("of GPU 0 memory, but 70.0 MiB of its 100.0 MiB budget is held by models that are serving "
                         "requests or loading (holder)"),
            std::string::npos)
      << message;
  EXPECT_EQ(registry.status("holder").state, ModelState::loaded);
  lease.reset();
  EXPECT_EQ(load_error(registry, "newcomer"), "");
  EXPECT_EQ(wait_settled(registry, "newcomer"), ModelState::loaded);
  EXPECT_EQ(registry.status("holder").state, ModelState::available);
}

TEST(ModelRegistryGpu, ModelsListTheirGpuEstimates) {
  ServerMetrics metrics;
  ModelBoard board(metrics);
  ModelRegistry registry(board, metrics, 1000 * MiB, 0, {100 * MiB});
  registry.add(model("gpu-model", 10 * MiB, {40 * MiB}));
  const auto models = board.snapshot();
  ASSERT_EQ(models.size(), 1u);
  EXPECT_EQ(models[0].memory_bytes, 10 * MiB);
  EXPECT_EQ(models[0].gpu_memory_bytes, std::vector<uint64_t>{40 * MiB});
}

// Models that appear on disk after the start: the discoverer runs before a
// request is told its model does not exist or is missing, and what it finds
// is served at once.
TEST(ModelRegistryDiscovery, AMissingModelRevivesAndLoadsWhenPreloaded) {
  ServerMetrics metrics;
  ModelBoard board(metrics);
  ModelRegistry registry(board, metrics, 1000 * MiB, 0);
  RegisteredModel absent;
  absent.status.id = "late";
  absent.status.service = "vision";
  absent.status.detail = "model file or folder '/models/late' does not exist";
  absent.preload = true;
  registry.add(absent);
  EXPECT_EQ(registry.status("late").state, ModelState::missing);
  EXPECT_EQ(load_error(registry, "late"), "model_not_loaded");

  RegisteredModel found = model("late", 10 * MiB, {});
  found.preload = true;
  EXPECT_TRUE(registry.revive(found));
  EXPECT_EQ(wait_settled(registry, "late"), ModelState::loaded); // preloaded, as at a start
  EXPECT_FALSE(registry.revive(model("late", 10 * MiB, {})));    // only a missing entry is replaced
  EXPECT_FALSE(registry.revive(model("never-added", 10 * MiB, {})));
  EXPECT_EQ(board.snapshot().size(), 1u);
  EXPECT_EQ(board.snapshot().front().state, ModelState::loaded);
}

TEST(ModelRegistryDiscovery, UnknownOrMissingNamesAskTheDiscovererKnownOnesDoNot) {
  ServerMetrics metrics;
  ModelBoard board(metrics);
  ModelRegistry registry(board, metrics, 1000 * MiB, 0);
  registry.add(model("first", 10 * MiB, {}));
  int asked = 0;
  registry.set_discoverer([&] {
    ++asked;
    if (asked == 2) registry.add(model("pulled", 10 * MiB, {}));
    return asked == 2;
  });
  EXPECT_EQ(registry.resolve("vision", "first", "chat"), "first");
  EXPECT_EQ(registry.resolve("vision", "", "chat"), "first");
  registry.check_servable("vision");
  EXPECT_EQ(asked, 0);

  // Not there yet: asked, then 404 listing what there is.
  try {
    registry.resolve("vision", "pulled", "chat");
    ADD_FAILURE() << "an unknown model resolved";
  } catch (const ApiError& error) {
    EXPECT_EQ(error.status(), 404);
    EXPECT_NE(std::string(error.what()).find("Available chat models: first."), std::string::npos) << error.what();
  }
  EXPECT_EQ(asked, 1);
  // Pulled since: found by the same request that names it.
  EXPECT_EQ(registry.resolve("vision", "pulled", "chat"), "pulled");
  EXPECT_EQ(asked, 2);
  EXPECT_EQ(registry.resolve("vision", "pulled", "chat"), "pulled");
  EXPECT_EQ(asked, 2);
  // An admin load of an unknown name asks too.
  EXPECT_EQ(load_error(registry, "nowhere"), "model_not_found");
  EXPECT_EQ(asked, 3);
}

TEST(ModelRegistryDiscovery, ARemovedModelLeavesOnlyWhenNotLoaded) {
  ServerMetrics metrics;
  ModelBoard board(metrics);
  ModelRegistry registry(board, metrics, 1000 * MiB, 0);
  registry.add(model("kept", 10 * MiB, {}));
  registry.add(model("pulled", 10 * MiB, {}));
  load(registry, "pulled");
  EXPECT_FALSE(registry.remove("pulled")); // loaded: stays until unloaded
  EXPECT_FALSE(registry.remove("nowhere"));
  EXPECT_EQ(metrics.model_ready.labels({"vision", "pulled"}).value(), 1);
  boost::asio::io_context io;
  boost::asio::co_spawn(io, registry.unload("pulled"), boost::asio::detached);
  io.run();
  EXPECT_TRUE(registry.remove("pulled"));
  EXPECT_EQ(board.snapshot().size(), 1u);
  EXPECT_EQ(board.snapshot().front().id, "kept");
  EXPECT_EQ(metrics.registry.render().find(R"(mmserve_model_ready{service="vision",model="pulled"})"),
            std::string::npos);
  EXPECT_NE(metrics.registry.render().find(R"(mmserve_model_ready{service="vision",model="kept"} 1)"),
            std::string::npos);
  EXPECT_EQ(load_error(registry, "pulled"), "model_not_found");
}
