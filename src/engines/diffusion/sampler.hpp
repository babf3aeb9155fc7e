// The noise schedule of a diffusers scheduler_config.json and the samplers
// that walk it: Euler, Euler ancestral, DPM++ 2M (plain or Karras sigmas),
// DDIM (eta 0) and LCM. The k-diffusion samplers work on x = x0 + sigma*eps;
// DDIM and LCM on the variance-preserving latent. Pure arithmetic on host
// vectors: the model is a callback.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace mmserve::diffusion {

struct NoiseSchedule {
  int train_steps = 1000;
  float beta_start = 0.00085f, beta_end = 0.012f;
  std::string beta_schedule = "scaled_linear"; // scaled_linear linear
  std::string prediction = "epsilon";          // epsilon v_prediction
  std::string spacing = "leading";             // leading trailing linspace
  int steps_offset = 1;
  std::vector<double> alphas_cumprod;

  // Missing keys keep the defaults above (SD 1.x's). Throws std::runtime_error for unknown values.
  static NoiseSchedule from_json(const nlohmann::json& config);
  void compute();
  double sigma_at(double timestep) const; // interpolated
  double timestep_of(double sigma) const; // interpolated in log sigma
  std::vector<double> timesteps(int steps) const;
};

// Standard normal numbers from a seed: the same sequence on every machine
// (mt19937_64 and Box-Muller, not the library's unspecified distribution).
class GaussianNoise {
public:
  explicit GaussianNoise(uint64_t seed) : engine_(seed) {}
  std::vector<float> sample(size_t count);

private:
  std::mt19937_64 engine_;
};

// The model's raw output (noise or v) for `input` at `timestep`.
using ModelCall = std::function<std::vector<float>(const std::vector<float>& input, double timestep)>;
// After each step: step number (1-based) and the current estimate of the clean latent. false: stop.
using StepReport = std::function<bool(int step, const std::vector<float>& denoised)>;

class SamplerCancelled : public std::exception {
public:
  const char* what() const noexcept override { return "sampling cancelled"; }
};

// Runs `sampler` for `steps` from unit noise `noise`; returns the clean latent.
// Throws std::invalid_argument for an unknown sampler, SamplerCancelled when `report` says stop.
std::vector<float> run_sampler(const std::string& sampler, const NoiseSchedule& schedule, int steps,
                               std::vector<float> noise, GaussianNoise& rng, const ModelCall& model,
                               const StepReport& report);

// The sigmas (descending, ending in 0) and matching timesteps a k-sampler uses.
struct SigmaPlan {
  std::vector<double> sigmas;
  std::vector<double> timesteps;
};
SigmaPlan plan_sigmas(const NoiseSchedule& schedule, int steps, bool karras);

} // namespace mmserve::diffusion
