// Whisper weights in the type COMPUTE_TYPE asks for. whisper.cpp models are
// files of its own ggml format (not GGUF); an f32 or f16 model is converted
// once into the model cache and reused from there (until the source
// changes), following the rules of whisper.cpp's own quantizer
// (examples/quantize): a Q8_0 file is byte for byte what `whisper-quantize
// in.bin out.bin q8_0` writes from an f16 model.
#pragma once

#include <string>

namespace mmserve::asr {

enum class WhisperWeights { f32, f16, q8_0 };

// COMPUTE_TYPE names: "float32" -> f32, "float16" -> f16, "int8" and
// "int8_float16" -> q8_0. Throws std::invalid_argument otherwise.
WhisperWeights whisper_weights_of_compute_type(const std::string& compute_type);

// The ftype a whisper ggml file declares in its header, as a ggml_ftype
// (0 f32, 1 f16, 7 Q8_0, ...): the quantization version whisper.cpp's
// quantizer adds (GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR) is taken off,
// as whisper.cpp's loader does. Reads only the header; throws
// std::runtime_error for a file that is not a whisper ggml model.
int whisper_file_ftype(const std::string& path);

// Returns the path of a model file whose weights are of `wanted`: the file
// itself when it already is; otherwise converts it once into cache_dir as
// "<stem>.<f32|f16|q8_0>.bin" (written under a temporary name and renamed
// when complete; reused while not older than the source), logging progress.
// Throws std::runtime_error when the model is quantized (converting it would
// lose quality or only pretend to add precision) or cannot be converted.
std::string ensure_whisper_weights(const std::string& model_path, const std::string& cache_dir, WhisperWeights wanted);

} // namespace mmserve::asr
