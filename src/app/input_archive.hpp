// Keeps what clients upload (chat images, audio files) in object storage
// when `storage.inputs.backend` is s3: each input once, named by its
// SHA-256, uploaded by a worker thread so requests never wait on the
// bucket. The queue is bounded in bytes; past it an input is not kept
// (counted as dropped), and a failed upload is logged and counted.
#pragma once

#include "core/config.hpp"
#include "core/server_metrics.hpp"
#include "storage/output_store.hpp"

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>

namespace mmserve {

class InputArchive {
public:
  InputArchive(std::unique_ptr<storage::OutputStore> store, uint64_t max_pending_bytes, ServerMetrics& metrics);
  // Uploads what is queued, then stops.
  ~InputArchive();
  InputArchive(const InputArchive&) = delete;
  InputArchive& operator=(const InputArchive&) = delete;

  // Queues the bytes; false when the queue has no room for them.
  bool submit(std::string service, std::string bytes, std::string extension, std::string content_type);

private:
  struct Item {
    std::string service, bytes, extension, content_type;
  };
  void run();

  std::unique_ptr<storage::OutputStore> store_;
  const uint64_t max_pending_bytes_;
  ServerMetrics& metrics_;
  std::mutex mutex_;
  std::condition_variable wakeup_;
  std::deque<Item> queue_;
  uint64_t pending_bytes_ = 0;
  std::unordered_set<std::string> kept_; // digests uploaded lately: the same image is not sent again
  bool stopping_ = false;
  std::thread worker_;
};

// The archive the configuration asks for; null when storage.inputs.backend
// is none. Throws ConfigError for s3 without a bucket or credentials.
std::shared_ptr<InputArchive> make_input_archive(const Config& config, const std::map<std::string, std::string>& env,
                                                 ServerMetrics& metrics);

// File extension and MIME type of an upload's name (audio), "bin" when unknown.
std::pair<std::string, std::string> upload_kind(const std::string& filename, const std::string& content_type);

} // namespace mmserve
