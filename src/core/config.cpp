#include "core/config.hpp"

#include "core/quantity.hpp"
#include "core/text.hpp"
#include "media/url_fetch.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdlib>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <unistd.h>

extern char** environ;

namespace mmserve {
namespace {

std::string join(const std::vector<std::string>& items) {
  return fmt::format("{}", fmt::join(items, ", "));
}

// A YAML mapping being read: remembers which keys were asked for so that
// finish() can reject the rest by name.
class Section {
public:
  Section(YAML::Node node, std::string path, std::string source)
      : node_(std::move(node)), path_(std::move(path)), source_(std::move(source)) {
    if (node_ && !node_.IsNull() && !node_.IsMap()) fail_at(path_, "must be a mapping of keys to values");
  }

  std::optional<Section> section(const std::string& key) {
    const auto child = lookup(key);
    if (!child || child.IsNull()) return std::nullopt;
    return Section(child, full(key), source_);
  }

  // A string that `valid` accepts; `expected` says what is allowed.
  void read_checked(const std::string& key, std::string& out, const std::function<bool(const std::string&)>& valid,
                    const std::string& expected) {
    if (auto child = scalar(key)) {
      if (!valid(child->Scalar())) fail(key, child->Scalar(), expected);
      out = child->Scalar();
    }
  }
  void read(const std::string& key, std::string& out) {
    if (auto child = scalar(key)) out = child->Scalar();
  }
  void read(const std::string& key, bool& out) {
    if (auto child = scalar(key)) {
      const auto value = parse_bool(child->Scalar());
      if (!value) fail(key, child->Scalar(), "true, false");
      out = *value;
    }
  }
  template <typename Int>
  requires std::is_integral_v<Int>
  void read_int(const std::string& key, Int& out, long long min, long long max) {
    if (auto child = scalar(key)) {
      const std::string text = child->Scalar();
      char* end = nullptr;
      errno = 0;
      const long long value = std::strtoll(text.c_str(), &end, 10);
      if (text.empty() || *end != '\0' || errno == ERANGE || value < min || value > max) {
        fail(key, text, fmt::format("an integer from {} to {}", min, max));
      }
      out = static_cast<Int>(value);
    }
  }
  void read_bytes(const std::string& key, uint64_t& out, uint64_t min = 0) {
    if (auto child = scalar(key)) {
      const auto value = parse_byte_size(child->Scalar());
      if (!value || *value < min) {
        fail(key, child->Scalar(),
             "a size in bytes, e.g. 1048576, 512Mi, 10Gi, 1G or 100m (nginx style)" +
                 (min ? fmt::format(", at least {}", min) : std::string()));
      }
      out = *value;
    }
  }
  void read_seconds(const std::string& key, double& out, double min = 0) {
    if (auto child = scalar(key)) {
      const auto value = parse_duration_seconds(child->Scalar());
      if (!value || *value < min) {
        fail(key, child->Scalar(), "a duration, e.g. 300 (seconds), 90s, 500ms, 5m or 1h");
      }
      out = *value;
    }
  }
  void read_enum(const std::string& key, std::string& out, const std::vector<std::string>& allowed) {
    if (auto child = scalar(key)) {
      const std::string value = child->Scalar();
      if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) fail(key, value, join(allowed));
      out = value;
    }
  }
  void read_enum_list(const std::string& key, std::vector<std::string>& out, const std::vector<std::string>& allowed) {
    const auto child = lookup(key);
    if (!child || child.IsNull()) return;
    if (!child.IsSequence()) fail_at(full(key), "must be a list (allowed items: " + join(allowed) + ")");
    std::vector<std::string> values;
    for (const auto& item : child) {
      if (!item.IsScalar()) fail_at(full(key), "items must be plain values (allowed: " + join(allowed) + ")");
      const std::string value = item.Scalar();
      if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) fail(key, value, join(allowed));
      if (std::find(values.begin(), values.end(), value) == values.end()) values.push_back(value);
    }
    if (values.empty()) fail_at(full(key), "must name at least one of: " + join(allowed));
    out = values;
  }

  // A list whose items `parse` turns into values (nullopt: invalid).
  template <typename T>
  void read_list(const std::string& key, std::vector<T>& out,
                 const std::function<std::optional<T>(const std::string&)>& parse, const std::string& expected) {
    const auto child = lookup(key);
    if (!child || child.IsNull()) return;
    if (!child.IsSequence()) fail_at(full(key), "must be a list of " + expected);
    std::vector<T> values;
    for (const auto& item : child) {
      const std::string text = item.IsScalar() ? item.Scalar() : std::string("(not a value)");
      const auto value = item.IsScalar() ? parse(text) : std::nullopt;
      if (!value) fail(key, text, expected);
      values.push_back(*value);
    }
    out = values;
  }

  // A list of mappings, each read as a section named key[i].
  std::vector<Section> section_list(const std::string& key) {
    const auto child = lookup(key);
    std::vector<Section> items;
    if (!child || child.IsNull()) return items;
    if (!child.IsSequence()) fail_at(full(key), "must be a list of mappings");
    for (size_t i = 0; i < child.size(); ++i) {
      if (!child[i].IsMap()) fail_at(fmt::format("{}[{}]", full(key), i), "must be a mapping of keys to values");
      items.emplace_back(child[i], fmt::format("{}[{}]", full(key), i), source_);
    }
    return items;
  }
  // The keys of a mapping whose keys are names chosen by the user.
  std::vector<std::string> keys() const {
    std::vector<std::string> names;
    if (!node_ || node_.IsNull()) return names;
    for (const auto& entry : node_)
      names.push_back(entry.first.Scalar());
    return names;
  }
  // The raw text of a plain value, for keys with a word besides their type ("auto").
  bool holds_list(const std::string& key) const {
    return node_ && node_.IsMap() && node_[key] && node_[key].IsSequence();
  }
  std::optional<std::string> scalar_text(const std::string& key) {
    if (auto child = scalar(key)) return child->Scalar();
    return std::nullopt;
  }
  // Fails naming this section's path.
  [[noreturn]] void fail_here(const std::string& what) const { fail_at(path_, what); }
  [[noreturn]] void fail_key(const std::string& key, const std::string& what) const { fail_at(full(key), what); }

  // Rejects keys that no read asked for.
  void finish() const {
    if (!node_ || node_.IsNull()) return;
    for (const auto& entry : node_) {
      const std::string key = entry.first.Scalar();
      if (!known_.contains(key)) {
        std::vector<std::string> allowed(known_.begin(), known_.end());
        fail_at(full(key), "unknown key (allowed here: " + join(allowed) + ")");
      }
    }
  }

private:
  YAML::Node lookup(const std::string& key) {
    known_.insert(key);
    if (!node_ || node_.IsNull()) return {};
    return node_[key];
  }
  std::optional<YAML::Node> scalar(const std::string& key) {
    const auto child = lookup(key);
    if (!child || child.IsNull()) return std::nullopt;
    if (!child.IsScalar()) fail_at(full(key), "must be a single value, not a list or mapping");
    return child;
  }
  std::string full(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  [[noreturn]] void fail(const std::string& key, const std::string& value, const std::string& allowed) const {
    fail_at(full(key), fmt::format("invalid value '{}' (allowed: {})", value, allowed));
  }
  [[noreturn]] void fail_at(const std::string& key, const std::string& what) const {
    throw ConfigError(fmt::format("{}: {}: {}", source_, key, what));
  }

  YAML::Node node_;
  std::string path_;
  std::string source_;
  std::set<std::string> known_;
};

const std::vector<std::string> kImageFormats = {"jpeg", "png", "webp", "gif"};

void read_media(Section& root, MediaConfig& media) {
  if (auto pre = root.section("preprocessing")) {
    pre->read_int("max_image_size", media.max_image_size, 16, 16384);
    pre->read_enum_list("supported_formats", media.supported_formats, kImageFormats);
    pre->read_enum("resize_mode", media.resize_mode, {"fit", "crop", "pad"});
    pre->read("normalize", media.normalize);
    pre->read_bytes("max_pixels", media.max_pixels, 1);
    pre->read_checked(
        "background", media.background, [](const std::string& text) { return parse_hex_colour(text).has_value(); },
        "a colour as #rrggbb");
    pre->finish();
  }
  if (auto storage = root.section("storage")) {
    storage->read("enabled", media.cache_enabled);
    storage->read("temp_dir", media.temp_dir);
    storage->read_bytes("max_cache_size", media.max_cache_bytes, 1);
    storage->read_seconds("cleanup_interval", media.cleanup_interval_s, 1);
    storage->read_seconds("max_age", media.cache_max_age_s, 0);
    storage->finish();
  }
  if (auto fetch = root.section("fetch")) {
    fetch->read_bytes("max_bytes", media.fetch_max_bytes, 1);
    fetch->read_seconds("timeout", media.fetch_timeout_s, 0.001);
    fetch->read_int("max_redirects", media.fetch_max_redirects, 0, 20);
    fetch->read_list<std::string>(
        "allow_networks", media.fetch_allow_networks,
        [](const std::string& text) -> std::optional<std::string> {
          if (!media::parse_network(text)) return std::nullopt;
          return text;
        },
        "networks in CIDR form, e.g. 127.0.0.0/8, 10.1.2.3, fd00::/8");
    fetch->read("ca_file", media.fetch_ca_file);
    fetch->finish();
  }
}

void read_rate_limit(Section& section, RateLimit& limit) {
  auto read_rate = [&](const std::string& key, double& out) {
    std::string text;
    section.read(key, text);
    if (text.empty()) return;
    char* end = nullptr;
    const double value = std::strtod(text.c_str(), &end);
    if (*end != '\0' || !(value >= 0) || value > 1e9)
      section.fail_key(key, "invalid value '" + text + "' (allowed: a number >= 0)");
    out = value;
  };
  read_rate("requests_per_second", limit.requests_per_second);
  read_rate("burst", limit.burst);
  section.finish();
}

bool is_hex_sha256(const std::string& text) {
  return text.size() == 64 && text.find_first_not_of("0123456789abcdefABCDEF") == std::string::npos;
}

std::vector<GatewayApiKey> read_api_keys(std::vector<Section> items) {
  std::vector<GatewayApiKey> keys;
  for (auto& item : items) {
    GatewayApiKey key;
    item.read("name", key.name);
    item.read_checked("sha256", key.sha256, is_hex_sha256,
                      "the key's SHA-256 as 64 hex digits, e.g. from `printf %s \"$KEY\" | sha256sum`");
    if (key.sha256.empty()) item.fail_here("needs sha256 (the hex SHA-256 of the key)");
    key.sha256 = text::lowered(key.sha256);
    if (key.name.empty()) key.name = key.sha256.substr(0, 8);
    item.read_list<std::string>(
        "routes", key.routes,
        [](const std::string& text) -> std::optional<std::string> {
          if (text.empty() || text[0] != '/') return std::nullopt;
          return text;
        },
        "path prefixes starting with '/'");
    if (auto limit = item.section("rate_limit")) {
      key.rate_limit.emplace();
      read_rate_limit(*limit, *key.rate_limit);
    }
    item.finish();
    keys.push_back(key);
  }
  return keys;
}

void read_gateway(Section& s, GatewayConfig& c) {
  auto routes = s.section_list("routes");
  if (!routes.empty()) {
    c.routes.clear();
    for (auto& item : routes) {
      GatewayRoute route;
      item.read_checked(
          "host", route.host,
          [](const std::string& text) {
            return !text.empty() && text.find_first_of(" /:") == std::string::npos &&
                   (text.find('*') == std::string::npos || text == "*" ||
                    (text.rfind("*.", 0) == 0 && text.size() > 2 && text.find('*', 1) == std::string::npos));
          },
          "a host name, *.domain, or * for any host");
      item.read_checked(
          "path", route.path_prefix, [](const std::string& text) { return !text.empty() && text[0] == '/'; },
          "a path prefix starting with '/'");
      item.read("pool", route.pool);
      if (route.path_prefix.empty()) item.fail_here("needs path (a path prefix)");
      if (route.pool.empty()) item.fail_here("needs pool (the name of a pool under gateway.pools)");
      item.finish();
      c.routes.push_back(route);
    }
  }
  if (auto pools = s.section("pools")) {
    for (const auto& name : pools->keys()) {
      auto pool = pools->section(name);
      GatewayPool entry;
      if (pool) {
        pool->read_list<std::string>(
            "endpoints", entry.endpoints,
            [](const std::string& text) -> std::optional<std::string> {
              if (!parse_upstream_url(text)) return std::nullopt;
              return text;
            },
            "http://host:port URLs (plain HTTP to services inside the cluster)");
        pool->finish();
      }
      c.pools[name] = entry;
    }
  }
  s.read_seconds("read_timeout", c.read_timeout_s, 0.001);
  s.read_seconds("connect_timeout", c.connect_timeout_s, 0.001);
  s.read_seconds("resolve_interval", c.resolve_interval_s, 0.1);
  if (auto health = s.section("health_check")) {
    health->read_checked(
        "path", c.health_path, [](const std::string& text) { return !text.empty() && text[0] == '/'; },
        "a path starting with '/'");
    health->read_seconds("interval", c.health_interval_s, 0.05);
    health->finish();
  }
  if (auto ejection = s.section("ejection")) {
    ejection->read_int("max_fails", c.max_fails, 1, 1000);
    ejection->read_seconds("base_time", c.eject_time_s, 0.001);
    ejection->read_seconds("max_time", c.eject_max_time_s, 0.001);
    ejection->finish();
  }
  if (auto keepalive = s.section("upstream_keepalive")) {
    keepalive->read_int("max_idle", c.max_idle_connections, 0, 100000);
    keepalive->read_seconds("idle_timeout", c.idle_connection_timeout_s, 0.001);
    keepalive->finish();
  }
  if (auto auth = s.section("auth")) {
    c.api_keys = read_api_keys(auth->section_list("api_keys"));
    auth->read("api_keys_file", c.api_keys_file);
    auth->finish();
  }
  if (auto limits = s.section("rate_limits")) {
    if (auto per_key = limits->section("per_key")) read_rate_limit(*per_key, c.per_key_limit);
    if (auto per_ip = limits->section("per_ip")) read_rate_limit(*per_ip, c.per_ip_limit);
    limits->finish();
  }
  if (auto cors = s.section("cors")) {
    cors->read_list<std::string>(
        "allowed_origins", c.cors_origins,
        [](const std::string& text) -> std::optional<std::string> {
          if (text == "*" || text.rfind("http://", 0) == 0 || text.rfind("https://", 0) == 0) return text;
          return std::nullopt;
        },
        "\"*\" or origins like https://app.example.com");
    cors->finish();
  }
}

void read_registry(Section& s, RegistryConfig& c) {
  if (auto child = s.scalar_text("memory_budget"); child && *child == "auto") {
    c.memory_budget = 0;
  } else {
    s.read_bytes("memory_budget", c.memory_budget, 1);
  }
  if (s.holds_list("gpu_memory_budget")) {
    s.read_list<uint64_t>(
        "gpu_memory_budget", c.gpu_memory_budget,
        [](const std::string& text) -> std::optional<uint64_t> {
          auto value = parse_byte_size(text);
          return value && *value > 0 ? value : std::nullopt;
        },
        "sizes, one per GPU, e.g. [20Gi, 20Gi]");
    c.gpu_memory_budget_each = false;
  } else if (auto child = s.scalar_text("gpu_memory_budget"); child && *child == "auto") {
    c.gpu_memory_budget.clear();
    c.gpu_memory_budget_each = false;
  } else if (child) {
    uint64_t each = 0;
    s.read_bytes("gpu_memory_budget", each, 1);
    c.gpu_memory_budget = {each};
    c.gpu_memory_budget_each = true;
  }
  s.read_seconds("idle_unload", c.idle_unload_s, 0);
  c.admin_api_keys = read_api_keys(s.section_list("admin_api_keys"));
  s.read("include_store", c.include_store);
  s.read_seconds("rescan_interval", c.rescan_interval_s, 0);
  for (auto& item : s.section_list("models")) {
    RegistryModel model;
    item.read("name", model.name);
    item.read_enum("service", model.service, {"vision", "speech", "image"});
    item.read("path", model.path);
    item.read("mmproj", model.mmproj);
    item.read("preload", model.preload);
    if (model.name.empty()) item.fail_here("needs name (the id clients send as \"model\")");
    if (model.service.empty()) item.fail_here("needs service (vision, speech or image)");
    if (model.path.empty()) item.fail_here("needs path (the model file or folder)");
    for (const auto& other : c.models) {
      if (other.name == model.name) item.fail_here("repeats the name '" + model.name + "'");
    }
    item.finish();
    c.models.push_back(model);
  }
  s.finish();
}

void read_storage(Section& root, StorageConfig& storage) {
  if (auto s3 = root.section("s3")) {
    auto& c = storage.s3;
    s3->read("endpoint", c.endpoint);
    s3->read("region", c.region);
    s3->read("bucket", c.bucket);
    s3->read_enum("addressing", c.addressing, {"auto", "path", "virtual"});
    s3->read("access_key_id", c.access_key_id);
    s3->read("secret_access_key", c.secret_access_key);
    s3->read("session_token", c.session_token);
    s3->read_bytes("part_size", c.part_size, 5ull << 20);
    s3->read_seconds("timeout", c.timeout_s, 0.001);
    s3->read("ca_file", c.ca_file);
    s3->finish();
  }
  if (auto outputs = root.section("outputs")) {
    auto& c = storage.outputs;
    outputs->read_enum("backend", c.backend, {"local", "s3"});
    outputs->read("base_url", c.base_url);
    outputs->read("key_prefix", c.key_prefix);
    // S3 signs presigned URLs for at most 7 days.
    outputs->read_seconds("presign_expiry", c.presign_expiry_s, 1);
    if (c.presign_expiry_s > 604800) {
      throw ConfigError("storage.outputs.presign_expiry: at most 7d (604800 s), S3's limit for presigned URLs");
    }
    outputs->finish();
  }
  if (auto inputs = root.section("inputs")) {
    auto& c = storage.inputs;
    inputs->read_enum("backend", c.backend, {"none", "s3"});
    inputs->read("key_prefix", c.key_prefix);
    inputs->read_bytes("max_pending", c.max_pending, 1);
    inputs->finish();
  }
}

YAML::Node parse_yaml(const std::string& text, const std::string& source) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("{}: not valid YAML: {}", source, e.what()));
  }
}

std::string read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(fmt::format("cannot read {} '{}'", what, path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

} // namespace

std::optional<std::array<unsigned char, 3>> parse_hex_colour(const std::string& text) {
  if (text.size() != 7 || text[0] != '#' || text.find_first_not_of("0123456789abcdefABCDEF", 1) != std::string::npos) {
    return std::nullopt;
  }
  std::array<unsigned char, 3> rgb{};
  for (size_t i = 0; i < 3; ++i)
    rgb[i] = static_cast<unsigned char>(std::stoi(text.substr(1 + 2 * i, 2), nullptr, 16));
  return rgb;
}

std::optional<bool> parse_bool(const std::string& text) {
  const std::string lower = text::lowered(text);
  if (lower == "true" || lower == "1" || lower == "yes" || lower == "on") return true;
  if (lower == "false" || lower == "0" || lower == "no" || lower == "off") return false;
  return std::nullopt;
}

const char* role_name(Role role) {
  switch (role) {
  case Role::serve: return "serve";
  case Role::gateway: return "gateway";
  case Role::vision: return "vision";
  case Role::speech: return "speech";
  case Role::image: return "image";
  }
  return "?";
}

Config parse_config(const std::string& yaml_text, const std::string& source) {
  Config config;
  Section root(parse_yaml(yaml_text, source), "", source);

  root.read("models_dir", config.models_dir);
  root.read("media_config_file", config.media_config_file);

  if (auto s = root.section("server")) {
    auto& c = config.server;
    s->read("host", c.host);
    s->read_int("port", c.port, 0, 65535);
    s->read_int("io_threads", c.io_threads, 1, 256);
    s->read_bytes("max_body_size", c.max_body_bytes, 1);
    s->read_bytes("max_header_size", c.max_header_bytes, 1024);
    s->read_int("max_connections", c.max_connections, 1, 1'000'000);
    s->read_seconds("request_timeout", c.request_timeout_s, 0.001);
    s->read_seconds("idle_timeout", c.idle_timeout_s, 0.001);
    s->read_seconds("shutdown_grace_period", c.shutdown_grace_s, 0);
    s->read("playground", c.playground);
    s->finish();
  }
  if (auto s = root.section("logging")) {
    s->read_enum("level", config.logging.level, {"trace", "debug", "info", "warn", "error"});
    s->read_enum("format", config.logging.format, {"text", "json"});
    s->read("access_log", config.logging.access_log);
    s->finish();
  }
  if (auto s = root.section("vision")) {
    auto& c = config.vision;
    s->read("enabled", c.enabled);
    s->read("model_path", c.model_path);
    s->read("mmproj_path", c.mmproj_path);
    s->read("model_name", c.model_name);
    s->read("load_8bit", c.load_8bit);
    s->read_enum("dtype", c.dtype, {"auto", "float16", "bfloat16", "float32"});
    s->read_int("max_model_len", c.max_model_len, 64, 1 << 22);
    s->read_int("parallel", c.parallel, 1, 256);
    s->read_int("max_queue", c.max_queue, 0, 100000);
    s->read_int("gpu_count", c.gpu_count, 0, 64);
    s->read_list<double>(
        "tensor_split", c.tensor_split,
        [](const std::string& text) -> std::optional<double> {
          char* end = nullptr;
          const double share = std::strtod(text.c_str(), &end);
          if (text.empty() || *end != '\0' || !(share >= 0)) return std::nullopt;
          return share;
        },
        "non-negative numbers, one share per GPU, e.g. [3, 1]");
    s->read_int("threads", c.threads, 0, 1024);
    s->read_bytes("image_cache_size", c.image_cache_bytes);
    s->finish();
  }
  if (auto s = root.section("speech")) {
    auto& c = config.speech;
    s->read("enabled", c.enabled);
    s->read("model_dir", c.model_dir);
    s->read("model_path", c.model_path);
    s->read("vad_model_path", c.vad_model_path);
    s->read_enum("model_size", c.model_size,
                 {"tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en", "large-v1",
                  "large-v2", "large-v3", "large-v3-turbo"});
    s->read_enum("device", c.device, {"cpu", "cuda", "auto"});
    s->read_enum("compute_type", c.compute_type, {"float16", "float32", "int8", "int8_float16"});
    s->read_int("parallel", c.parallel, 1, 64);
    s->read_int("max_queue", c.max_queue, 0, 100000);
    s->read_int("threads", c.threads, 0, 1024);
    s->read_int("beam_size", c.beam_size, 1, 16);
    s->read_int("best_of", c.best_of, 1, 16);
    s->read_bytes("max_audio_size", c.max_audio_bytes, 1);
    s->read_seconds("max_audio_duration", c.max_audio_seconds, 1);
    s->finish();
  }
  if (auto s = root.section("image")) {
    auto& c = config.image;
    s->read("enabled", c.enabled);
    s->read("model_path", c.model_path);
    s->read_enum("vae", c.vae, {"auto", "full", "taesd"});
    s->read("attention_slicing", c.attention_slicing);
    s->read("vae_tiling", c.vae_tiling);
    s->read_enum("quantize", c.quantize, {"none", "q8_0"});
    s->read_enum("device", c.device, {"cpu", "cuda", "auto"});
    s->read("taesd_dir", c.taesd_dir);
    s->read("outputs_dir", c.outputs_dir);
    s->read_int("max_width", c.max_width, 64, 16384);
    s->read_int("max_height", c.max_height, 64, 16384);
    s->read_int("max_batch", c.max_batch, 1, 100);
    s->read_int("max_queue", c.max_queue, 0, 100000);
    s->read_int("threads", c.threads, 0, 1024);
    s->read("preview", c.preview);
    s->read_seconds("preview_interval", c.preview_interval_s, 0);
    s->finish();
  }
  if (auto s = root.section("media")) {
    read_media(*s, config.media);
    s->finish();
  }
  if (auto s = root.section("storage")) {
    read_storage(*s, config.storage);
    s->finish();
  }
  if (auto s = root.section("gateway")) {
    read_gateway(*s, config.gateway);
    s->finish();
  }
  if (auto s = root.section("registry")) read_registry(*s, config.registry);
  root.finish();
  return config;
}

std::vector<GatewayRoute> default_gateway_routes() {
  return {
      // The seed's Ingress.
      {"*", "/v1/chat/vision", "vision"},
      {"*", "/v1/images/generate", "image"},
      {"*", "/v1/audio/transcriptions", "speech"},
      // The OpenAI paths and the services' own.
      {"*", "/v1/chat/completions", "vision"},
      {"*", "/v1/images/generations", "image"},
      {"*", "/v1/audio/translations", "speech"},
      {"*", "/sdapi/", "image"},
      {"*", "/outputs/", "image"},
  };
}

std::map<std::string, std::string> seed_pool_addresses() {
  return {{"vision", "http://llava-service:8000"},
          {"image", "http://stable-diffusion:7860"},
          {"speech", "http://whisper-service:8080"}};
}

std::optional<UpstreamAddress> parse_upstream_url(const std::string& text) {
  constexpr std::string_view kScheme = "http://";
  if (text.rfind(kScheme, 0) != 0) return std::nullopt;
  std::string rest = text.substr(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.empty() || rest.find_first_of("/?#@ ") != std::string::npos) return std::nullopt;
  UpstreamAddress address;
  std::string port_text;
  if (rest.front() == '[') { // [v6]:port
    const auto close = rest.find(']');
    if (close == std::string::npos) return std::nullopt;
    address.host = rest.substr(1, close - 1);
    if (close + 1 < rest.size()) {
      if (rest[close + 1] != ':') return std::nullopt;
      port_text = rest.substr(close + 2);
    }
  } else {
    const auto colon = rest.rfind(':');
    address.host = rest.substr(0, colon);
    if (colon != std::string::npos) port_text = rest.substr(colon + 1);
  }
  if (address.host.empty()) return std::nullopt;
  if (!port_text.empty() || rest.back() == ':') {
    char* end = nullptr;
    const long port = std::strtol(port_text.c_str(), &end, 10);
    if (port_text.empty() || *end != '\0' || port < 1 || port > 65535) return std::nullopt;
    address.port = static_cast<uint16_t>(port);
  }
  return address;
}

std::vector<GatewayApiKey> load_api_keys_file(const std::string& path) {
  const YAML::Node node = parse_yaml(read_file(path, "API keys file"), path);
  if (node.IsNull()) return {};
  // The file is the list itself, or a mapping with api_keys.
  YAML::Node wrapped;
  wrapped["api_keys"] = node.IsMap() ? node["api_keys"] : node;
  Section root(wrapped, "", path);
  auto keys = read_api_keys(root.section_list("api_keys"));
  return keys;
}

Config load_config_file(const std::string& path) {
  return parse_config(read_file(path, "config file"), path);
}

void load_media_config_file(const std::string& path, MediaConfig& media) {
  Section root(parse_yaml(read_file(path, "media config file"), path), "", path);
  read_media(root, media);
  root.finish();
}

std::map<std::string, std::string> process_environment() {
  std::map<std::string, std::string> env;
  for (char** entry = environ; entry && *entry; ++entry) {
    const std::string text(*entry);
    const auto eq = text.find('=');
    if (eq != std::string::npos) env.emplace(text.substr(0, eq), text.substr(eq + 1));
  }
  return env;
}

std::vector<std::string> apply_environment(Config& config, Role role, const std::map<std::string, std::string>& env) {
  std::vector<std::string> applied;
  auto get = [&](const char* name) -> std::optional<std::string> {
    const auto it = env.find(name);
    if (it == env.end() || it->second.empty()) return std::nullopt;
    return it->second;
  };
  auto set_bool = [&](const char* name, bool& field, const char* key) {
    if (auto value = get(name)) {
      const auto parsed = parse_bool(*value);
      if (!parsed) {
        throw ConfigError(fmt::format("environment: {}: invalid value '{}' (allowed: true, false)", name, *value));
      }
      field = *parsed;
      applied.push_back(fmt::format("{}={} -> {}", name, *value, key));
    }
  };
  auto set_enum = [&](const char* name, std::string& field, const char* key, const std::vector<std::string>& allowed) {
    if (auto value = get(name)) {
      if (std::find(allowed.begin(), allowed.end(), *value) == allowed.end()) {
        throw ConfigError(
            fmt::format("environment: {}: invalid value '{}' (allowed: {})", name, *value, join(allowed)));
      }
      field = *value;
      applied.push_back(fmt::format("{}={} -> {}", name, *value, key));
    }
  };

  if (auto value = get("MMSERVE_MODELS")) {
    config.models_dir = *value;
    applied.push_back(fmt::format("MMSERVE_MODELS={} -> models_dir", *value));
  }
  // MODEL_PATH names the model of the one service a role runs; the seed sets
  // it for both llava-service and stable-diffusion, so `serve` (every
  // service at once) cannot know which one is meant.
  if (auto value = get("MODEL_PATH")) {
    if (role == Role::vision)
      config.vision.model_path = *value;
    else if (role == Role::image)
      config.image.model_path = *value;
    else if (role == Role::speech)
      config.speech.model_path = *value;
    else {
      throw ConfigError(
          fmt::format("environment: MODEL_PATH is ambiguous for role '{}' (it names one service's model): run "
                      "`mmserve vision`, `mmserve speech` or `mmserve image`, or set vision.model_path / "
                      "speech.model_path / image.model_path in the config file",
                      role_name(role)));
    }
    applied.push_back(fmt::format("MODEL_PATH={} -> {}.model_path", *value, role_name(role)));
  }
  set_bool("LOAD_8BIT", config.vision.load_8bit, "vision.load_8bit");
  set_enum("MODEL_SIZE", config.speech.model_size, "speech.model_size",
           {"tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en", "large-v1", "large-v2",
            "large-v3", "large-v3-turbo"});
  set_enum("DEVICE", config.speech.device, "speech.device", {"cpu", "cuda", "auto"});
  set_enum("COMPUTE_TYPE", config.speech.compute_type, "speech.compute_type",
           {"float16", "float32", "int8", "int8_float16"});
  set_bool("ENABLE_ATTENTION_SLICING", config.image.attention_slicing, "image.attention_slicing");
  set_bool("ENABLE_VAE_TILING", config.image.vae_tiling, "image.vae_tiling");
  return applied;
}

void finalize_config(Config& config, Role role) {
  if (!config.media_config_file.empty()) load_media_config_file(config.media_config_file, config.media);
  if (config.models_dir.empty()) {
    const char* cache = std::getenv("XDG_CACHE_HOME");
    const char* home = std::getenv("HOME");
    if (cache && *cache)
      config.models_dir = std::string(cache) + "/mmserve/models";
    else if (home && *home)
      config.models_dir = std::string(home) + "/.cache/mmserve/models";
    else
      config.models_dir = "models";
  }
  if (config.speech.model_dir.empty()) config.speech.model_dir = config.models_dir;
  if (config.server.host.empty()) throw ConfigError("server.host: must not be empty");

  auto& gateway = config.gateway;
  if (gateway.routes.empty()) gateway.routes = default_gateway_routes();
  for (const auto& [name, address] : seed_pool_addresses()) {
    gateway.pools.try_emplace(name);
    // A gateway alone proxies to the seed's Services unless told otherwise.
    if (role == Role::gateway && gateway.pools[name].endpoints.empty()) gateway.pools[name].endpoints = {address};
  }
  for (const auto& route : gateway.routes) {
    if (!gateway.pools.contains(route.pool)) {
      std::vector<std::string> names;
      for (const auto& [name, pool] : gateway.pools)
        names.push_back(name);
      throw ConfigError(fmt::format("gateway.routes: route {} names pool '{}', which gateway.pools does not define "
                                    "(defined: {})",
                                    route.path_prefix, route.pool, join(names)));
    }
  }
  if (role == Role::gateway) {
    for (const auto& [name, pool] : gateway.pools) {
      if (pool.endpoints.empty()) {
        throw ConfigError(fmt::format("gateway.pools.{}.endpoints: the gateway role needs at least one endpoint "
                                      "(http://host:port)",
                                      name));
      }
    }
  }
  if (!gateway.api_keys_file.empty()) {
    for (auto& key : load_api_keys_file(gateway.api_keys_file)) {
      const bool known = std::any_of(gateway.api_keys.begin(), gateway.api_keys.end(),
                                     [&](const GatewayApiKey& other) { return other.sha256 == key.sha256; });
      if (!known) gateway.api_keys.push_back(key);
    }
  }
  if (gateway.eject_max_time_s < gateway.eject_time_s) gateway.eject_max_time_s = gateway.eject_time_s;
}

namespace {

void dump_rate_limit(YAML::Emitter& out, const RateLimit& limit) {
  out << YAML::Flow << YAML::BeginMap;
  out << YAML::Key << "requests_per_second" << YAML::Value << limit.requests_per_second;
  out << YAML::Key << "burst" << YAML::Value << limit.burst;
  out << YAML::EndMap;
}

// Secrets are shown only as set or not: --print-config output ends up in logs.
void dump_storage(YAML::Emitter& out, const StorageConfig& storage) {
  const auto& s3 = storage.s3;
  auto secret = [](const std::string& value) { return value.empty() ? std::string() : std::string("(set)"); };
  out << YAML::Key << "storage" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "s3" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "endpoint" << YAML::Value << s3.endpoint;
  out << YAML::Key << "region" << YAML::Value << s3.region;
  out << YAML::Key << "bucket" << YAML::Value << s3.bucket;
  out << YAML::Key << "addressing" << YAML::Value << s3.addressing;
  out << YAML::Key << "access_key_id" << YAML::Value << s3.access_key_id;
  out << YAML::Key << "secret_access_key" << YAML::Value << secret(s3.secret_access_key);
  out << YAML::Key << "session_token" << YAML::Value << secret(s3.session_token);
  out << YAML::Key << "part_size" << YAML::Value << s3.part_size;
  out << YAML::Key << "timeout" << YAML::Value << s3.timeout_s;
  out << YAML::Key << "ca_file" << YAML::Value << s3.ca_file;
  out << YAML::EndMap;
  out << YAML::Key << "outputs" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "backend" << YAML::Value << storage.outputs.backend;
  out << YAML::Key << "base_url" << YAML::Value << storage.outputs.base_url;
  out << YAML::Key << "key_prefix" << YAML::Value << storage.outputs.key_prefix;
  out << YAML::Key << "presign_expiry" << YAML::Value << storage.outputs.presign_expiry_s;
  out << YAML::EndMap;
  out << YAML::Key << "inputs" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "backend" << YAML::Value << storage.inputs.backend;
  out << YAML::Key << "key_prefix" << YAML::Value << storage.inputs.key_prefix;
  out << YAML::Key << "max_pending" << YAML::Value << storage.inputs.max_pending;
  out << YAML::EndMap;
  out << YAML::EndMap;
}

void dump_gateway(YAML::Emitter& out, const GatewayConfig& g) {
  out << YAML::Key << "gateway" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "routes" << YAML::Value << YAML::BeginSeq;
  for (const auto& route : g.routes) {
    out << YAML::Flow << YAML::BeginMap;
    out << YAML::Key << "host" << YAML::Value << route.host;
    out << YAML::Key << "path" << YAML::Value << route.path_prefix;
    out << YAML::Key << "pool" << YAML::Value << route.pool;
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::Key << "pools" << YAML::Value << YAML::BeginMap;
  for (const auto& [name, pool] : g.pools) {
    out << YAML::Key << name << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "endpoints" << YAML::Value << YAML::Flow << pool.endpoints;
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
  out << YAML::Key << "read_timeout" << YAML::Value << g.read_timeout_s;
  out << YAML::Key << "connect_timeout" << YAML::Value << g.connect_timeout_s;
  out << YAML::Key << "resolve_interval" << YAML::Value << g.resolve_interval_s;
  out << YAML::Key << "health_check" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "path" << YAML::Value << g.health_path;
  out << YAML::Key << "interval" << YAML::Value << g.health_interval_s;
  out << YAML::EndMap;
  out << YAML::Key << "ejection" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "max_fails" << YAML::Value << g.max_fails;
  out << YAML::Key << "base_time" << YAML::Value << g.eject_time_s;
  out << YAML::Key << "max_time" << YAML::Value << g.eject_max_time_s;
  out << YAML::EndMap;
  out << YAML::Key << "upstream_keepalive" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "max_idle" << YAML::Value << g.max_idle_connections;
  out << YAML::Key << "idle_timeout" << YAML::Value << g.idle_connection_timeout_s;
  out << YAML::EndMap;
  out << YAML::Key << "auth" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "api_keys" << YAML::Value << YAML::BeginSeq;
  for (const auto& key : g.api_keys) {
    out << YAML::BeginMap;
    out << YAML::Key << "name" << YAML::Value << key.name;
    out << YAML::Key << "sha256" << YAML::Value << key.sha256;
    out << YAML::Key << "routes" << YAML::Value << YAML::Flow << key.routes;
    if (key.rate_limit) {
      out << YAML::Key << "rate_limit" << YAML::Value;
      dump_rate_limit(out, *key.rate_limit);
    }
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::Key << "api_keys_file" << YAML::Value << g.api_keys_file;
  out << YAML::EndMap;
  out << YAML::Key << "rate_limits" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "per_key" << YAML::Value;
  dump_rate_limit(out, g.per_key_limit);
  out << YAML::Key << "per_ip" << YAML::Value;
  dump_rate_limit(out, g.per_ip_limit);
  out << YAML::EndMap;
  out << YAML::Key << "cors" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "allowed_origins" << YAML::Value << YAML::Flow << g.cors_origins;
  out << YAML::EndMap;
  out << YAML::EndMap;
}

} // namespace

std::string dump_config(const Config& c) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "models_dir" << YAML::Value << c.models_dir;
  out << YAML::Key << "media_config_file" << YAML::Value << c.media_config_file;
  out << YAML::Key << "server" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "host" << YAML::Value << c.server.host;
  out << YAML::Key << "port" << YAML::Value << c.server.port;
  out << YAML::Key << "io_threads" << YAML::Value << c.server.io_threads;
  out << YAML::Key << "max_body_size" << YAML::Value << c.server.max_body_bytes;
  out << YAML::Key << "max_header_size" << YAML::Value << c.server.max_header_bytes;
  out << YAML::Key << "max_connections" << YAML::Value << c.server.max_connections;
  out << YAML::Key << "request_timeout" << YAML::Value << c.server.request_timeout_s;
  out << YAML::Key << "idle_timeout" << YAML::Value << c.server.idle_timeout_s;
  out << YAML::Key << "shutdown_grace_period" << YAML::Value << c.server.shutdown_grace_s;
  out << YAML::Key << "playground" << YAML::Value << c.server.playground;
  out << YAML::EndMap;
  out << YAML::Key << "logging" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "level" << YAML::Value << c.logging.level;
  out << YAML::Key << "format" << YAML::Value << c.logging.format;
  out << YAML::Key << "access_log" << YAML::Value << c.logging.access_log;
  out << YAML::EndMap;
  out << YAML::Key << "vision" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "enabled" << YAML::Value << c.vision.enabled;
  out << YAML::Key << "model_path" << YAML::Value << c.vision.model_path;
  out << YAML::Key << "mmproj_path" << YAML::Value << c.vision.mmproj_path;
  out << YAML::Key << "model_name" << YAML::Value << c.vision.model_name;
  out << YAML::Key << "load_8bit" << YAML::Value << c.vision.load_8bit;
  out << YAML::Key << "dtype" << YAML::Value << c.vision.dtype;
  out << YAML::Key << "max_model_len" << YAML::Value << c.vision.max_model_len;
  out << YAML::Key << "parallel" << YAML::Value << c.vision.parallel;
  out << YAML::Key << "max_queue" << YAML::Value << c.vision.max_queue;
  out << YAML::Key << "gpu_count" << YAML::Value << c.vision.gpu_count;
  out << YAML::Key << "tensor_split" << YAML::Value << YAML::Flow << c.vision.tensor_split;
  out << YAML::Key << "threads" << YAML::Value << c.vision.threads;
  out << YAML::Key << "image_cache_size" << YAML::Value << c.vision.image_cache_bytes;
  out << YAML::EndMap;
  out << YAML::Key << "speech" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "enabled" << YAML::Value << c.speech.enabled;
  out << YAML::Key << "model_dir" << YAML::Value << c.speech.model_dir;
  out << YAML::Key << "model_size" << YAML::Value << c.speech.model_size;
  out << YAML::Key << "model_path" << YAML::Value << c.speech.model_path;
  out << YAML::Key << "vad_model_path" << YAML::Value << c.speech.vad_model_path;
  out << YAML::Key << "device" << YAML::Value << c.speech.device;
  out << YAML::Key << "compute_type" << YAML::Value << c.speech.compute_type;
  out << YAML::Key << "parallel" << YAML::Value << c.speech.parallel;
  out << YAML::Key << "max_queue" << YAML::Value << c.speech.max_queue;
  out << YAML::Key << "threads" << YAML::Value << c.speech.threads;
  out << YAML::Key << "beam_size" << YAML::Value << c.speech.beam_size;
  out << YAML::Key << "best_of" << YAML::Value << c.speech.best_of;
  out << YAML::Key << "max_audio_size" << YAML::Value << c.speech.max_audio_bytes;
  out << YAML::Key << "max_audio_duration" << YAML::Value << c.speech.max_audio_seconds;
  out << YAML::EndMap;
  out << YAML::Key << "image" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "enabled" << YAML::Value << c.image.enabled;
  out << YAML::Key << "model_path" << YAML::Value << c.image.model_path;
  out << YAML::Key << "vae" << YAML::Value << c.image.vae;
  out << YAML::Key << "attention_slicing" << YAML::Value << c.image.attention_slicing;
  out << YAML::Key << "vae_tiling" << YAML::Value << c.image.vae_tiling;
  out << YAML::Key << "quantize" << YAML::Value << c.image.quantize;
  out << YAML::Key << "device" << YAML::Value << c.image.device;
  out << YAML::Key << "taesd_dir" << YAML::Value << c.image.taesd_dir;
  out << YAML::Key << "outputs_dir" << YAML::Value << c.image.outputs_dir;
  out << YAML::Key << "max_width" << YAML::Value << c.image.max_width;
  out << YAML::Key << "max_height" << YAML::Value << c.image.max_height;
  out << YAML::Key << "max_batch" << YAML::Value << c.image.max_batch;
  out << YAML::Key << "max_queue" << YAML::Value << c.image.max_queue;
  out << YAML::Key << "threads" << YAML::Value << c.image.threads;
  out << YAML::Key << "preview" << YAML::Value << c.image.preview;
  out << YAML::Key << "preview_interval" << YAML::Value << c.image.preview_interval_s;
  out << YAML::EndMap;
  out << YAML::Key << "media" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "preprocessing" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "max_image_size" << YAML::Value << c.media.max_image_size;
  out << YAML::Key << "supported_formats" << YAML::Value << YAML::Flow << c.media.supported_formats;
  out << YAML::Key << "resize_mode" << YAML::Value << c.media.resize_mode;
  out << YAML::Key << "normalize" << YAML::Value << c.media.normalize;
  out << YAML::Key << "max_pixels" << YAML::Value << c.media.max_pixels;
  out << YAML::Key << "background" << YAML::Value << c.media.background;
  out << YAML::EndMap;
  out << YAML::Key << "storage" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "enabled" << YAML::Value << c.media.cache_enabled;
  out << YAML::Key << "temp_dir" << YAML::Value << c.media.temp_dir;
  out << YAML::Key << "max_cache_size" << YAML::Value << c.media.max_cache_bytes;
  out << YAML::Key << "cleanup_interval" << YAML::Value << c.media.cleanup_interval_s;
  out << YAML::Key << "max_age" << YAML::Value << c.media.cache_max_age_s;
  out << YAML::EndMap;
  out << YAML::Key << "fetch" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "max_bytes" << YAML::Value << c.media.fetch_max_bytes;
  out << YAML::Key << "timeout" << YAML::Value << c.media.fetch_timeout_s;
  out << YAML::Key << "max_redirects" << YAML::Value << c.media.fetch_max_redirects;
  out << YAML::Key << "allow_networks" << YAML::Value << YAML::Flow << c.media.fetch_allow_networks;
  out << YAML::Key << "ca_file" << YAML::Value << c.media.fetch_ca_file;
  out << YAML::EndMap;
  out << YAML::EndMap;
  dump_storage(out, c.storage);
  dump_gateway(out, c.gateway);
  out << YAML::Key << "registry" << YAML::Value << YAML::BeginMap;
  if (c.registry.memory_budget == 0) {
    out << YAML::Key << "memory_budget" << YAML::Value << "auto";
  } else {
    out << YAML::Key << "memory_budget" << YAML::Value << c.registry.memory_budget;
  }
  if (c.registry.gpu_memory_budget.empty()) {
    out << YAML::Key << "gpu_memory_budget" << YAML::Value << "auto";
  } else if (c.registry.gpu_memory_budget_each) {
    out << YAML::Key << "gpu_memory_budget" << YAML::Value << c.registry.gpu_memory_budget.front();
  } else {
    out << YAML::Key << "gpu_memory_budget" << YAML::Value << YAML::Flow << c.registry.gpu_memory_budget;
  }
  out << YAML::Key << "idle_unload" << YAML::Value << c.registry.idle_unload_s;
  out << YAML::Key << "admin_api_keys" << YAML::Value << YAML::BeginSeq;
  for (const auto& key : c.registry.admin_api_keys) {
    out << YAML::Flow << YAML::BeginMap << YAML::Key << "name" << YAML::Value << key.name << YAML::Key << "sha256"
        << YAML::Value << key.sha256 << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::Key << "include_store" << YAML::Value << c.registry.include_store;
  out << YAML::Key << "rescan_interval" << YAML::Value << c.registry.rescan_interval_s;
  out << YAML::Key << "models" << YAML::Value << YAML::BeginSeq;
  for (const auto& model : c.registry.models) {
    out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << model.name << YAML::Key << "service" << YAML::Value
        << model.service << YAML::Key << "path" << YAML::Value << model.path << YAML::Key << "mmproj" << YAML::Value
        << model.mmproj << YAML::Key << "preload" << YAML::Value << model.preload << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

} // namespace mmserve
