// Untrusted audio bytes to the 16 kHz mono float PCM the speech engine takes,
// in-process with FFmpeg's libraries: read straight from the request's
// memory, container identified from the bytes (never from names or declared
// types) and checked against an allow-list of audio containers, the best
// audio stream decoded with FFmpeg's usual error resilience, downmixed and
// resampled with libswresample. Size and duration are bounded before and
// while decoding, so a long file is refused without being decoded whole.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mmserve::media {

inline constexpr int kSpeechSampleRate = 16000;

struct AudioLimits {
  uint64_t max_bytes = 100ull << 20; // input size bound
  double max_seconds = 3600;         // decoded duration bound
};

struct DecodedAudio {
  std::vector<float> samples; // 16 kHz mono, [-1, 1]
  double seconds = 0;         // samples.size() / 16000
  std::string container;      // FFmpeg demuxer name: "mp3", "wav", "ogg", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"...
  std::string codec;          // FFmpeg decoder name: "mp3float", "pcm_s16le", "opus", "aac", "vorbis", "flac"...
};

// Throws ApiError: 400 `empty_audio` for no bytes or no decoded samples,
// 413 `audio_too_large` past max_bytes, 415 `unsupported_audio_format` when
// the bytes are not an accepted container, have no audio stream or no
// decoder, 400 `invalid_audio` when they do not decode (FFmpeg's message
// included), 400 `audio_too_long` past max_seconds. `param` names the
// request field.
DecodedAudio decode_audio(std::string_view bytes, const AudioLimits& limits, const std::string& param);

} // namespace mmserve::media
