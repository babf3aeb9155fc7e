#include "app/media_cache.hpp"

#include "core/logging.hpp"

namespace mmserve {
namespace {

std::chrono::milliseconds milliseconds(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

} // namespace

std::shared_ptr<storage::TempCache> open_media_cache(const MediaConfig& media, ServerMetrics& metrics) {
  if (!media.cache_enabled || media.temp_dir.empty()) return nullptr;
  storage::TempCacheOptions options;
  options.dir = media.temp_dir;
  options.max_bytes = media.max_cache_bytes;
  options.cleanup_interval = milliseconds(media.cleanup_interval_s);
  options.max_age = milliseconds(media.cache_max_age_s);
  std::shared_ptr<storage::TempCache> cache;
  try {
    cache = std::make_shared<storage::TempCache>(options);
  } catch (const std::exception& error) {
    log_event(spdlog::level::warn, "media temp cache disabled: its folder cannot be used",
              {{"temp_dir", media.temp_dir}, {"error", error.what()}});
    return nullptr;
  }
  const auto stats = cache->stats();
  log_event(spdlog::level::info, "media temp cache ready",
            {{"temp_dir", media.temp_dir},
             {"entries", stats.entries},
             {"bytes", stats.bytes},
             {"max_bytes", media.max_cache_bytes}});
  // The registry outlives the cache's users; a weak reference lets the cache go first.
  metrics.registry.add_collector([weak = std::weak_ptr<storage::TempCache>(cache), &metrics] {
    const auto cache = weak.lock();
    if (!cache) return;
    const auto stats = cache->stats();
    metrics.media_cache_bytes.labels({}).set(static_cast<double>(stats.bytes));
    metrics.media_cache_entries.labels({}).set(static_cast<double>(stats.entries));
    metrics.media_cache_lookups_total.labels({"hit"}).mirror(static_cast<double>(stats.hits));
    metrics.media_cache_lookups_total.labels({"miss"}).mirror(static_cast<double>(stats.misses));
    metrics.media_cache_writes_total.labels({"stored"}).mirror(static_cast<double>(stats.writes));
    metrics.media_cache_writes_total.labels({"refused"}).mirror(static_cast<double>(stats.refused));
    metrics.media_cache_evictions_total.labels({"size"}).mirror(static_cast<double>(stats.evicted_for_space));
    metrics.media_cache_evictions_total.labels({"expired"}).mirror(static_cast<double>(stats.expired));
  });
  return cache;
}

} // namespace mmserve
