#include "app/image_service.hpp"

#include "core/logging.hpp"
#include "core/version.hpp"
#include "media/image_preprocess.hpp"
#include "storage/digest.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace mmserve::image {
namespace {

// A progress client's interest in previews lasts this long after its last poll.
constexpr auto kPreviewWatch = std::chrono::seconds(10);

double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

media::RgbImage to_rgb(diffusion::GeneratedImage&& image) {
  media::RgbImage rgb;
  rgb.width = static_cast<uint32_t>(image.width);
  rgb.height = static_cast<uint32_t>(image.height);
  rgb.pixels = std::move(image.rgb);
  return rgb;
}

const char* content_type_of(const std::string& format) {
  if (format == "jpeg") return "image/jpeg";
  if (format == "webp") return "image/webp";
  return "image/png";
}

const char* extension_of(const std::string& format) {
  return format == "jpeg" ? "jpg" : format.c_str();
}

const char* result_of(JobState state) {
  switch (state) {
  case JobState::done: return "completed";
  case JobState::cancelled: return "cancelled";
  case JobState::interrupted: return "interrupted";
  default: return "failed";
  }
}

} // namespace

const std::vector<SamplerName>& sampler_table() {
  static const std::vector<SamplerName> table = {
      {"euler_a", "Euler a", {"k_euler_a", "k_euler_ancestral"}, ""},
      {"euler", "Euler", {"k_euler"}, ""},
      {"dpmpp_2m", "DPM++ 2M", {"k_dpmpp_2m"}, ""},
      {"dpmpp_2m_karras", "DPM++ 2M Karras", {"k_dpmpp_2m_ka"}, "karras"},
      {"ddim", "DDIM", {"ddim"}, ""},
      {"lcm", "LCM", {"k_lcm"}, ""},
  };
  return table;
}

std::string webui_sampler_name(const std::string& canonical) {
  for (const auto& sampler : sampler_table()) {
    if (sampler.canonical == canonical) return sampler.webui;
  }
  return canonical;
}

const char* job_state_name(JobState state) {
  switch (state) {
  case JobState::queued: return "queued";
  case JobState::running: return "running";
  case JobState::done: return "done";
  case JobState::failed: return "failed";
  case JobState::cancelled: return "cancelled";
  case JobState::interrupted: return "interrupted";
  }
  return "unknown";
}

double JobProgress::fraction() const {
  if (state != JobState::running || steps <= 0 || batch <= 0) return state == JobState::done ? 1.0 : 0.0;
  const double done = static_cast<double>(image_index) * steps + step;
  return std::clamp(done / (static_cast<double>(batch) * steps), 0.0, 1.0);
}

std::string short_model_hash(const std::string& path) {
  return storage::sha256_hex(path).substr(0, 10);
}

std::string infotext(const diffusion::GenerationRequest& request, uint64_t seed, const std::string& model_id,
                     const std::string& model_hash) {
  std::string text = request.prompt;
  if (!request.negative_prompt.empty()) text += "\nNegative prompt: " + request.negative_prompt;
  text += fmt::format("\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}", request.steps,
                      webui_sampler_name(request.sampler), request.guidance_scale, seed, request.width, request.height);
  if (!model_hash.empty()) text += fmt::format(", Model hash: {}", model_hash);
  text += fmt::format(", Model: {}, Version: mmserve {}", model_id, kVersion);
  return text;
}

// ---- activity -------------------------------------------------------------------

ImageActivity::ImageActivity(ServerMetrics& metrics) : metrics_(metrics) {
  metrics_.queue_depth.labels({"image"}).set(0);
  metrics_.slots_busy.labels({"image"}).set(0);
}

ImageActivity::Snapshot ImageActivity::snapshot(bool watch_preview) {
  std::lock_guard lock(mutex_);
  if (watch_preview) preview_wanted_until_ = Clock::now() + kPreviewWatch;
  Snapshot snapshot;
  snapshot.waiting = waiting_;
  snapshot.interrupted = interrupted_;
  if (current_) {
    std::lock_guard job_lock(current_->mutex);
    snapshot.current = current_->progress;
  }
  return snapshot;
}

bool ImageActivity::interrupt() {
  std::lock_guard lock(mutex_);
  if (!current_) return false;
  current_->request_stop(StopReason::interrupted);
  interrupted_ = true;
  return true;
}

void ImageActivity::add_waiting(int delta) {
  std::lock_guard lock(mutex_);
  waiting_ = std::max(0, waiting_ + delta);
  metrics_.queue_depth.labels({"image"}).set(waiting_);
}

void ImageActivity::begin(const std::shared_ptr<ImageJob>& job) {
  std::lock_guard lock(mutex_);
  current_ = job;
  interrupted_ = false;
  metrics_.slots_busy.labels({"image"}).set(1);
}

void ImageActivity::end(const std::shared_ptr<ImageJob>& job) {
  std::lock_guard lock(mutex_);
  if (current_ == job) current_.reset();
  metrics_.slots_busy.labels({"image"}).set(0);
}

bool ImageActivity::preview_wanted() const {
  std::lock_guard lock(mutex_);
  return Clock::now() < preview_wanted_until_;
}

double ImageActivity::current_eta() const {
  std::lock_guard lock(mutex_);
  if (!current_) return 0;
  std::lock_guard job_lock(current_->mutex);
  return current_->progress.eta_seconds;
}

// ---- service --------------------------------------------------------------------

ImageService::ImageService(ImageServiceOptions options, std::shared_ptr<storage::OutputStore> store,
                           std::shared_ptr<ImageActivity> activity, ServerMetrics& metrics,
                           const std::function<void(float)>& progress)
    : options_(std::move(options)), store_(std::move(store)), activity_(std::move(activity)), metrics_(metrics) {
  pipeline_ = std::make_unique<diffusion::DiffusionPipeline>(options_.pipeline, progress);
  media::init_image_library();
  worker_ = std::thread([this] { worker_loop(); });
}

ImageService::~ImageService() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    for (auto& job : queue_)
      job->request_stop(StopReason::cancelled);
    activity_->add_waiting(-static_cast<int>(queue_.size()));
    queue_.clear();
    if (running_) running_->request_stop(StopReason::cancelled);
  }
  wake_.notify_all();
  if (worker_.joinable()) worker_.join();
}

ImageService::Submission ImageService::submit(ImageJobRequest request, boost::asio::any_io_executor executor) {
  auto job = std::make_shared<ImageJob>();
  job->request = std::move(request);
  job->events = std::make_shared<AsyncChannel<ImageEvent>>(executor);
  job->progress.kind = job->request.kind;
  job->progress.model = options_.model_id;
  job->progress.batch = job->request.generation.batch;
  job->progress.steps = job->request.generation.steps;
  {
    std::lock_guard lock(mutex_);
    // A job goes straight to an idle worker; beyond it, max_queue may wait.
    const int idle = running_ ? 0 : 1;
    if (static_cast<int>(queue_.size()) >= options_.max_queue + idle) {
      const double estimate = activity_->current_eta() + static_cast<double>(queue_.size()) * last_job_seconds_.load();
      const int retry_after = estimate > 0 ? static_cast<int>(std::clamp(std::ceil(estimate), 1.0, 3600.0)) : 5;
      throw ApiError::too_many_requests(
          fmt::format("The image service is at capacity (1 generation running, {} waiting, image.max_queue {}); "
                      "retry in about {} s.",
                      queue_.size(), options_.max_queue, retry_after),
          retry_after);
    }
    queue_.push_back(job);
    activity_->add_waiting(1);
  }
  wake_.notify_one();
  return {job->events, job};
}

void ImageService::cancel(const std::shared_ptr<ImageJob>& job) {
  if (job) job->request_stop(StopReason::cancelled);
}

void ImageService::worker_loop() {
  for (;;) {
    std::shared_ptr<ImageJob> job;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
      running_ = job;
    }
    run_job(job);
    std::lock_guard lock(mutex_);
    running_.reset();
  }
}

void ImageService::run_job(const std::shared_ptr<ImageJob>& job) {
  // One generation at a time in the process, whichever model it uses: each
  // takes every core. A job cancelled meanwhile (or this service unloading)
  // stops waiting.
  std::unique_lock generation(activity_->generation_mutex(), std::defer_lock);
  while (!job->stopping() && !generation.try_lock_for(std::chrono::milliseconds(100))) {
  }
  activity_->add_waiting(-1);
  ImageEvent event;
  JobState state = JobState::done;
  if (job->stopping()) {
    state = JobState::cancelled;
  } else {
    activity_->begin(job);
    try {
      event = generate(*job);
    } catch (const diffusion::GenerationCancelled&) {
      state = job->stop.load() == StopReason::interrupted ? JobState::interrupted : JobState::cancelled;
    } catch (const ApiError& error) {
      state = JobState::failed;
      event.error = error;
    } catch (const std::invalid_argument& error) {
      state = JobState::failed;
      event.error = ApiError::bad_request(error.what(), std::nullopt, "invalid_value");
    } catch (const std::exception& error) {
      state = JobState::failed;
      event.error = ApiError::internal(fmt::format("Image generation failed: {}", error.what()));
    }
    activity_->end(job);
  }
  if (generation.owns_lock()) generation.unlock();
  if (state == JobState::interrupted) {
    event.error = ApiError(409, "The generation was interrupted (POST /sdapi/v1/interrupt) before it finished.",
                           "invalid_request_error", "generation_interrupted");
  } else if (state == JobState::cancelled) {
    event.error = ApiError::timeout("The generation was cancelled: the client went away or its deadline passed.");
  }
  if (state != JobState::done) event.kind = ImageEvent::Kind::failed;
  finish(*job, state, event.error);
  job->events->push(std::move(event));
}

ImageEvent ImageService::generate(ImageJob& job) {
  const auto& request = job.request.generation;
  const std::string& model = options_.model_id;
  const auto started = Clock::now();
  const double megapixels = static_cast<double>(request.width) * request.height / 1e6;
  const int total_steps = std::max(1, request.steps * request.batch);
  {
    std::lock_guard lock(job.mutex);
    job.progress.state = JobState::running;
    job.progress.started = std::chrono::system_clock::now();
    job.progress.eta_seconds = seconds_per_megapixel_step_.load() * megapixels * total_steps;
  }
  log_event(spdlog::level::info, "image generation started",
            {{"model", model},
             {"request_id", job.request.request_id},
             {"kind", job.request.kind},
             {"width", request.width},
             {"height", request.height},
             {"steps", request.steps},
             {"batch", request.batch},
             {"sampler", request.sampler},
             {"queued_seconds", seconds_between(job.queued_at, started)}});

  double step_seconds = 0;
  int steps_done = 0;
  Clock::time_point last_preview{};
  std::array<double, 3> phase_seconds{};
  const auto preview_interval = std::chrono::duration<double>(options_.preview_interval_s);
  diffusion::PipelineObserver observer;
  observer.on_step = [&](const diffusion::StepInfo& info) {
    metrics_.image_step_seconds.labels({model}).observe(info.step_seconds);
    step_seconds += info.step_seconds;
    ++steps_done;
    const int remaining = (request.batch - info.image_index - 1) * info.steps + (info.steps - info.step);
    std::string preview;
    const auto now = Clock::now();
    if (options_.preview && info.preview && now - last_preview >= preview_interval && activity_->preview_wanted()) {
      last_preview = now;
      preview = media::encode_image(to_rgb(info.preview()), "png");
    }
    {
      std::lock_guard lock(job.mutex);
      job.progress.image_index = info.image_index;
      job.progress.step = info.step;
      job.progress.steps = info.steps;
      job.progress.eta_seconds = remaining * step_seconds / steps_done;
      if (!preview.empty()) job.progress.preview_png = std::move(preview);
    }
    return !job.stopping();
  };
  observer.on_phase = [&](diffusion::Phase phase, double seconds) {
    metrics_.model_inference_seconds.labels({"image", model, diffusion::phase_name(phase)}).observe(seconds);
    phase_seconds[static_cast<size_t>(phase)] += seconds;
  };
  std::vector<diffusion::GeneratedImage> images = pipeline_->generate(request, observer);
  metrics_.images_generated_total.labels({model}).inc(static_cast<double>(images.size()));
  if (steps_done > 0 && megapixels > 0) seconds_per_megapixel_step_ = step_seconds / steps_done / megapixels;

  ImageEvent event;
  event.images = encode_and_store(job, std::move(images));
  event.seconds = seconds_between(started, Clock::now());
  last_job_seconds_ = event.seconds;
  log_event(spdlog::level::info, "image generation finished",
            {{"model", model},
             {"request_id", job.request.request_id},
             {"images", event.images.size()},
             {"seconds", event.seconds},
             {"seconds_per_step", steps_done > 0 ? step_seconds / steps_done : 0.0},
             {"text_encode_seconds", phase_seconds[static_cast<size_t>(diffusion::Phase::text_encode)]},
             {"denoise_seconds", phase_seconds[static_cast<size_t>(diffusion::Phase::denoise)]},
             {"vae_decode_seconds", phase_seconds[static_cast<size_t>(diffusion::Phase::vae_decode)]}});
  return event;
}

std::vector<OutputImage> ImageService::encode_and_store(const ImageJob& job,
                                                        std::vector<diffusion::GeneratedImage> images) {
  const auto& request = job.request;
  std::vector<OutputImage> outputs;
  for (auto& image : images) {
    OutputImage out;
    out.seed = image.seed;
    out.infotext = infotext(request.generation, image.seed, options_.model_id, options_.model_hash);
    out.content_type = content_type_of(request.output_format);
    const auto started = Clock::now();
    media::TextChunks text;
    if (request.output_format == "png") text.emplace_back("parameters", out.infotext);
    out.bytes = media::encode_image(to_rgb(std::move(image)), request.output_format, request.quality, text);
    metrics_.image_processing_seconds.labels({"image", "encode"}).observe(seconds_between(started, Clock::now()));
    try {
      out.stored = store_->save(out.bytes, extension_of(request.output_format), out.content_type);
    } catch (const std::exception& error) {
      out.store_error = error.what();
      log_event(spdlog::level::err, "output not stored",
                {{"model", options_.model_id}, {"request_id", request.request_id}, {"error", out.store_error}});
    }
    outputs.push_back(std::move(out));
  }
  return outputs;
}

void ImageService::finish(ImageJob& job, JobState state, const std::optional<ApiError>& error) {
  {
    std::lock_guard lock(job.mutex);
    job.progress.state = state;
    job.progress.eta_seconds = 0;
  }
  metrics_.image_jobs_total.labels({options_.model_id, result_of(state)}).inc();
  if (state == JobState::done) return;
  log_event(state == JobState::failed ? spdlog::level::warn : spdlog::level::info,
            fmt::format("image generation {}", job_state_name(state)),
            {{"model", options_.model_id},
             {"request_id", job.request.request_id},
             {"seconds", seconds_between(job.queued_at, Clock::now())},
             {"error", error ? error->what() : ""}});
}

} // namespace mmserve::image
