#include "storage/temp_cache.hpp"

#include "storage/atomic_file.hpp"
#include "storage/digest.hpp"

#include <algorithm>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <stdexcept>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace mmserve::storage {

namespace fs = std::filesystem;

struct TempCache::Scan {
  std::vector<Entry> entries;
  uint64_t expired = 0;
};

namespace {

bool is_hex(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::chrono::system_clock::time_point modified_time(const struct stat& info) {
  return std::chrono::system_clock::time_point(std::chrono::duration_cast<std::chrono::system_clock::duration>(
      std::chrono::seconds(info.st_mtim.tv_sec) + std::chrono::nanoseconds(info.st_mtim.tv_nsec)));
}

bool older_than(std::chrono::system_clock::time_point when, std::chrono::system_clock::time_point now,
                std::chrono::milliseconds age) {
  return age.count() > 0 && now - when > age;
}

} // namespace

TempCache::TempCache(TempCacheOptions options) : options_(std::move(options)) {
  fs::create_directories(options_.dir); // throws filesystem_error (a system_error) with the path
  auto scan = scan_folder(Clock::now());
  // Most recently used first: the file mtimes are the use times.
  std::sort(scan.entries.begin(), scan.entries.end(), [](const Entry& a, const Entry& b) { return a.used > b.used; });
  {
    std::lock_guard lock(mutex_);
    for (auto& entry : scan.entries) {
      bytes_ += entry.bytes;
      order_.push_back(std::move(entry));
      index_[order_.back().key] = std::prev(order_.end());
    }
    counters_.expired += scan.expired;
    evict_locked(0); // the bound may have shrunk since the last run
  }
  if (options_.cleanup_interval.count() > 0) sweeper_ = std::thread([this] { sweep_loop(); });
}

TempCache::~TempCache() {
  {
    std::lock_guard lock(sweeper_mutex_);
    stopping_ = true;
  }
  sweeper_wake_.notify_all();
  if (sweeper_.joinable()) sweeper_.join();
}

bool TempCache::valid_key(std::string_view key) {
  return key.size() == 64 && is_hex(key);
}

std::string TempCache::content_key(std::string_view bytes) {
  return sha256_hex(bytes);
}

fs::path TempCache::path_of(const std::string& key) const {
  return options_.dir / key.substr(0, 2) / key;
}

std::optional<std::string> TempCache::get(const std::string& key) {
  if (!valid_key(key)) return std::nullopt;
  const auto path = path_of(key);
  std::optional<std::string> bytes;
  try {
    bytes = read_whole_file(path);
  } catch (const std::system_error& error) {
    spdlog::warn("temp cache: read failed: {}", error.what());
  }
  std::lock_guard lock(mutex_);
  // The read ran outside the lock: a put may have renamed the file into
  // place since (its own mark follows), or an eviction removed it. What is
  // on disk now, under the lock, decides what the index says.
  const bool present = ::access(path.c_str(), F_OK) == 0;
  if (!bytes) {
    if (!present) forget_locked(key); // evicted or expired, by us or another process
    ++counters_.misses;
    return std::nullopt;
  }
  ++counters_.hits;
  if (!present) return bytes; // evicted after we read it: the bytes are still good, the entry is gone
  // Mark the use on disk too, so that the order survives a restart and
  // other processes' sweeps see it. A failure only costs LRU precision.
  ::utimensat(AT_FDCWD, path.c_str(), nullptr, 0);
  mark_used_locked(key, bytes->size(), Clock::now());
  evict_locked(0); // a file another process wrote may not fit this process's count
  return bytes;
}

std::optional<std::string> TempCache::get_content(const std::string& key) {
  auto bytes = get(key);
  if (bytes && content_key(*bytes) != key) {
    spdlog::warn("temp cache: '{}' does not match its hash; deleted", path_of(key).string());
    std::lock_guard lock(mutex_);
    ::unlink(path_of(key).c_str());
    forget_locked(key);
    --counters_.hits;
    ++counters_.misses;
    return std::nullopt;
  }
  return bytes;
}

bool TempCache::put(const std::string& key, std::string_view bytes) {
  if (!valid_key(key)) throw std::invalid_argument("temp cache key must be 64 lowercase hex digits: '" + key + "'");
  const uint64_t size = bytes.size();
  {
    std::lock_guard lock(mutex_);
    if (size > options_.max_bytes) {
      ++counters_.refused;
      return false;
    }
    evict_locked(size);
    reserved_ += size; // room held while the file is written outside the lock
  }
  const auto path = path_of(key);
  bool written = true;
  try {
    fs::create_directories(path.parent_path());
    write_file_atomically(path, bytes);
  } catch (const std::exception& error) {
    spdlog::warn("temp cache: write failed: {}", error.what());
    written = false;
  }
  std::lock_guard lock(mutex_);
  reserved_ -= size;
  if (!written) {
    ++counters_.refused;
    return false;
  }
  mark_used_locked(key, size, Clock::now());
  ++counters_.writes;
  return true;
}

std::optional<std::string> TempCache::put_content(std::string_view bytes) {
  auto key = content_key(bytes);
  if (!put(key, bytes)) return std::nullopt;
  return key;
}

void TempCache::mark_used_locked(const std::string& key, uint64_t bytes, Clock::time_point now) {
  forget_locked(key);
  order_.push_front(Entry{key, bytes, now});
  index_[key] = order_.begin();
  bytes_ += bytes;
}

void TempCache::forget_locked(const std::string& key) {
  if (scanning_) dropped_during_scan_.insert(key);
  const auto it = index_.find(key);
  if (it == index_.end()) return;
  bytes_ -= it->second->bytes;
  order_.erase(it->second);
  index_.erase(it);
}

void TempCache::evict_locked(uint64_t room_needed) {
  while (!order_.empty() && bytes_ + reserved_ + room_needed > options_.max_bytes) {
    const Entry& victim = order_.back();
    // A reader that already opened the file keeps its bytes (POSIX unlink).
    ::unlink(path_of(victim.key).c_str());
    if (scanning_) dropped_during_scan_.insert(victim.key);
    bytes_ -= victim.bytes;
    index_.erase(victim.key);
    order_.pop_back();
    ++counters_.evicted_for_space;
  }
}

TempCache::Scan TempCache::scan_folder(Clock::time_point now) {
  Scan scan;
  std::error_code error;
  for (fs::directory_iterator shard(options_.dir, error), end; !error && shard != end; shard.increment(error)) {
    const std::string shard_name = shard->path().filename().string();
    if (shard_name.size() != 2 || !is_hex(shard_name)) continue;
    std::error_code inner;
    for (fs::directory_iterator file(shard->path(), inner), last; !inner && file != last; file.increment(inner)) {
      const std::string name = file->path().filename().string();
      const bool entry = valid_key(name) && name.starts_with(shard_name);
      const bool temp = name.starts_with(kTempFilePrefix);
      if (!entry && !temp) continue;
      struct stat info {};
      if (::lstat(file->path().c_str(), &info) != 0 || !S_ISREG(info.st_mode)) continue;
      const auto used = modified_time(info);
      if (temp) {
        if (older_than(used, now, options_.stray_temp_age)) ::unlink(file->path().c_str());
        continue;
      }
      if (older_than(used, now, options_.max_age)) {
        if (::unlink(file->path().c_str()) == 0) ++scan.expired;
        continue;
      }
      scan.entries.push_back(Entry{name, static_cast<uint64_t>(info.st_size), used});
    }
  }
  if (error) {
    spdlog::warn("temp cache: scanning '{}' failed: {}", options_.dir.string(), error.message());
  }
  return scan;
}

void TempCache::sweep() {
  std::lock_guard one_at_a_time(sweep_mutex_);
  Clock::time_point started;
  {
    std::lock_guard lock(mutex_);
    scanning_ = true;
    dropped_during_scan_.clear();
    started = Clock::now();
  }
  auto scan = scan_folder(started);
  std::lock_guard lock(mutex_);
  scanning_ = false;
  // Uses during the scan are newer than what the scan saw; keep them.
  std::unordered_map<std::string, Entry> merged;
  for (auto& entry : scan.entries) {
    if (!dropped_during_scan_.contains(entry.key)) merged.emplace(entry.key, std::move(entry));
  }
  dropped_during_scan_.clear();
  for (const auto& entry : order_) {
    if (entry.used >= started) merged.insert_or_assign(entry.key, entry);
  }
  std::vector<Entry> entries;
  entries.reserve(merged.size());
  for (auto& [key, entry] : merged)
    entries.push_back(std::move(entry));
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.used > b.used; });
  order_.clear();
  index_.clear();
  bytes_ = 0;
  for (auto& entry : entries) {
    bytes_ += entry.bytes;
    order_.push_back(std::move(entry));
    index_[order_.back().key] = std::prev(order_.end());
  }
  counters_.expired += scan.expired;
  evict_locked(0);
}

void TempCache::sweep_loop() {
  std::unique_lock lock(sweeper_mutex_);
  while (!sweeper_wake_.wait_for(lock, options_.cleanup_interval, [this] { return stopping_; })) {
    lock.unlock();
    try {
      sweep();
    } catch (const std::exception& error) {
      spdlog::warn("temp cache: sweep failed: {}", error.what());
    }
    lock.lock();
  }
}

TempCacheStats TempCache::stats() const {
  std::lock_guard lock(mutex_);
  TempCacheStats stats = counters_;
  stats.bytes = bytes_;
  stats.entries = index_.size();
  return stats;
}

} // namespace mmserve::storage
