#include "engines/vlm/quantize.hpp"

#include "engines/vlm/vlm_engine.hpp"

#include "gguf.h"
#include "llama.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <regex>
#include <unistd.h>

namespace mmserve::vlm {
namespace fs = std::filesystem;
namespace {

// general.file_type of a GGUF file (a llama_ftype), or -1 when absent.
int file_type(const std::string& path) {
  gguf_init_params params{true, nullptr};
  gguf_context* context = gguf_init_from_file(path.c_str(), params);
  if (!context) throw std::runtime_error(fmt::format("'{}' is not a readable GGUF file", path));
  int type = -1;
  const int64_t key = gguf_find_key(context, "general.file_type");
  if (key >= 0) type = static_cast<int>(gguf_get_val_u32(context, key));
  gguf_free(context);
  return type;
}

struct TypeInfo {
  llama_ftype ftype;
  const char* name;   // in logs
  const char* suffix; // in the cached file's name
  const char* reason; // what asked for it
};

TypeInfo info_of(WeightType type) {
  switch (type) {
  case WeightType::q8_0: return {LLAMA_FTYPE_MOSTLY_Q8_0, "Q8_0", "q8_0", "LOAD_8BIT"};
  case WeightType::f16: return {LLAMA_FTYPE_MOSTLY_F16, "F16", "f16", "vision.dtype"};
  case WeightType::bf16: return {LLAMA_FTYPE_MOSTLY_BF16, "BF16", "bf16", "vision.dtype"};
  case WeightType::f32: return {LLAMA_FTYPE_ALL_F32, "F32", "f32", "vision.dtype"};
  }
  throw std::logic_error("unknown weight type");
}

struct Progress {
  const char* name;
  int last_decile = -1;
};

// Turns llama.cpp's "[  12/  57] tensor ..." lines into progress in the log.
void report_progress(ggml_log_level, const char* text, void* user) {
  static const std::regex progress(R"(^\[\s*(\d+)/\s*(\d+)\])");
  std::cmatch match;
  if (!std::regex_search(text, match, progress)) return;
  const int done = std::stoi(match[1]), total = std::stoi(match[2]);
  auto& state = *static_cast<Progress*>(user);
  const int decile = total > 0 ? done * 10 / total : 10;
  if (decile == state.last_decile) return;
  state.last_decile = decile;
  spdlog::info("converting to {}: {}/{} tensors ({}%)", state.name, done, total, done * 100 / std::max(total, 1));
}

} // namespace

WeightType weight_type_of_dtype(const std::string& dtype) {
  if (dtype == "float16" || dtype == "half") return WeightType::f16;
  if (dtype == "bfloat16") return WeightType::bf16;
  if (dtype == "float32" || dtype == "float") return WeightType::f32;
  throw std::invalid_argument("unknown dtype '" + dtype + "' (float16, bfloat16, float32)");
}

std::string ensure_weight_type(const std::string& model_path, const std::string& cache_dir, WeightType wanted) {
  init_engine_backend();
  const TypeInfo info = info_of(wanted);
  const int type = file_type(model_path);
  if (type == info.ftype) return model_path;
  if (type != -1 && type != LLAMA_FTYPE_ALL_F32 && type != LLAMA_FTYPE_MOSTLY_F16 && type != LLAMA_FTYPE_MOSTLY_BF16) {
    throw std::runtime_error(fmt::format("{} {} needs a {} file or an f32/f16/bf16 model to convert; '{}' is "
                                         "already quantized (file type {})",
                                         info.reason, info.name, info.name, model_path, type));
  }
  const fs::path source(model_path);
  const fs::path target = fs::path(cache_dir) / fmt::format("{}.{}.gguf", source.stem().string(), info.suffix);
  std::error_code ec;
  if (fs::exists(target, ec) && fs::last_write_time(target, ec) >= fs::last_write_time(source, ec)) {
    spdlog::info("{}: using the {} copy in the model cache: {}", info.reason, info.name, target.string());
    return target.string();
  }
  fs::create_directories(target.parent_path(), ec);
  if (ec) throw std::runtime_error(fmt::format("cannot create the model cache '{}': {}", cache_dir, ec.message()));
  // Written under a temporary name, renamed when complete: no half file is ever taken for a model.
  const fs::path partial = target.string() + fmt::format(".part-{}", getpid());
  spdlog::info("{}: converting '{}' to {} once, into '{}'", info.reason, model_path, info.name, target.string());
  const auto started = std::chrono::steady_clock::now();
  auto params = llama_model_quantize_default_params();
  params.ftype = info.ftype;
  Progress progress{info.name};
  llama_log_set(report_progress, &progress);
  const uint32_t rc = llama_model_quantize(model_path.c_str(), partial.c_str(), &params);
  use_engine_logging();
  if (rc != 0) {
    fs::remove(partial, ec);
    throw std::runtime_error(fmt::format("converting '{}' to {} failed", model_path, info.name));
  }
  fs::rename(partial, target, ec);
  if (ec)
    throw std::runtime_error(fmt::format("cannot move the {} file into '{}': {}", info.name, cache_dir, ec.message()));
  spdlog::info("{}: {} written in {:.1f} s ({} -> {} bytes)", info.reason, info.name,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(),
               fs::file_size(source, ec), fs::file_size(target, ec));
  return target.string();
}

} // namespace mmserve::vlm
