// 8-bit weights for LOAD_8BIT: a Q8_0 file is used as it is; an f32, f16 or
// bf16 model is quantized to Q8_0 once into the model cache and reused from
// there (until the source file changes).
#pragma once

#include <string>

namespace mmserve::vlm {

// Returns the path of the Q8_0 model to load. Throws std::runtime_error when
// the model is quantized to another type (requantizing loses quality).
std::string ensure_q8_0(const std::string& model_path, const std::string& cache_dir);

} // namespace mmserve::vlm
