// The samplers against an analytic model: when every training image is the
// same latent c, the ideal noise prediction at any noise level is known in
// closed form, so every sampler (and both parameterisations) must end at c.
// The schedules are checked against diffusers' published timesteps.
#include "engines/diffusion/diffusion_pipeline.hpp"
#include "engines/diffusion/sampler.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>

using namespace mmserve::diffusion;

namespace {

NoiseSchedule schedule_with(const std::string& prediction, const std::string& spacing) {
  return NoiseSchedule::from_json({{"prediction_type", prediction}, {"timestep_spacing", spacing}});
}

// The exact model output for data that is always `target`, given the VP
// latent x = a*target + s*eps at `timestep`.
ModelCall oracle(const NoiseSchedule& schedule, const std::vector<float>& target) {
  return [&schedule, target](const std::vector<float>& input, double timestep) {
    const double sigma = schedule.sigma_at(timestep);
    const double a = 1 / std::sqrt(1 + sigma * sigma), s = sigma * a;
    std::vector<float> out(input.size());
    for (size_t i = 0; i < input.size(); ++i) {
      const double eps = (input[i] - a * target[i]) / s;
      out[i] = static_cast<float>(schedule.prediction == "v_prediction" ? a * eps - s * target[i] : eps);
    }
    return out;
  };
}

} // namespace

TEST(DiffusionSampler, EverySamplerReachesTheOnlyImageTheModelKnows) {
  const std::vector<float> target{0.5f, -1.25f, 2.0f, 0.0f, -0.3f, 1.1f};
  for (const std::string prediction : {"epsilon", "v_prediction"}) {
    for (const std::string spacing : {"leading", "trailing", "linspace"}) {
      const NoiseSchedule schedule = schedule_with(prediction, spacing);
      for (const auto& sampler : sampler_names()) {
        if (sampler == "ddim") continue; // ends at the first training step's noise: its own test below
        for (const int steps : {1, 4, 20}) {
          GaussianNoise rng(1234);
          int reported = 0;
          const auto result =
              run_sampler(sampler, schedule, steps, rng.sample(target.size()), rng, oracle(schedule, target),
                          [&](int step, const std::vector<float>&) { return ++reported == step; });
          EXPECT_EQ(reported, steps) << sampler;
          for (size_t i = 0; i < target.size(); ++i) {
            EXPECT_NEAR(result[i], target[i], 2e-3)
                << sampler << " " << prediction << " " << spacing << " steps " << steps << " index " << i;
          }
        }
      }
    }
  }
}

// DDIM as diffusers' DDIMScheduler.step writes it (eta 0, set_alpha_to_one
// false), on the variance-preserving latent, against run_sampler's
// sigma-space Euler walk that ends at the first training step's sigma.
TEST(DiffusionSampler, DdimEqualsTheTextbookUpdate) {
  const std::vector<float> target{0.5f, -1.25f, 2.0f, 0.0f, -0.3f, 1.1f};
  for (const std::string prediction : {"epsilon", "v_prediction"}) {
    for (const std::string spacing : {"leading", "trailing"}) {
      const NoiseSchedule schedule = schedule_with(prediction, spacing);
      const ModelCall model = oracle(schedule, target);
      for (const int steps : {1, 4, 20}) {
        GaussianNoise rng(99);
        const auto noise = rng.sample(target.size());
        const auto ours = run_sampler("ddim", schedule, steps, noise, rng, model, {});
        const auto timesteps = schedule.timesteps(steps);
        std::vector<double> x(noise.begin(), noise.end());
        for (size_t i = 0; i < timesteps.size(); ++i) {
          const double alpha = schedule.alphas_cumprod[static_cast<size_t>(timesteps[i])];
          const double alpha_prev = i + 1 < timesteps.size()
                                        ? schedule.alphas_cumprod[static_cast<size_t>(timesteps[i + 1])]
                                        : schedule.alphas_cumprod[0];
          const auto out = model(std::vector<float>(x.begin(), x.end()), timesteps[i]);
          for (size_t j = 0; j < x.size(); ++j) {
            const double eps =
                prediction == "epsilon" ? out[j] : std::sqrt(alpha) * out[j] + std::sqrt(1 - alpha) * x[j];
            const double x0 = (x[j] - std::sqrt(1 - alpha) * eps) / std::sqrt(alpha);
            x[j] = std::sqrt(alpha_prev) * x0 + std::sqrt(1 - alpha_prev) * eps;
          }
        }
        for (size_t j = 0; j < x.size(); ++j)
          EXPECT_NEAR(ours[j], x[j], 1e-4) << prediction << " " << spacing << " steps " << steps << " index " << j;
      }
    }
  }
}

TEST(DiffusionSampler, TimestepsFollowDiffusersSpacing) {
  // EulerDiscreteScheduler.set_timesteps(20) with SD 1.5's config (leading, steps_offset 1).
  const auto leading = schedule_with("epsilon", "leading").timesteps(20);
  ASSERT_EQ(leading.size(), 20u);
  EXPECT_EQ(leading.front(), 951);
  EXPECT_EQ(leading[1], 901);
  EXPECT_EQ(leading.back(), 1);
  // SD-Turbo's trailing spacing: one step at 999; four at 999, 749, 499, 249.
  EXPECT_EQ(schedule_with("epsilon", "trailing").timesteps(1), std::vector<double>{999});
  EXPECT_EQ(schedule_with("epsilon", "trailing").timesteps(4), (std::vector<double>{999, 749, 499, 249}));
  const auto linspace = schedule_with("epsilon", "linspace").timesteps(3);
  EXPECT_EQ(linspace, (std::vector<double>{999, 499.5, 0}));
}

TEST(DiffusionSampler, SigmasMatchTheScaledLinearSchedule) {
  const NoiseSchedule schedule = schedule_with("epsilon", "leading");
  // SD's scaled_linear betas give sigma_max 14.6146 and sigma_min 0.0292 (k-diffusion's CompVisDenoiser values).
  EXPECT_NEAR(schedule.sigma_at(999), 14.6146, 1e-3);
  EXPECT_NEAR(schedule.sigma_at(0), 0.0292, 1e-4);
  for (const double t : {3.0, 100.5, 512.25, 998.0})
    EXPECT_NEAR(schedule.timestep_of(schedule.sigma_at(t)), t, 1e-2);
  const SigmaPlan karras = plan_sigmas(schedule, 20, true);
  ASSERT_EQ(karras.sigmas.size(), 21u);
  EXPECT_NEAR(karras.sigmas.front(), schedule.sigma_at(951), 1e-6);
  EXPECT_EQ(karras.sigmas.back(), 0.0);
  for (size_t i = 1; i < karras.sigmas.size(); ++i)
    EXPECT_LT(karras.sigmas[i], karras.sigmas[i - 1]);
}

TEST(DiffusionSampler, NoiseIsTheSameForTheSameSeed) {
  GaussianNoise a(42), b(42), c(43);
  const auto first = a.sample(10001);
  EXPECT_EQ(first, b.sample(10001));
  EXPECT_NE(first, c.sample(10001));
  double mean = 0, square = 0;
  for (const float value : first) {
    mean += value;
    square += value * value;
  }
  mean /= first.size();
  EXPECT_NEAR(mean, 0, 0.05);
  EXPECT_NEAR(square / first.size(), 1, 0.05);
}

TEST(DiffusionSampler, NamesAndWebuiAliases) {
  EXPECT_EQ(canonical_sampler("Euler a"), "euler_a");
  EXPECT_EQ(canonical_sampler("DPM++ 2M Karras"), "dpmpp_2m_karras");
  EXPECT_EQ(canonical_sampler("dpmpp_2m"), "dpmpp_2m");
  EXPECT_EQ(canonical_sampler("DDIM"), "ddim");
  EXPECT_EQ(canonical_sampler("LCM"), "lcm");
  EXPECT_EQ(canonical_sampler("heun"), "");
  EXPECT_EQ(canonical_sampler(""), "");
  GaussianNoise rng(1);
  EXPECT_THROW(run_sampler("heun", schedule_with("epsilon", "leading"), 4, rng.sample(4), rng,
                           oracle(schedule_with("epsilon", "leading"), {0, 0, 0, 0}), {}),
               std::invalid_argument);
}

TEST(DiffusionSampler, StopsWhenTheReportSaysSo) {
  const NoiseSchedule schedule = schedule_with("epsilon", "leading");
  GaussianNoise rng(5);
  int calls = 0;
  EXPECT_THROW(run_sampler("euler", schedule, 10, rng.sample(4), rng, oracle(schedule, {1, 2, 3, 4}),
                           [&](int step, const std::vector<float>&) {
                             ++calls;
                             return step < 3;
                           }),
               SamplerCancelled);
  EXPECT_EQ(calls, 3);
  EXPECT_THROW(NoiseSchedule::from_json({{"prediction_type", "sample"}}), std::runtime_error);
  EXPECT_THROW(NoiseSchedule::from_json({{"timestep_spacing", "odd"}}), std::runtime_error);
}
