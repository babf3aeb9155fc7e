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

// Turns llama.cpp's "[  12/  57] tensor ..." lines into progress in the log.
void report_progress(ggml_log_level, const char* text, void* user) {
  static const std::regex progress(R"(^\[\s*(\d+)/\s*(\d+)\])");
  std::cmatch match;
  if (!std::regex_search(text, match, progress)) return;
  const int done = std::stoi(match[1]), total = std::stoi(match[2]);
  auto& last_decile = *static_cast<int*>(user);
  const int decile = total > 0 ? done * 10 / total : 10;
  if (decile == last_decile) return;
  last_decile = decile;
  spdlog::info("quantizing to Q8_0: {}/{} tensors ({}%)", done, total, done * 100 / std::max(total, 1));
}

} // namespace

std::string ensure_q8_0(const std::string& model_path, const std::string& cache_dir) {
  init_engine_backend();
  const int type = file_type(model_path);
  if (type == LLAMA_FTYPE_MOSTLY_Q8_0) return model_path;
  if (type != -1 && type != LLAMA_FTYPE_ALL_F32 && type != LLAMA_FTYPE_MOSTLY_F16 && type != LLAMA_FTYPE_MOSTLY_BF16) {
    throw std::runtime_error(fmt::format("LOAD_8BIT needs a Q8_0 file or an f32/f16/bf16 model to quantize; '{}' is "
                                         "already quantized (file type {})",
                                         model_path, type));
  }
  const fs::path source(model_path);
  const fs::path target = fs::path(cache_dir) / (source.stem().string() + ".q8_0.gguf");
  std::error_code ec;
  if (fs::exists(target, ec) && fs::last_write_time(target, ec) >= fs::last_write_time(source, ec)) {
    spdlog::info("LOAD_8BIT: using the Q8_0 copy in the model cache: {}", target.string());
    return target.string();
  }
  fs::create_directories(target.parent_path(), ec);
  if (ec) throw std::runtime_error(fmt::format("cannot create the model cache '{}': {}", cache_dir, ec.message()));
  // Written under a temporary name, renamed when complete: no half file is ever taken for a model.
  const fs::path partial = target.string() + fmt::format(".part-{}", getpid());
  spdlog::info("LOAD_8BIT: quantizing '{}' to Q8_0 once, into '{}'", model_path, target.string());
  const auto started = std::chrono::steady_clock::now();
  auto params = llama_model_quantize_default_params();
  params.ftype = LLAMA_FTYPE_MOSTLY_Q8_0;
  int last_decile = -1;
  llama_log_set(report_progress, &last_decile);
  const uint32_t rc = llama_model_quantize(model_path.c_str(), partial.c_str(), &params);
  use_engine_logging();
  if (rc != 0) {
    fs::remove(partial, ec);
    throw std::runtime_error(fmt::format("quantizing '{}' to Q8_0 failed", model_path));
  }
  fs::rename(partial, target, ec);
  if (ec) throw std::runtime_error(fmt::format("cannot move the Q8_0 file into '{}': {}", cache_dir, ec.message()));
  spdlog::info("LOAD_8BIT: Q8_0 written in {:.1f} s ({} -> {} bytes)",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(),
               fs::file_size(source, ec), fs::file_size(target, ec));
  return target.string();
}

} // namespace mmserve::vlm
