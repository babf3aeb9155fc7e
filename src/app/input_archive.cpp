#include "app/input_archive.hpp"

#include "core/logging.hpp"
#include "core/text.hpp"
#include "storage/digest.hpp"
#include "storage/s3_client.hpp"

#include <chrono>
#include <filesystem>

namespace mmserve {

InputArchive::InputArchive(std::unique_ptr<storage::OutputStore> store, uint64_t max_pending_bytes,
                           ServerMetrics& metrics)
    : store_(std::move(store)), max_pending_bytes_(max_pending_bytes), metrics_(metrics) {
  for (const char* service : {"vision", "speech"}) {
    for (const char* result : {"stored", "known", "failed", "dropped"})
      metrics_.inputs_archived_total.labels({service, result}).inc(0);
  }
  worker_ = std::thread([this] { run(); });
}

InputArchive::~InputArchive() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wakeup_.notify_all();
  worker_.join();
}

bool InputArchive::submit(std::string service, std::string bytes, std::string extension, std::string content_type) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || pending_bytes_ + bytes.size() > max_pending_bytes_) {
      metrics_.inputs_archived_total.labels({service, "dropped"}).inc();
      spdlog::warn("storage.inputs: an upload of {} bytes was not kept ({} bytes already wait; max_pending {})",
                   bytes.size(), pending_bytes_, max_pending_bytes_);
      return false;
    }
    pending_bytes_ += bytes.size();
    queue_.push_back({std::move(service), std::move(bytes), std::move(extension), std::move(content_type)});
  }
  wakeup_.notify_one();
  return true;
}

void InputArchive::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wakeup_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return; // stopping, and everything is uploaded
    Item item = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    try {
      const std::string digest = storage::sha256_hex(item.bytes) + "." + item.extension;
      bool known;
      {
        std::lock_guard relock(mutex_);
        known = kept_.contains(digest);
      }
      if (known) {
        metrics_.inputs_archived_total.labels({item.service, "known"}).inc();
      } else {
        const auto stored = store_->save(item.bytes, item.extension, item.content_type);
        metrics_.inputs_archived_total.labels({item.service, "stored"}).inc();
        spdlog::debug("storage.inputs: kept {} ({} bytes)", stored.location, item.bytes.size());
        std::lock_guard relock(mutex_);
        if (kept_.size() >= 65536) kept_.clear(); // bounded; forgetting only costs an upload
        kept_.insert(digest);
      }
    } catch (const std::exception& error) {
      metrics_.inputs_archived_total.labels({item.service, "failed"}).inc();
      log_event(spdlog::level::warn, "input not kept",
                {{"service", item.service}, {"bytes", item.bytes.size()}, {"error", std::string(error.what())}});
    }
    lock.lock();
    pending_bytes_ -= item.bytes.size();
  }
}

std::shared_ptr<InputArchive> make_input_archive(const Config& config, const std::map<std::string, std::string>& env,
                                                 ServerMetrics& metrics) {
  const auto& inputs = config.storage.inputs;
  if (inputs.backend == "none") return nullptr;
  auto options = storage::s3_options(config.storage.s3, env);
  if (options.bucket.empty()) {
    throw ConfigError("storage.inputs.backend is s3 but storage.s3.bucket is empty: name the bucket inputs go to");
  }
  if (options.credentials.access_key_id.empty() || options.credentials.secret_access_key.empty()) {
    throw ConfigError("storage.inputs.backend is s3 but no credentials are set: set storage.s3.access_key_id and "
                      "storage.s3.secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
  }
  auto store = storage::make_s3_output_store(std::move(options), inputs.key_prefix, "", std::chrono::seconds(3600));
  return std::make_shared<InputArchive>(std::move(store), inputs.max_pending, metrics);
}

std::pair<std::string, std::string> upload_kind(const std::string& filename, const std::string& content_type) {
  std::string extension = std::filesystem::path(filename).extension().string();
  if (!extension.empty()) extension.erase(0, 1);
  extension = text::lowered(extension);
  return {storage::valid_output_extension(extension) ? extension : "bin",
          content_type.empty() ? "application/octet-stream" : content_type};
}

} // namespace mmserve
