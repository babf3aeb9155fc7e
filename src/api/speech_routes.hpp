// POST /v1/audio/transcriptions and /v1/audio/translations (OpenAI): the
// multipart upload is read (bounded), checked, handed to the speech engine,
// and the transcript written in the requested format or streamed as SSE.
#pragma once

#include "app/input_archive.hpp"
#include "core/model_registry.hpp"
#include "core/router.hpp"
#include "engines/asr/whisper_engine.hpp"

#include <functional>
#include <memory>

namespace mmserve::api {

// Speech models are leased from the registry (its engines are asr::WhisperEngine).
// `archive` (may be null) keeps a copy of each upload in object storage.
void register_speech_routes(http::Router& router, ModelRegistry& registry, uint64_t max_audio_bytes,
                            std::shared_ptr<InputArchive> archive = nullptr);

} // namespace mmserve::api
