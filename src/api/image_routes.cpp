#include "api/image_routes.hpp"

#include "api/engine_response.hpp"
#include "api/json_body.hpp"
#include "core/base64.hpp"
#include "core/config.hpp"
#include "core/logging.hpp"
#include "core/task.hpp"
#include "core/version.hpp"

#include <boost/asio/this_coro.hpp>
#include <fmt/chrono.h>
#include <fmt/format.h>

#include <charconv>
#include <ctime>

namespace mmserve::api {
namespace {

using nlohmann::json;
using JobGuard = CancelOnExit<image::ImageService, image::ImageJob>;

constexpr const char* kImmutable = "public, max-age=31536000, immutable";

// The job's result; checks every half second that the client is still
// there (a generation can take minutes before the answer's first byte).
Task<image::ImageEvent> run_generation(image::ImageService& service, image::ImageJobRequest job,
                                       http::HttpExchange& exchange) {
  auto submission = service.submit(std::move(job), co_await boost::asio::this_coro::executor);
  JobGuard guard{submission.job};
  for (;;) {
    const auto now = http::Clock::now();
    if (now >= exchange.deadline()) {
      throw ApiError::timeout("The request took longer than server.request_timeout; the generation was stopped.");
    }
    auto events =
        co_await submission.events->next_batch(std::min(exchange.deadline(), now + std::chrono::milliseconds(500)));
    if (events.empty() && exchange.peer_closed()) throw http::ClientGone("client went away during an image generation");
    for (auto& event : events) {
      guard.completed = true;
      if (event.kind == image::ImageEvent::Kind::done) co_return std::move(event);
      // An operator's interrupt is final: clients that retry on 409 (the openai SDKs) should not.
      if (event.error->code() == "generation_interrupted") exchange.set_header("X-Should-Retry", "false");
      throw *event.error;
    }
  }
}

image::ImageJobRequest job_of(const ImageRequest& request, const char* kind, const http::HttpExchange& exchange) {
  image::ImageJobRequest job;
  job.generation = request.generation;
  job.output_format = request.output_format;
  job.quality = request.quality;
  job.kind = kind;
  job.request_id = exchange.request_id();
  return job;
}

std::string first_value(std::string value) {
  value = value.substr(0, value.find(','));
  const auto begin = value.find_first_not_of(' ');
  const auto end = value.find_last_not_of(' ');
  return begin == std::string::npos ? std::string() : value.substr(begin, end - begin + 1);
}

// A URL the store made relative to this server (/outputs/...) made absolute
// with the address the client used (X-Forwarded-* behind a proxy).
std::string absolute_url(const http::HttpExchange& exchange, const std::string& url) {
  if (!url.starts_with('/')) return url;
  std::string scheme = first_value(exchange.header("X-Forwarded-Proto"));
  if (scheme != "https") scheme = "http";
  std::string host = first_value(exchange.header("X-Forwarded-Host"));
  if (host.empty()) host = exchange.header(http::bhttp::field::host);
  const bool sane = !host.empty() && host.size() <= 255 && std::all_of(host.begin(), host.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' || c == '[' || c == ']';
  });
  return sane ? scheme + "://" + host + url : url;
}

std::string url_of(const image::OutputImage& image, const http::HttpExchange& exchange) {
  if (!image.stored) {
    throw ApiError(502, fmt::format("The image was generated but could not be stored: {}", image.store_error),
                   "api_error", "output_store_failed");
  }
  return absolute_url(exchange, image.stored->url);
}

// POST /v1/images/generations (OpenAI) and /v1/images/generate (the seed's path).
Task<void> openai_generate(const ImageRouteContext& context, http::HttpExchange& exchange) {
  context.registry.check_servable("image");
  const json body = co_await read_json_object(exchange);
  ImageRequest request = parse_image_request(body, context.limits);
  const std::string id =
      context.registry.resolve("image", request.model, "image", {"dall-e-2", "dall-e-3", "gpt-image-1"});
  // The lease keeps the model loaded until the answer is written.
  const ModelLease lease = co_await context.registry.acquire(id, exchange.deadline());
  auto& service = lease.get<image::ImageService>();
  apply_model_defaults(request.generation, service.defaults(), context.limits, "size");
  const image::ImageEvent result = co_await run_generation(service, job_of(request, "images", exchange), exchange);
  json data = json::array();
  for (const auto& image : result.images) {
    json item = {{"seed", image.seed}};
    if (request.response_format == "b64_json")
      item["b64_json"] = encode_base64(image.bytes);
    else
      item["url"] = url_of(image, exchange);
    data.push_back(std::move(item));
  }
  const json response = {{"created", static_cast<int64_t>(std::time(nullptr))},
                         {"data", std::move(data)},
                         {"output_format", request.output_format},
                         {"size", fmt::format("{}x{}", request.generation.width, request.generation.height)}};
  co_await exchange.respond_json(200, response);
}

// ---- webui --------------------------------------------------------------------------

struct ImageModelEntry {
  std::string id;
  std::string hash; // empty without a path
  std::string title;
  std::string path;
};

std::vector<ImageModelEntry> image_models(const ModelBoard& board) {
  std::vector<ImageModelEntry> models;
  for (const auto& status : board.snapshot()) {
    if (status.service != "image") continue;
    ImageModelEntry entry{status.id, status.path.empty() ? "" : image::short_model_hash(status.path), status.id,
                          status.path};
    if (!entry.hash.empty()) entry.title = fmt::format("{} [{}]", entry.id, entry.hash);
    models.push_back(std::move(entry));
  }
  return models;
}

// override_settings.sd_model_checkpoint names a model by id, title, hash or file, as webui's clients do.
std::string checkpoint_id(const ImageRouteContext& context, const std::string& checkpoint) {
  if (checkpoint.empty()) return context.registry.resolve("image", "", "image");
  for (const auto& model : image_models(context.board)) {
    if (checkpoint == model.id || checkpoint == model.title || checkpoint == model.hash || checkpoint == model.path)
      return model.id;
  }
  return context.registry.resolve("image", checkpoint, "image");
}

std::string timestamp(std::chrono::system_clock::time_point when) {
  return fmt::format("{:%Y%m%d%H%M%S}", fmt::gmtime(std::chrono::system_clock::to_time_t(when)));
}

Task<void> txt2img(const ImageRouteContext& context, http::HttpExchange& exchange) {
  context.registry.check_servable("image");
  const json body = co_await read_json_object(exchange);
  Txt2ImgRequest request = parse_txt2img_request(body, context.limits);
  const std::string id = checkpoint_id(context, request.checkpoint);
  const ModelLease lease = co_await context.registry.acquire(id, exchange.deadline());
  auto& service = lease.get<image::ImageService>();
  auto& generation = request.image.generation;
  apply_model_defaults(generation, service.defaults(), context.limits, "width");
  const auto started = std::chrono::system_clock::now();
  const image::ImageEvent result =
      co_await run_generation(service, job_of(request.image, "txt2img", exchange), exchange);

  const std::string sampler = image::webui_sampler_name(generation.sampler);
  json parameters = std::move(request.parameters);
  const json resolved = {{"steps", generation.steps},
                         {"cfg_scale", generation.guidance_scale},
                         {"width", generation.width},
                         {"height", generation.height},
                         {"sampler_name", sampler}};
  for (const auto& [key, value] : resolved.items()) {
    if (!parameters.contains(key) || parameters[key].is_null()) parameters[key] = value;
  }
  json images = json::array(), seeds = json::array(), infotexts = json::array();
  for (const auto& image : result.images) {
    if (request.send_images) images.push_back(encode_base64(image.bytes));
    seeds.push_back(image.seed);
    infotexts.push_back(image.infotext);
  }
  const size_t count = result.images.size();
  const uint64_t first_seed = count ? result.images.front().seed : generation.seed;
  const json info = {{"prompt", generation.prompt},
                     {"all_prompts", json(std::vector<std::string>(count, generation.prompt))},
                     {"negative_prompt", generation.negative_prompt},
                     {"all_negative_prompts", json(std::vector<std::string>(count, generation.negative_prompt))},
                     {"seed", first_seed},
                     {"all_seeds", seeds},
                     {"subseed", first_seed},
                     {"all_subseeds", seeds},
                     {"subseed_strength", 0},
                     {"width", generation.width},
                     {"height", generation.height},
                     {"sampler_name", sampler},
                     {"cfg_scale", generation.guidance_scale},
                     {"steps", generation.steps},
                     {"batch_size", request.batch_size},
                     {"restore_faces", false},
                     {"face_restoration_model", nullptr},
                     {"sd_model_name", id},
                     {"sd_model_hash", service.options().model_hash},
                     {"sd_vae_name", nullptr},
                     {"sd_vae_hash", nullptr},
                     {"seed_resize_from_w", -1},
                     {"seed_resize_from_h", -1},
                     {"denoising_strength", nullptr},
                     {"extra_generation_params", json::object()},
                     {"index_of_first_image", 0},
                     {"infotexts", infotexts},
                     {"styles", json::array()},
                     {"job_timestamp", timestamp(started)},
                     {"clip_skip", 1},
                     {"is_using_inpainting_conditioning", false},
                     {"version", fmt::format("mmserve {}", kVersion)}};
  const json response = {{"images", std::move(images)}, {"parameters", std::move(parameters)}, {"info", info.dump()}};
  co_await exchange.respond_json(200, response);
}

// webui answers a request that does not validate with 422.
http::Handler
unprocessable_on_bad_request(std::function<Task<void>(const ImageRouteContext&, http::HttpExchange&)> handler,
                             ImageRouteContext context) {
  return [handler, context](http::HttpExchange& exchange) -> Task<void> {
    std::optional<ApiError> failure;
    try {
      co_await handler(context, exchange);
      co_return;
    } catch (const ApiError& error) {
      if (error.status() != 400) throw;
      failure = ApiError(422, error.what(), error.type(), error.code(), error.param());
    }
    throw *failure;
  };
}

json progress_body(image::ImageActivity& activity, bool with_image) {
  const auto snapshot = activity.snapshot(with_image);
  const auto& current = snapshot.current;
  const int running = current ? 1 : 0;
  const json state = {{"skipped", false},
                      {"interrupted", snapshot.interrupted},
                      {"stopping_generation", false},
                      {"job", current ? current->kind : ""},
                      {"job_count", running + snapshot.waiting},
                      {"job_timestamp", current ? timestamp(current->started) : "0"},
                      {"job_no", current ? current->image_index : 0},
                      {"sampling_step", current ? current->step : 0},
                      {"sampling_steps", current ? current->steps : 0}};
  json textinfo = nullptr;
  if (current) {
    textinfo = fmt::format("{}: image {} of {}, step {} of {}", current->model, current->image_index + 1,
                           current->batch, current->step, current->steps);
  } else if (snapshot.waiting > 0) {
    textinfo = fmt::format("{} generation(s) waiting", snapshot.waiting);
  }
  json image = nullptr;
  if (with_image && current && !current->preview_png.empty()) image = encode_base64(current->preview_png);
  return {{"progress", current ? current->fraction() : 0.0},
          {"eta_relative", current ? current->eta_seconds : 0.0},
          {"state", state},
          {"current_image", image},
          {"textinfo", textinfo}};
}

bool query_flag(const http::HttpExchange& exchange, const std::string& key) {
  const auto it = exchange.query().find(key);
  if (it == exchange.query().end()) return false;
  return parse_bool(it->second).value_or(false);
}

void register_webui_routes(http::Router& router, const ImageRouteContext& context) {
  router.add("POST", "/sdapi/v1/txt2img", unprocessable_on_bad_request(txt2img, context));
  router.add("GET", "/sdapi/v1/progress", [context](http::HttpExchange& exchange) -> Task<void> {
    co_await exchange.respond_json(200, progress_body(*context.activity, !query_flag(exchange, "skip_current_image")));
  });
  router.add("POST", "/sdapi/v1/interrupt", [context](http::HttpExchange& exchange) -> Task<void> {
    const bool stopped = context.activity->interrupt();
    log_event(spdlog::level::info, "image generation interrupt",
              {{"request_id", exchange.request_id()}, {"stopped_a_job", stopped}});
    co_await exchange.respond_json(200, json::object());
  });
  router.add("GET", "/sdapi/v1/sd-models", [context](http::HttpExchange& exchange) -> Task<void> {
    json list = json::array();
    for (const auto& model : image_models(context.board)) {
      list.push_back({{"title", model.title},
                      {"model_name", model.id},
                      {"hash", model.hash.empty() ? json(nullptr) : json(model.hash)},
                      {"sha256", nullptr},
                      {"filename", model.path},
                      {"config", nullptr}});
    }
    co_await exchange.respond_json(200, list);
  });
  router.add("GET", "/sdapi/v1/samplers", [](http::HttpExchange& exchange) -> Task<void> {
    json list = json::array();
    for (const auto& name : diffusion::sampler_names()) {
      json entry = {{"name", name}, {"aliases", json::array()}, {"options", json::object()}};
      for (const auto& sampler : image::sampler_table()) {
        if (sampler.canonical != name) continue;
        entry["name"] = sampler.webui;
        entry["aliases"].push_back(sampler.canonical);
        for (const auto& alias : sampler.aliases)
          if (alias != sampler.canonical) entry["aliases"].push_back(alias);
        if (!sampler.scheduler.empty()) entry["options"]["scheduler"] = sampler.scheduler;
      }
      list.push_back(std::move(entry));
    }
    co_await exchange.respond_json(200, list);
  });
}

// ---- outputs --------------------------------------------------------------------------

std::string_view output_content_type(std::string_view name) {
  const std::string_view extension = name.substr(name.rfind('.') + 1);
  if (extension == "png") return "image/png";
  if (extension == "jpg" || extension == "jpeg") return "image/jpeg";
  if (extension == "webp") return "image/webp";
  return "application/octet-stream";
}

std::optional<uint64_t> parse_offset(std::string_view digits) {
  uint64_t value = 0;
  if (digits.empty()) return std::nullopt;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return value;
}

enum class RangeKind { whole, partial, unsatisfiable };
struct ByteRange {
  RangeKind kind = RangeKind::whole;
  uint64_t first = 0, last = 0;
};

// One "bytes=a-b", "bytes=a-" or "bytes=-n" range (RFC 9110); anything else
// (several ranges, other units, bad syntax) is ignored: the whole file.
ByteRange parse_range(std::string_view header, uint64_t size) {
  ByteRange range;
  if (!header.starts_with("bytes=")) return range;
  const std::string_view spec = header.substr(6);
  const auto dash = spec.find('-');
  if (dash == std::string_view::npos || spec.find(',') != std::string_view::npos) return range;
  const auto first = parse_offset(spec.substr(0, dash));
  const auto last = parse_offset(spec.substr(dash + 1));
  if (dash == 0) { // the last n bytes
    if (!last) return range;
    if (*last == 0 || size == 0) return {RangeKind::unsatisfiable};
    return {RangeKind::partial, size > *last ? size - *last : 0, size - 1};
  }
  if (!first || (dash + 1 < spec.size() && (!last || *last < *first))) return range;
  if (*first >= size) return {RangeKind::unsatisfiable};
  return {RangeKind::partial, *first, last ? std::min(*last, size - 1) : size - 1};
}

void register_output_routes(http::Router& router, const ImageRouteContext& context) {
  router.add("GET", "/outputs/{name}", [context](http::HttpExchange& exchange) -> Task<void> {
    const std::string& name = exchange.path_params().at("name");
    if (!context.serve_outputs) {
      throw ApiError::not_found("Outputs are kept in the bucket (storage.outputs.backend: s3): use the URL the "
                                "generation returned.",
                                "not_found");
    }
    const auto not_found = [&] { return ApiError::not_found(fmt::format("No output named '{}'.", name), "not_found"); };
    if (!storage::valid_output_name(name)) throw not_found();
    // The name is the SHA-256 of the bytes: the ETag, and the content never changes.
    const std::string etag = fmt::format("\"{}\"", name.substr(0, name.find('.')));
    const std::string_view content_type = output_content_type(name);
    const auto cacheable = [&] {
      exchange.set_header("Cache-Control", kImmutable);
      exchange.set_header("ETag", etag);
      exchange.set_header("Accept-Ranges", "bytes");
      exchange.set_header("X-Content-Type-Options", "nosniff");
    };
    if (http::etag_matches(exchange.header(http::bhttp::field::if_none_match), etag)) {
      cacheable();
      co_await exchange.respond(304, std::string(), content_type);
      co_return;
    }
    std::optional<std::string> bytes = context.store->load(name);
    if (!bytes) throw not_found();
    const uint64_t size = bytes->size();
    ByteRange range;
    const std::string if_range = exchange.header(http::bhttp::field::if_range);
    if (if_range.empty() || if_range == etag) range = parse_range(exchange.header(http::bhttp::field::range), size);
    if (range.kind == RangeKind::unsatisfiable) {
      exchange.set_header("Content-Range", fmt::format("bytes */{}", size));
      throw ApiError(416,
                     fmt::format("The range '{}' is outside the {} bytes of '{}'.",
                                 exchange.header(http::bhttp::field::range), size, name),
                     "invalid_request_error", "range_not_satisfiable");
    }
    cacheable();
    if (range.kind == RangeKind::partial) {
      exchange.set_header("Content-Range", fmt::format("bytes {}-{}/{}", range.first, range.last, size));
      co_await exchange.respond(206, bytes->substr(range.first, range.last - range.first + 1), content_type);
      co_return;
    }
    co_await exchange.respond(200, std::move(*bytes), content_type);
  });
}

} // namespace

void register_image_routes(http::Router& router, const ImageRouteContext& context) {
  for (const char* path : {"/v1/images/generations", "/v1/images/generate"}) {
    router.add("POST", path,
               [context](http::HttpExchange& exchange) -> Task<void> { co_await openai_generate(context, exchange); });
  }
  register_webui_routes(router, context);
  register_output_routes(router, context);
}

} // namespace mmserve::api
