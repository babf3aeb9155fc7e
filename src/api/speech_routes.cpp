#include "api/speech_routes.hpp"

#include "api/engine_response.hpp"
#include "api/transcription_request.hpp"
#include "core/task.hpp"

#include <boost/asio/this_coro.hpp>

namespace mmserve::api {
namespace {

using JobGuard = CancelOnExit<asr::WhisperEngine, asr::AsrJob>;

// The engine's next events; checks every half second that the client is
// still there (a whole transcription can take minutes before its first byte).
Task<std::vector<asr::TranscriptionEvent>> next_events(const asr::WhisperEngine::Submission& submission,
                                                       http::HttpExchange& exchange) {
  std::vector<asr::TranscriptionEvent> events;
  while (events.empty()) {
    const auto now = http::Clock::now();
    if (now >= exchange.deadline()) {
      throw ApiError::timeout("The request took longer than server.request_timeout; the transcription was stopped.");
    }
    events =
        co_await submission.events->next_batch(std::min(exchange.deadline(), now + std::chrono::milliseconds(500)));
    if (events.empty() && exchange.peer_closed()) throw http::ClientGone("client went away during a transcription");
  }
  for (auto& event : events) {
    if (event.kind == asr::TranscriptionEvent::Kind::failed) throw *event.error;
  }
  co_return events;
}

Task<void> respond_whole(const asr::WhisperEngine::Submission& submission, const TranscriptionRequest& request,
                         JobGuard& guard, http::HttpExchange& exchange) {
  Transcript transcript;
  transcript.translation = request.params.translate;
  for (;;) {
    for (auto& event : co_await next_events(submission, exchange)) {
      if (event.kind == asr::TranscriptionEvent::Kind::segment) {
        transcript.segments.push_back(std::move(event.segment));
        continue;
      }
      guard.completed = true;
      transcript.language = event.language;
      transcript.audio_seconds = event.audio_seconds;
      switch (request.format) {
      case TranscriptFormat::json: co_await exchange.respond_json(200, render_json(transcript)); break;
      case TranscriptFormat::verbose_json:
        co_await exchange.respond_json(200, render_verbose_json(transcript, request));
        break;
      case TranscriptFormat::text:
        co_await exchange.respond(200, transcript_text(transcript.segments) + "\n", "text/plain; charset=utf-8");
        break;
      case TranscriptFormat::srt:
        co_await exchange.respond(200, render_srt(transcript.segments), "application/x-subrip; charset=utf-8");
        break;
      case TranscriptFormat::vtt:
        co_await exchange.respond(200, render_vtt(transcript.segments), "text/vtt; charset=utf-8");
        break;
      }
      co_return;
    }
  }
}

// OpenAI's transcript stream: one transcript.text.delta per segment as its
// window finishes, then transcript.text.done with the whole text.
Task<void> respond_stream(const asr::WhisperEngine::Submission& submission, JobGuard& guard,
                          http::HttpExchange& exchange) {
  bool started = false;
  std::string text;
  for (;;) {
    auto events = co_await next_events(submission, exchange);
    if (!started) {
      co_await exchange.begin_stream(200, "text/event-stream");
      started = true;
    }
    std::string out;
    for (auto& event : events) {
      if (event.kind == asr::TranscriptionEvent::Kind::segment) {
        std::string delta = event.segment.text;
        if (text.empty()) delta.erase(0, delta.find_first_not_of(" \t\n")); // the text starts at its first word
        if (delta.empty()) continue;
        text += delta;
        const nlohmann::json payload = {{"type", "transcript.text.delta"}, {"delta", delta}};
        out += sse_data(payload);
        continue;
      }
      guard.completed = true;
      const nlohmann::json payload = {
          {"type", "transcript.text.done"}, {"text", text}, {"usage", duration_usage(event.audio_seconds)}};
      out += sse_data(payload);
      co_await exchange.write_chunk(out);
      co_await exchange.end_stream();
      co_return;
    }
    if (!out.empty()) co_await exchange.write_chunk(out);
  }
}

} // namespace

void register_speech_routes(http::Router& router, ModelRegistry& registry, uint64_t max_audio_bytes,
                            std::shared_ptr<InputArchive> archive) {
  for (const bool translation : {false, true}) {
    auto handler = [&registry, max_audio_bytes, translation, archive](http::HttpExchange& exchange) -> Task<void> {
      // Known before the upload: no point reading 100 MB to answer 503.
      registry.check_servable("speech");
      MultipartLimits limits;
      limits.max_file_bytes = max_audio_bytes;
      MultipartForm form = co_await read_multipart_form(exchange, limits);
      const TranscriptionRequest request = parse_transcription_request(form, translation);
      const std::string id = registry.resolve("speech", request.model, "speech", {"whisper-1"});
      // The lease keeps the model loaded until the answer is written.
      const ModelLease lease = co_await registry.acquire(id, exchange.deadline());
      auto& engine = lease.get<asr::WhisperEngine>();
      if (archive) {
        const auto [extension, content_type] = upload_kind(form.file->filename, form.file->content_type);
        archive->submit("speech", form.file->data, extension, content_type);
      }
      // The upload moves into the job: it is decoded once, on an engine worker.
      auto submission =
          engine.submit(std::move(form.file->data), request.params, co_await boost::asio::this_coro::executor);
      JobGuard guard{submission.job};
      if (request.stream) {
        co_await respond_stream(submission, guard, exchange);
      } else {
        co_await respond_whole(submission, request, guard, exchange);
      }
    };
    router.add("POST", translation ? "/v1/audio/translations" : "/v1/audio/transcriptions", handler);
  }
}

} // namespace mmserve::api
