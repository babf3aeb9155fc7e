// The vision-language engine: one llama.cpp model (plus its libmtmd
// projector) and one context with N sequence slots. A scheduler thread admits
// queued requests into free slots between decode steps and decodes one token
// for every busy slot per llama_decode call (continuous batching).
#pragma once

#include "api/chat_request.hpp"
#include "core/async_channel.hpp"
#include "core/server_metrics.hpp"
#include "engines/vlm/embedding_cache.hpp"
#include "media/image_preprocess.hpp"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

struct llama_model;
struct llama_context;
struct mtmd_context;
struct mtmd_input_chunks;
struct mtmd_input_chunk;
struct common_chat_templates;

namespace mmserve::vlm {

struct EngineOptions {
  std::string model_id;
  std::string model_path;
  std::string mmproj_path;     // empty: text only
  int context_per_slot = 4096; // tokens each request may use, prompt included
  int parallel = 4;
  int max_queue = 64;
  int threads = 0;                                                         // 0: all cores
  int batch_size = 512;                                                    // prompt tokens per decode call
  uint64_t image_cache_bytes = 256ull << 20;
  int gpu_count = 0;                // CUDA builds: 0 uses every visible GPU
  std::vector<double> tensor_split; // share of the model per GPU; empty: by free memory
};

// One image of a request, decoded and preprocessed; `id` is the content
// hash that keys the encoder-output and prompt caches.
struct ImageInput {
  std::shared_ptr<const media::RgbImage> image;
  std::string id;
};

// What the engine reports back for one request, in order.
struct GenerationEvent {
  enum class Kind { delta, done, failed };
  static GenerationEvent delta(std::string text) {
    GenerationEvent event;
    event.text = std::move(text);
    return event;
  }
  static GenerationEvent failure(int status, std::string message) {
    GenerationEvent event;
    event.kind = Kind::failed;
    event.error_status = status;
    event.error_message = std::move(message);
    return event;
  }
  Kind kind = Kind::delta;
  std::string text;          // delta: new text
  std::string finish_reason; // done: stop | length
  int prompt_tokens = 0;     // done
  int completion_tokens = 0; // done
  int error_status = 500;    // failed
  std::string error_message; // failed
};

struct Job;

// Once per process: ggml/llama backends up, their logs routed to spdlog.
void init_engine_backend();
// Routes llama.cpp's and libmtmd's logs to spdlog again (after a temporary logger).
void use_engine_logging();

class VlmEngine {
public:
  // Loads the model (blocking; `progress` receives 0..1). Throws
  // std::runtime_error naming the file on failure.
  VlmEngine(EngineOptions options, ServerMetrics& metrics, std::function<void(float)> progress);
  ~VlmEngine();
  VlmEngine(const VlmEngine&) = delete;
  VlmEngine& operator=(const VlmEngine&) = delete;

  const EngineOptions& options() const { return options_; }
  bool supports_images() const { return vision_ != nullptr; }

  // Validates and queues a request with its images (one per image part, in
  // order); events arrive on a channel bound to `executor`. Throws ApiError:
  // 400 (images without a projector), 429 when the queue is full.
  struct Submission {
    std::shared_ptr<AsyncChannel<GenerationEvent>> events;
    std::shared_ptr<Job> job;
  };
  Submission submit(const api::ChatRequest& request, std::vector<ImageInput> images,
                    boost::asio::any_io_executor executor);
  // The client went away: the slot is freed at the next step.
  static void cancel(const std::shared_ptr<Job>& job);

private:
  struct Slot;
  void scheduler_loop();
  bool start_slot(Slot& slot, const std::shared_ptr<Job>& job);
  void decode_step();
  // Evaluates up to `budget` prompt tokens of a prefilling slot; samples its first token when done.
  bool prefill_step(Slot& slot, size_t& budget);
  // Prompt tokens into a sequence from n_past on (advanced on success).
  bool decode_tokens(const int* tokens, size_t count, int seq, int& n_past, bool logits_last);
  // An image into a sequence; the encoder output comes from the cache when the image was seen.
  bool eval_image_chunk(const mtmd_input_chunk* chunk, int seq, int& n_past, bool last);
  void emit_token(Slot& slot, int token);
  void finish_slot(Slot& slot, const std::string& reason);
  void fail_slot(Slot& slot, int status, const std::string& message);
  // keep_cache: the sequence's KV stays for a next request with the same start.
  void release_slot(Slot& slot, bool keep_cache = false);
  std::string render_prompt(const api::ChatRequest& request) const;

  EngineOptions options_;
  ServerMetrics& metrics_;
  llama_model* model_ = nullptr;
  llama_context* context_ = nullptr;
  mtmd_context* vision_ = nullptr;
  common_chat_templates* templates_ = nullptr;

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stopping_ = false;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::unique_ptr<EmbeddingCache> image_cache_; // scheduler thread only
  std::atomic<int> busy_slots_{0};              // read by submit() on HTTP threads
  std::thread scheduler_;
};

} // namespace mmserve::vlm
