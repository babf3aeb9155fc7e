#include "api/image_request.hpp"

#include "api/json_body.hpp"
#include "app/image_service.hpp"
#include "core/api_error.hpp"
#include "core/text.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <mutex>
#include <random>
#include <set>

namespace mmserve::api {
namespace {

using nlohmann::json;

constexpr int kMinSide = 64;
constexpr int kMaxSteps = 150;
constexpr double kMaxGuidance = 30;

// The field's value, or null when absent or JSON null (both mean "default").
const json* field(const json& body, const std::string& key) {
  const auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

ApiError invalid_value(const std::string& param, const std::string& why) {
  return ApiError::bad_request(fmt::format("Invalid value for '{}': {}", param, why), param, "invalid_value");
}

// Integers, and decimals with no fractional part (20.0), as JSON clients send them.
std::optional<int64_t> integer_of(const json& value) {
  if (value.is_number_unsigned()) {
    const auto n = value.get<uint64_t>();
    if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(n);
  }
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_number_float()) {
    const double d = value.get<double>();
    if (std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

int read_int(const json& body, const std::string& key, int min, int max, int fallback,
             const std::string& why_max = {}) {
  const json* value = field(body, key);
  if (!value) return fallback;
  const auto n = integer_of(*value);
  if (!n) throw_invalid_type(key, "an integer", *value);
  if (*n < min || *n > max) {
    throw invalid_value(key, fmt::format("{} is outside [{}, {}]{}.", *n, min, max, why_max));
  }
  return static_cast<int>(*n);
}

double read_number(const json& body, const std::string& key, double min, double max, double fallback) {
  const json* value = field(body, key);
  if (!value) return fallback;
  if (!value->is_number()) throw_invalid_type(key, "a number", *value);
  const double n = value->get<double>();
  if (!(n >= min && n <= max)) throw invalid_value(key, fmt::format("{} is outside [{}, {}].", n, min, max));
  return n;
}

bool read_bool(const json& body, const std::string& key, bool fallback) {
  const json* value = field(body, key);
  if (!value) return fallback;
  if (!value->is_boolean()) throw_invalid_type(key, "a boolean", *value);
  return value->get<bool>();
}

std::optional<std::string> read_string(const json& body, const std::string& key, const std::string& param) {
  const json* value = field(body, key);
  if (!value) return std::nullopt;
  if (!value->is_string()) throw_invalid_type(param, "a string", *value);
  return value->get<std::string>();
}

std::string read_choice(const json& body, const std::string& key, const std::vector<std::string>& allowed,
                        const std::string& fallback) {
  const auto value = read_string(body, key, key);
  if (!value) return fallback;
  if (std::find(allowed.begin(), allowed.end(), *value) == allowed.end()) {
    throw invalid_value(key, fmt::format("'{}' is not one of {}.", *value, fmt::join(allowed, ", ")));
  }
  return *value;
}

size_t utf8_length(const std::string& text) {
  return static_cast<size_t>(
      std::count_if(text.begin(), text.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

std::string read_text(const json& body, const std::string& key, bool required) {
  const auto value = read_string(body, key, key);
  if (!value) {
    if (!required) return {};
    throw ApiError::bad_request(fmt::format("Missing required parameter: '{}'.", key), key,
                                "missing_required_parameter");
  }
  if (required && value->find_first_not_of(" \t\r\n") == std::string::npos) {
    throw invalid_value(key, "the prompt must not be empty.");
  }
  if (const size_t length = utf8_length(*value); length > kMaxPromptChars) {
    throw ApiError::bad_request(
        fmt::format("Invalid value for '{}': {} characters; at most {} are accepted.", key, length, kMaxPromptChars),
        key, "string_above_max_length");
  }
  return *value;
}

uint64_t random_seed() {
  static std::mutex mutex;
  static std::mt19937_64 generator{std::random_device{}()};
  std::lock_guard lock(mutex);
  // 32-bit seeds, as webui makes them: short to read back and type again.
  return std::uniform_int_distribution<uint64_t>(0, 0xFFFFFFFFull)(generator);
}

// Absent, null or -1: a random seed (reported back with the images).
uint64_t read_seed(const json& body, const std::string& key) {
  const json* value = field(body, key);
  if (!value) return random_seed();
  if (value->is_number_unsigned()) return value->get<uint64_t>();
  const auto n = integer_of(*value);
  if (!n) throw_invalid_type(key, "an integer", *value);
  if (*n == -1) return random_seed();
  if (*n < 0) throw invalid_value(key, fmt::format("{}: use -1 (or leave it out) for a random seed.", *n));
  return static_cast<uint64_t>(*n);
}

// One side of an image: at least 64, a multiple of 8, within the server's limit.
void check_side(int value, int limit, const std::string& param, const std::string& what, const char* limit_key) {
  if (value < kMinSide) throw invalid_value(param, fmt::format("{} is {}; at least {} pixels.", what, value, kMinSide));
  if (value % 8 != 0) throw invalid_value(param, fmt::format("{} is {}; it must be a multiple of 8.", what, value));
  if (value > limit) {
    throw invalid_value(param,
                        fmt::format("{} is {}, above this server's limit of {} ({}).", what, value, limit, limit_key));
  }
}

void parse_size(const std::string& text, const ImageLimits& limits, diffusion::GenerationRequest& request) {
  if (text == "auto") return; // the model's default
  const auto x = text.find('x');
  const auto number = [&](std::string_view digits) -> std::optional<int> {
    int value = 0;
    if (digits.empty() || digits.size() > 5) return std::nullopt;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
    return value;
  };
  const std::string_view view(text);
  const auto width = x == std::string::npos ? std::nullopt : number(view.substr(0, x));
  const auto height = x == std::string::npos ? std::nullopt : number(view.substr(x + 1));
  if (!width || !height) {
    throw invalid_value("size", fmt::format("'{}' is not WIDTHxHEIGHT (e.g. 512x512) or auto.", text));
  }
  check_side(*width, limits.max_width, "size", fmt::format("'{}': the width", text), "image.max_width");
  check_side(*height, limits.max_height, "size", fmt::format("'{}': the height", text), "image.max_height");
  request.width = *width;
  request.height = *height;
}

std::vector<std::string> webui_names() {
  std::vector<std::string> names;
  for (const auto& sampler : image::sampler_table())
    names.push_back(sampler.webui);
  return names;
}

std::string parse_sampler(const std::string& name, const std::string& param) {
  std::string canonical = diffusion::canonical_sampler(name);
  if (canonical.empty()) {
    throw invalid_value(param,
                        fmt::format("unknown sampler '{}'. Valid samplers: {} (webui names: {}).", name,
                                    fmt::join(diffusion::sampler_names(), ", "), fmt::join(webui_names(), ", ")));
  }
  return canonical;
}

// webui's sampler_name with its separate scheduler ("DPM++ 2M" + "Karras").
std::string parse_webui_sampler(const std::string& name, const std::optional<std::string>& scheduler) {
  std::string canonical = parse_sampler(name, "sampler_name");
  if (!scheduler) return canonical;
  const std::string lower = text::lowered(*scheduler);
  if (lower == "automatic" || lower == "uniform" || lower.empty()) return canonical;
  if (lower != "karras") {
    throw invalid_value("scheduler", fmt::format("'{}' is not one of Automatic, Uniform, Karras.", *scheduler));
  }
  for (const auto& sampler : image::sampler_table()) {
    if (sampler.canonical == canonical && sampler.scheduler == "karras") return canonical;
  }
  std::string karras = diffusion::canonical_sampler(name + " Karras");
  if (karras.empty()) {
    throw invalid_value("scheduler", fmt::format("the sampler '{}' has no Karras variant here.", name));
  }
  return karras;
}

} // namespace

ImageRequest parse_image_request(const json& body, const ImageLimits& limits) {
  static const std::set<std::string> known = {"prompt",     "model",           "n",
                                              "size",       "response_format", "output_format",
                                              "quality",    "style",           "user",
                                              "background", "moderation",      "output_compression",
                                              "stream",     "partial_images",  "negative_prompt",
                                              "seed",       "steps",           "guidance_scale",
                                              "sampler"};
  for (const auto& [key, value] : body.items()) {
    if (!known.contains(key)) {
      throw ApiError::bad_request(fmt::format("Unknown parameter: '{}'.", key), key, "unknown_parameter");
    }
  }
  ImageRequest request;
  auto& generation = request.generation;
  generation.prompt = read_text(body, "prompt", true);
  if (auto model = read_string(body, "model", "model")) request.model = *model;
  const int most = std::min(10, limits.max_batch);
  generation.batch = read_int(body, "n", 1, most, 1, most < 10 ? " (image.max_batch on this server)" : "");
  if (auto size = read_string(body, "size", "size")) parse_size(*size, limits, generation);
  request.response_format = read_choice(body, "response_format", {"url", "b64_json"}, "url");
  request.output_format = read_choice(body, "output_format", {"png", "jpeg", "webp"}, "png");
  request.quality = std::max(1, read_int(body, "output_compression", 0, 100, 100));
  for (const char* ignored : {"quality", "style", "user", "moderation"})
    read_string(body, ignored, ignored);
  if (read_choice(body, "background", {"auto", "opaque", "transparent"}, "auto") == "transparent") {
    throw invalid_value("background", "transparent backgrounds are not supported (the images are opaque).");
  }
  if (read_bool(body, "stream", false)) {
    throw invalid_value("stream", "streamed generation is not supported; GET /sdapi/v1/progress reports progress.");
  }
  read_int(body, "partial_images", 0, 3, 0);
  generation.negative_prompt = read_text(body, "negative_prompt", false);
  generation.seed = read_seed(body, "seed");
  generation.steps = read_int(body, "steps", 1, kMaxSteps, 0);
  generation.guidance_scale = static_cast<float>(read_number(body, "guidance_scale", 0, kMaxGuidance, -1));
  if (auto sampler = read_string(body, "sampler", "sampler")) generation.sampler = parse_sampler(*sampler, "sampler");
  return request;
}

Txt2ImgRequest parse_txt2img_request(const json& body, const ImageLimits& limits) {
  Txt2ImgRequest request;
  auto& generation = request.image.generation;
  generation.prompt = read_text(body, "prompt", false);
  generation.negative_prompt = read_text(body, "negative_prompt", false);
  generation.seed = read_seed(body, "seed");
  auto sampler = read_string(body, "sampler_name", "sampler_name");
  if (!sampler) sampler = read_string(body, "sampler_index", "sampler_index"); // webui's older name
  const auto scheduler = read_string(body, "scheduler", "scheduler");
  if (sampler) generation.sampler = parse_webui_sampler(*sampler, scheduler);
  const std::string why_max = " (image.max_batch on this server)";
  request.batch_size = read_int(body, "batch_size", 1, limits.max_batch, 1, why_max);
  request.n_iter = read_int(body, "n_iter", 1, limits.max_batch, 1, why_max);
  if (request.batch_size * request.n_iter > limits.max_batch) {
    throw invalid_value("batch_size", fmt::format("batch_size x n_iter is {} images; at most {} per request{}.",
                                                  request.batch_size * request.n_iter, limits.max_batch, why_max));
  }
  generation.batch = request.batch_size * request.n_iter;
  generation.steps = read_int(body, "steps", 1, kMaxSteps, 0);
  generation.guidance_scale = static_cast<float>(read_number(body, "cfg_scale", 0, kMaxGuidance, -1));
  constexpr int kAny = std::numeric_limits<int>::max();
  generation.width = read_int(body, "width", -kAny, kAny, 0);
  generation.height = read_int(body, "height", -kAny, kAny, 0);
  if (field(body, "width")) check_side(generation.width, limits.max_width, "width", "width", "image.max_width");
  if (field(body, "height")) check_side(generation.height, limits.max_height, "height", "height", "image.max_height");
  request.send_images = read_bool(body, "send_images", true);
  read_bool(body, "save_images", false); // outputs are always kept (image.outputs_dir or the bucket)
  if (const json* overrides = field(body, "override_settings")) {
    if (!overrides->is_object()) throw_invalid_type("override_settings", "an object", *overrides);
    const std::string param = "override_settings.sd_model_checkpoint";
    if (auto checkpoint = read_string(*overrides, "sd_model_checkpoint", param)) request.checkpoint = *checkpoint;
  }
  request.image.response_format = "b64_json";

  request.parameters = body;
  const json defaults = {
      {"prompt", ""}, {"negative_prompt", ""}, {"seed", -1},           {"batch_size", 1},
      {"n_iter", 1},  {"send_images", true},   {"save_images", false}, {"override_settings", json::object()}};
  for (const auto& [key, value] : defaults.items()) {
    if (!field(request.parameters, key)) request.parameters[key] = value;
  }
  return request;
}

void apply_model_defaults(diffusion::GenerationRequest& request, const diffusion::ModelDefaults& defaults,
                          const ImageLimits& limits, const std::string& size_param) {
  if (request.width == 0 || request.height == 0) {
    request.width = request.width == 0 ? defaults.width : request.width;
    request.height = request.height == 0 ? defaults.height : request.height;
    if (request.width > limits.max_width || request.height > limits.max_height) {
      throw invalid_value(size_param, fmt::format("the model's default size, {}x{}, is above this server's limit of "
                                                  "{}x{} (image.max_width, image.max_height): ask for a size.",
                                                  request.width, request.height, limits.max_width, limits.max_height));
    }
  }
  if (request.steps <= 0) request.steps = defaults.steps;
  if (request.guidance_scale < 0) request.guidance_scale = defaults.guidance_scale;
  if (request.sampler.empty()) request.sampler = defaults.sampler;
}

} // namespace mmserve::api
