// The media module's audio decoding on real files: one spoken clip
// (espeak-ng) encoded by Debian's ffmpeg tool into every accepted container,
// each decoded in-process and compared with the ffmpeg tool's own 16 kHz mono
// decode of the same file; then the inputs a client should not get through.
#include "core/api_error.hpp"
#include "media/audio_decode.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <unistd.h>

using namespace mmserve;
using namespace mmserve::media;
namespace fs = std::filesystem;

namespace {

const char* kSpokenText = "The quick brown fox jumps over the lazy dog.";

bool have_tool(const std::string& name) {
  return std::system(("command -v " + name + " >/dev/null 2>&1").c_str()) == 0;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string quoted(const fs::path& path) {
  return "'" + path.string() + "'";
}

// A directory of its own under the system temp dir, removed with the object.
class TempDir {
public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("mmserve-audio-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
             std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }

private:
  fs::path path_;
};

// Runs the ffmpeg tool quietly; its errors go to a log in `dir`.
bool run_ffmpeg(const fs::path& dir, const std::string& args) {
  const std::string command =
      "ffmpeg -nostdin -hide_banner -loglevel error -y " + args + " 2>>" + quoted(dir / "ffmpeg.log");
  return std::system(command.c_str()) == 0;
}

// The independent reference: the ffmpeg tool's 16 kHz mono float decode,
// downmixed with the same normalisation (rematrix_maxval 1) decode_audio uses.
std::vector<float> reference_pcm(const fs::path& dir, const fs::path& file) {
  const fs::path raw = dir / (file.filename().string() + ".ref.raw");
  if (!run_ffmpeg(dir, "-i " + quoted(file) + " -ac 1 -ar 16000 -rematrix_maxval 1 -f f32le " + quoted(raw))) return {};
  const std::string bytes = read_bytes(raw);
  std::vector<float> samples(bytes.size() / sizeof(float));
  std::memcpy(samples.data(), bytes.data(), samples.size() * sizeof(float));
  return samples;
}

double rms(const std::vector<float>& v) {
  double sum = 0;
  for (float x : v)
    sum += static_cast<double>(x) * x;
  return v.empty() ? 0 : std::sqrt(sum / static_cast<double>(v.size()));
}

// The best normalised cross-correlation of a and b over lags up to max_lag
// samples (resamplers and decoder delays differ by a few samples).
double best_correlation(const std::vector<float>& a, const std::vector<float>& b, int max_lag) {
  double best = -1;
  for (int lag = -max_lag; lag <= max_lag; ++lag) {
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      const long j = static_cast<long>(i) + lag;
      if (j < 0 || j >= static_cast<long>(b.size())) continue;
      ab += static_cast<double>(a[i]) * b[j];
      aa += static_cast<double>(a[i]) * a[i];
      bb += static_cast<double>(b[j]) * b[j];
    }
    if (aa > 0 && bb > 0) best = std::max(best, ab / std::sqrt(aa * bb));
  }
  return best;
}

struct ApiErrorSeen {
  int status = 0;
  std::string code;
  std::string param;
  std::string message;
};

ApiErrorSeen api_error(const std::function<void()>& action) {
  try {
    action();
  } catch (const ApiError& error) {
    return {error.status(), error.code(), error.param().value_or(""), error.what()};
  }
  return {};
}

// The spoken source clip and the fixtures, made on first use in one temp
// dir per test process, removed when the process exits.
struct Fixtures {
  TempDir dir;
  fs::path source;
  double source_seconds = 0;
  std::string skip_reason;
};

std::vector<float> reference_pcm(const fs::path& dir, const fs::path& file);

Fixtures& fixtures() {
  static const std::unique_ptr<Fixtures> made = [] {
    auto f = std::make_unique<Fixtures>();
    if (!have_tool("ffmpeg") || !have_tool("espeak-ng")) {
      f->skip_reason = "ffmpeg and espeak-ng are needed to make audio fixtures (scripts/bootstrap.sh installs them)";
      return f;
    }
    f->source = f->dir.path() / "source.wav";
    const std::string speak =
        "espeak-ng -w " + quoted(f->source) + " '" + kSpokenText + "' 2>>" + quoted(f->dir.path() / "espeak.log");
    if (std::system(speak.c_str()) != 0) {
      f->skip_reason = "espeak-ng could not write the source clip";
      return f;
    }
    f->source_seconds = static_cast<double>(reference_pcm(f->dir.path(), f->source).size()) / 16000;
    return f;
  }();
  return *made;
}

struct FormatCase {
  std::string name;
  std::string file;        // fixture file name, its extension as a client would send it
  std::string args;        // ffmpeg encoding arguments after the source input
  std::string container;   // expected DecodedAudio::container
  std::string codec;       // expected DecodedAudio::codec
  double tolerance = 0.05; // seconds from the source's duration (codec padding)
};

std::ostream& operator<<(std::ostream& out, const FormatCase& c) {
  return out << c.name;
}

const std::vector<FormatCase>& format_cases() {
  static const std::vector<FormatCase> cases = {
      {"wav", "speech.wav", "-c:a pcm_s16le", "wav", "pcm_s16le"},
      {"wav_stereo_44k", "stereo44k.wav", "-ac 2 -ar 44100 -c:a pcm_s16le", "wav", "pcm_s16le"},
      {"wav_u8_11k", "u8.wav", "-ar 11025 -c:a pcm_u8", "wav", "pcm_u8"},
      {"mp3", "speech.mp3", "-c:a libmp3lame -b:a 64k", "mp3", "mp3float"},
      {"flac", "speech.flac", "-c:a flac", "flac", "flac"},
      {"flac_51_48k", "surround.flac", "-af 'pan=5.1|c0=c0|c1=c0|c2=c0|c3=c0|c4=c0|c5=c0' -ar 48000 -c:a flac", "flac",
       "flac"},
      {"ogg_vorbis", "speech.ogg", "-c:a libvorbis", "ogg", "vorbis"},
      {"opus", "speech.opus", "-c:a libopus -b:a 32k", "ogg", "opus"},
      {"oga_opus", "speech.oga", "-c:a libopus -b:a 32k", "ogg", "opus"},
      {"m4a_aac", "speech.m4a", "-c:a aac -b:a 64k", "mov,mp4,m4a,3gp,3g2,mj2", "aac"},
      {"mp4_aac", "speech.mp4", "-c:a aac -b:a 64k", "mov,mp4,m4a,3gp,3g2,mj2", "aac"},
      {"adts_aac", "speech.aac", "-c:a aac -b:a 64k -f adts", "aac", "aac", 0.12},
      {"webm_opus", "speech.webm", "-c:a libopus -b:a 32k", "matroska,webm", "opus"},
      {"mpeg_ps_mp2", "speech.mpeg", "-c:a mp2 -b:a 64k -f mpeg", "mpeg", "mp2", 0.12},
      {"mpegts_mp2", "speech.ts", "-c:a mp2 -b:a 64k -f mpegts", "mpegts", "mp2", 0.12},
      {"mpga_mp2", "speech.mpga", "-c:a mp2 -b:a 64k -f mp2", "mp3", "mp2", 0.12},
  };
  return cases;
}

#define SKIP_WITHOUT_FIXTURES()                                                                                        \
  if (!fixtures().skip_reason.empty()) GTEST_SKIP() << fixtures().skip_reason

// Encodes the source clip as `file` with `args`; empty path on failure.
fs::path encode_source(const std::string& file, const std::string& args) {
  const fs::path out = fixtures().dir.path() / file;
  if (fs::exists(out)) return out;
  if (!run_ffmpeg(fixtures().dir.path(), "-i " + quoted(fixtures().source) + " " + args + " " + quoted(out))) {
    return {};
  }
  return out;
}

// Makes a fixture from ffmpeg's lavfi sources (no source clip needed).
fs::path generate(const std::string& file, const std::string& args) {
  const fs::path out = fixtures().dir.path() / file;
  if (!run_ffmpeg(fixtures().dir.path(), args + " " + quoted(out))) return {};
  return out;
}

std::string ffmpeg_log() {
  return read_bytes(fixtures().dir.path() / "ffmpeg.log");
}

void expect_matches_reference(const fs::path& file, const DecodedAudio& audio) {
  const std::vector<float> reference = reference_pcm(fixtures().dir.path(), file);
  ASSERT_FALSE(reference.empty()) << ffmpeg_log();
  EXPECT_NEAR(audio.seconds, static_cast<double>(reference.size()) / 16000, 0.01);
  EXPECT_GT(best_correlation(audio.samples, reference, 80), 0.99); // 5 ms either way
  EXPECT_NEAR(rms(audio.samples) / rms(reference), 1.0, 0.05);
}

class AudioDecodeFormats : public ::testing::TestWithParam<FormatCase> {};

class AudioDecode : public ::testing::Test {};

// A WAV header (PCM, 16 kHz mono 16-bit unless told) declaring `data_bytes`
// of samples, followed by `body`.
std::string wav_file(uint32_t data_bytes, std::string_view body, uint16_t channels = 1, uint32_t rate = 16000) {
  std::string out;
  const auto u16 = [&](uint16_t v) { out.append({static_cast<char>(v & 0xFF), static_cast<char>(v >> 8)}); };
  const auto u32 = [&](uint32_t v) {
    u16(static_cast<uint16_t>(v & 0xFFFF));
    u16(static_cast<uint16_t>(v >> 16));
  };
  out += "RIFF";
  u32(36 + data_bytes);
  out += "WAVEfmt ";
  u32(16);
  u16(1); // PCM
  u16(channels);
  u32(rate);
  u32(rate * channels * 2);
  u16(static_cast<uint16_t>(channels * 2));
  u16(16);
  out += "data";
  u32(data_bytes);
  out += body;
  return out;
}

std::string random_bytes(size_t size, unsigned seed) {
  std::mt19937 rng(seed);
  std::string out(size, '\0');
  for (char& c : out)
    c = static_cast<char>(rng() & 0xFF);
  return out;
}

} // namespace

TEST_P(AudioDecodeFormats, DecodesLikeTheFfmpegTool) {
  SKIP_WITHOUT_FIXTURES();
  const FormatCase& c = GetParam();
  const fs::path file = encode_source(c.file, c.args);
  ASSERT_FALSE(file.empty()) << "ffmpeg could not encode " << c.file << ": " << ffmpeg_log();

  const DecodedAudio audio = decode_audio(read_bytes(file), {}, "file");
  EXPECT_EQ(audio.container, c.container);
  EXPECT_EQ(audio.codec, c.codec);
  EXPECT_DOUBLE_EQ(audio.seconds, static_cast<double>(audio.samples.size()) / kSpeechSampleRate);
  EXPECT_NEAR(audio.seconds, fixtures().source_seconds, c.tolerance);
  EXPECT_TRUE(std::all_of(audio.samples.begin(), audio.samples.end(), [](float x) { return x >= -1 && x <= 1; }));
  expect_matches_reference(file, audio);
}

INSTANTIATE_TEST_SUITE_P(Containers, AudioDecodeFormats, ::testing::ValuesIn(format_cases()),
                         [](const auto& info) { return info.param.name; });

TEST_F(AudioDecode, RealRecordingFromSharedMedia) {
  const char* env = std::getenv("MMSERVE_TEST_MEDIA");
  const fs::path media = env && *env ? fs::path(env) : fs::path(MMSERVE_SOURCE_DIR) / ".." / "shared" / "media";
  const fs::path file = media / "jfk.mp3";
  if (!fs::exists(file)) GTEST_SKIP() << file << " is absent (set MMSERVE_TEST_MEDIA)";
  SKIP_WITHOUT_FIXTURES();
  const DecodedAudio audio = decode_audio(read_bytes(file), {}, "file");
  EXPECT_EQ(audio.container, "mp3");
  EXPECT_EQ(audio.codec, "mp3float");
  EXPECT_GT(audio.seconds, 10.0);
  expect_matches_reference(file, audio);
}

TEST_F(AudioDecode, EmptyBytesAreRefused) {
  const auto error = api_error([] { decode_audio("", {}, "file"); });
  EXPECT_EQ(error.status, 400);
  EXPECT_EQ(error.code, "empty_audio");
  EXPECT_EQ(error.param, "file");
}

TEST_F(AudioDecode, RandomBytesAreNotAudio) {
  for (unsigned seed : {1u, 2u, 3u}) {
    const auto error = api_error([&] { decode_audio(random_bytes(64 << 10, seed), {}, "file"); });
    EXPECT_EQ(error.status, 415) << "seed " << seed << ": " << error.message;
    EXPECT_EQ(error.code, "unsupported_audio_format");
    EXPECT_EQ(error.param, "file");
    EXPECT_NE(error.message.find("flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, opus, wav, webm, aac"), std::string::npos)
        << error.message;
  }
}

TEST_F(AudioDecode, TextIsNotAudio) {
  std::string text;
  for (int i = 0; i < 50; ++i)
    text += "This is a plain text file, not a recording. Line " + std::to_string(i) + ".\n";
  const auto error = api_error([&] { decode_audio(text, {}, "file"); });
  EXPECT_EQ(error.status, 415) << error.message;
  EXPECT_EQ(error.code, "unsupported_audio_format");
}

TEST_F(AudioDecode, ImagesAreNotAudio) {
  SKIP_WITHOUT_FIXTURES();
  for (const char* name : {"picture.png", "picture.jpg"}) {
    const fs::path file = generate(name, "-f lavfi -i testsrc=size=64x64 -frames:v 1");
    ASSERT_FALSE(file.empty()) << ffmpeg_log();
    const auto error = api_error([&] { decode_audio(read_bytes(file), {}, "file"); });
    EXPECT_EQ(error.status, 415) << name << ": " << error.message;
    EXPECT_EQ(error.code, "unsupported_audio_format");
  }
}

TEST_F(AudioDecode, VideoWithoutAudioIsRefused) {
  SKIP_WITHOUT_FIXTURES();
  const fs::path file = generate("silent-video.mp4", "-f lavfi -i testsrc=size=64x64:duration=1 -c:v mpeg4 -an");
  ASSERT_FALSE(file.empty()) << ffmpeg_log();
  const auto error = api_error([&] { decode_audio(read_bytes(file), {}, "file"); });
  EXPECT_EQ(error.status, 415) << error.message;
  EXPECT_EQ(error.code, "unsupported_audio_format");
  EXPECT_NE(error.message.find("has no audio"), std::string::npos) << error.message;
}

TEST_F(AudioDecode, VideoWithAudioDecodesTheAudio) {
  SKIP_WITHOUT_FIXTURES();
  const fs::path file = generate("video.mp4", "-f lavfi -i testsrc=size=64x64:duration=2 -i " +
                                                  quoted(fixtures().source) + " -c:v mpeg4 -c:a aac -shortest");
  ASSERT_FALSE(file.empty()) << ffmpeg_log();
  const DecodedAudio audio = decode_audio(read_bytes(file), {}, "file");
  EXPECT_EQ(audio.codec, "aac");
  EXPECT_NEAR(audio.seconds, 2.0, 0.2); // -shortest ends on a muxing boundary
}

// The demuxer that would follow a playlist's or concat list's entries is
// never reached: the entries name a real local fixture, which would decode.
TEST_F(AudioDecode, PlaylistsAreRefusedUnopened) {
  SKIP_WITHOUT_FIXTURES();
  const std::string target = fixtures().source.string();
  const std::string hls = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
                          "#EXTINF:5.0,\nfile:" +
                          target + "\n#EXTINF:5.0,\nhttp://127.0.0.1:9/segment.ts\n#EXT-X-ENDLIST\n";
  const std::string concat = "ffconcat version 1.0\nfile '" + target + "'\n";
  for (const auto& [name, playlist] : {std::pair{"hls", hls}, std::pair{"concat", concat}}) {
    const std::string& bytes = playlist; // clang 14 (sanitizer build) cannot capture a structured binding
    const auto error = api_error([&] { decode_audio(bytes, {}, "file"); });
    EXPECT_EQ(error.status, 415) << name << ": " << error.message;
    EXPECT_EQ(error.code, "unsupported_audio_format");
  }
}

// The first kilobyte of an mp3 holds its tag and a few frames: what is there
// decodes (a fraction of a second), the rest is missing.
TEST_F(AudioDecode, TruncatedMp3DecodesWhatIsThere) {
  SKIP_WITHOUT_FIXTURES();
  const fs::path file = encode_source("truncated-source.mp3", "-c:a libmp3lame -b:a 64k");
  ASSERT_FALSE(file.empty()) << ffmpeg_log();
  const std::string bytes = read_bytes(file).substr(0, 1024);
  const DecodedAudio audio = decode_audio(bytes, {}, "file");
  EXPECT_EQ(audio.container, "mp3");
  EXPECT_GT(audio.seconds, 0.0);
  EXPECT_LT(audio.seconds, 0.3);
}

// Damage in the middle of an mp3 costs the frames it hits; the rest decodes
// (FFmpeg's normal error resilience).
TEST_F(AudioDecode, Mp3WithDamagedFramesDecodesTheRest) {
  SKIP_WITHOUT_FIXTURES();
  const fs::path file = encode_source("damaged-source.mp3", "-c:a libmp3lame -b:a 64k");
  ASSERT_FALSE(file.empty()) << ffmpeg_log();
  std::string bytes = read_bytes(file);
  const std::string noise = random_bytes(bytes.size(), 7);
  for (size_t i = bytes.size() * 4 / 10; i < bytes.size() * 5 / 10; ++i)
    bytes[i] = noise[i];
  const DecodedAudio audio = decode_audio(bytes, {}, "file");
  EXPECT_GT(audio.seconds, fixtures().source_seconds * 0.7);
  EXPECT_LT(audio.seconds, fixtures().source_seconds * 1.1);
}

// Files whose container is intact but whose frames are noise: 400 with what
// FFmpeg found wrong.
TEST_F(AudioDecode, ContainersOfCorruptFramesAreInvalid) {
  SKIP_WITHOUT_FIXTURES();
  const fs::path adts = encode_source("corrupt-source.aac", "-c:a aac -b:a 64k -f adts");
  const fs::path opus = encode_source("corrupt-source.opus", "-c:a libopus -b:a 32k");
  const fs::path flac = encode_source("corrupt-source.flac", "-c:a flac");
  ASSERT_FALSE(adts.empty() || opus.empty() || flac.empty()) << ffmpeg_log();
  const auto expect_invalid = [](const std::string& bytes, const std::string& says) {
    SCOPED_TRACE(says);
    const auto error = api_error([&] { decode_audio(bytes, {}, "file"); });
    EXPECT_EQ(error.status, 400) << error.message;
    EXPECT_EQ(error.code, "invalid_audio");
    EXPECT_EQ(error.param, "file");
    EXPECT_NE(error.message.find(says), std::string::npos) << error.message;
  };

  // ADTS: every 7-byte frame header kept, every payload random.
  std::string bytes = read_bytes(adts);
  std::mt19937 rng(21);
  for (size_t at = 0; at + 7 <= bytes.size();) {
    const auto byte = [&](size_t i) { return static_cast<size_t>(static_cast<unsigned char>(bytes[at + i])); };
    const size_t length = (byte(3) & 3) << 11 | byte(4) << 3 | byte(5) >> 5;
    ASSERT_GE(length, 7u);
    for (size_t i = at + 7; i < std::min(at + length, bytes.size()); ++i)
      bytes[i] = static_cast<char>(rng() & 0xFF);
    at += length;
  }
  expect_invalid(bytes, "header is broken");

  // Ogg Opus: the pages after the two header pages fail their checksums.
  bytes = read_bytes(opus);
  const size_t third_page = bytes.find("OggS", bytes.find("OggS", bytes.find("OggS") + 4) + 4);
  ASSERT_NE(third_page, std::string::npos);
  const std::string noise = random_bytes(bytes.size(), 22);
  for (size_t i = third_page + 32; i < bytes.size(); ++i)
    bytes[i] = noise[i];
  expect_invalid(bytes, "CRC mismatch");

  // FLAC: the stream header declares the duration, no frame survives.
  bytes = read_bytes(flac);
  const size_t frames = bytes.find("\xFF\xF8");
  ASSERT_NE(frames, std::string::npos);
  const std::string flac_noise = random_bytes(bytes.size(), 23);
  for (size_t i = frames; i < bytes.size(); ++i)
    bytes[i] = flac_noise[i];
  expect_invalid(bytes, "none of it decodes");
}

// PCM has no redundancy: a corrupted body decodes as noise of the declared length.
TEST_F(AudioDecode, WavWithCorruptedBodyDecodesAsNoise) {
  const DecodedAudio audio = decode_audio(wav_file(32000, random_bytes(32000, 11)), {}, "file");
  EXPECT_EQ(audio.container, "wav");
  EXPECT_EQ(audio.codec, "pcm_s16le");
  EXPECT_DOUBLE_EQ(audio.seconds, 1.0);
  EXPECT_GT(rms(audio.samples), 0.3);
}

// A body shorter than the header declares decodes what is there.
TEST_F(AudioDecode, WavWithTruncatedBodyDecodesWhatIsThere) {
  const DecodedAudio audio = decode_audio(wav_file(320000, random_bytes(1000, 12)), {}, "file");
  EXPECT_EQ(audio.samples.size(), 500u);
}

// No body, whether or not the header declares one: FFmpeg reads no samples
// and states no duration.
TEST_F(AudioDecode, WavWithoutSamplesIsEmpty) {
  for (const std::string& bytes : {wav_file(0, ""), wav_file(320000, "")}) {
    const auto error = api_error([&] { decode_audio(bytes, {}, "file"); });
    EXPECT_EQ(error.status, 400) << error.message;
    EXPECT_EQ(error.code, "empty_audio");
  }
}

TEST_F(AudioDecode, WavWithBrokenFormatHeaderIsInvalid) {
  for (const std::string& bytes :
       {wav_file(32000, random_bytes(32000, 13), 0, 16000), wav_file(32000, random_bytes(32000, 14), 1, 0)}) {
    const auto error = api_error([&] { decode_audio(bytes, {}, "file"); });
    EXPECT_EQ(error.status, 400) << error.message;
    EXPECT_EQ(error.code, "invalid_audio");
  }
}

TEST_F(AudioDecode, MaxBytesIsEnforcedBeforeDecoding) {
  AudioLimits limits;
  limits.max_bytes = 1000;
  const auto error = api_error([&] { decode_audio(wav_file(32000, random_bytes(32000, 15)), limits, "file"); });
  EXPECT_EQ(error.status, 413);
  EXPECT_EQ(error.code, "audio_too_large");
  EXPECT_EQ(error.param, "file");
}

TEST_F(AudioDecode, DeclaredDurationPastTheBoundIsRefused) {
  AudioLimits limits;
  limits.max_seconds = 0.5;
  const auto error = api_error([&] { decode_audio(wav_file(32000, random_bytes(32000, 16)), limits, "file"); });
  EXPECT_EQ(error.status, 400);
  EXPECT_EQ(error.code, "audio_too_long");
  EXPECT_EQ(error.param, "file");
  EXPECT_NE(error.message.find("declares"), std::string::npos) << error.message;
}

// Ten minutes of silence, in a container that states its duration (Ogg
// Opus: refused from the header) and one that does not (raw ADTS AAC:
// decoding stops at the bound).
TEST_F(AudioDecode, LongFilesAreRefused) {
  SKIP_WITHOUT_FIXTURES();
  AudioLimits limits;
  limits.max_seconds = 5;
  const std::string silence = "-f lavfi -i anullsrc=r=16000:cl=mono -t 600";
  const fs::path opus = generate("long.opus", silence + " -c:a libopus -b:a 6k");
  const fs::path aac = generate("long.aac", silence + " -c:a aac -b:a 16k -f adts");
  ASSERT_FALSE(opus.empty() || aac.empty()) << ffmpeg_log();

  const auto declared = api_error([&] { decode_audio(read_bytes(opus), limits, "file"); });
  EXPECT_EQ(declared.status, 400);
  EXPECT_EQ(declared.code, "audio_too_long");
  EXPECT_NE(declared.message.find("declares 600.0 seconds"), std::string::npos) << declared.message;

  const auto decoded = api_error([&] { decode_audio(read_bytes(aac), limits, "file"); });
  EXPECT_EQ(decoded.status, 400);
  EXPECT_EQ(decoded.code, "audio_too_long");
  EXPECT_NE(decoded.message.find("longer than 5 seconds"), std::string::npos) << decoded.message;

  limits.max_seconds = 700;
  EXPECT_NEAR(decode_audio(read_bytes(aac), limits, "file").seconds, 600.0, 0.2);
}
