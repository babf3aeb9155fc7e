// The speech engine: one whisper.cpp model in memory, shared by a pool of
// workers that each own a decoder state (whisper_state), so N transcriptions
// run at once without a global lock. A worker decodes the uploaded audio
// (FFmpeg, off the HTTP threads), optionally keeps only the speech found by
// the Silero VAD, and runs whisper over 30-second windows; segments are
// reported as each window finishes.
#pragma once

#include "core/api_error.hpp"
#include "core/async_channel.hpp"
#include "core/server_metrics.hpp"
#include "media/audio_decode.hpp"

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

struct whisper_context;

namespace mmserve::asr {

struct AsrOptions {
  std::string model_id;
  std::string model_path;
  std::string vad_model_path; // empty: no VAD
  int parallel = 2;           // transcriptions decoded at once (one whisper_state each)
  int max_queue = 32;         // waiting requests before 429
  int threads = 0;            // per transcription; 0: cores / parallel
  int beam_size = 1;          // 1: greedy
  int best_of = 5;
  bool use_gpu = false;
  int gpu_device = 0;
  media::AudioLimits audio_limits;
};

struct TranscriptionParams {
  bool translate = false;
  std::string language; // ISO 639-1 code; empty: detect
  std::string prompt;
  float temperature = 0; // start of whisper's fallback ladder (+0.2 per retry)
  bool word_timestamps = false;
};

struct Word {
  std::string text;
  double start = 0; // seconds
  double end = 0;
};

struct Segment {
  int id = 0;
  int64_t seek = 0; // the window's start, in 10 ms frames (as OpenAI reports it)
  double start = 0; // seconds in the original audio
  double end = 0;
  std::string text;
  std::vector<int> tokens;
  float temperature = 0; // the fallback step that produced this window
  float avg_logprob = 0;
  float compression_ratio = 0;
  float no_speech_prob = 0;
  std::vector<Word> words; // when word timestamps were asked for
};

struct TranscriptionEvent {
  enum class Kind { segment, done, failed };
  Kind kind = Kind::segment;
  Segment segment;               // segment
  std::string language;          // done: the language decoded (full English name, as OpenAI reports it)
  double audio_seconds = 0;      // done
  std::optional<ApiError> error; // failed
};

struct AsrJob;

class WhisperEngine {
public:
  // Loads the model (blocking). Throws std::runtime_error naming the file.
  // `progress` (0..1, may be empty) follows the model file being read.
  WhisperEngine(AsrOptions options, ServerMetrics& metrics, const std::function<void(float)>& progress = {});
  ~WhisperEngine();
  WhisperEngine(const WhisperEngine&) = delete;
  WhisperEngine& operator=(const WhisperEngine&) = delete;

  const AsrOptions& options() const { return options_; }
  bool multilingual() const { return multilingual_; }

  // Checks the parameters against the model and queues the audio bytes
  // (decoded by the worker). Throws ApiError: 400 for a language the model
  // does not know or translation on an English-only model, 429 when full.
  struct Submission {
    std::shared_ptr<AsyncChannel<TranscriptionEvent>> events;
    std::shared_ptr<AsrJob> job;
  };
  Submission submit(std::string audio, TranscriptionParams params, boost::asio::any_io_executor executor);
  // The client went away: whisper stops at its next step.
  static void cancel(const std::shared_ptr<AsrJob>& job);

private:
  struct Worker;
  void worker_loop(Worker& worker);
  void run_job(Worker& worker, AsrJob& job);

  AsrOptions options_;
  ServerMetrics& metrics_;
  whisper_context* context_ = nullptr;
  bool multilingual_ = false;

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<AsrJob>> queue_;
  bool stopping_ = false;
  std::atomic<int> busy_{0};
  std::vector<std::unique_ptr<Worker>> workers_;
};

// whisper's segment times are in 10 ms units; VAD keeps a table from the
// trimmed audio's time to the original's (both in 10 ms units).
struct TimeMapping {
  int64_t processed = 0;
  int64_t original = 0;
};
int64_t map_to_original_time(int64_t processed, const std::vector<TimeMapping>& table);

// gzip-style compression ratio of a text (OpenAI's hallucination signal).
float compression_ratio(const std::string& text);

} // namespace mmserve::asr
