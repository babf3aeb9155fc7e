#include "app/model_memory.hpp"

#include "gguf.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <memory>

namespace mmserve {
namespace {

uint64_t file_size_or_zero(const std::string& path) {
  std::error_code ec;
  const auto size = path.empty() ? 0 : std::filesystem::file_size(path, ec);
  return ec ? 0 : size;
}

// A u32 (or the largest of an array of them: per-layer head counts) from GGUF metadata.
uint64_t gguf_uint(const gguf_context* ctx, const std::string& key, uint64_t fallback) {
  const int64_t id = gguf_find_key(ctx, key.c_str());
  if (id < 0) return fallback;
  switch (gguf_get_kv_type(ctx, id)) {
  case GGUF_TYPE_UINT32: return gguf_get_val_u32(ctx, id);
  case GGUF_TYPE_INT32: return static_cast<uint64_t>(std::max(0, gguf_get_val_i32(ctx, id)));
  case GGUF_TYPE_UINT64: return gguf_get_val_u64(ctx, id);
  case GGUF_TYPE_ARRAY: {
    if (gguf_get_arr_type(ctx, id) != GGUF_TYPE_UINT32 && gguf_get_arr_type(ctx, id) != GGUF_TYPE_INT32)
      return fallback;
    const auto* values = static_cast<const int32_t*>(gguf_get_arr_data(ctx, id));
    uint64_t largest = 0;
    for (size_t i = 0; i < gguf_get_arr_n(ctx, id); ++i)
      largest = std::max<uint64_t>(largest, static_cast<uint64_t>(std::max(0, values[i])));
    return largest ? largest : fallback;
  }
  default: return fallback;
  }
}

} // namespace

uint64_t estimate_vision_memory(const std::string& model_path, const std::string& mmproj_path,
                                const VisionConfig& config) {
  const uint64_t weights = file_size_or_zero(model_path) + file_size_or_zero(mmproj_path);
  uint64_t kv_cache = 0;
  gguf_init_params params{};
  params.no_alloc = true;
  params.ctx = nullptr;
  std::unique_ptr<gguf_context, decltype(&gguf_free)> ctx(gguf_init_from_file(model_path.c_str(), params), gguf_free);
  if (ctx) {
    const int64_t arch_id = gguf_find_key(ctx.get(), "general.architecture");
    const std::string arch = arch_id >= 0 ? gguf_get_val_str(ctx.get(), arch_id) : "llama";
    const uint64_t layers = gguf_uint(ctx.get(), arch + ".block_count", 32);
    const uint64_t embd = gguf_uint(ctx.get(), arch + ".embedding_length", 4096);
    const uint64_t heads = std::max<uint64_t>(1, gguf_uint(ctx.get(), arch + ".attention.head_count", 32));
    const uint64_t kv_heads = gguf_uint(ctx.get(), arch + ".attention.head_count_kv", heads);
    const uint64_t trained = gguf_uint(ctx.get(), arch + ".context_length", config.max_model_len);
    const uint64_t per_slot = std::min<uint64_t>(static_cast<uint64_t>(config.max_model_len), trained);
    const uint64_t tokens = per_slot * static_cast<uint64_t>(config.parallel);
    kv_cache = 2 /* K and V */ * layers * tokens * (embd * kv_heads / heads) * 2 /* f16 */;
  }
  const uint64_t compute = weights / 10 + (32ull << 20);
  const uint64_t image_cache = mmproj_path.empty() ? 0 : config.image_cache_bytes;
  return weights + kv_cache + compute + image_cache;
}

uint64_t estimate_speech_memory(const std::string& model_path, const SpeechConfig& config) {
  const uint64_t weights = file_size_or_zero(model_path);
  // whisper.cpp's file: magic, then n_vocab, n_audio_ctx, n_audio_state,
  // n_audio_head, n_audio_layer, n_text_ctx, n_text_state, n_text_head,
  // n_text_layer, n_mels, ftype (int32 each).
  std::array<int32_t, 12> header{};
  std::ifstream in(model_path, std::ios::binary);
  uint64_t per_state = 64ull << 20;
  if (in.read(reinterpret_cast<char*>(header.data()), sizeof(header)) && header[0] == 0x67676d6c) {
    const auto value = [&](int index) { return static_cast<uint64_t>(std::max(0, header[index])); };
    const uint64_t audio_ctx = value(2), audio_state = value(3), text_ctx = value(6), text_state = value(7),
                   text_layers = value(9);
    const uint64_t kv_self = 2 * text_layers * text_ctx * text_state * 2;
    const uint64_t kv_cross = 2 * text_layers * audio_ctx * text_state * 2;
    // The encoder's activations dominate the compute buffers: a few dozen
    // audio_ctx x audio_state f32 tensors alive at once.
    const uint64_t buffers = 32 * audio_ctx * audio_state * 4 + (16ull << 20);
    per_state = kv_self + kv_cross + buffers;
  }
  return weights + static_cast<uint64_t>(std::max(1, config.parallel)) * per_state;
}

uint64_t estimate_image_memory(const std::string& model_path) {
  namespace fs = std::filesystem;
  uint64_t weights = 0;
  std::error_code ec;
  if (fs::is_directory(model_path, ec)) {
    for (fs::recursive_directory_iterator it(model_path, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().extension() == ".safetensors") weights += file_size_or_zero(it->path().string());
    }
  } else {
    weights = file_size_or_zero(model_path);
  }
  return weights + weights / 5;
}

} // namespace mmserve
