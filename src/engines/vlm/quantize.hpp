// Weights in the type asked for, made once into the model cache: LOAD_8BIT
// (Q8_0) and vLLM's --dtype (float16, bfloat16, float32). A file already of
// that type is used as it is; an f32, f16 or bf16 model is converted once
// into the model cache and reused from there (until the source changes).
#pragma once

#include <string>

namespace mmserve::vlm {

enum class WeightType { q8_0, f16, bf16, f32 };
// "float16"/"half", "bfloat16", "float32"/"float" as vision.dtype names them.
WeightType weight_type_of_dtype(const std::string& dtype);

// Returns the path of the model to load. Throws std::runtime_error when the
// model is quantized to another type (converting it would lose quality or
// only pretend to add precision).
std::string ensure_weight_type(const std::string& model_path, const std::string& cache_dir, WeightType type);

inline std::string ensure_q8_0(const std::string& model_path, const std::string& cache_dir) {
  return ensure_weight_type(model_path, cache_dir, WeightType::q8_0);
}

} // namespace mmserve::vlm
