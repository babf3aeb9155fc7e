// How much memory a model takes once loaded, estimated before loading it from
// its files' sizes and headers and the service's settings, so the model
// registry can keep all loaded models within one budget. Estimates err high.
#pragma once

#include "core/config.hpp"

#include <cstdint>
#include <string>

namespace mmserve {

// Weights (mapped files), the KV cache of every slot at max_model_len, the
// compute buffers, and the image-embedding cache when there is a projector.
uint64_t estimate_vision_memory(const std::string& model_path, const std::string& mmproj_path,
                                const VisionConfig& config);

// Weights, plus per decoder state (speech.parallel of them) the self- and
// cross-attention KV caches and the encoder's buffers, from the file's
// hyper-parameters.
uint64_t estimate_speech_memory(const std::string& model_path, const SpeechConfig& config);

// Weights (every .safetensors file of a diffusers folder, or the single
// checkpoint) plus a fifth for activations and the VAE decode.
uint64_t estimate_image_memory(const std::string& model_path);

} // namespace mmserve
