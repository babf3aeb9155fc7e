#include "engines/diffusion/sampler.hpp"

#include "core/text.hpp"
#include "engines/diffusion/diffusion_pipeline.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <numbers>
#include <stdexcept>

namespace mmserve::diffusion {

const std::vector<std::string>& sampler_names() {
  static const std::vector<std::string> names{"euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "lcm"};
  return names;
}

std::string canonical_sampler(const std::string& name) {
  std::string key;
  for (const char c : name) {
    if (std::isalnum(static_cast<unsigned char>(c))) key += text::ascii_lower(c);
  }
  // Our names and the webui's ("Euler a", "DPM++ 2M Karras", ...) without spaces, signs and case.
  static const std::map<std::string, std::string> aliases{{"euler", "euler"},
                                                          {"eulera", "euler_a"},
                                                          {"eulerancestral", "euler_a"},
                                                          {"dpmpp2m", "dpmpp_2m"},
                                                          {"dpm2m", "dpmpp_2m"},
                                                          {"dpmpp2mkarras", "dpmpp_2m_karras"},
                                                          {"dpm2mkarras", "dpmpp_2m_karras"},
                                                          {"ddim", "ddim"},
                                                          {"lcm", "lcm"}};
  const auto found = aliases.find(key);
  return found == aliases.end() ? std::string() : found->second;
}

NoiseSchedule NoiseSchedule::from_json(const nlohmann::json& config) {
  NoiseSchedule schedule;
  schedule.train_steps = config.value("num_train_timesteps", schedule.train_steps);
  schedule.beta_start = config.value("beta_start", schedule.beta_start);
  schedule.beta_end = config.value("beta_end", schedule.beta_end);
  schedule.beta_schedule = config.value("beta_schedule", schedule.beta_schedule);
  schedule.prediction = config.value("prediction_type", schedule.prediction);
  schedule.spacing = config.value("timestep_spacing", schedule.spacing);
  schedule.steps_offset = config.value("steps_offset", schedule.steps_offset);
  if (schedule.beta_schedule != "scaled_linear" && schedule.beta_schedule != "linear") {
    throw std::runtime_error(
        fmt::format("scheduler: beta_schedule '{}' (scaled_linear or linear expected)", schedule.beta_schedule));
  }
  if (schedule.prediction != "epsilon" && schedule.prediction != "v_prediction") {
    throw std::runtime_error(
        fmt::format("scheduler: prediction_type '{}' (epsilon or v_prediction expected)", schedule.prediction));
  }
  if (schedule.spacing != "leading" && schedule.spacing != "trailing" && schedule.spacing != "linspace") {
    throw std::runtime_error(
        fmt::format("scheduler: timestep_spacing '{}' (leading, trailing or linspace expected)", schedule.spacing));
  }
  if (schedule.train_steps < 2 || schedule.train_steps > 100000) {
    throw std::runtime_error(fmt::format("scheduler: num_train_timesteps {}", schedule.train_steps));
  }
  schedule.compute();
  return schedule;
}

void NoiseSchedule::compute() {
  alphas_cumprod.assign(static_cast<size_t>(train_steps), 0.0);
  double product = 1.0;
  for (int i = 0; i < train_steps; ++i) {
    const double at = static_cast<double>(i) / (train_steps - 1);
    double beta = 0;
    if (beta_schedule == "scaled_linear") {
      const double root = std::sqrt(beta_start) + at * (std::sqrt(beta_end) - std::sqrt(beta_start));
      beta = root * root;
    } else {
      beta = beta_start + at * (beta_end - beta_start);
    }
    product *= 1.0 - beta;
    alphas_cumprod[static_cast<size_t>(i)] = product;
  }
}

double NoiseSchedule::sigma_at(double timestep) const {
  const auto sigma_of = [this](size_t i) { return std::sqrt((1 - alphas_cumprod[i]) / alphas_cumprod[i]); };
  const double t = std::clamp(timestep, 0.0, static_cast<double>(train_steps - 1));
  const auto low = static_cast<size_t>(std::floor(t));
  const size_t high = std::min(low + 1, alphas_cumprod.size() - 1);
  const double weight = t - static_cast<double>(low);
  return (1 - weight) * sigma_of(low) + weight * sigma_of(high);
}

double NoiseSchedule::timestep_of(double sigma) const {
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  const auto log_sigma_of = [this](size_t i) {
    return std::log(std::sqrt((1 - alphas_cumprod[i]) / alphas_cumprod[i]));
  };
  // Sigmas grow with the timestep: find the bracketing pair.
  size_t low = 0;
  while (low + 2 < alphas_cumprod.size() && log_sigma_of(low + 1) <= log_sigma)
    ++low;
  const double a = log_sigma_of(low), b = log_sigma_of(low + 1);
  const double weight = std::clamp((a - log_sigma) / (a - b), 0.0, 1.0);
  return static_cast<double>(low) + weight;
}

std::vector<double> NoiseSchedule::timesteps(int steps) const {
  std::vector<double> result;
  const int total = train_steps;
  if (spacing == "linspace") {
    for (int i = steps - 1; i >= 0; --i)
      result.push_back(steps == 1 ? total - 1.0 : (total - 1.0) * i / (steps - 1));
  } else if (spacing == "leading") {
    const int ratio = std::max(1, total / steps);
    for (int i = steps - 1; i >= 0; --i)
      result.push_back(std::min<double>(total - 1, static_cast<double>(i) * ratio + steps_offset));
  } else { // trailing
    const double ratio = static_cast<double>(total) / steps;
    for (int i = 0; i < steps; ++i)
      result.push_back(std::max(0.0, std::round(total - i * ratio) - 1));
  }
  return result;
}

std::vector<float> GaussianNoise::sample(size_t count) {
  std::vector<float> values(count);
  constexpr double kTwoPi = 2 * std::numbers::pi;
  for (size_t i = 0; i < count; i += 2) {
    // 53 random bits -> (0, 1]
    const double u1 = (static_cast<double>(engine_() >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = static_cast<double>(engine_() >> 11) * 0x1.0p-53;
    const double radius = std::sqrt(-2.0 * std::log(u1));
    values[i] = static_cast<float>(radius * std::cos(kTwoPi * u2));
    if (i + 1 < count) values[i + 1] = static_cast<float>(radius * std::sin(kTwoPi * u2));
  }
  return values;
}

SigmaPlan plan_sigmas(const NoiseSchedule& schedule, int steps, bool karras) {
  SigmaPlan plan;
  plan.timesteps = schedule.timesteps(steps);
  for (const double t : plan.timesteps)
    plan.sigmas.push_back(schedule.sigma_at(t));
  if (karras && steps > 1) {
    constexpr double kRho = 7.0;
    const double max_inverse = std::pow(plan.sigmas.front(), 1 / kRho);
    const double min_inverse = std::pow(plan.sigmas.back(), 1 / kRho);
    for (int i = 0; i < steps; ++i) {
      const double ramp = static_cast<double>(i) / (steps - 1);
      plan.sigmas[static_cast<size_t>(i)] = std::pow(max_inverse + ramp * (min_inverse - max_inverse), kRho);
      plan.timesteps[static_cast<size_t>(i)] = schedule.timestep_of(plan.sigmas[static_cast<size_t>(i)]);
    }
  }
  plan.sigmas.push_back(0.0);
  return plan;
}

namespace {

// The k-diffusion denoiser: the clean latent estimated from x at sigma.
std::vector<float> denoise(const NoiseSchedule& schedule, const ModelCall& model, const std::vector<float>& x,
                           double sigma, double timestep) {
  const double c_in = 1.0 / std::sqrt(sigma * sigma + 1.0);
  std::vector<float> input(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    input[i] = static_cast<float>(x[i] * c_in);
  const std::vector<float> out = model(input, timestep);
  std::vector<float> denoised(x.size());
  if (schedule.prediction == "v_prediction") {
    const double c_skip = 1.0 / (sigma * sigma + 1.0);
    const double c_out = -sigma * c_in;
    for (size_t i = 0; i < x.size(); ++i)
      denoised[i] = static_cast<float>(x[i] * c_skip + out[i] * c_out);
  } else {
    for (size_t i = 0; i < x.size(); ++i)
      denoised[i] = static_cast<float>(x[i] - sigma * out[i]);
  }
  return denoised;
}

void report_or_stop(const StepReport& report, int step, const std::vector<float>& denoised) {
  if (report && !report(step, denoised)) throw SamplerCancelled();
}

// Euler / Euler ancestral / DDIM over the sigmas (DDIM's last sigma is the
// schedule's smallest, not 0: the result is then rescaled to the VP latent).
std::vector<float> sample_euler(const NoiseSchedule& schedule, const SigmaPlan& plan, std::vector<float> x,
                                bool ancestral, GaussianNoise& rng, const ModelCall& model, const StepReport& report) {
  const size_t steps = plan.timesteps.size();
  for (size_t i = 0; i < steps; ++i) {
    const double sigma = plan.sigmas[i], next = plan.sigmas[i + 1];
    const auto denoised = denoise(schedule, model, x, sigma, plan.timesteps[i]);
    double target = next, up = 0;
    if (ancestral && next > 0) {
      up = std::min(next, std::sqrt(next * next * (sigma * sigma - next * next) / (sigma * sigma)));
      target = std::sqrt(next * next - up * up);
    }
    for (size_t j = 0; j < x.size(); ++j) {
      const double derivative = (x[j] - denoised[j]) / sigma;
      x[j] = static_cast<float>(x[j] + derivative * (target - sigma));
    }
    if (up > 0) {
      const auto fresh = rng.sample(x.size());
      for (size_t j = 0; j < x.size(); ++j)
        x[j] = static_cast<float>(x[j] + fresh[j] * up);
    }
    report_or_stop(report, static_cast<int>(i + 1), denoised);
  }
  return x;
}

// k-diffusion's sample_dpmpp_2m: second order from the previous step's estimate.
std::vector<float> sample_dpmpp_2m(const NoiseSchedule& schedule, const SigmaPlan& plan, std::vector<float> x,
                                   const ModelCall& model, const StepReport& report) {
  const size_t steps = plan.timesteps.size();
  std::vector<float> previous;
  for (size_t i = 0; i < steps; ++i) {
    const double sigma = plan.sigmas[i], next = plan.sigmas[i + 1];
    const auto denoised = denoise(schedule, model, x, sigma, plan.timesteps[i]);
    if (next == 0) {
      x = denoised;
    } else {
      const double t = -std::log(sigma), t_next = -std::log(next);
      const double h = t_next - t;
      const double ratio = next / sigma, mix = -std::expm1(-h);
      if (previous.empty()) {
        for (size_t j = 0; j < x.size(); ++j)
          x[j] = static_cast<float>(ratio * x[j] + mix * denoised[j]);
      } else {
        const double h_last = t - (-std::log(plan.sigmas[i - 1]));
        const double r = h_last / h;
        const double a = 1 + 1 / (2 * r), b = 1 / (2 * r);
        for (size_t j = 0; j < x.size(); ++j)
          x[j] = static_cast<float>(ratio * x[j] + mix * (a * denoised[j] - b * previous[j]));
      }
    }
    previous = denoised;
    report_or_stop(report, static_cast<int>(i + 1), denoised);
  }
  return x;
}

// diffusers' LCMScheduler: 50 original steps, boundary conditions with timestep_scaling 10.
std::vector<float> sample_lcm(const NoiseSchedule& schedule, int steps, std::vector<float> x, GaussianNoise& rng,
                              const ModelCall& model, const StepReport& report) {
  constexpr int kOriginalSteps = 50;
  constexpr double kSigmaData = 0.5, kTimestepScaling = 10.0;
  const int stride = schedule.train_steps / kOriginalSteps;
  const int skip = std::max(1, kOriginalSteps / steps);
  std::vector<int> timesteps;
  for (int i = kOriginalSteps - 1; i >= 0 && static_cast<int>(timesteps.size()) < steps; i -= skip)
    timesteps.push_back((i + 1) * stride - 1);
  std::vector<float> denoised;
  for (size_t i = 0; i < timesteps.size(); ++i) {
    const int t = timesteps[i];
    const double alpha = schedule.alphas_cumprod[static_cast<size_t>(t)];
    const std::vector<float> out = model(x, t);
    const double scaled = t * kTimestepScaling;
    const double c_skip = kSigmaData * kSigmaData / (scaled * scaled + kSigmaData * kSigmaData);
    const double c_out = scaled / std::sqrt(scaled * scaled + kSigmaData * kSigmaData);
    denoised.assign(x.size(), 0.0f);
    for (size_t j = 0; j < x.size(); ++j) {
      const double predicted = schedule.prediction == "v_prediction"
                                   ? std::sqrt(alpha) * x[j] - std::sqrt(1 - alpha) * out[j]
                                   : (x[j] - std::sqrt(1 - alpha) * out[j]) / std::sqrt(alpha);
      denoised[j] = static_cast<float>(c_out * predicted + c_skip * x[j]);
    }
    if (i + 1 < timesteps.size()) {
      const double alpha_prev = schedule.alphas_cumprod[static_cast<size_t>(timesteps[i + 1])];
      const auto fresh = rng.sample(x.size());
      for (size_t j = 0; j < x.size(); ++j)
        x[j] = static_cast<float>(std::sqrt(alpha_prev) * denoised[j] + std::sqrt(1 - alpha_prev) * fresh[j]);
    } else {
      x = denoised;
    }
    report_or_stop(report, static_cast<int>(i + 1), denoised);
  }
  return x;
}

} // namespace

std::vector<float> run_sampler(const std::string& sampler, const NoiseSchedule& schedule, int steps,
                               std::vector<float> noise, GaussianNoise& rng, const ModelCall& model,
                               const StepReport& report) {
  if (steps < 1) throw std::invalid_argument("steps must be at least 1");
  if (sampler == "lcm") return sample_lcm(schedule, steps, std::move(noise), rng, model, report);
  const bool karras = sampler == "dpmpp_2m_karras";
  SigmaPlan plan = plan_sigmas(schedule, steps, karras);
  double final_sigma = 0;
  if (sampler == "ddim") {
    // DDIM ends at the first training step's noise level (set_alpha_to_one false), then leaves sigma space.
    final_sigma = std::sqrt((1 - schedule.alphas_cumprod[0]) / schedule.alphas_cumprod[0]);
    plan.sigmas.back() = final_sigma;
  }
  // diffusers' init_noise_sigma: sigma_max for linspace/trailing spacing, sqrt(sigma_max^2 + 1) otherwise.
  const double sigma_max = plan.sigmas.front();
  const double initial = schedule.spacing == "leading" ? std::sqrt(sigma_max * sigma_max + 1) : sigma_max;
  for (float& value : noise)
    value = static_cast<float>(value * (sampler == "ddim" ? std::sqrt(sigma_max * sigma_max + 1) : initial));
  std::vector<float> x;
  if (sampler == "euler" || sampler == "euler_a" || sampler == "ddim") {
    x = sample_euler(schedule, plan, std::move(noise), sampler == "euler_a", rng, model, report);
  } else if (sampler == "dpmpp_2m" || karras) {
    x = sample_dpmpp_2m(schedule, plan, std::move(noise), model, report);
  } else {
    throw std::invalid_argument(fmt::format("unknown sampler '{}'", sampler));
  }
  if (final_sigma > 0) {
    for (float& value : x)
      value = static_cast<float>(value / std::sqrt(final_sigma * final_sigma + 1));
  }
  return x;
}

} // namespace mmserve::diffusion
