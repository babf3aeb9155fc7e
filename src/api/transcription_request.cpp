#include "api/transcription_request.hpp"
#include "core/text.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>

namespace mmserve::api {
namespace {

std::string trim(std::string_view text) {
  return std::string(text::trim_space(text));
}

bool parse_form_bool(const std::string& text, const std::string& param) {
  const std::string value = text::lowered(trim(text));
  if (value == "true" || value == "1") return true;
  if (value == "false" || value == "0") return false;
  throw ApiError::bad_request(
      fmt::format("Invalid value for '{}': expected a boolean (true or false), got '{}'.", param, text), param,
      "invalid_type");
}

float parse_temperature(const std::string& text) {
  const std::string value = trim(text);
  float parsed = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), parsed);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size() || !std::isfinite(parsed)) {
    throw ApiError::bad_request(fmt::format("Invalid value for 'temperature': expected a number, got '{}'.", text),
                                "temperature", "invalid_type");
  }
  if (parsed < 0 || parsed > 1) {
    throw ApiError::bad_request(fmt::format("Invalid 'temperature': {} is outside the allowed range 0 to 1.", value),
                                "temperature", "invalid_value");
  }
  return parsed;
}

TranscriptFormat parse_format(const std::string& text) {
  const std::string value = trim(text);
  if (value == "json") return TranscriptFormat::json;
  if (value == "text") return TranscriptFormat::text;
  if (value == "srt") return TranscriptFormat::srt;
  if (value == "vtt") return TranscriptFormat::vtt;
  if (value == "verbose_json") return TranscriptFormat::verbose_json;
  throw ApiError::bad_request(
      fmt::format("Invalid 'response_format': '{}'. Supported: json, text, srt, verbose_json, vtt.", text),
      "response_format", "invalid_value");
}

// Seconds rounded to the millisecond, as JSON numbers read well.
double rounded(double seconds) {
  return std::round(seconds * 1000.0) / 1000.0;
}

} // namespace

TranscriptionRequest parse_transcription_request(const MultipartForm& form, bool translation) {
  if (!form.file) {
    throw ApiError::bad_request("You must provide an audio 'file' (a multipart/form-data file part).", "file",
                                "missing_file");
  }
  if (form.file->data.empty()) {
    throw ApiError::bad_request("The uploaded audio 'file' is empty.", "file", "empty_audio");
  }
  TranscriptionRequest request;
  request.params.translate = translation;
  if (auto model = form.field("model")) request.model = trim(*model);
  if (auto format = form.field("response_format")) request.format = parse_format(*format);
  if (auto language = form.field("language")) request.params.language = text::lowered(trim(*language));
  if (auto prompt = form.field("prompt")) request.params.prompt = *prompt;
  if (auto temperature = form.field("temperature")) request.params.temperature = parse_temperature(*temperature);
  if (auto stream = form.field("stream")) request.stream = parse_form_bool(*stream, "stream");

  // Clients send the array as "timestamp_granularities[]" (the SDKs) or without brackets (curl users).
  auto granularities = form.all("timestamp_granularities[]");
  for (auto& value : form.all("timestamp_granularities"))
    granularities.push_back(value);
  for (const auto& raw : granularities) {
    const std::string value = trim(raw);
    if (value == "segment") {
      request.segment_timestamps = true;
    } else if (value == "word") {
      request.word_timestamps = true;
    } else {
      throw ApiError::bad_request(
          fmt::format("Invalid 'timestamp_granularities[]' value '{}': expected 'segment' or 'word'.", raw),
          "timestamp_granularities", "invalid_value");
    }
  }
  if (!granularities.empty() && request.format != TranscriptFormat::verbose_json) {
    throw ApiError::bad_request("'timestamp_granularities[]' needs response_format 'verbose_json'.",
                                "timestamp_granularities", "invalid_value");
  }
  if (granularities.empty()) request.segment_timestamps = true; // verbose_json lists segments by default
  request.params.word_timestamps = request.word_timestamps;
  if (request.stream && request.format != TranscriptFormat::json && request.format != TranscriptFormat::text) {
    throw ApiError::bad_request("'stream' is supported with response_format 'json' or 'text' only.", "stream",
                                "invalid_value");
  }
  return request;
}

std::string transcript_text(const std::vector<asr::Segment>& segments) {
  std::string text;
  for (const auto& segment : segments)
    text += segment.text;
  return trim(text);
}

std::string subtitle_timestamp(double seconds, char decimal_separator) {
  const auto total_ms = static_cast<int64_t>(std::llround(std::max(0.0, seconds) * 1000.0));
  return fmt::format("{:02}:{:02}:{:02}{}{:03}", total_ms / 3'600'000, total_ms / 60'000 % 60, total_ms / 1000 % 60,
                     decimal_separator, total_ms % 1000);
}

std::string render_srt(const std::vector<asr::Segment>& segments) {
  std::string out;
  int index = 1;
  for (const auto& segment : segments) {
    out += fmt::format("{}\n{} --> {}\n{}\n\n", index++, subtitle_timestamp(segment.start, ','),
                       subtitle_timestamp(segment.end, ','), trim(segment.text));
  }
  return out;
}

std::string render_vtt(const std::vector<asr::Segment>& segments) {
  std::string out = "WEBVTT\n\n";
  for (const auto& segment : segments) {
    out += fmt::format("{} --> {}\n{}\n\n", subtitle_timestamp(segment.start, '.'),
                       subtitle_timestamp(segment.end, '.'), trim(segment.text));
  }
  return out;
}

nlohmann::json duration_usage(double audio_seconds) {
  return {{"type", "duration"}, {"seconds", static_cast<int64_t>(std::ceil(audio_seconds))}};
}

nlohmann::json render_json(const Transcript& transcript) {
  return {{"text", transcript_text(transcript.segments)}, {"usage", duration_usage(transcript.audio_seconds)}};
}

nlohmann::json render_verbose_json(const Transcript& transcript, const TranscriptionRequest& request) {
  nlohmann::json body = {{"task", transcript.translation ? "translate" : "transcribe"},
                         {"language", transcript.language},
                         {"duration", rounded(transcript.audio_seconds)},
                         {"text", transcript_text(transcript.segments)}};
  if (request.segment_timestamps) {
    nlohmann::json segments = nlohmann::json::array();
    for (const auto& segment : transcript.segments) {
      segments.push_back({{"id", segment.id},
                          {"seek", segment.seek},
                          {"start", rounded(segment.start)},
                          {"end", rounded(segment.end)},
                          {"text", segment.text},
                          {"tokens", segment.tokens},
                          {"temperature", segment.temperature},
                          {"avg_logprob", segment.avg_logprob},
                          {"compression_ratio", segment.compression_ratio},
                          {"no_speech_prob", segment.no_speech_prob}});
    }
    body["segments"] = std::move(segments);
  }
  if (request.word_timestamps) {
    nlohmann::json words = nlohmann::json::array();
    for (const auto& segment : transcript.segments) {
      for (const auto& word : segment.words)
        words.push_back({{"word", word.text}, {"start", rounded(word.start)}, {"end", rounded(word.end)}});
    }
    body["words"] = std::move(words);
  }
  body["usage"] = duration_usage(transcript.audio_seconds);
  return body;
}

} // namespace mmserve::api
