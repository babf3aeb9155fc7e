// Image generation requests: OpenAI's POST /v1/images/generations body and
// the A1111 webui's POST /sdapi/v1/txt2img body, each checked field by field
// into one typed request (ApiError naming the parameter otherwise).
#pragma once

#include "engines/diffusion/diffusion_pipeline.hpp"

#include <nlohmann/json.hpp>

#include <string>

namespace mmserve::api {

struct ImageLimits {
  int max_width = 2048;
  int max_height = 2048;
  int max_batch = 10;
};

inline constexpr size_t kMaxPromptChars = 4000;

struct ImageRequest {
  std::string model;                       // empty: the service's first model
  diffusion::GenerationRequest generation; // 0, < 0 or empty: the model's default; seed always set
  std::string response_format = "url";     // url b64_json
  std::string output_format = "png";       // png jpeg webp
  int quality = 100;                       // jpeg/webp quality (OpenAI's output_compression)
};

// OpenAI's fields (prompt, model, n, size, response_format, output_format,
// output_compression; quality, style, user, background, moderation accepted)
// and mmserve's (negative_prompt, seed, steps, guidance_scale, sampler).
// Unknown fields are refused as OpenAI refuses them (400 unknown_parameter).
ImageRequest parse_image_request(const nlohmann::json& body, const ImageLimits& limits);

struct Txt2ImgRequest {
  ImageRequest image;
  std::string checkpoint; // override_settings.sd_model_checkpoint: a model's id, title or hash
  int batch_size = 1;
  int n_iter = 1;
  bool send_images = true;
  nlohmann::json parameters; // the request as webui echoes it back (the fields it knows, defaults filled in)
};

// webui's fields; others are ignored, as webui's own API ignores them.
// Errors are ApiError 400 like the OpenAI body's; the webui routes answer
// them with 422, webui's status for a request that does not validate.
Txt2ImgRequest parse_txt2img_request(const nlohmann::json& body, const ImageLimits& limits);

// Fills in the model's defaults (size, steps, guidance, sampler) and checks
// the size that results against the limits (400 naming `size_param`).
void apply_model_defaults(diffusion::GenerationRequest& request, const diffusion::ModelDefaults& defaults,
                          const ImageLimits& limits, const std::string& size_param);

} // namespace mmserve::api
