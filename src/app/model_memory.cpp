#include "app/model_memory.hpp"

#include "ggml-backend.h"
#include "gguf.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>

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

// The bytes of one tensor in a GGUF file (0 when absent).
uint64_t gguf_tensor_bytes(const gguf_context* ctx, const char* name) {
  const int64_t id = gguf_find_tensor(ctx, name);
  return id < 0 ? 0 : gguf_get_tensor_size(ctx, id);
}

// `bytes` spread over GPUs by `shares` (summing to 1), added to `out`.
void add_by_shares(std::vector<uint64_t>& out, const std::vector<double>& shares, uint64_t bytes) {
  for (size_t gpu = 0; gpu < shares.size(); ++gpu)
    out[gpu] += static_cast<uint64_t>(static_cast<double>(bytes) * shares[gpu] + 0.5);
}

// How llama.cpp spreads layers over the GPUs it is given: by tensor_split
// when set, else by each GPU's free memory (equally when none is known).
std::vector<double> vision_gpu_shares(const VisionConfig& config, const std::vector<GpuInfo>& gpus) {
  const size_t used =
      config.gpu_count > 0 ? std::min<size_t>(gpus.size(), static_cast<size_t>(config.gpu_count)) : gpus.size();
  std::vector<double> shares(used, 0.0);
  for (size_t gpu = 0; gpu < used; ++gpu) {
    if (!config.tensor_split.empty()) {
      shares[gpu] = gpu < config.tensor_split.size() ? std::max(0.0, config.tensor_split[gpu]) : 0.0;
    } else {
      shares[gpu] = static_cast<double>(gpus[gpu].free_bytes);
    }
  }
  const double total = std::accumulate(shares.begin(), shares.end(), 0.0);
  for (double& share : shares)
    share = total > 0 ? share / total : 1.0 / static_cast<double>(used);
  return shares;
}

} // namespace

std::vector<GpuInfo> detect_gpus() {
  std::vector<GpuInfo> gpus;
  for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
    ggml_backend_dev_t device = ggml_backend_dev_get(i);
    if (ggml_backend_dev_type(device) != GGML_BACKEND_DEVICE_TYPE_GPU) continue;
    GpuInfo gpu;
    gpu.name = ggml_backend_dev_name(device);
    size_t free = 0, total = 0;
    ggml_backend_dev_memory(device, &free, &total);
    gpu.free_bytes = free;
    gpu.total_bytes = total;
    gpus.push_back(std::move(gpu));
  }
  return gpus;
}

std::vector<uint64_t> gpu_budgets(const RegistryConfig& config, const std::vector<GpuInfo>& gpus) {
  std::vector<uint64_t> budgets;
  for (size_t gpu = 0; gpu < gpus.size(); ++gpu) {
    if (config.gpu_memory_budget_each && !config.gpu_memory_budget.empty()) {
      budgets.push_back(config.gpu_memory_budget.front());
    } else if (gpu < config.gpu_memory_budget.size()) {
      budgets.push_back(config.gpu_memory_budget[gpu]);
    } else {
      budgets.push_back(gpus[gpu].total_bytes / 10 * 9);
    }
  }
  return budgets;
}

bool device_uses_gpu(const std::string& device, const std::vector<GpuInfo>& gpus) {
  return device != "cpu" && !gpus.empty();
}

MemoryEstimate estimate_vision_memory(const std::string& model_path, const std::string& mmproj_path,
                                      const VisionConfig& config, const std::vector<GpuInfo>& gpus) {
  const uint64_t model_weights = file_size_or_zero(model_path);
  const uint64_t projector = file_size_or_zero(mmproj_path);
  uint64_t kv_cache = 0;
  uint64_t input_embeddings = 0;
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
    input_embeddings = std::min(model_weights, gguf_tensor_bytes(ctx.get(), "token_embd.weight"));
  }
  const uint64_t weights = model_weights + projector;
  const uint64_t compute = weights / 10 + (32ull << 20);
  const uint64_t image_cache = mmproj_path.empty() ? 0 : config.image_cache_bytes;
  MemoryEstimate estimate;
  const auto shares = vision_gpu_shares(config, gpus);
  if (shares.empty()) {
    estimate.host_bytes = weights + kv_cache + compute + image_cache;
    return estimate;
  }
  estimate.gpu_bytes.assign(gpus.size(), 0);
  add_by_shares(estimate.gpu_bytes, shares, model_weights - input_embeddings + kv_cache + compute);
  estimate.gpu_bytes[0] += projector;
  // The input layer runs on the CPU; its small compute buffer rides on the 32 MiB.
  estimate.host_bytes = input_embeddings + image_cache + (32ull << 20);
  return estimate;
}

MemoryEstimate estimate_speech_memory(const std::string& model_path, const SpeechConfig& config,
                                      const std::vector<GpuInfo>& gpus) {
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
  const uint64_t total = weights + static_cast<uint64_t>(std::max(1, config.parallel)) * per_state;
  MemoryEstimate estimate;
  if (!device_uses_gpu(config.device, gpus)) {
    estimate.host_bytes = total;
  } else {
    // whisper.cpp's gpu_device 0; the log-mel spectrogram and the decoders' logits stay on the host.
    estimate.gpu_bytes = {total};
    estimate.host_bytes = static_cast<uint64_t>(std::max(1, config.parallel)) * (16ull << 20) + (32ull << 20);
  }
  return estimate;
}

MemoryEstimate estimate_image_memory(const std::string& model_path, const ImageConfig& config,
                                     const std::vector<GpuInfo>& gpus) {
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
  MemoryEstimate estimate;
  if (!device_uses_gpu(config.device, gpus)) {
    estimate.host_bytes = weights + weights / 5;
  } else {
    estimate.gpu_bytes = {weights + weights / 5};
    estimate.host_bytes = weights / 5 + (64ull << 20);
  }
  return estimate;
}

} // namespace mmserve
