// The media temp cache on a real folder: the byte bound and LRU eviction,
// refusal of oversize entries, expiry and stray temp files on sweeps, the
// index rebuilt after a restart, atomic files under concurrent writers in
// threads and in a second (forked) process.
#include "storage/atomic_file.hpp"
#include "storage/temp_cache.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <random>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace fs = std::filesystem;
using mmserve::storage::TempCache;
using mmserve::storage::TempCacheOptions;

namespace {

class TempCacheTest : public ::testing::Test {
protected:
  void SetUp() override {
    char pattern[] = "/tmp/mmserve-temp-cache-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  TempCacheOptions options(uint64_t max_bytes) const {
    TempCacheOptions options;
    options.dir = dir_;
    options.max_bytes = max_bytes;
    options.cleanup_interval = std::chrono::milliseconds(0); // sweeps by hand
    return options;
  }
  // Files under the final names, their total size.
  uint64_t bytes_on_disk() const {
    uint64_t total = 0;
    for (const auto& entry : fs::recursive_directory_iterator(dir_)) {
      if (entry.is_regular_file() && TempCache::valid_key(entry.path().filename().string())) total += entry.file_size();
    }
    return total;
  }
  static void set_mtime(const fs::path& path, std::chrono::system_clock::time_point when) {
    const auto since_epoch = when.time_since_epoch();
    timespec times[2];
    times[0].tv_sec = times[1].tv_sec = std::chrono::duration_cast<std::chrono::seconds>(since_epoch).count();
    times[0].tv_nsec = times[1].tv_nsec = 0;
    ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  }

  fs::path dir_;
};

std::string key_for(const std::string& name) {
  return TempCache::content_key(name);
}

// Content whose key is its hash, so a reader can tell a whole file from a torn one.
std::string blob(size_t size, unsigned seed) {
  std::mt19937 random(seed);
  std::string bytes(size, '\0');
  for (auto& c : bytes)
    c = static_cast<char>(random());
  return bytes;
}

} // namespace

TEST_F(TempCacheTest, StoresAndReadsBackByKey) {
  TempCache cache(options(1 << 20));
  const auto key = cache.put_content("hello");
  ASSERT_TRUE(key);
  EXPECT_EQ(*key, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"); // sha256("hello")
  EXPECT_TRUE(fs::exists(dir_ / "2c" / *key));
  EXPECT_EQ(cache.get(*key), "hello");
  EXPECT_EQ(cache.get_content(*key), "hello");
  EXPECT_FALSE(cache.get(key_for("absent")));
  EXPECT_FALSE(cache.get("../../etc/passwd"));
  EXPECT_THROW(cache.put("not-a-key", "x"), std::invalid_argument);
  const auto stats = cache.stats();
  EXPECT_EQ(stats.entries, 1u);
  EXPECT_EQ(stats.bytes, 5u);
  EXPECT_EQ(stats.hits, 2u);
  EXPECT_EQ(stats.misses, 1u);
}

TEST_F(TempCacheTest, EvictsLeastRecentlyUsedToStayWithinTheBound) {
  TempCache cache(options(300));
  ASSERT_TRUE(cache.put(key_for("a"), std::string(100, 'a')));
  ASSERT_TRUE(cache.put(key_for("b"), std::string(100, 'b')));
  ASSERT_TRUE(cache.put(key_for("c"), std::string(100, 'c')));
  ASSERT_TRUE(cache.get(key_for("a"))); // a is now the most recent; b the least
  ASSERT_TRUE(cache.put(key_for("d"), std::string(100, 'd')));
  EXPECT_FALSE(fs::exists(cache.path_of(key_for("b"))));
  EXPECT_FALSE(cache.get(key_for("b")));
  EXPECT_TRUE(cache.get(key_for("a")));
  EXPECT_TRUE(cache.get(key_for("c")));
  EXPECT_TRUE(cache.get(key_for("d")));
  EXPECT_EQ(cache.stats().bytes, 300u);
  EXPECT_EQ(bytes_on_disk(), 300u);
  EXPECT_EQ(cache.stats().evicted_for_space, 1u);
  // A bigger entry pushes out as many as it needs.
  ASSERT_TRUE(cache.put(key_for("e"), std::string(250, 'e')));
  EXPECT_LE(bytes_on_disk(), 300u);
  EXPECT_EQ(cache.stats().entries, 1u);
}

TEST_F(TempCacheTest, RefusesAnEntryLargerThanTheWholeBound) {
  TempCache cache(options(100));
  ASSERT_TRUE(cache.put(key_for("small"), std::string(60, 's')));
  EXPECT_FALSE(cache.put(key_for("huge"), std::string(101, 'h')));
  EXPECT_FALSE(cache.put_content(std::string(101, 'h')));
  EXPECT_FALSE(fs::exists(cache.path_of(key_for("huge"))));
  EXPECT_TRUE(cache.get(key_for("small"))); // nothing was evicted for it
  EXPECT_EQ(cache.stats().refused, 2u);
  EXPECT_TRUE(cache.put(key_for("exact"), std::string(100, 'x'))); // exactly the bound fits
}

TEST_F(TempCacheTest, SweepDeletesExpiredEntriesAndStrayTempFilesOnly) {
  auto opts = options(1 << 20);
  opts.max_age = std::chrono::hours(1);
  opts.stray_temp_age = std::chrono::minutes(10);
  TempCache cache(opts);
  const auto now = std::chrono::system_clock::now();
  ASSERT_TRUE(cache.put(key_for("old"), "old"));
  ASSERT_TRUE(cache.put(key_for("fresh"), "fresh"));
  set_mtime(cache.path_of(key_for("old")), now - std::chrono::hours(2));
  // A crashed writer's leftover, a writer still at work, and a stranger's file.
  const auto shard = cache.path_of(key_for("old")).parent_path();
  std::ofstream(shard / ".tmp-crashed.123.1") << "partial";
  set_mtime(shard / ".tmp-crashed.123.1", now - std::chrono::hours(1));
  std::ofstream(shard / ".tmp-writing.456.2") << "in progress";
  std::ofstream(dir_ / "README") << "not ours";

  cache.sweep();
  EXPECT_FALSE(fs::exists(cache.path_of(key_for("old"))));
  EXPECT_FALSE(cache.get(key_for("old")));
  EXPECT_TRUE(cache.get(key_for("fresh")));
  EXPECT_FALSE(fs::exists(shard / ".tmp-crashed.123.1"));
  EXPECT_TRUE(fs::exists(shard / ".tmp-writing.456.2"));
  EXPECT_TRUE(fs::exists(dir_ / "README"));
  EXPECT_EQ(cache.stats().expired, 1u);
  EXPECT_EQ(cache.stats().entries, 1u);
}

TEST_F(TempCacheTest, BackgroundSweepRunsEveryCleanupInterval) {
  auto opts = options(1 << 20);
  opts.cleanup_interval = std::chrono::milliseconds(50);
  opts.max_age = std::chrono::hours(1);
  TempCache cache(opts);
  ASSERT_TRUE(cache.put(key_for("old"), "old"));
  set_mtime(cache.path_of(key_for("old")), std::chrono::system_clock::now() - std::chrono::hours(2));
  // A sweep deletes files before it publishes its count (the folder is
  // scanned outside the lock), so wait for the count, the later of the two.
  for (int i = 0; i < 100 && cache.stats().expired == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(fs::exists(cache.path_of(key_for("old"))));
  EXPECT_EQ(cache.stats().expired, 1u);
}

TEST_F(TempCacheTest, RestartRebuildsTheIndexInUseOrder) {
  const auto now = std::chrono::system_clock::now();
  {
    TempCache cache(options(300));
    for (const char* name : {"first", "second", "third"})
      ASSERT_TRUE(cache.put(key_for(name), std::string(100, name[0])));
    // Use order: second (oldest), first, third (newest).
    set_mtime(cache.path_of(key_for("second")), now - std::chrono::minutes(3));
    set_mtime(cache.path_of(key_for("first")), now - std::chrono::minutes(2));
    set_mtime(cache.path_of(key_for("third")), now - std::chrono::minutes(1));
    // A writer that crashed between write and rename leaves only a temp file.
    std::ofstream(cache.path_of(key_for("third")).parent_path() / ".tmp-crash.1.1") << "torn";
  }
  TempCache restarted(options(300));
  EXPECT_EQ(restarted.stats().entries, 3u);
  EXPECT_EQ(restarted.stats().bytes, 300u);
  ASSERT_TRUE(restarted.put(key_for("fourth"), std::string(100, '4')));
  EXPECT_FALSE(fs::exists(restarted.path_of(key_for("second")))); // the least recently used before the restart
  EXPECT_TRUE(restarted.get(key_for("first")));
  EXPECT_TRUE(restarted.get(key_for("third")));
  EXPECT_TRUE(restarted.get(key_for("fourth")));
  // A smaller bound on restart evicts down to it at once.
  TempCache smaller(options(150));
  EXPECT_LE(smaller.stats().bytes, 150u);
  EXPECT_LE(bytes_on_disk(), 150u);
}

TEST_F(TempCacheTest, ContentThatNoLongerMatchesItsHashIsAMiss) {
  TempCache cache(options(1 << 20));
  const auto key = cache.put_content("original");
  ASSERT_TRUE(key);
  mmserve::storage::write_file_atomically(cache.path_of(*key), "tampered");
  EXPECT_FALSE(cache.get_content(*key));
  EXPECT_FALSE(fs::exists(cache.path_of(*key)));
}

// No reader ever sees a file under its final name before it is complete:
// a reader polls the final path while a writer replaces a large entry.
TEST_F(TempCacheTest, NoPartialFileIsEverVisible) {
  TempCache cache(options(64 << 20));
  const std::string first = blob(8 << 20, 1);
  const std::string second = blob(8 << 20, 2);
  const std::string key = key_for("big");
  std::atomic<bool> done{false};
  std::atomic<int> reads{0}, torn{0};
  std::thread reader([&] {
    while (!done) {
      std::ifstream in(cache.path_of(key), std::ios::binary);
      if (!in) continue;
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      ++reads;
      if (bytes != first && bytes != second) ++torn;
    }
  });
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(cache.put(key, i % 2 ? second : first));
    if (i % 3 == 2) fs::remove(cache.path_of(key)); // the reader also sees "no file"
  }
  done = true;
  reader.join();
  EXPECT_GT(reads.load(), 0);
  EXPECT_EQ(torn.load(), 0);
}

TEST_F(TempCacheTest, ConcurrentWriterThreadsNeverTearAndKeepTheBound) {
  constexpr uint64_t kMax = 2 << 20;
  TempCache cache(options(kMax));
  std::vector<std::string> blobs;
  for (unsigned i = 0; i < 24; ++i)
    blobs.push_back(blob(40'000 + i * 7'000, i));
  std::atomic<int> torn{0};
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 random(t);
      for (int i = 0; i < 200; ++i) {
        const auto& bytes = blobs[random() % blobs.size()];
        const std::string key = TempCache::content_key(bytes);
        if (random() % 2) {
          cache.put(key, bytes);
        } else if (auto read = cache.get(key); read && TempCache::content_key(*read) != key) {
          ++torn;
        }
        if (i % 50 == 0 && t == 0) cache.sweep();
      }
    });
  }
  for (auto& thread : threads)
    thread.join();
  EXPECT_EQ(torn.load(), 0);
  EXPECT_LE(cache.stats().bytes, kMax);
  EXPECT_LE(bytes_on_disk(), kMax);
  cache.sweep();
  EXPECT_EQ(cache.stats().bytes, bytes_on_disk());
}

// Two processes share the folder, as two replicas on one volume do: each
// writes and reads the same keys; neither ever reads a torn file.
TEST_F(TempCacheTest, TwoProcessesSharingTheFolderNeverSeeATornFile) {
  std::vector<std::string> blobs;
  for (unsigned i = 0; i < 12; ++i)
    blobs.push_back(blob(200'000 + i * 31'000, 100 + i));
  auto work = [&](unsigned seed) {
    TempCache cache(options(2 << 20));
    std::mt19937 random(seed);
    int torn = 0;
    for (int i = 0; i < 300; ++i) {
      const auto& bytes = blobs[random() % blobs.size()];
      const std::string key = TempCache::content_key(bytes);
      if (random() % 2) {
        cache.put(key, bytes);
      } else if (auto read = cache.get(key); read && TempCache::content_key(*read) != key) {
        ++torn;
      }
      if (i % 100 == 99) cache.sweep();
    }
    return torn;
  };
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(work(1) == 0 ? 0 : 3);
  const int torn_here = work(2);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the second process read a torn file";
  EXPECT_EQ(torn_here, 0);
  // After a sweep, the folder as a whole is within the bound again.
  TempCache after(options(2 << 20));
  EXPECT_LE(bytes_on_disk(), 2u << 20);
  for (const auto& entry : fs::recursive_directory_iterator(dir_)) {
    const auto name = entry.path().filename().string();
    if (TempCache::valid_key(name)) {
      EXPECT_EQ(after.get_content(name).has_value(), true) << name << " is not whole";
    }
  }
}
