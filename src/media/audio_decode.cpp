#include "media/audio_decode.hpp"

#include "core/api_error.hpp"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/channel_layout.h>
#include <libavutil/error.h>
#include <libavutil/log.h>
#include <libavutil/opt.h>
#include <libswresample/swresample.h>
}

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cstdarg>
#include <cstring>
#include <fmt/format.h>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>

namespace mmserve::media {
namespace {

// The names OpenAI's transcription API accepts; the 415 message lists them.
constexpr const char* kAcceptedFormats = "flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, opus, wav, webm, aac";

// Demuxers a request may reach, by FFmpeg short name. An allow-list because
// FFmpeg's probe also recognises playlists and descriptors (hls, dash,
// concat, image2, ...) that would open other files or URLs, and a long tail
// of rarely exercised demuxers; untrusted bytes get only the audio
// containers above (mp3 also carries MPEG layer 1/2, i.e. .mpga; ogg carries
// opus and vorbis; mpeg/mpegts are MPEG program and transport streams).
constexpr std::array<std::string_view, 9> kAllowedDemuxers = {
    "wav", "mp3", "flac", "ogg", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "aac", "mpeg", "mpegts"};

// Probing reads at most this much before naming a container, and stream
// analysis at most this much (and 5 s of media) before decoding starts.
constexpr int kFormatProbeBytes = 1 << 20;
constexpr int64_t kStreamProbeBytes = 2 << 20;
constexpr int64_t kAnalyzeMicroseconds = 5 * int64_t{AV_TIME_BASE};
constexpr int kIoBufferBytes = 64 << 10;

// FFmpeg's last error line on this thread, for the ApiError text. Decoders
// run single-threaded (thread_count 1), so their lines land here too.
thread_local std::string t_last_ffmpeg_error;

void ffmpeg_log(void* context, int level, const char* format, va_list args) {
  level &= 0xff; // the bits above are a colour hint
  if (level > av_log_get_level()) return;
  std::array<char, 1024> line{};
  int print_prefix = 0; // FFmpeg's "[name @ 0x...]" prefix; the name alone is added below
  av_log_format_line2(context, level, format, args, line.data(), static_cast<int>(line.size()), &print_prefix);
  std::string_view text(line.data());
  while (!text.empty() && (text.back() == '\n' || text.back() == ' '))
    text.remove_suffix(1);
  if (text.empty()) return;
  const AVClass* const* avclass = static_cast<const AVClass* const*>(context);
  const char* name = avclass && *avclass && (*avclass)->item_name ? (*avclass)->item_name(context) : nullptr;
  std::string message = name ? fmt::format("{}: {}", name, text) : std::string(text);
  spdlog::debug("ffmpeg: {}", message);
  if (level <= AV_LOG_ERROR) t_last_ffmpeg_error = std::move(message);
}

// Once per process: FFmpeg's own log goes to spdlog at debug level instead
// of stderr, so a corrupt upload does not spam the server's output.
void init_ffmpeg_log() {
  static std::once_flag once;
  std::call_once(once, [] {
    av_log_set_level(AV_LOG_WARNING);
    av_log_set_callback(ffmpeg_log);
  });
}

std::string ffmpeg_error(int code) {
  std::array<char, AV_ERROR_MAX_STRING_SIZE> text{};
  av_strerror(code, text.data(), text.size());
  return text.data();
}

// RAII for FFmpeg's objects, so every error path frees what it allocated.
struct IoContextFree {
  void operator()(AVIOContext* io) const {
    av_freep(&io->buffer); // FFmpeg may have replaced the buffer we gave it
    avio_context_free(&io);
  }
};
struct FormatClose {
  void operator()(AVFormatContext* format) const { avformat_close_input(&format); }
};
struct CodecFree {
  void operator()(AVCodecContext* codec) const { avcodec_free_context(&codec); }
};
struct PacketFree {
  void operator()(AVPacket* packet) const { av_packet_free(&packet); }
};
struct FrameFree {
  void operator()(AVFrame* frame) const { av_frame_free(&frame); }
};
struct SwrFree {
  void operator()(SwrContext* swr) const { swr_free(&swr); }
};
struct ChannelLayout {
  AVChannelLayout layout{};
  ~ChannelLayout() { av_channel_layout_uninit(&layout); }
};

// The request's bytes as an AVIOContext: no temp file, no copy of the input.
struct MemoryReader {
  std::string_view bytes;
  int64_t position = 0;

  static int read(void* opaque, uint8_t* buffer, int size) {
    auto* self = static_cast<MemoryReader*>(opaque);
    const int64_t left = static_cast<int64_t>(self->bytes.size()) - self->position;
    if (left <= 0) return AVERROR_EOF;
    const int n = static_cast<int>(std::min<int64_t>(size, left));
    std::memcpy(buffer, self->bytes.data() + self->position, static_cast<size_t>(n));
    self->position += n;
    return n;
  }

  static int64_t seek(void* opaque, int64_t offset, int whence) {
    auto* self = static_cast<MemoryReader*>(opaque);
    const auto size = static_cast<int64_t>(self->bytes.size());
    whence &= ~AVSEEK_FORCE;
    if (whence == AVSEEK_SIZE) return size;
    int64_t target = offset;
    if (whence == SEEK_CUR)
      target = self->position + offset;
    else if (whence == SEEK_END)
      target = size + offset;
    else if (whence != SEEK_SET)
      return AVERROR(EINVAL);
    if (target < 0 || target > size) return AVERROR(EINVAL);
    self->position = target;
    return target;
  }
};

// Nested opens (references to other files or URLs) are never allowed.
int refuse_nested_open(AVFormatContext*, AVIOContext**, const char* url, int, AVDictionary**) {
  spdlog::debug("ffmpeg: refused to open '{}' from an uploaded audio file", url ? url : "");
  return AVERROR(EPERM);
}

const char* sample_format_name(int format) {
  const char* name = av_get_sample_fmt_name(static_cast<AVSampleFormat>(format));
  return name ? name : "unknown";
}

bool allowed_demuxer(std::string_view name) {
  return std::find(kAllowedDemuxers.begin(), kAllowedDemuxers.end(), name) != kAllowedDemuxers.end();
}

// Mono float at 16 kHz from whatever the decoder produces; rebuilt when a
// stream changes its rate, layout or sample format midway.
class Resampler {
public:
  // Appends `frame` (nullptr: what the resampler still holds) to `out`.
  // False once `out` passes `max_samples`, checked before allocating.
  bool convert(const AVFrame* frame, std::vector<float>& out, size_t max_samples) {
    if (frame && !matches(*frame)) {
      if (!convert(nullptr, out, max_samples)) return false;
      configure(*frame);
    }
    if (!swr_) return true;
    const int in_count = frame ? frame->nb_samples : 0;
    const auto** in = frame ? const_cast<const uint8_t**>(frame->extended_data) : nullptr;
    while (true) {
      const int capacity = swr_get_out_samples(swr_.get(), in_count);
      if (capacity < 0) throw std::runtime_error("resampler: " + ffmpeg_error(capacity));
      // The capacity bounds this call's output (give or take the filter's delay).
      if (out.size() + static_cast<size_t>(capacity) > max_samples + kSpeechSampleRate) return false;
      const size_t start = out.size();
      out.resize(start + static_cast<size_t>(std::max(capacity, 1)));
      auto* target = reinterpret_cast<uint8_t*>(out.data() + start);
      const int written = swr_convert(swr_.get(), &target, std::max(capacity, 1), in, in_count);
      if (written < 0) throw std::runtime_error("resampler: " + ffmpeg_error(written));
      out.resize(start + static_cast<size_t>(written));
      if (out.size() > max_samples) return false;
      // A frame converts in one call; flushing repeats until nothing is left.
      if (frame || written == 0) return true;
    }
  }

private:
  bool matches(const AVFrame& frame) const {
    return swr_ && frame.format == format_ && frame.sample_rate == rate_ &&
           av_channel_layout_compare(&frame.ch_layout, &layout_.layout) == 0;
  }

  void configure(const AVFrame& frame) {
    swr_.reset();
    av_channel_layout_uninit(&layout_.layout);
    if (frame.sample_rate <= 0 || frame.ch_layout.nb_channels <= 0) {
      throw std::invalid_argument(
          fmt::format("decoded frame with {} Hz, {} channels", frame.sample_rate, frame.ch_layout.nb_channels));
    }
    int ret = av_channel_layout_copy(&layout_.layout, &frame.ch_layout);
    if (ret < 0) throw std::runtime_error("resampler: " + ffmpeg_error(ret));
    format_ = frame.format;
    rate_ = frame.sample_rate;
    // A layout with only a channel count gets the default one for that
    // count, so libswresample knows how to downmix it.
    ChannelLayout in;
    if (frame.ch_layout.order == AV_CHANNEL_ORDER_UNSPEC)
      av_channel_layout_default(&in.layout, frame.ch_layout.nb_channels);
    else
      ret = av_channel_layout_copy(&in.layout, &frame.ch_layout);
    if (ret < 0) throw std::runtime_error("resampler: " + ffmpeg_error(ret));
    ChannelLayout mono;
    av_channel_layout_default(&mono.layout, 1);
    SwrContext* swr = nullptr;
    ret = swr_alloc_set_opts2(&swr, &mono.layout, AV_SAMPLE_FMT_FLT, kSpeechSampleRate, &in.layout,
                              static_cast<AVSampleFormat>(frame.format), frame.sample_rate, 0, nullptr);
    swr_.reset(swr);
    // Normalised downmix (stereo: the mean of both channels), so the mix
    // stays within [-1, 1] instead of adding channels at -3 dB each.
    if (ret >= 0) ret = av_opt_set_double(swr, "rematrix_maxval", 1.0, 0);
    if (ret >= 0) ret = swr_init(swr);
    if (ret < 0) {
      swr_.reset();
      throw std::invalid_argument(fmt::format("cannot convert {} Hz {}-channel {} audio: {}", frame.sample_rate,
                                              frame.ch_layout.nb_channels, sample_format_name(frame.format),
                                              ffmpeg_error(ret)));
    }
  }

  std::unique_ptr<SwrContext, SwrFree> swr_;
  int format_ = -1;
  int rate_ = 0;
  ChannelLayout layout_;
};

} // namespace

DecodedAudio decode_audio(std::string_view bytes, const AudioLimits& limits, const std::string& param) {
  init_ffmpeg_log();
  t_last_ffmpeg_error.clear();
  if (bytes.empty()) throw ApiError::bad_request("The audio file is empty.", param, "empty_audio");
  if (bytes.size() > limits.max_bytes) {
    throw ApiError(
        413, fmt::format("The audio file is {} bytes; at most {} bytes are accepted.", bytes.size(), limits.max_bytes),
        "invalid_request_error", "audio_too_large", param);
  }
  const auto unsupported = [&](const std::string& why) {
    return ApiError::unsupported_media_type(
        fmt::format("Unsupported audio format: {}. Supported formats are {}.", why, kAcceptedFormats), param,
        "unsupported_audio_format");
  };
  std::string container;
  const auto invalid_because = [&](const std::string& why) {
    return ApiError::bad_request(fmt::format("The {} audio could not be decoded: {}", container, why), param,
                                 "invalid_audio");
  };
  // What FFmpeg said: its last error line, else the error code's text.
  const auto invalid = [&](int code) {
    return invalid_because(t_last_ffmpeg_error.empty() ? ffmpeg_error(code) : t_last_ffmpeg_error);
  };
  const auto invalid_noting_ffmpeg = [&](const std::string& why) {
    return invalid_because(t_last_ffmpeg_error.empty() ? why : fmt::format("{} ({})", why, t_last_ffmpeg_error));
  };
  const double max_seconds = std::max(0.0, limits.max_seconds);
  const auto too_long = [&](const std::string& what) {
    return ApiError::bad_request(fmt::format("{}; at most {:g} seconds are accepted.", what, max_seconds), param,
                                 "audio_too_long");
  };

  MemoryReader reader{bytes};
  auto* io_buffer = static_cast<unsigned char*>(av_malloc(kIoBufferBytes));
  if (!io_buffer) throw std::bad_alloc();
  std::unique_ptr<AVIOContext, IoContextFree> io(
      avio_alloc_context(io_buffer, kIoBufferBytes, 0, &reader, &MemoryReader::read, nullptr, &MemoryReader::seek));
  if (!io) {
    av_free(io_buffer);
    throw std::bad_alloc();
  }

  // Identify the container first and check it before any demuxer opens it.
  const AVInputFormat* input_format = nullptr;
  int ret = av_probe_input_buffer2(io.get(), &input_format, "", nullptr, 0, kFormatProbeBytes);
  if (ret < 0 || !input_format) throw unsupported("the data is not a recognised audio container");
  if (!allowed_demuxer(input_format->name)) {
    throw unsupported(fmt::format("'{}' is not an accepted audio container", input_format->name));
  }
  container = input_format->name;

  std::unique_ptr<AVFormatContext, FormatClose> format(avformat_alloc_context());
  if (!format) throw std::bad_alloc();
  format->pb = io.get();
  format->flags |= AVFMT_FLAG_CUSTOM_IO;
  format->io_open = refuse_nested_open;
  format->probesize = kStreamProbeBytes;
  format->format_probesize = kFormatProbeBytes;
  format->max_analyze_duration = kAnalyzeMicroseconds;
  AVFormatContext* raw_format = format.release();
  ret = avformat_open_input(&raw_format, "", input_format, nullptr);
  if (ret < 0) throw invalid(ret); // avformat_open_input freed the context
  format.reset(raw_format);
  ret = avformat_find_stream_info(format.get(), nullptr);
  if (ret < 0) throw invalid(ret);

  const AVCodec* decoder = nullptr;
  const int stream_index = av_find_best_stream(format.get(), AVMEDIA_TYPE_AUDIO, -1, -1, &decoder, 0);
  if (stream_index == AVERROR_STREAM_NOT_FOUND) {
    // FFmpeg passes over audio streams without channels or a sample rate.
    for (unsigned i = 0; i < format->nb_streams; ++i) {
      const AVCodecParameters* codecpar = format->streams[i]->codecpar;
      if (codecpar->codec_type == AVMEDIA_TYPE_AUDIO) {
        throw invalid_noting_ffmpeg(fmt::format("the audio stream's header is broken ({} channels, {} Hz)",
                                                codecpar->ch_layout.nb_channels, codecpar->sample_rate));
      }
    }
    throw unsupported(fmt::format("the {} file has no audio", container));
  }
  if (stream_index < 0 || !decoder) {
    throw unsupported(fmt::format("no decoder for the audio in the {} file", container));
  }
  AVStream* stream = format->streams[stream_index];
  // Other streams (video, cover art, subtitles) are skipped by the demuxer.
  for (unsigned i = 0; i < format->nb_streams; ++i) {
    if (static_cast<int>(i) != stream_index) format->streams[i]->discard = AVDISCARD_ALL;
  }

  // A duration the container states (not one estimated from the bitrate) is
  // refused before decoding.
  double declared = 0;
  if (stream->duration != AV_NOPTS_VALUE && stream->duration > 0) {
    declared = static_cast<double>(stream->duration) * av_q2d(stream->time_base);
  } else if (format->duration != AV_NOPTS_VALUE && format->duration > 0) {
    declared = static_cast<double>(format->duration) / AV_TIME_BASE;
  }
  if (av_fmt_ctx_get_duration_estimation_method(format.get()) == AVFMT_DURATION_FROM_BITRATE) declared = 0;
  if (declared > max_seconds) throw too_long(fmt::format("The audio file declares {:.1f} seconds", declared));

  std::unique_ptr<AVCodecContext, CodecFree> codec(avcodec_alloc_context3(decoder));
  if (!codec) throw std::bad_alloc();
  ret = avcodec_parameters_to_context(codec.get(), stream->codecpar);
  if (ret < 0) throw invalid(ret);
  codec->pkt_timebase = stream->time_base;
  // One thread per request: the server runs requests side by side, and the
  // decoder's log lines stay on this thread (t_last_ffmpeg_error).
  codec->thread_count = 1;
  ret = avcodec_open2(codec.get(), decoder, nullptr);
  if (ret < 0) throw invalid(ret);

  DecodedAudio result;
  result.container = container;
  result.codec = decoder->name;
  const double max_samples_exact = max_seconds * kSpeechSampleRate;
  const size_t max_samples = max_samples_exact >= static_cast<double>(std::numeric_limits<uint32_t>::max())
                                 ? std::numeric_limits<uint32_t>::max()
                                 : static_cast<size_t>(max_samples_exact);
  if (declared > 0) result.samples.reserve(static_cast<size_t>(std::min(declared, max_seconds) * kSpeechSampleRate));

  std::unique_ptr<AVPacket, PacketFree> packet(av_packet_alloc());
  std::unique_ptr<AVFrame, FrameFree> frame(av_frame_alloc());
  if (!packet || !frame) throw std::bad_alloc();
  Resampler resampler;
  int errors = 0;
  int last_error = 0;
  const auto note_error = [&](int code) {
    ++errors;
    last_error = code;
  };
  const auto convert = [&](const AVFrame* decoded) {
    bool within = true;
    try {
      within = resampler.convert(decoded, result.samples, max_samples);
    } catch (const std::invalid_argument& error) {
      throw invalid_because(error.what());
    }
    // Decoding stops as soon as the bound is passed.
    if (!within) throw too_long(fmt::format("The audio is longer than {:g} seconds", max_seconds));
  };
  // Every frame the decoder has ready; a failing frame is skipped, as the
  // ffmpeg tool does (normal error resilience).
  const auto drain = [&] {
    while (true) {
      const int got = avcodec_receive_frame(codec.get(), frame.get());
      if (got == AVERROR(EAGAIN) || got == AVERROR_EOF) return;
      if (got < 0) {
        note_error(got);
        return;
      }
      convert(frame.get());
      av_frame_unref(frame.get());
    }
  };

  while (true) {
    ret = av_read_frame(format.get(), packet.get());
    if (ret == AVERROR_EOF) break;
    if (ret < 0) {
      // A damaged container ends the stream where it breaks.
      note_error(ret);
      break;
    }
    if (packet->stream_index == stream_index) {
      ret = avcodec_send_packet(codec.get(), packet.get());
      if (ret < 0) note_error(ret);
      drain();
    }
    av_packet_unref(packet.get());
  }
  // End of stream: the decoder's and the resampler's buffered tails.
  ret = avcodec_send_packet(codec.get(), nullptr);
  if (ret >= 0) drain();
  convert(nullptr);

  if (result.samples.empty()) {
    if (errors > 0) throw invalid(last_error);
    if (declared > 0) {
      throw invalid_noting_ffmpeg(fmt::format("the file declares {:.1f} seconds but none of it decodes", declared));
    }
    throw ApiError::bad_request(fmt::format("The {} audio contains no samples.", container), param, "empty_audio");
  }
  if (errors > 0) {
    spdlog::debug("audio decode: {} {} decoded with {} errors, last: {}", container, result.codec, errors,
                  t_last_ffmpeg_error.empty() ? ffmpeg_error(last_error) : t_last_ffmpeg_error);
  }
  // Lossy decoders and resampling overshoot slightly; the engine takes [-1, 1].
  for (float& sample : result.samples)
    sample = std::clamp(sample, -1.0f, 1.0f);
  result.seconds = static_cast<double>(result.samples.size()) / kSpeechSampleRate;
  return result;
}

} // namespace mmserve::media
