// mmserve's Stable Diffusion pipeline on ggml: prompt -> CLIP text
// encoder(s) -> UNet denoising under a sampler with classifier-free guidance
// -> VAE (or TAESD) decode -> RGB. Synchronous: one generation at a time per
// pipeline, called from the image service's worker thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace mmserve::diffusion {

struct PipelineOptions {
  std::string model_path;         // diffusers folder (model_index.json) or single-file .safetensors
  std::string vae = "auto";       // auto (the model's VAE), full (same), taesd (the tiny decoder)
  std::string taesd_dir;          // folder with taesd_decoder/encoder.safetensors (taesdxl_* for SDXL); empty: the
                                  // model folder's "taesd" subfolder, then the model's parent folder
  bool attention_slicing = false; // ENABLE_ATTENTION_SLICING: attention in query slices (bounded memory)
  bool vae_tiling = false;        // ENABLE_VAE_TILING: decode in overlapping tiles
  std::string quantize = "none";  // none, q8_0 (the Linear weights, at load)
  bool use_gpu = false;           // the first GPU ggml has a backend for, else the CPU
  int threads = 0;                // 0: all cores
};

// The model's own defaults (SD 1.x: 512, SDXL: 1024, Turbo: 1 step, no guidance).
struct ModelDefaults {
  int width = 512, height = 512;
  int steps = 20;
  float guidance_scale = 7.0f;
  std::string sampler = "euler_a";
};

struct GenerationRequest {
  std::string prompt;
  std::string negative_prompt;
  int width = 0, height = 0; // multiples of 8; 0: the model's default
  int steps = 0;             // 0: the model's default
  float guidance_scale = -1; // < 0: the model's default; <= 1: no unconditional pass
  std::string sampler;       // one of samplers(); empty: the model's default
  uint64_t seed = 0;         // image i uses seed + i
  int batch = 1;             // images generated one after another
};

enum class Phase { text_encode, denoise, vae_decode };
const char* phase_name(Phase phase);

struct GeneratedImage {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb; // interleaved 8-bit RGB, row-major
  uint64_t seed = 0;
};

struct StepInfo {
  int image_index = 0; // which image of the batch
  int step = 0;        // steps done, 1..steps
  int steps = 0;
  double step_seconds = 0;
  // Renders the current latent through TAESD (empty when no TAESD weights
  // were found). Valid only during the callback; costs one tiny decode.
  std::function<GeneratedImage()> preview;
};

struct PipelineObserver {
  std::function<bool(const StepInfo&)> on_step;        // false: stop (GenerationCancelled is thrown)
  std::function<void(Phase, double seconds)> on_phase; // each phase's duration, per image
};

class GenerationCancelled : public std::runtime_error {
public:
  GenerationCancelled() : std::runtime_error("generation cancelled") {}
};

// Euler, Euler ancestral, DPM++ 2M, DPM++ 2M with Karras sigmas, DDIM, LCM.
const std::vector<std::string>& sampler_names(); // euler euler_a dpmpp_2m dpmpp_2m_karras ddim lcm
// Accepts the webui's names too ("Euler a", "DPM++ 2M Karras", ...); empty when unknown.
std::string canonical_sampler(const std::string& name);

class DiffusionPipeline {
public:
  // Loads every component (blocking). `progress` (0..1, may be empty)
  // follows the weights read. Throws std::runtime_error naming the file and
  // the problem.
  DiffusionPipeline(PipelineOptions options, const std::function<void(float)>& progress = {});
  ~DiffusionPipeline();
  DiffusionPipeline(const DiffusionPipeline&) = delete;
  DiffusionPipeline& operator=(const DiffusionPipeline&) = delete;

  std::string family() const; // sd1 sd2 sdxl
  const ModelDefaults& defaults() const;
  bool has_preview() const;

  // Throws std::invalid_argument for a bad request (size, steps, sampler) with
  // a message fit for a 400, GenerationCancelled when on_step said stop.
  std::vector<GeneratedImage> generate(const GenerationRequest& request, const PipelineObserver& observer = {});

  struct Impl;

private:
  std::unique_ptr<Impl> impl_;
};

} // namespace mmserve::diffusion
