// The speech service over real sockets: multipart uploads in every listed
// container (made with Debian's ffmpeg and espeak-ng at test time), every
// response format, streaming, VAD, bad inputs, and parity with whisper.cpp's
// own CLI on the same model, audio and parameters.
#include "test_server.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <future>
#include <regex>
#include <thread>

using namespace mmserve::test;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string shared_dir(const char* variable, const char* leaf) {
  const char* env = std::getenv(variable);
  return env && *env ? env : std::string(MMSERVE_SOURCE_DIR) + "/../shared/" + leaf;
}
std::string media_dir() {
  return shared_dir("MMSERVE_TEST_MEDIA", "media");
}
std::string models_dir() {
  return shared_dir("MMSERVE_TEST_MODELS", "models");
}

#define REQUIRE_FILE(path)                                                                                             \
  if (!fs::exists(path)) GTEST_SKIP() << "test file absent, skipping: " << (path)

int shell(const std::string& command) {
  return std::system((command + " >/dev/null 2>&1").c_str());
}

const std::string kBoundary = "mmserveTestBoundary0123456789";

// A multipart/form-data body: text fields, then the file part.
std::string multipart(const std::vector<std::pair<std::string, std::string>>& fields, const std::string& file,
                      const std::string& filename = "audio.wav") {
  std::string body;
  for (const auto& [name, value] : fields) {
    body += "--" + kBoundary + "\r\nContent-Disposition: form-data; name=\"" + name + "\"\r\n\r\n" + value + "\r\n";
  }
  body += "--" + kBoundary + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + filename +
          "\"\r\nContent-Type: application/octet-stream\r\n\r\n" + file + "\r\n--" + kBoundary + "--\r\n";
  return body;
}

Response transcribe(uint16_t port, const std::string& audio,
                    const std::vector<std::pair<std::string, std::string>>& fields = {},
                    const std::string& path = "/v1/audio/transcriptions", const std::string& filename = "audio.wav") {
  return request(port, "POST", path, multipart(fields, audio, filename),
                 {{"Content-Type", "multipart/form-data; boundary=" + kBoundary}});
}

// Fixtures shared by the suite: jfk.mp3 as 16 kHz mono wav, and one short
// espeak-ng sentence, made once per run. 32-bit float wav: whisper.cpp's CLI
// (miniaudio) scales 16-bit samples differently from FFmpeg, float passes
// through both unchanged, so both engines see the same samples.
struct Fixtures {
  std::string dir;
  std::string jfk_wav;   // 11 s of real speech
  std::string short_wav; // ~2 s of synthetic speech with known text
  bool ok = false;
};

Fixtures& fixtures() {
  static Fixtures made = [] {
    Fixtures f;
    f.dir = make_temp_dir("mmserve-speech");
    f.jfk_wav = f.dir + "/jfk.wav";
    f.short_wav = f.dir + "/short.wav";
    const std::string jfk = media_dir() + "/jfk.mp3";
    f.ok = fs::exists(jfk) && shell("command -v ffmpeg") == 0 && shell("command -v espeak-ng") == 0 &&
           shell("ffmpeg -nostdin -y -i '" + jfk + "' -ar 16000 -ac 1 -c:a pcm_f32le '" + f.jfk_wav + "'") == 0 &&
           shell("espeak-ng -w '" + f.dir + "/espeak.wav' 'The quick brown fox jumps over the lazy dog.'") == 0 &&
           shell("ffmpeg -nostdin -y -i '" + f.dir + "/espeak.wav' -ar 16000 -ac 1 -c:a pcm_f32le '" + f.short_wav +
                 "'") == 0;
    return f;
  }();
  return made;
}

#define REQUIRE_FIXTURES()                                                                                             \
  REQUIRE_FILE(TINY_WHISPER);                                                                                          \
  if (!fixtures().ok) GTEST_SKIP() << "ffmpeg, espeak-ng or ../shared/media/jfk.mp3 missing: no audio fixtures"

std::string speech_config(const std::string& model, const std::string& extra = "") {
  return "vision:\n  enabled: false\nimage:\n  enabled: false\nspeech:\n  model_path: " + model +
         "\n  threads: 2\n  parallel: 2\n" + extra;
}

// Waits until /readyz says every model is loaded.
void wait_ready(uint16_t port) {
  for (int i = 0; i < 600; ++i) {
    if (request(port, "GET", "/readyz").status == 200) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  FAIL() << "the speech model did not load";
}

// SRT: numbered cues "HH:MM:SS,mmm --> HH:MM:SS,mmm" + text + blank line, in order.
std::vector<std::string> srt_cue_texts(const std::string& srt) {
  static const std::regex cue(
      R"((\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)\n([^\n]*)\n\n)");
  std::vector<std::string> texts;
  double last_end = 0;
  auto begin = std::sregex_iterator(srt.begin(), srt.end(), cue);
  size_t covered = 0;
  for (auto it = begin; it != std::sregex_iterator(); ++it) {
    const auto& m = *it;
    EXPECT_EQ(static_cast<size_t>(m.position()), covered) << "unexpected bytes between SRT cues";
    covered = m.position() + m.length();
    EXPECT_EQ(std::stoi(m[1]), static_cast<int>(texts.size()) + 1);
    const double start = std::stoi(m[2]) * 3600 + std::stoi(m[3]) * 60 + std::stoi(m[4]) + std::stoi(m[5]) / 1000.0;
    const double end = std::stoi(m[6]) * 3600 + std::stoi(m[7]) * 60 + std::stoi(m[8]) + std::stoi(m[9]) / 1000.0;
    EXPECT_LE(start, end);
    EXPECT_GE(start + 1e-9, last_end - 1.0); // cues never run backwards
    last_end = end;
    texts.push_back(m[10]);
  }
  EXPECT_EQ(covered, srt.size()) << "trailing bytes after the last SRT cue";
  return texts;
}

std::vector<std::string> vtt_cue_texts(const std::string& vtt) {
  EXPECT_TRUE(vtt.starts_with("WEBVTT\n\n")) << vtt.substr(0, 40);
  static const std::regex cue(R"((\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)\n([^\n]*)\n\n)");
  std::vector<std::string> texts;
  size_t covered = 8;
  const std::string body = vtt;
  for (auto it = std::sregex_iterator(body.begin() + 8, body.end(), cue); it != std::sregex_iterator(); ++it) {
    EXPECT_EQ(static_cast<size_t>(it->position()) + 8, covered);
    covered = it->position() + 8 + it->length();
    texts.push_back((*it)[9]);
  }
  EXPECT_EQ(covered, vtt.size());
  return texts;
}

std::string join_trimmed(const std::vector<std::string>& pieces) {
  std::string out;
  for (const auto& piece : pieces) {
    if (piece.empty()) continue;
    if (!out.empty()) out += ' ';
    out += piece;
  }
  return out;
}

// Subtitle cues are trimmed, so the words are compared without the blanks between segments.
std::string without_blanks(std::string text) {
  std::erase(text, ' ');
  return text;
}

std::string trim(std::string text) {
  text.erase(0, text.find_first_not_of(" \n"));
  text.erase(text.find_last_not_of(" \n") + 1);
  return text;
}

// whisper.cpp's CLI on the same model and audio: its JSON output's segments.
// mmserve decodes greedily by default (speech.beam_size 1), the CLI with 5 beams: -bs 1 unless asked.
json whisper_cli_segments(const std::string& model, const std::string& wav, std::string extra_args) {
  if (extra_args.find("-bs ") == std::string::npos) extra_args += " -bs 1";
  const std::string out = fixtures().dir + "/cli-" + std::to_string(std::hash<std::string>{}(wav + extra_args));
  const std::string command = std::string(WHISPER_CLI) + " -m '" + model + "' -f '" + wav + "' -t 2 -np -oj -of '" +
                              out + "' " + extra_args + " > '" + out + ".log' 2>&1";
  EXPECT_EQ(std::system(command.c_str()), 0) << read_file(out + ".log");
  return json::parse(read_file(out + ".json"))["transcription"];
}

// mmserve clamps timestamps to the audio's end (whisper's last one can overshoot it).
void expect_same_segments(const json& cli, const json& ours, double duration) {
  ASSERT_EQ(ours.size(), cli.size()) << "cli: " << cli.dump() << "\nmmserve: " << ours.dump();
  for (size_t i = 0; i < cli.size(); ++i) {
    EXPECT_EQ(ours[i]["text"].get<std::string>(), cli[i]["text"].get<std::string>()) << "segment " << i;
    const long limit = std::lround(duration * 1000);
    EXPECT_EQ(std::lround(ours[i]["start"].get<double>() * 1000),
              std::min(cli[i]["offsets"]["from"].get<long>(), limit))
        << "segment " << i;
    EXPECT_EQ(std::lround(ours[i]["end"].get<double>() * 1000), std::min(cli[i]["offsets"]["to"].get<long>(), limit))
        << "segment " << i;
  }
}

class Speech : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    if (!fs::exists(TINY_WHISPER) || !fixtures().ok) return;
    server_ = new ServerProcess(speech_config(TINY_WHISPER));
    wait_ready(server_->port());
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    REQUIRE_FIXTURES();
    ASSERT_NE(server_, nullptr) << "the shared speech server did not start";
  }
  uint16_t port() const { return server_->port(); }
  static ServerProcess* server_;
};
ServerProcess* Speech::server_ = nullptr;

TEST_F(Speech, EveryResponseFormatCarriesTheSameTranscript) {
  const std::string audio = read_file(fixtures().jfk_wav);
  const auto verbose = transcribe(port(), audio, {{"response_format", "verbose_json"}, {"language", "en"}});
  ASSERT_EQ(verbose.status, 200) << verbose.body;
  const json body = json::parse(verbose.body);
  EXPECT_EQ(body["task"], "transcribe");
  EXPECT_EQ(body["language"], "english");
  EXPECT_NEAR(body["duration"].get<double>(), 11.0, 0.1);
  EXPECT_EQ(body["usage"], json({{"type", "duration"}, {"seconds", 11}})); // whole seconds, rounded up
  const std::string text = body["text"];
  ASSERT_FALSE(body["segments"].empty());
  std::vector<std::string> segment_texts;
  double last_start = -1;
  for (const auto& segment : body["segments"]) {
    EXPECT_LE(segment["start"].get<double>(), segment["end"].get<double>());
    EXPECT_GE(segment["start"].get<double>(), last_start);
    EXPECT_LE(segment["end"].get<double>(), body["duration"].get<double>());
    last_start = segment["start"];
    EXPECT_FALSE(segment["tokens"].empty());
    EXPECT_LE(segment["avg_logprob"].get<double>(), 0.0);
    EXPECT_GE(segment["no_speech_prob"].get<double>(), 0.0);
    EXPECT_LE(segment["no_speech_prob"].get<double>(), 1.0);
    EXPECT_GT(segment["compression_ratio"].get<double>(), 0.0);
    EXPECT_GE(segment["temperature"].get<double>(), 0.0);
    segment_texts.push_back(segment["text"]);
  }
  std::string joined;
  for (const auto& piece : segment_texts)
    joined += piece;
  EXPECT_EQ(trim(joined), text);

  const auto as_json = transcribe(port(), audio, {{"language", "en"}});
  ASSERT_EQ(as_json.status, 200) << as_json.body;
  EXPECT_EQ(json::parse(as_json.body)["text"], text);
  EXPECT_TRUE(as_json.header("content-type").starts_with("application/json"));

  const auto as_text = transcribe(port(), audio, {{"response_format", "text"}, {"language", "en"}});
  ASSERT_EQ(as_text.status, 200);
  EXPECT_EQ(as_text.body, text + "\n");
  EXPECT_TRUE(as_text.header("content-type").starts_with("text/plain"));

  const auto as_srt = transcribe(port(), audio, {{"response_format", "srt"}, {"language", "en"}});
  ASSERT_EQ(as_srt.status, 200);
  EXPECT_EQ(without_blanks(join_trimmed(srt_cue_texts(as_srt.body))), without_blanks(text));

  const auto as_vtt = transcribe(port(), audio, {{"response_format", "vtt"}, {"language", "en"}});
  ASSERT_EQ(as_vtt.status, 200);
  EXPECT_TRUE(as_vtt.header("content-type").starts_with("text/vtt"));
  EXPECT_EQ(without_blanks(join_trimmed(vtt_cue_texts(as_vtt.body))), without_blanks(text));
}

TEST_F(Speech, SegmentsMatchWhisperCppCli) {
  const auto response =
      transcribe(port(), read_file(fixtures().jfk_wav), {{"response_format", "verbose_json"}, {"language", "en"}});
  ASSERT_EQ(response.status, 200) << response.body;
  const json body = json::parse(response.body);
  expect_same_segments(whisper_cli_segments(TINY_WHISPER, fixtures().jfk_wav, "-l en"), body["segments"],
                       body["duration"]);
}

TEST_F(Speech, PromptAndTemperatureMatchWhisperCppCli) {
  const auto response = transcribe(
      port(), read_file(fixtures().short_wav),
      {{"response_format", "verbose_json"}, {"language", "en"}, {"prompt", "Foxes and dogs."}, {"temperature", "0.4"}});
  ASSERT_EQ(response.status, 200) << response.body;
  const json body = json::parse(response.body);
  expect_same_segments(
      whisper_cli_segments(TINY_WHISPER, fixtures().short_wav, "-l en --prompt 'Foxes and dogs.' -tp 0.4"),
      body["segments"], body["duration"]);
  // The same request again answers the same (sampling restarts from its seed).
  const auto again = transcribe(
      port(), read_file(fixtures().short_wav),
      {{"response_format", "verbose_json"}, {"language", "en"}, {"prompt", "Foxes and dogs."}, {"temperature", "0.4"}});
  EXPECT_EQ(json::parse(again.body)["segments"], json::parse(response.body)["segments"]);
}

TEST(SpeechBeamSearch, MatchesWhisperCppCliAndRepeatsItself) {
  REQUIRE_FIXTURES();
  ServerProcess server(speech_config(TINY_WHISPER, "  beam_size: 5\n"));
  wait_ready(server.port());
  const std::string audio = read_file(fixtures().jfk_wav);
  const auto first = transcribe(server.port(), audio, {{"response_format", "verbose_json"}, {"language", "en"}});
  ASSERT_EQ(first.status, 200) << first.body;
  const auto second = transcribe(server.port(), audio, {{"response_format", "verbose_json"}, {"language", "en"}});
  EXPECT_EQ(second.body, first.body);
  const json body = json::parse(first.body);
  expect_same_segments(whisper_cli_segments(TINY_WHISPER, fixtures().jfk_wav, "-l en -bs 5 -bo 5"), body["segments"],
                       body["duration"]);
}

TEST_F(Speech, WordTimestampsLieInsideTheirSegments) {
  const auto response = transcribe(port(), read_file(fixtures().jfk_wav),
                                   {{"response_format", "verbose_json"},
                                    {"timestamp_granularities[]", "word"},
                                    {"timestamp_granularities[]", "segment"}});
  ASSERT_EQ(response.status, 200) << response.body;
  const json body = json::parse(response.body);
  ASSERT_TRUE(body.contains("words"));
  ASSERT_TRUE(body.contains("segments"));
  std::vector<std::string> words;
  for (const auto& word : body["words"]) {
    EXPECT_LE(word["start"].get<double>(), word["end"].get<double>());
    EXPECT_LE(word["end"].get<double>(), 11.1);
    EXPECT_EQ(word["word"].get<std::string>().find(' '), std::string::npos) << word.dump();
    words.push_back(word["word"]);
  }
  // The words spell the text (whitespace aside).
  std::string text = body["text"];
  std::erase(text, ' ');
  std::string spelled;
  for (auto& word : words)
    spelled += word;
  EXPECT_EQ(spelled, text);
}

TEST_F(Speech, StreamSendsDeltasThenTheWholeText) {
  const std::string audio = read_file(fixtures().jfk_wav);
  const auto whole = transcribe(port(), audio);
  ASSERT_EQ(whole.status, 200);
  const auto streamed = transcribe(port(), audio, {{"stream", "true"}});
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  EXPECT_TRUE(streamed.header("content-type").starts_with("text/event-stream"));
  std::string deltas;
  json done;
  size_t start = 0;
  while ((start = streamed.body.find("data: ", start)) != std::string::npos) {
    const size_t end = streamed.body.find("\n\n", start);
    const json event = json::parse(streamed.body.substr(start + 6, end - start - 6));
    start = end;
    ASSERT_TRUE(done.is_null()) << "event after transcript.text.done";
    if (event["type"] == "transcript.text.delta") {
      deltas += event["delta"].get<std::string>();
    } else {
      ASSERT_EQ(event["type"], "transcript.text.done");
      done = event;
    }
  }
  ASSERT_FALSE(done.is_null());
  EXPECT_EQ(done["text"], deltas);
  EXPECT_EQ(trim(deltas), json::parse(whole.body)["text"]);
  EXPECT_EQ(done["usage"]["seconds"], 11);
}

TEST_F(Speech, EveryListedContainerDecodes) {
  struct Container {
    const char* name;
    const char* args;
  };
  const Container containers[] = {{"wav", "-c:a pcm_s16le -ar 44100 -ac 2"},
                                  {"mp3", "-c:a libmp3lame"},
                                  {"flac", "-c:a flac"},
                                  {"ogg", "-c:a libvorbis"},
                                  {"opus", "-c:a libopus"},
                                  {"m4a", "-c:a aac"},
                                  {"mp4", "-c:a aac"},
                                  {"webm", "-c:a libopus"},
                                  {"mpeg", "-c:a mp2 -f mpeg"},
                                  {"mpga", "-c:a mp2 -f mp2"},
                                  {"aac", "-c:a aac -f adts"}};
  for (const auto& container : containers) {
    const std::string path = fixtures().dir + "/clip." + container.name;
    ASSERT_EQ(shell("ffmpeg -nostdin -y -i '" + fixtures().short_wav + "' " + container.args + " '" + path + "'"), 0)
        << container.name;
    const auto response = transcribe(port(), read_file(path), {{"response_format", "verbose_json"}},
                                     "/v1/audio/transcriptions", std::string("clip.") + container.name);
    ASSERT_EQ(response.status, 200) << container.name << ": " << response.body;
    const json body = json::parse(response.body);
    EXPECT_NEAR(body["duration"].get<double>(), 2.6, 0.7) << container.name;
  }
}

TEST_F(Speech, ConcurrentRequestsAnswerAsIfAlone) {
  const std::string jfk = read_file(fixtures().jfk_wav);
  const std::string fox = read_file(fixtures().short_wav);
  const std::string jfk_alone = transcribe(port(), jfk).body;
  const std::string fox_alone = transcribe(port(), fox).body;
  std::vector<std::future<Response>> running;
  for (int i = 0; i < 4; ++i) {
    running.push_back(std::async(std::launch::async, [&, i] { return transcribe(port(), i % 2 == 0 ? jfk : fox); }));
  }
  for (int i = 0; i < 4; ++i) {
    const auto response = running[i].get();
    ASSERT_EQ(response.status, 200) << response.body;
    EXPECT_EQ(response.body, i % 2 == 0 ? jfk_alone : fox_alone) << "request " << i;
  }
}

TEST_F(Speech, MetricsCountAudioAndInference) {
  ASSERT_EQ(transcribe(port(), read_file(fixtures().short_wav)).status, 200);
  const std::string metrics = request(port(), "GET", "/metrics").body;
  EXPECT_NE(metrics.find("model_inference_seconds_count{service=\"speech\",model=\"tiny-whisper-random\","
                         "phase=\"transcribe\"}"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("mmserve_audio_seconds_total{service=\"speech\""), std::string::npos);
  EXPECT_NE(metrics.find("mmserve_real_time_factor_count{service=\"speech\""), std::string::npos);
  EXPECT_NE(metrics.find("mmserve_queue_depth{service=\"speech\"} 0"), std::string::npos);
}

TEST_F(Speech, BadRequestsAreClearErrorsAndServingGoesOn) {
  struct Case {
    std::string name;
    Response response;
    unsigned status;
    std::string param;
  };
  const std::string wav = read_file(fixtures().short_wav);
  std::vector<Case> cases;
  cases.push_back({"no file",
                   request(port(), "POST", "/v1/audio/transcriptions",
                           "--" + kBoundary +
                               "\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n"
                               "whisper-1\r\n--" +
                               kBoundary + "--\r\n",
                           {{"Content-Type", "multipart/form-data; boundary=" + kBoundary}}),
                   400, "file"});
  cases.push_back({"empty file", transcribe(port(), ""), 400, "file"});
  cases.push_back({"text as audio", transcribe(port(), "this is not audio at all, just text\n"), 415, "file"});
  cases.push_back(
      {"png as audio", transcribe(port(), std::string("\x89PNG\r\n\x1a\n", 8) + std::string(200, '\0')), 415, "file"});
  cases.push_back(
      {"json body",
       request(port(), "POST", "/v1/audio/transcriptions", R"({"file":"x"})", {{"Content-Type", "application/json"}}),
       415, ""});
  cases.push_back({"no boundary",
                   request(port(), "POST", "/v1/audio/transcriptions", "x", {{"Content-Type", "multipart/form-data"}}),
                   400, ""});
  cases.push_back({"truncated body",
                   request(port(), "POST", "/v1/audio/transcriptions", multipart({}, wav).substr(0, 500),
                           {{"Content-Type", "multipart/form-data; boundary=" + kBoundary}}),
                   400, ""});
  cases.push_back({"bad format", transcribe(port(), wav, {{"response_format", "xml"}}), 400, "response_format"});
  cases.push_back({"bad temperature", transcribe(port(), wav, {{"temperature", "hot"}}), 400, "temperature"});
  cases.push_back({"bad language", transcribe(port(), wav, {{"language", "xx"}}), 400, "language"});
  cases.push_back({"bad stream", transcribe(port(), wav, {{"stream", "yes please"}}), 400, "stream"});
  cases.push_back({"unknown model", transcribe(port(), wav, {{"model", "whisper-9"}}), 404, ""});
  cases.push_back({"granularity without verbose_json", transcribe(port(), wav, {{"timestamp_granularities[]", "word"}}),
                   400, "timestamp_granularities"});
  for (const auto& c : cases) {
    EXPECT_EQ(c.response.status, c.status) << c.name << ": " << c.response.body;
    const json body = json::parse(c.response.body, nullptr, false);
    ASSERT_TRUE(body.contains("error")) << c.name << ": " << c.response.body;
    EXPECT_FALSE(body["error"]["message"].get<std::string>().empty());
    if (!c.param.empty()) EXPECT_EQ(body["error"]["param"], c.param) << c.name;
  }
  // "whisper-1" (what OpenAI clients send) names the loaded model.
  EXPECT_EQ(transcribe(port(), wav, {{"model", "whisper-1"}}).status, 200);
  EXPECT_EQ(transcribe(port(), wav, {{"model", "tiny-whisper-random"}}).status, 200);
}

TEST_F(Speech, MultilingualModelDetectsLanguageAndTranslates) {
  const auto response = transcribe(port(), read_file(fixtures().short_wav), {{"response_format", "verbose_json"}},
                                   "/v1/audio/translations");
  ASSERT_EQ(response.status, 200) << response.body;
  const json body = json::parse(response.body);
  EXPECT_EQ(body["task"], "translate");
  EXPECT_FALSE(body["language"].get<std::string>().empty());
}

TEST(SpeechLimits, AudioTooLargeOrTooLongIsRefused) {
  REQUIRE_FIXTURES();
  ServerProcess server(speech_config(TINY_WHISPER, "  max_audio_size: 300k\n  max_audio_duration: 5s\n"));
  wait_ready(server.port());
  const auto large = transcribe(server.port(), read_file(fixtures().jfk_wav)); // 704 kB
  EXPECT_EQ(large.status, 413) << large.body;
  const std::string long_mp3 = fixtures().dir + "/long.mp3";
  ASSERT_EQ(
      shell("ffmpeg -nostdin -y -f lavfi -i anullsrc=r=8000:cl=mono -t 60 -c:a libmp3lame -b:a 8k '" + long_mp3 + "'"),
      0);
  const auto too_long = transcribe(server.port(), read_file(long_mp3), {}, "/v1/audio/transcriptions", "long.mp3");
  EXPECT_EQ(too_long.status, 400) << too_long.body;
  EXPECT_EQ(json::parse(too_long.body)["error"]["code"], "audio_too_long");
  EXPECT_EQ(transcribe(server.port(), read_file(fixtures().short_wav)).status, 200);
}

TEST(SpeechEnglishOnly, RefusesOtherLanguagesAndTranslation) {
  REQUIRE_FILE(TINY_WHISPER_EN);
  if (!fixtures().ok) GTEST_SKIP() << "no audio fixtures";
  ServerProcess server(speech_config(TINY_WHISPER_EN));
  wait_ready(server.port());
  const std::string wav = read_file(fixtures().short_wav);
  const auto german = transcribe(server.port(), wav, {{"language", "de"}});
  EXPECT_EQ(german.status, 400) << german.body;
  const auto translation = transcribe(server.port(), wav, {}, "/v1/audio/translations");
  EXPECT_EQ(translation.status, 400) << translation.body;
  const auto english = transcribe(server.port(), wav, {{"response_format", "verbose_json"}});
  ASSERT_EQ(english.status, 200) << english.body;
  EXPECT_EQ(json::parse(english.body)["language"], "english");
  const json body = json::parse(english.body);
  expect_same_segments(whisper_cli_segments(TINY_WHISPER_EN, fixtures().short_wav, ""), body["segments"],
                       body["duration"]);
}

TEST(SpeechVad, KeepsOnlySpeechLikeWhisperCppCli) {
  REQUIRE_FIXTURES();
  const std::string vad = models_dir() + "/silero-vad-v6.2.0-ggml.bin";
  REQUIRE_FILE(vad);
  // 3 s of silence, the speech, 4 s of silence.
  const std::string padded = fixtures().dir + "/padded.wav";
  ASSERT_EQ(shell("ffmpeg -nostdin -y -i '" + fixtures().jfk_wav +
                  "' -af 'adelay=3000:all=1,apad=pad_dur=4' -ar 16000 -ac 1 -c:a pcm_f32le '" + padded + "'"),
            0);
  ServerProcess server(speech_config(TINY_WHISPER, "  vad_model_path: " + vad + "\n"));
  wait_ready(server.port());
  const auto response =
      transcribe(server.port(), read_file(padded), {{"response_format", "verbose_json"}, {"language", "en"}});
  ASSERT_EQ(response.status, 200) << response.body;
  const json body = json::parse(response.body);
  EXPECT_NEAR(body["duration"].get<double>(), 18.0, 0.2);
  ASSERT_FALSE(body["segments"].empty());
  EXPECT_GE(body["segments"][0]["start"].get<double>(), 2.5); // the leading silence is skipped
  expect_same_segments(whisper_cli_segments(TINY_WHISPER, padded, "-l en --vad -vm '" + vad + "'"), body["segments"],
                       body["duration"]);
}

TEST(SpeechCancel, ClientThatLeavesFreesTheWorker) {
  REQUIRE_FIXTURES();
  ServerProcess server("vision:\n  enabled: false\nimage:\n  enabled: false\nspeech:\n  model_path: " +
                       std::string(TINY_WHISPER) + "\n  parallel: 1\n  threads: 2\n");
  wait_ready(server.port());
  // Ten minutes of noise keep the only worker busy for long.
  const std::string noise = fixtures().dir + "/noise.flac";
  ASSERT_EQ(shell("ffmpeg -nostdin -y -f lavfi -i anoisesrc=r=16000:a=0.3:d=600 -c:a flac '" + noise + "'"), 0);
  {
    Connection connection(server.port());
    const std::string body = multipart({}, read_file(noise), "noise.flac");
    connection.send_raw("POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                        "boundary=" +
                        kBoundary + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    std::this_thread::sleep_for(std::chrono::seconds(2)); // decoding under way
  }                                                       // the client leaves
  const auto response = transcribe(server.port(), read_file(fixtures().short_wav));
  EXPECT_EQ(response.status, 200) << response.body;
  // The single worker took the short clip only after the abandoned job
  // stopped: had it run to its end, its 600 s would be counted.
  const std::string metrics = request(server.port(), "GET", "/metrics").body;
  const std::regex counted(R"(mmserve_audio_seconds_total\{[^}]*\} ([0-9.e+]+))");
  std::smatch match;
  ASSERT_TRUE(std::regex_search(metrics, match, counted)) << metrics;
  EXPECT_LT(std::stod(match[1]), 10.0);
}

TEST(SpeechQueue, FullQueueAnswers429WithRetryAfter) {
  REQUIRE_FIXTURES();
  ServerProcess server("vision:\n  enabled: false\nimage:\n  enabled: false\nspeech:\n  model_path: " +
                       std::string(TINY_WHISPER) + "\n  parallel: 1\n  max_queue: 1\n  threads: 2\n");
  wait_ready(server.port());
  const std::string noise = fixtures().dir + "/noise-queue.flac";
  ASSERT_EQ(shell("ffmpeg -nostdin -y -f lavfi -i anoisesrc=r=16000:a=0.3:d=600 -c:a flac '" + noise + "'"), 0);
  const std::string body = multipart({}, read_file(noise), "noise.flac");
  const std::string head = "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                           "boundary=" +
                           kBoundary + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  Connection running(server.port());
  running.send_raw(head + body);
  // Wait until the only worker has it, then fill the one queue place.
  for (int i = 0;
       i < 200 && request(server.port(), "GET", "/metrics").body.find("mmserve_slots_busy{service=\"speech\"} 1") ==
                      std::string::npos;
       ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  Connection waiting(server.port());
  waiting.send_raw(head + body);
  for (int i = 0;
       i < 200 && request(server.port(), "GET", "/metrics").body.find("mmserve_queue_depth{service=\"speech\"} 1") ==
                      std::string::npos;
       ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto refused = transcribe(server.port(), read_file(fixtures().short_wav));
  EXPECT_EQ(refused.status, 429) << refused.body;
  EXPECT_FALSE(refused.header("retry-after").empty());
  EXPECT_EQ(json::parse(refused.body)["error"]["code"], "rate_limit_exceeded") << refused.body;
}

TEST(SpeechModels, ModelSizeFindsTheFileAndInt8QuantizesOnce) {
  REQUIRE_FIXTURES();
  const std::string dir = make_temp_dir("mmserve-speech-models");
  fs::copy_file(TINY_WHISPER, dir + "/ggml-tiny.bin");
  const std::string yaml = "models_dir: " + dir + "\nvision:\n  enabled: false\nimage:\n  enabled: false\n";
  const std::map<std::string, std::string> env = {{"MODEL_SIZE", "tiny"}, {"COMPUTE_TYPE", "int8"}};
  std::string first_log;
  for (int run = 0; run < 2; ++run) {
    ServerProcess server(yaml, "speech", env);
    wait_ready(server.port());
    const json models = json::parse(request(server.port(), "GET", "/v1/models").body);
    EXPECT_NE(models.dump().find("whisper-tiny"), std::string::npos) << models.dump();
    const auto response = transcribe(server.port(), read_file(fixtures().short_wav));
    EXPECT_EQ(response.status, 200) << response.body;
    if (run == 0) first_log = server.log();
    if (run == 1) EXPECT_EQ(server.log().find("converting whisper model"), std::string::npos) << server.log();
  }
  EXPECT_NE(first_log.find("converting whisper model to Q8_0"), std::string::npos) << first_log;
  bool cached = false;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    cached |= entry.path().filename().string().ends_with(".q8_0.bin");
  EXPECT_TRUE(cached);
  fs::remove_all(dir);
}

} // namespace
