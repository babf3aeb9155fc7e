#include "api/transcription_request.hpp"

#include <gtest/gtest.h>

using namespace mmserve;
using namespace mmserve::api;

namespace {

MultipartForm form_with(std::vector<std::pair<std::string, std::string>> fields, std::string audio = "RIFF....") {
  MultipartForm form;
  form.fields = std::move(fields);
  form.file = FormFile{"file", "a.wav", "audio/wav", std::move(audio)};
  return form;
}

std::string error_param(const MultipartForm& form, bool translation = false, int* status = nullptr) {
  try {
    parse_transcription_request(form, translation);
  } catch (const ApiError& error) {
    if (status) *status = error.status();
    return error.param().value_or("(none)");
  }
  return "(no error)";
}

asr::Segment segment(double start, double end, std::string text) {
  asr::Segment s;
  s.start = start;
  s.end = end;
  s.text = std::move(text);
  return s;
}

} // namespace

TEST(TranscriptionRequest, DefaultsAndFields) {
  const auto request = parse_transcription_request(form_with({}), false);
  EXPECT_EQ(request.format, TranscriptFormat::json);
  EXPECT_FALSE(request.stream);
  EXPECT_FALSE(request.params.translate);
  EXPECT_TRUE(request.params.language.empty());

  const auto full = parse_transcription_request(form_with({{"model", " whisper-1 "},
                                                           {"language", "DE"},
                                                           {"prompt", "Glossary: ggml"},
                                                           {"temperature", "0.4"},
                                                           {"response_format", "verbose_json"},
                                                           {"timestamp_granularities[]", "word"}}),
                                                true);
  EXPECT_EQ(full.model, "whisper-1");
  EXPECT_EQ(full.params.language, "de");
  EXPECT_EQ(full.params.prompt, "Glossary: ggml");
  EXPECT_FLOAT_EQ(full.params.temperature, 0.4f);
  EXPECT_TRUE(full.params.translate);
  EXPECT_TRUE(full.word_timestamps);
  EXPECT_TRUE(full.params.word_timestamps);
  EXPECT_FALSE(full.segment_timestamps); // only what was asked for
}

TEST(TranscriptionRequest, BadFieldsNameTheirParam) {
  MultipartForm no_file;
  EXPECT_EQ(error_param(no_file), "file");
  EXPECT_EQ(error_param(form_with({}, "")), "file");
  int status = 0;
  EXPECT_EQ(error_param(form_with({{"response_format", "xml"}}), false, &status), "response_format");
  EXPECT_EQ(status, 400);
  EXPECT_EQ(error_param(form_with({{"temperature", "hot"}})), "temperature");
  EXPECT_EQ(error_param(form_with({{"temperature", "1.5"}})), "temperature");
  EXPECT_EQ(error_param(form_with({{"temperature", "nan"}})), "temperature");
  EXPECT_EQ(error_param(form_with({{"stream", "maybe"}})), "stream");
  EXPECT_EQ(error_param(form_with({{"timestamp_granularities[]", "sentence"}, {"response_format", "verbose_json"}})),
            "timestamp_granularities");
  EXPECT_EQ(error_param(form_with({{"timestamp_granularities[]", "word"}})), "timestamp_granularities");
  EXPECT_EQ(error_param(form_with({{"stream", "true"}, {"response_format", "srt"}})), "stream");
  EXPECT_EQ(error_param(form_with({{"stream", "true"}, {"response_format", "text"}})), "(no error)");
}

TEST(TranscriptFormats, SubtitleTimestamps) {
  EXPECT_EQ(subtitle_timestamp(0, ','), "00:00:00,000");
  EXPECT_EQ(subtitle_timestamp(3725.5, ','), "01:02:05,500");
  EXPECT_EQ(subtitle_timestamp(59.9996, '.'), "00:01:00.000");
  EXPECT_EQ(subtitle_timestamp(-1, '.'), "00:00:00.000");
}

TEST(TranscriptFormats, SrtVttAndText) {
  const std::vector<asr::Segment> segments = {segment(0, 2.5, " And so my fellow Americans,"),
                                              segment(2.5, 11, " ask not what your country can do for you.")};
  EXPECT_EQ(render_srt(segments), "1\n00:00:00,000 --> 00:00:02,500\nAnd so my fellow Americans,\n\n"
                                  "2\n00:00:02,500 --> 00:00:11,000\nask not what your country can do for you.\n\n");
  EXPECT_EQ(render_vtt(segments), "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nAnd so my fellow Americans,\n\n"
                                  "00:00:02.500 --> 00:00:11.000\nask not what your country can do for you.\n\n");
  EXPECT_EQ(transcript_text(segments), "And so my fellow Americans, ask not what your country can do for you.");
}

TEST(TranscriptFormats, VerboseJsonCarriesSegmentsWordsAndUsage) {
  Transcript transcript;
  transcript.segments = {segment(0, 1.25, " Hello world")};
  transcript.segments[0].words = {{"Hello", 0, 0.5}, {"world", 0.5, 1.25}};
  transcript.segments[0].tokens = {50364, 2425, 1002};
  transcript.segments[0].avg_logprob = -0.25f;
  transcript.language = "english";
  transcript.audio_seconds = 1.25;
  TranscriptionRequest request;
  request.format = TranscriptFormat::verbose_json;
  request.segment_timestamps = true;
  request.word_timestamps = true;
  const auto body = render_verbose_json(transcript, request);
  EXPECT_EQ(body["task"], "transcribe");
  EXPECT_EQ(body["language"], "english");
  EXPECT_DOUBLE_EQ(body["duration"].get<double>(), 1.25);
  EXPECT_EQ(body["text"], "Hello world");
  ASSERT_EQ(body["segments"].size(), 1u);
  for (const char* key : {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                          "compression_ratio", "no_speech_prob"}) {
    EXPECT_TRUE(body["segments"][0].contains(key)) << key;
  }
  ASSERT_EQ(body["words"].size(), 2u);
  EXPECT_EQ(body["words"][1]["word"], "world");
  EXPECT_EQ(body["usage"]["type"], "duration");
  EXPECT_EQ(body["usage"]["seconds"], 2);
  request.word_timestamps = false;
  EXPECT_FALSE(render_verbose_json(transcript, request).contains("words"));
}

TEST(WhisperEngineHelpers, CompressionRatioFlagsRepetition) {
  EXPECT_EQ(asr::compression_ratio(""), 0);
  const float prose = asr::compression_ratio(" And so my fellow Americans, ask not what your country can do for you.");
  std::string loop;
  for (int i = 0; i < 40; ++i)
    loop += " thank you";
  const float repeated = asr::compression_ratio(loop);
  EXPECT_LT(prose, 2.4f); // whisper's hallucination threshold
  EXPECT_GT(repeated, 2.4f);
}

TEST(WhisperEngineHelpers, VadTimesMapBackToTheOriginal) {
  // Speech at 1.00-2.00 s and 5.00-6.00 s, joined with 0.1 s of silence.
  const std::vector<asr::TimeMapping> table = {{0, 100}, {100, 200}, {110, 500}, {210, 600}};
  EXPECT_EQ(asr::map_to_original_time(0, table), 100);
  EXPECT_EQ(asr::map_to_original_time(50, table), 150);
  EXPECT_EQ(asr::map_to_original_time(105, table), 350); // inside the inserted silence
  EXPECT_EQ(asr::map_to_original_time(160, table), 550);
  EXPECT_EQ(asr::map_to_original_time(999, table), 600);
  EXPECT_EQ(asr::map_to_original_time(42, {}), 42);
}
