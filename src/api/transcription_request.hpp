// OpenAI's /v1/audio/transcriptions and /v1/audio/translations: the form
// fields checked into engine parameters, and the transcript rendered in each
// response_format (json, text, srt, vtt, verbose_json) or as SSE events.
#pragma once

#include "api/multipart_form.hpp"
#include "engines/asr/whisper_engine.hpp"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace mmserve::api {

enum class TranscriptFormat { json, text, srt, vtt, verbose_json };

struct TranscriptionRequest {
  std::string model; // empty: the loaded model
  TranscriptFormat format = TranscriptFormat::json;
  asr::TranscriptionParams params;
  bool stream = false;
  bool segment_timestamps = false; // timestamp_granularities[] has "segment"
  bool word_timestamps = false;    // ... has "word"
};

// Throws ApiError 400 naming the field (param) for every bad value.
TranscriptionRequest parse_transcription_request(const MultipartForm& form, bool translation);

struct Transcript {
  std::vector<asr::Segment> segments;
  std::string language;
  double audio_seconds = 0;
  bool translation = false;
};

// The transcript's text: the segments joined, surrounding blanks trimmed.
std::string transcript_text(const std::vector<asr::Segment>& segments);

// "00:01:02,345" (SRT) or "00:01:02.345" (VTT).
std::string subtitle_timestamp(double seconds, char decimal_separator);
std::string render_srt(const std::vector<asr::Segment>& segments);
std::string render_vtt(const std::vector<asr::Segment>& segments);

nlohmann::json render_json(const Transcript& transcript);
nlohmann::json render_verbose_json(const Transcript& transcript, const TranscriptionRequest& request);
// {"type":"duration","seconds":N}: OpenAI bills audio by whole seconds.
nlohmann::json duration_usage(double audio_seconds);

} // namespace mmserve::api
