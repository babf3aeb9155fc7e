// The image service: one Stable Diffusion pipeline (engines/diffusion) fed
// by a bounded job queue and ONE worker thread (a generation uses every
// core, so two at once would only slow both). Each job reports its progress
// (step, eta, a TAESD preview when someone watches) to the process's
// ImageActivity, which /sdapi/v1/progress reads and /sdapi/v1/interrupt
// acts on; the finished images are encoded (PNG with the generation
// parameters, JPEG, WebP), put in the output store and handed to the
// request's coroutine through an AsyncChannel.
#pragma once

#include "core/api_error.hpp"
#include "core/async_channel.hpp"
#include "core/server_metrics.hpp"
#include "engines/diffusion/diffusion_pipeline.hpp"
#include "storage/output_store.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace mmserve::image {

using Clock = std::chrono::steady_clock;

// The samplers under their A1111 webui names (what /sdapi/v1/samplers lists
// and infotexts say), with the aliases webui also accepts.
struct SamplerName {
  std::string canonical; // engine name: euler_a
  std::string webui;     // "Euler a"
  std::vector<std::string> aliases;
  std::string scheduler; // "karras" for the Karras-sigma variants, else empty
};
const std::vector<SamplerName>& sampler_table();
// The webui name of a canonical sampler (the canonical name when it has none).
std::string webui_sampler_name(const std::string& canonical);

struct ImageServiceOptions {
  std::string model_id;
  std::string model_hash; // A1111's short model hash, in infotexts
  diffusion::PipelineOptions pipeline;
  int max_queue = 16;            // waiting jobs before 429
  bool preview = true;           // TAESD previews while a progress client asks for them
  double preview_interval_s = 2; // at most one preview per this many seconds
};

// One validated request, every default already filled in from the model.
struct ImageJobRequest {
  diffusion::GenerationRequest generation; // width, height, steps, guidance, sampler, seed, batch all set
  std::string output_format = "png";       // png jpeg webp
  int quality = 100;                       // jpeg/webp
  std::string kind = "images";             // what the progress API calls the job: images, txt2img
  std::string request_id;                  // for the logs
};

struct OutputImage {
  std::string bytes; // encoded
  std::string content_type;
  uint64_t seed = 0;
  std::string infotext;                        // A1111's parameters text
  std::optional<storage::StoredOutput> stored; // absent when the store failed
  std::string store_error;                     // why it failed
};

struct ImageEvent {
  enum class Kind { done, failed };
  Kind kind = Kind::done;
  std::vector<OutputImage> images; // done
  double seconds = 0;              // done: from the start of the generation to the last image stored
  std::optional<ApiError> error;   // failed
};

enum class JobState { queued, running, done, failed, cancelled, interrupted };
const char* job_state_name(JobState state);

// What a job is doing, as the progress API shows it.
struct JobProgress {
  JobState state = JobState::queued;
  std::string kind;
  std::string model;
  int image_index = 0; // image of the batch being made
  int batch = 1;
  int step = 0; // steps done of the current image
  int steps = 0;
  double eta_seconds = 0;  // estimate of the time left, from the measured steps
  std::string preview_png; // latest preview (PNG bytes), empty when none
  std::chrono::system_clock::time_point started{};
  double fraction() const; // 0..1 over the whole batch
};

// Why a job stops early: the client went away (or its deadline passed), or /sdapi/v1/interrupt.
enum class StopReason { none, cancelled, interrupted };

struct ImageJob {
  ImageJobRequest request;
  std::shared_ptr<AsyncChannel<ImageEvent>> events;
  Clock::time_point queued_at = Clock::now();
  std::atomic<StopReason> stop{StopReason::none};
  mutable std::mutex mutex; // guards progress
  JobProgress progress;
  bool stopping() const { return stop.load() != StopReason::none; }
  // Sets the reason unless one is set already.
  void request_stop(StopReason reason) {
    StopReason none = StopReason::none;
    stop.compare_exchange_strong(none, reason);
  }
};

// What every image service of the process is doing: the running job (one
// at a time process-wide: generation_mutex), the jobs waiting, previews
// wanted. Shared by the services the registry loads and the HTTP routes.
class ImageActivity {
public:
  explicit ImageActivity(ServerMetrics& metrics);

  struct Snapshot {
    std::optional<JobProgress> current; // the running job
    int waiting = 0;                    // jobs queued in every image service
    bool interrupted = false;           // the last job was interrupted (until the next one starts)
  };
  // `watch_preview`: a client wants previews, so the worker renders them for a while.
  Snapshot snapshot(bool watch_preview);
  // Stops the running job (webui's Interrupt); false when none runs.
  bool interrupt();

  // For the services.
  void add_waiting(int delta);
  std::timed_mutex& generation_mutex() { return generation_; }
  void begin(const std::shared_ptr<ImageJob>& job);
  void end(const std::shared_ptr<ImageJob>& job);
  bool preview_wanted() const;
  // Seconds the running job still needs (0 when none runs), for Retry-After.
  double current_eta() const;

private:
  ServerMetrics& metrics_;
  std::timed_mutex generation_;
  mutable std::mutex mutex_;
  std::shared_ptr<ImageJob> current_;
  int waiting_ = 0;
  bool interrupted_ = false;
  Clock::time_point preview_wanted_until_{};
};

class ImageService {
public:
  // Loads the pipeline (blocking); `progress` (0..1) follows the weights read.
  // Throws std::runtime_error naming the file and the problem.
  ImageService(ImageServiceOptions options, std::shared_ptr<storage::OutputStore> store,
               std::shared_ptr<ImageActivity> activity, ServerMetrics& metrics,
               const std::function<void(float)>& progress = {});
  ~ImageService();
  ImageService(const ImageService&) = delete;
  ImageService& operator=(const ImageService&) = delete;

  const ImageServiceOptions& options() const { return options_; }
  const diffusion::ModelDefaults& defaults() const { return pipeline_->defaults(); }

  struct Submission {
    std::shared_ptr<AsyncChannel<ImageEvent>> events;
    std::shared_ptr<ImageJob> job;
  };
  // Queues the job; 429 (ApiError, with Retry-After) when max_queue jobs wait already.
  Submission submit(ImageJobRequest request, boost::asio::any_io_executor executor);
  // The client went away or timed out: a queued job is dropped, a running one stops at its next step.
  static void cancel(const std::shared_ptr<ImageJob>& job);

private:
  void worker_loop();
  void run_job(const std::shared_ptr<ImageJob>& job);
  ImageEvent generate(ImageJob& job);
  std::vector<OutputImage> encode_and_store(const ImageJob& job, std::vector<diffusion::GeneratedImage> images);
  void finish(ImageJob& job, JobState state, const std::optional<ApiError>& error);

  ImageServiceOptions options_;
  std::shared_ptr<storage::OutputStore> store_;
  std::shared_ptr<ImageActivity> activity_;
  ServerMetrics& metrics_;
  std::unique_ptr<diffusion::DiffusionPipeline> pipeline_;

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<ImageJob>> queue_;
  std::shared_ptr<ImageJob> running_; // popped by the worker, until finished
  bool stopping_ = false;
  std::atomic<double> seconds_per_megapixel_step_{0}; // last measured, for estimates before a job's first step
  std::atomic<double> last_job_seconds_{0};
  std::thread worker_;
};

// A1111's short model hash (10 hex digits); here of the model's path, which
// names the model in this server (hashing gigabytes of weights at start
// would delay readiness).
std::string short_model_hash(const std::string& path);

// A1111's infotext: the prompt, "Negative prompt: ..." when there is one,
// then "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64,
// Model hash: ..., Model: ..., Version: mmserve ...".
std::string infotext(const diffusion::GenerationRequest& request, uint64_t seed, const std::string& model_id,
                     const std::string& model_hash);

} // namespace mmserve::image
