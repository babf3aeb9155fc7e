#include "engines/asr/whisper_engine.hpp"

#include "core/logging.hpp"

#include "whisper.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

namespace mmserve::asr {
namespace {

using Clock = std::chrono::steady_clock;

void route_whisper_logs() {
  static std::once_flag once;
  std::call_once(once, [] {
    // whisper.cpp narrates every window at INFO; only its warnings and errors reach the log.
    whisper_log_set(
        [](ggml_log_level level, const char* text, void*) {
          if (level != GGML_LOG_LEVEL_WARN && level != GGML_LOG_LEVEL_ERROR) return;
          std::string line(text);
          while (!line.empty() && line.back() == '\n')
            line.pop_back();
          if (!line.empty()) spdlog::warn("whisper.cpp: {}", line);
        },
        nullptr);
  });
}

// whisper.cpp's temperature ladder: start, start + inc, ... up to 1.0.
std::vector<float> temperature_ladder(float start, float increment) {
  std::vector<float> ladder;
  if (increment <= 0) return {start};
  for (float t = start; t < 1.0f + 1e-6f; t += increment)
    ladder.push_back(t);
  if (ladder.empty()) ladder.push_back(start);
  return ladder;
}

} // namespace

struct AsrJob {
  std::string audio; // encoded bytes until the worker decodes them
  TranscriptionParams params;
  std::shared_ptr<AsyncChannel<TranscriptionEvent>> events;
  std::atomic<bool> cancelled{false};
  Clock::time_point queued_at = Clock::now();
};

struct WhisperEngine::Worker {
  whisper_state* state = nullptr;
  whisper_vad_context* vad = nullptr;
  std::thread thread;
};

int64_t map_to_original_time(int64_t processed, const std::vector<TimeMapping>& table) {
  if (table.empty()) return processed;
  if (processed <= table.front().processed) return table.front().original;
  if (processed >= table.back().processed) return table.back().original;
  auto upper = std::lower_bound(table.begin(), table.end(), processed,
                                [](const TimeMapping& entry, int64_t time) { return entry.processed < time; });
  if (upper->processed == processed) return upper->original;
  auto lower = upper - 1;
  const int64_t span = upper->processed - lower->processed;
  if (span == 0) return lower->original;
  return lower->original + (processed - lower->processed) * (upper->original - lower->original) / span;
}

float compression_ratio(const std::string& text) {
  if (text.empty()) return 0;
  uLongf size = compressBound(static_cast<uLong>(text.size()));
  std::vector<Bytef> out(size);
  if (compress2(out.data(), &size, reinterpret_cast<const Bytef*>(text.data()), static_cast<uLong>(text.size()),
                Z_DEFAULT_COMPRESSION) != Z_OK ||
      size == 0) {
    return 0;
  }
  return static_cast<float>(text.size()) / static_cast<float>(size);
}

namespace {

// The speech the VAD found, concatenated with 0.1 s of silence between
// pieces, and the table mapping times back; the same construction as
// whisper.cpp's built-in VAD path, which cannot run on a pooled state.
struct SpeechOnly {
  std::vector<float> samples;
  std::vector<TimeMapping> table;
};

int64_t samples_to_cs(int64_t samples) {
  return samples * 100 / media::kSpeechSampleRate;
}
int64_t cs_to_samples(double cs) {
  return static_cast<int64_t>(cs / 100.0 * media::kSpeechSampleRate + 0.5);
}

SpeechOnly keep_speech(whisper_vad_context* vad, const std::vector<float>& audio) {
  const whisper_vad_params params = whisper_vad_default_params();
  whisper_vad_segments* found =
      whisper_vad_segments_from_samples(vad, params, audio.data(), static_cast<int>(audio.size()));
  if (!found) throw std::runtime_error("voice activity detection failed");
  std::unique_ptr<whisper_vad_segments, decltype(&whisper_vad_free_segments)> segments(found,
                                                                                       whisper_vad_free_segments);
  SpeechOnly out;
  const int count = whisper_vad_segments_n_segments(found);
  const auto n_samples = static_cast<int64_t>(audio.size());
  const int64_t overlap = static_cast<int64_t>(params.samples_overlap * media::kSpeechSampleRate);
  const int64_t silence = media::kSpeechSampleRate / 10;
  for (int i = 0; i < count; ++i) {
    const double orig_start = whisper_vad_segments_get_segment_t0(found, i);
    const double orig_end = whisper_vad_segments_get_segment_t1(found, i);
    int64_t begin = std::min(cs_to_samples(orig_start), n_samples - 1);
    int64_t end = std::min(cs_to_samples(orig_end), n_samples - 1);
    const int64_t spoken = end - begin;
    if (i + 1 < count) end = std::min(end + overlap, n_samples - 1);
    if (end <= begin) continue;
    const auto offset = static_cast<int64_t>(out.samples.size());
    out.table.push_back({samples_to_cs(offset), static_cast<int64_t>(orig_start)});
    out.table.push_back({samples_to_cs(offset + spoken), static_cast<int64_t>(orig_end)});
    out.samples.insert(out.samples.end(), audio.begin() + begin, audio.begin() + end);
    if (i + 1 < count) {
      const auto gap_start = static_cast<int64_t>(out.samples.size());
      out.table.push_back({samples_to_cs(gap_start), static_cast<int64_t>(orig_end)});
      out.table.push_back({samples_to_cs(gap_start + silence),
                           static_cast<int64_t>(whisper_vad_segments_get_segment_t0(found, i + 1))});
      out.samples.insert(out.samples.end(), static_cast<size_t>(silence), 0.0f);
    }
  }
  std::stable_sort(out.table.begin(), out.table.end(),
                   [](const TimeMapping& a, const TimeMapping& b) { return a.processed < b.processed; });
  out.table.erase(std::unique(out.table.begin(), out.table.end(),
                              [](const TimeMapping& a, const TimeMapping& b) { return a.processed == b.processed; }),
                  out.table.end());
  return out;
}

// What whisper.cpp's callbacks need while one transcription runs.
struct RunContext {
  whisper_context* context = nullptr;
  AsrJob* job = nullptr;
  const std::vector<TimeMapping>* table = nullptr;
  double audio_seconds = 0; // timestamps are clamped to it: whisper's last one can overshoot
  std::vector<float> ladder;
  int attempts = 0;     // decoding attempts in the current window (fallbacks + 1)
  bool sampled = false; // some window was decoded at a temperature above 0
  int next_segment = 0;
};

double seconds_of(int64_t cs, const std::vector<TimeMapping>& table, double limit) {
  return std::min(static_cast<double>(map_to_original_time(cs, table)) / 100.0, limit);
}

std::vector<Word> words_of(whisper_context* context, whisper_state* state, int segment,
                           const std::vector<TimeMapping>& table, double limit) {
  std::vector<Word> words;
  const whisper_token eot = whisper_token_eot(context);
  const int n_tokens = whisper_full_n_tokens_from_state(state, segment);
  for (int i = 0; i < n_tokens; ++i) {
    const whisper_token_data data = whisper_full_get_token_data_from_state(state, segment, i);
    if (data.id >= eot) continue; // timestamps and other special tokens
    std::string piece = whisper_full_get_token_text_from_state(context, state, segment, i);
    const bool starts_word = words.empty() || piece.starts_with(' ');
    if (starts_word) {
      const size_t first = piece.find_first_not_of(' ');
      piece = first == std::string::npos ? std::string() : piece.substr(first);
      words.push_back({piece, seconds_of(data.t0, table, limit), seconds_of(data.t1, table, limit)});
    } else {
      words.back().text += piece;
      words.back().end = seconds_of(data.t1, table, limit);
    }
  }
  std::erase_if(words, [](const Word& word) { return word.text.empty(); });
  return words;
}

Segment segment_of(RunContext& run, whisper_state* state, int index) {
  const auto& table = *run.table;
  Segment segment;
  segment.id = index;
  const int64_t t0 = whisper_full_get_segment_t0_from_state(state, index);
  const int64_t t1 = whisper_full_get_segment_t1_from_state(state, index);
  segment.start = seconds_of(t0, table, run.audio_seconds);
  segment.end = seconds_of(t1, table, run.audio_seconds);
  segment.seek = map_to_original_time(t0, table);
  segment.text = whisper_full_get_segment_text_from_state(state, index);
  // NaN when the model's logits overflow (JSON has no NaN): no evidence of silence, so 0.
  segment.no_speech_prob = whisper_full_get_segment_no_speech_prob_from_state(state, index);
  if (!std::isfinite(segment.no_speech_prob)) segment.no_speech_prob = 0;
  const size_t step = static_cast<size_t>(std::max(run.attempts, 1)) - 1;
  segment.temperature = run.ladder[std::min(step, run.ladder.size() - 1)];
  const whisper_token eot = whisper_token_eot(run.context);
  const int n_tokens = whisper_full_n_tokens_from_state(state, index);
  double logprob_sum = 0;
  int text_tokens = 0;
  for (int i = 0; i < n_tokens; ++i) {
    const whisper_token_data data = whisper_full_get_token_data_from_state(state, index, i);
    segment.tokens.push_back(data.id);
    if (data.id < eot && std::isfinite(data.plog)) {
      logprob_sum += data.plog;
      ++text_tokens;
    }
  }
  segment.avg_logprob = text_tokens > 0 ? static_cast<float>(logprob_sum / text_tokens) : 0.0f;
  segment.compression_ratio = compression_ratio(segment.text);
  if (run.job->params.word_timestamps) {
    segment.words = words_of(run.context, state, index, table, run.audio_seconds);
  }
  return segment;
}

// whisper.cpp's file loader, reading through a counter so the model's
// loading progress (bytes read of the file) shows in /v1/models and the log.
whisper_context* load_with_progress(const std::string& path, whisper_context_params params,
                                    const std::function<void(float)>& progress) {
  struct Reader {
    std::ifstream in;
    uint64_t size = 0;
    uint64_t done = 0;
    const std::function<void(float)>* progress = nullptr;
  } reader;
  reader.in.open(path, std::ios::binary);
  if (!reader.in) return nullptr;
  std::error_code ec;
  reader.size = std::filesystem::file_size(path, ec);
  reader.progress = &progress;
  whisper_model_loader loader{};
  loader.context = &reader;
  loader.read = [](void* context, void* output, size_t size) {
    auto* r = static_cast<Reader*>(context);
    r->in.read(static_cast<char*>(output), static_cast<std::streamsize>(size));
    r->done += size;
    if (*r->progress && r->size > 0) (*r->progress)(std::min(1.0f, static_cast<float>(r->done) / r->size));
    return size;
  };
  loader.eof = [](void* context) { return static_cast<Reader*>(context)->in.eof(); };
  loader.close = [](void* context) { static_cast<Reader*>(context)->in.close(); };
  return whisper_init_with_params_no_state(&loader, params);
}

} // namespace

WhisperEngine::WhisperEngine(AsrOptions options, ServerMetrics& metrics, const std::function<void(float)>& progress)
    : options_(std::move(options)), metrics_(metrics) {
  route_whisper_logs();
  whisper_context_params context_params = whisper_context_default_params();
  context_params.use_gpu = options_.use_gpu;
  context_params.gpu_device = options_.gpu_device;
  context_ = load_with_progress(options_.model_path, context_params, progress);
  if (!context_) throw std::runtime_error(fmt::format("cannot load whisper model '{}'", options_.model_path));
  multilingual_ = whisper_is_multilingual(context_) != 0;

  const int parallel = std::max(1, options_.parallel);
  if (options_.threads <= 0) {
    options_.threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / parallel);
  }
  for (int i = 0; i < parallel; ++i) {
    auto worker = std::make_unique<Worker>();
    worker->state = whisper_init_state(context_);
    if (!worker->state) {
      for (auto& made : workers_)
        whisper_free_state(made->state);
      whisper_free(context_);
      throw std::runtime_error("cannot allocate a whisper decoder state (out of memory?)");
    }
    if (!options_.vad_model_path.empty()) {
      whisper_vad_context_params vad_params = whisper_vad_default_context_params();
      vad_params.n_threads = options_.threads;
      vad_params.use_gpu = options_.use_gpu;
      vad_params.gpu_device = options_.gpu_device;
      worker->vad = whisper_vad_init_from_file_with_params(options_.vad_model_path.c_str(), vad_params);
      if (!worker->vad) {
        whisper_free_state(worker->state);
        for (auto& made : workers_) {
          whisper_free_state(made->state);
          whisper_vad_free(made->vad);
        }
        whisper_free(context_);
        throw std::runtime_error(fmt::format("cannot load the VAD model '{}'", options_.vad_model_path));
      }
    }
    workers_.push_back(std::move(worker));
  }
  for (auto& worker : workers_) {
    worker->thread = std::thread([this, raw = worker.get()] { worker_loop(*raw); });
  }
  metrics_.queue_depth.labels({"speech"}).set(0);
  metrics_.slots_busy.labels({"speech"}).set(0);
}

WhisperEngine::~WhisperEngine() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    for (auto& job : queue_)
      job->cancelled = true;
    queue_.clear();
  }
  wake_.notify_all();
  for (auto& worker : workers_) {
    if (worker->thread.joinable()) worker->thread.join();
    if (worker->state) whisper_free_state(worker->state);
    if (worker->vad) whisper_vad_free(worker->vad);
  }
  whisper_free(context_);
}

WhisperEngine::Submission WhisperEngine::submit(std::string audio, TranscriptionParams params,
                                                boost::asio::any_io_executor executor) {
  if (!params.language.empty()) {
    if (whisper_lang_id(params.language.c_str()) < 0) {
      throw ApiError::bad_request(
          fmt::format("Unsupported language '{}': use an ISO-639-1 code whisper knows (en, de, fr, zh, ...).",
                      params.language),
          "language", "unsupported_language");
    }
    if (!multilingual_ && params.language != "en") {
      throw ApiError::bad_request(fmt::format("The model '{}' is English-only; it cannot transcribe language '{}'.",
                                              options_.model_id, params.language),
                                  "language", "unsupported_language");
    }
  }
  if (params.translate && !multilingual_) {
    throw ApiError::bad_request(fmt::format("The model '{}' is English-only and cannot translate; use a "
                                            "multilingual whisper model for /v1/audio/translations.",
                                            options_.model_id),
                                "model", "translation_not_supported");
  }
  auto job = std::make_shared<AsrJob>();
  job->audio = std::move(audio);
  job->params = std::move(params);
  job->events = std::make_shared<AsyncChannel<TranscriptionEvent>>(executor);
  {
    std::lock_guard lock(mutex_);
    // A job goes straight to an idle worker; beyond those, max_queue may wait.
    const int idle = std::max(0, static_cast<int>(workers_.size()) - busy_.load());
    if (static_cast<int>(queue_.size()) >= options_.max_queue + idle) {
      throw ApiError::too_many_requests(
          fmt::format("The speech service is at capacity ({} transcriptions running, {} waiting); retry shortly.",
                      busy_.load(), queue_.size()),
          2);
    }
    queue_.push_back(job);
    metrics_.queue_depth.labels({"speech"}).set(static_cast<double>(queue_.size()));
  }
  wake_.notify_one();
  return {job->events, job};
}

void WhisperEngine::cancel(const std::shared_ptr<AsrJob>& job) {
  if (job) job->cancelled = true;
}

void WhisperEngine::worker_loop(Worker& worker) {
  for (;;) {
    std::shared_ptr<AsrJob> job;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
      metrics_.queue_depth.labels({"speech"}).set(static_cast<double>(queue_.size()));
      ++busy_;
    }
    metrics_.slots_busy.labels({"speech"}).set(busy_.load());
    if (!job->cancelled) {
      try {
        run_job(worker, *job);
      } catch (const ApiError& error) {
        TranscriptionEvent event;
        event.kind = TranscriptionEvent::Kind::failed;
        event.error = error;
        job->events->push(std::move(event));
      } catch (const std::exception& error) {
        TranscriptionEvent event;
        event.kind = TranscriptionEvent::Kind::failed;
        event.error = ApiError::internal(fmt::format("Transcription failed: {}", error.what()));
        job->events->push(std::move(event));
      }
    }
    --busy_;
    metrics_.slots_busy.labels({"speech"}).set(busy_.load());
  }
}

void WhisperEngine::run_job(Worker& worker, AsrJob& job) {
  const media::DecodedAudio decoded = media::decode_audio(job.audio, options_.audio_limits, "file");
  std::string().swap(job.audio); // the encoded copy is not needed past this point
  if (job.cancelled) return;

  SpeechOnly speech;
  const std::vector<float>* samples = &decoded.samples;
  if (worker.vad) {
    const auto started = Clock::now();
    speech = keep_speech(worker.vad, decoded.samples);
    samples = &speech.samples;
    metrics_.model_inference_seconds.labels({"speech", options_.model_id, "vad"})
        .observe(std::chrono::duration<double>(Clock::now() - started).count());
  }

  RunContext run;
  run.context = context_;
  run.job = &job;
  run.table = &speech.table;
  run.audio_seconds = decoded.seconds;
  constexpr float kTemperatureIncrement = 0.2f; // whisper's (and OpenAI's) fallback step
  run.ladder = temperature_ladder(job.params.temperature, kTemperatureIncrement);

  whisper_full_params params =
      whisper_full_default_params(options_.beam_size > 1 ? WHISPER_SAMPLING_BEAM_SEARCH : WHISPER_SAMPLING_GREEDY);
  params.beam_search.beam_size = options_.beam_size;
  params.greedy.best_of = options_.best_of;
  params.n_threads = options_.threads;
  params.translate = job.params.translate;
  params.language = job.params.language.empty() ? "auto" : job.params.language.c_str();
  if (!multilingual_) params.language = "en";
  params.initial_prompt = job.params.prompt.empty() ? nullptr : job.params.prompt.c_str();
  params.temperature = job.params.temperature;
  params.temperature_inc = kTemperatureIncrement;
  params.token_timestamps = job.params.word_timestamps;
  params.print_progress = false;
  params.print_realtime = false;
  params.print_timestamps = false;
  params.print_special = false;
  params.encoder_begin_callback = [](whisper_context*, whisper_state*, void* user) {
    auto& run = *static_cast<RunContext*>(user);
    run.attempts = 0;
    return !run.job->cancelled.load();
  };
  params.encoder_begin_callback_user_data = &run;
  // Called once per decoder step; a step with no tokens yet starts a (re)try of the window.
  params.logits_filter_callback = [](whisper_context*, whisper_state*, const whisper_token_data*, int n_tokens, float*,
                                     void* user) {
    auto& run = *static_cast<RunContext*>(user);
    if (n_tokens != 0) return;
    ++run.attempts;
    if (run.ladder[std::min(static_cast<size_t>(run.attempts) - 1, run.ladder.size() - 1)] > 0) run.sampled = true;
  };
  params.logits_filter_callback_user_data = &run;
  params.new_segment_callback = [](whisper_context*, whisper_state* state, int n_new, void* user) {
    auto& run = *static_cast<RunContext*>(user);
    const int total = whisper_full_n_segments_from_state(state);
    for (int i = std::max(run.next_segment, total - n_new); i < total; ++i) {
      TranscriptionEvent event;
      event.segment = segment_of(run, state, i);
      run.job->events->push(std::move(event));
    }
    run.next_segment = total;
  };
  params.new_segment_callback_user_data = &run;
  params.abort_callback = [](void* user) { return static_cast<AsrJob*>(user)->cancelled.load(); };
  params.abort_callback_user_data = &job;

  if (!worker.state) worker.state = whisper_init_state(context_);
  if (!worker.state) throw ApiError::unavailable("The speech engine could not allocate a decoder state.", 5);
  const auto started = Clock::now();
  int rc = 0;
  if (!samples->empty()) {
    rc = whisper_full_with_state(context_, worker.state, params, samples->data(), static_cast<int>(samples->size()));
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  const int language = rc == 0 && !samples->empty() ? whisper_full_lang_id_from_state(worker.state) : -1;
  if (run.sampled || options_.beam_size > 1) {
    // whisper.cpp seeds the first decoder's sampler once per state, and its
    // beam search leaves state behind that changes the next result: a fresh
    // state keeps every request's answer reproducible.
    whisper_free_state(worker.state);
    worker.state = whisper_init_state(context_);
  }
  if (job.cancelled) return;
  if (rc != 0) throw std::runtime_error(fmt::format("whisper_full returned {}", rc));

  const char* phase = job.params.translate ? "translate" : "transcribe";
  metrics_.model_inference_seconds.labels({"speech", options_.model_id, phase}).observe(seconds);
  metrics_.audio_seconds_total.labels({"speech", options_.model_id}).inc(decoded.seconds);
  if (decoded.seconds > 0) {
    metrics_.real_time_factor.labels({"speech", options_.model_id}).observe(seconds / decoded.seconds);
  }

  TranscriptionEvent done;
  done.kind = TranscriptionEvent::Kind::done;
  done.language = language >= 0 ? whisper_lang_str_full(language) : (multilingual_ ? "" : "english");
  if (done.language.empty() && !job.params.language.empty()) {
    const int requested = whisper_lang_id(job.params.language.c_str());
    if (requested >= 0) done.language = whisper_lang_str_full(requested);
  }
  done.audio_seconds = decoded.seconds;
  job.events->push(std::move(done));
  log_event(spdlog::level::debug, "transcription done",
            {{"model", options_.model_id},
             {"audio_seconds", decoded.seconds},
             {"seconds", seconds},
             {"segments", run.next_segment},
             {"queued_seconds", std::chrono::duration<double>(started - job.queued_at).count()}});
}

} // namespace mmserve::asr
