// The media temp cache (the seed's image-processor `storage`: temp_dir,
// max_cache_size, cleanup_interval): files on disk named by a SHA-256 hex
// key, in 256 shard folders (`<dir>/<key[0..2]>/<key>`).
//
// - Content-addressed entries are named by the SHA-256 of their bytes
//   (put_content); derived entries by the SHA-256 of what they derive from
//   (the caller builds that key, e.g. an image hash plus its preprocessing).
// - Every file is written atomically (temp name in the same folder, fsync,
//   rename), so no reader, in this process or another sharing the folder,
//   ever sees a partial file under a final name.
// - Bytes stay within max_bytes: before a write would pass the bound, the
//   least recently used entries are deleted; an entry larger than the whole
//   bound is refused. "Used" is a read or a write; each one sets the file's
//   mtime, which is what orders entries after a restart.
// - Expiry: an entry not used for max_age is deleted by the next sweep.
//   Sweeps run every cleanup_interval on a background thread: they rescan
//   the folder (picking up files other processes wrote), delete expired
//   entries and temp files older than stray_temp_age (a crashed writer's),
//   and evict down to max_bytes again.
// - Processes sharing the folder each keep their own index; the byte bound
//   holds per process at write time and for the whole folder after a sweep.
//
// Files in the folder that do not look like entries or temp files are left
// alone. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>

namespace mmserve::storage {

struct TempCacheOptions {
  std::filesystem::path dir;
  uint64_t max_bytes = 10ull << 30;
  std::chrono::milliseconds cleanup_interval{3'600'000}; // 0: no background sweeps (call sweep())
  std::chrono::milliseconds max_age{86'400'000};         // unused this long: expired; 0: never
  std::chrono::milliseconds stray_temp_age{600'000};     // older temp files are a crashed writer's
};

struct TempCacheStats {
  uint64_t bytes = 0;
  uint64_t entries = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t writes = 0;
  uint64_t refused = 0;           // larger than max_bytes, or the write failed
  uint64_t evicted_for_space = 0; // least recently used, deleted to stay within max_bytes
  uint64_t expired = 0;           // unused for max_age, deleted by a sweep
};

class TempCache {
public:
  // Creates the folder and indexes what is already there. Throws
  // std::system_error when the folder cannot be created or read.
  explicit TempCache(TempCacheOptions options);
  ~TempCache();
  TempCache(const TempCache&) = delete;
  TempCache& operator=(const TempCache&) = delete;

  // 64 lowercase hex digits.
  static bool valid_key(std::string_view key);
  static std::string content_key(std::string_view bytes); // SHA-256 hex

  // The entry's bytes, marked as used; nullopt on a miss.
  std::optional<std::string> get(const std::string& key);
  // A content-addressed entry whose bytes still hash to its key (a file
  // that does not is deleted and reported as a miss).
  std::optional<std::string> get_content(const std::string& key);
  // Stores (or replaces) an entry. False when refused: larger than
  // max_bytes, or the disk write failed (logged). Throws
  // std::invalid_argument for a malformed key.
  bool put(const std::string& key, std::string_view bytes);
  // Stores bytes under their SHA-256; returns that key, or nullopt when refused.
  std::optional<std::string> put_content(std::string_view bytes);

  // One sweep now (the background thread calls this every cleanup_interval).
  void sweep();
  TempCacheStats stats() const;
  std::filesystem::path path_of(const std::string& key) const;
  const TempCacheOptions& options() const { return options_; }

private:
  using Clock = std::chrono::system_clock;
  struct Entry {
    std::string key;
    uint64_t bytes;
    Clock::time_point used;
  };
  struct Scan;

  Scan scan_folder(Clock::time_point now);
  void mark_used_locked(const std::string& key, uint64_t bytes, Clock::time_point now);
  void forget_locked(const std::string& key);
  void evict_locked(uint64_t room_needed);
  void sweep_loop();

  TempCacheOptions options_;
  mutable std::mutex mutex_;
  std::list<Entry> order_; // front: most recently used
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;
  uint64_t bytes_ = 0;
  uint64_t reserved_ = 0; // bytes of writes in progress
  // While a sweep scans without the lock: keys deleted meanwhile, which the
  // scan may still have seen.
  bool scanning_ = false;
  std::mutex sweep_mutex_; // one sweep at a time
  std::unordered_set<std::string> dropped_during_scan_;
  TempCacheStats counters_;

  std::mutex sweeper_mutex_;
  std::condition_variable sweeper_wake_;
  bool stopping_ = false;
  std::thread sweeper_;
};

} // namespace mmserve::storage
