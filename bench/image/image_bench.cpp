// One benchmark configuration of the diffusion pipeline in its own process
// (so its peak RSS is its own): load, generate one image, print a JSON line
// with seconds per denoising step, the phases and the peak RSS.
//   mmserve_image_bench MODEL_DIR SIZE STEPS [--slicing] [--tiling] [--guidance G] [--threads N]
#include "engines/diffusion/diffusion_pipeline.hpp"

#include <nlohmann/json.hpp>

#include <sys/resource.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

using namespace mmserve::diffusion;

namespace {

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0; // kilobytes on Linux
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr
        << "usage: mmserve_image_bench MODEL_DIR SIZE STEPS [--slicing] [--tiling] [--guidance G] [--threads N]\n";
    return 2;
  }
  PipelineOptions options;
  options.model_path = argv[1];
  const int size = std::stoi(argv[2]);
  const int steps = std::stoi(argv[3]);
  float guidance = 7.0f;
  for (int i = 4; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--slicing"))
      options.attention_slicing = true;
    else if (!std::strcmp(argv[i], "--tiling"))
      options.vae_tiling = true;
    else if (!std::strcmp(argv[i], "--guidance") && i + 1 < argc)
      guidance = std::stof(argv[++i]);
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc)
      options.threads = std::stoi(argv[++i]);
    else {
      std::cerr << "unknown argument " << argv[i] << "\n";
      return 2;
    }
  }
  const auto load_started = std::chrono::steady_clock::now();
  DiffusionPipeline pipeline(options);
  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_started).count();
  const double rss_loaded = peak_rss_mib();

  GenerationRequest request;
  request.prompt = "a photograph of an astronaut riding a horse on the moon, detailed, 8k";
  request.negative_prompt = "blurry, low quality";
  request.width = request.height = size;
  request.steps = steps;
  request.guidance_scale = guidance;
  request.sampler = "euler";
  request.seed = 1;
  std::vector<double> step_seconds;
  nlohmann::json phases = nlohmann::json::object();
  PipelineObserver observer;
  observer.on_step = [&](const StepInfo& info) {
    step_seconds.push_back(info.step_seconds);
    std::cerr << "step " << info.step << "/" << info.steps << ": " << info.step_seconds << " s\n";
    return true;
  };
  observer.on_phase = [&](Phase phase, double seconds) { phases[phase_name(phase)] = seconds; };
  pipeline.generate(request, observer);
  double total = 0;
  for (const double seconds : step_seconds)
    total += seconds;
  nlohmann::json line{
      {"size", size},
      {"steps", steps},
      {"guidance", guidance},
      {"attention_slicing", options.attention_slicing},
      {"vae_tiling", options.vae_tiling},
      {"load_seconds", load_seconds},
      {"seconds_per_step", step_seconds.empty() ? 0.0 : total / static_cast<double>(step_seconds.size())},
      {"phases", phases},
      {"rss_after_load_mib", rss_loaded},
      {"peak_rss_mib", peak_rss_mib()}};
  std::cout << line.dump() << std::endl;
  return 0;
}
