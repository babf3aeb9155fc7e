// How much memory a model takes once loaded, estimated before loading it from
// its files' sizes and headers and the service's settings, so the model
// registry can keep all loaded models within one budget. Estimates err high.
#pragma once

#include "core/config.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace mmserve {

// A GPU as ggml reports it: the registry's per-GPU budgets and where the
// estimates below place a model's memory.
struct GpuInfo {
  std::string name;
  uint64_t total_bytes = 0;
  uint64_t free_bytes = 0;
};
// The GPUs of ggml's backends, in ggml's order (empty in a CPU-only build).
std::vector<GpuInfo> detect_gpus();
// The per-GPU budgets: registry.gpu_memory_budget, or 90% of each GPU's memory.
std::vector<uint64_t> gpu_budgets(const RegistryConfig& config, const std::vector<GpuInfo>& gpus);

// Whether speech.device / image.device (cpu, cuda, auto) puts the model on
// the first GPU: the engines and the estimates below follow this one rule.
bool device_uses_gpu(const std::string& device, const std::vector<GpuInfo>& gpus);

// A model's memory once loaded: in host memory and on each GPU (index as in
// detect_gpus(); trailing GPUs it does not use may be left out).
struct MemoryEstimate {
  uint64_t host_bytes = 0;
  std::vector<uint64_t> gpu_bytes;
};

// Weights (mapped files), the KV cache of every slot at max_model_len, the
// compute buffers, and the image-embedding cache when there is a projector.
// With GPUs, llama.cpp's placement: every layer offloaded, split over the
// first vision.gpu_count GPUs (0: all) by vision.tensor_split or, without
// one, by each GPU's free memory; the projector on the first GPU; the input
// embeddings and the image-embedding cache stay in host memory.
MemoryEstimate estimate_vision_memory(const std::string& model_path, const std::string& mmproj_path,
                                      const VisionConfig& config, const std::vector<GpuInfo>& gpus = {});

// Weights, plus per decoder state (speech.parallel of them) the self- and
// cross-attention KV caches and the encoder's buffers, from the file's
// hyper-parameters; all on the first GPU when speech.device allows one.
MemoryEstimate estimate_speech_memory(const std::string& model_path, const SpeechConfig& config,
                                      const std::vector<GpuInfo>& gpus = {});

// Weights (every .safetensors file of a diffusers folder, or the single
// checkpoint) plus a fifth for activations and the VAE decode; on the first
// GPU when image.device allows one (the weights pass through host memory
// while they load: a fifth of them is kept in the host estimate).
MemoryEstimate estimate_image_memory(const std::string& model_path, const ImageConfig& config,
                                     const std::vector<GpuInfo>& gpus = {});

} // namespace mmserve
