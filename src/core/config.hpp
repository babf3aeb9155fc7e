// mmserve's configuration: one YAML file, then the seed's environment
// variables, then command-line flags, each overriding the one before.
// Every key is checked: unknown keys and bad values fail fast with the key's
// full name and what is allowed.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace mmserve {

class ConfigError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

struct ServerConfig {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;
  int io_threads = 2;
  uint64_t max_body_bytes = 100ull << 20; // the seed's proxy-body-size: 100m
  uint64_t max_header_bytes = 16ull << 10;
  int max_connections = 1024;
  double request_timeout_s = 300; // the seed's proxy-read-timeout: 300
  double idle_timeout_s = 60;     // keep-alive connections with no request
  double shutdown_grace_s = 30;   // in-flight requests finish within this
  bool playground = true;
};

struct LoggingConfig {
  std::string level = "info";  // trace debug info warn error
  std::string format = "text"; // text json
  bool access_log = true;
};

struct VisionConfig {
  bool enabled = true;
  std::string model_path;                    // GGUF file or a directory holding model + mmproj
  std::string mmproj_path;                   // explicit projector file (optional)
  std::string model_name;                    // the id clients send; default: file stem
  bool load_8bit = false;                    // LOAD_8BIT
  std::string dtype = "auto";                // auto float16 bfloat16 float32
  int max_model_len = 4096;                  // context size in tokens
  int parallel = 4;                          // sequences decoded together
  int max_queue = 64;                        // waiting requests before 429
  int gpu_count = 0;                         // 0: all visible GPUs when built with CUDA
  std::vector<double> tensor_split;          // share of the model per GPU (empty: by free memory)
  int threads = 0;                           // 0: all cores
  uint64_t image_cache_bytes = 256ull << 20; // vision-encoder outputs kept by image hash
};

struct SpeechConfig {
  bool enabled = true;
  std::string model_dir;                // default: models_dir
  std::string model_size = "base.en";   // MODEL_SIZE
  std::string model_path;               // explicit file, overrides model_size
  std::string device = "auto";          // DEVICE: cpu cuda auto
  std::string compute_type = "float16"; // COMPUTE_TYPE: float16 float32 int8 int8_float16
  std::string vad_model_path;
  int parallel = 2;   // transcriptions decoded at once, each with its own decoder state
  int max_queue = 32; // waiting requests before 429
  int threads = 0;    // per transcription; 0: cores / parallel
  int beam_size = 1;  // 1: greedy (as whisper.cpp's server); 5: beam search (as its CLI), slower
  int best_of = 5;    // candidates sampled when a window falls back to a temperature above 0
  uint64_t max_audio_bytes = 100ull << 20;
  double max_audio_seconds = 3600;
};

struct ImageConfig {
  bool enabled = true;
  std::string model_path;         // diffusers folder or single-file checkpoint
  std::string vae = "auto";       // auto full taesd
  bool attention_slicing = false; // ENABLE_ATTENTION_SLICING
  bool vae_tiling = false;        // ENABLE_VAE_TILING
  std::string quantize = "none";  // none q8_0: Linear weights as Q8_0 at load
  std::string device = "auto";    // cpu cuda auto (a GPU when the build has one)
  std::string taesd_dir;          // TAESD weights for previews and vae: taesd; empty: beside the model
  std::string outputs_dir = "outputs";
  int max_width = 2048;
  int max_height = 2048;
  int max_batch = 10;            // images per request (OpenAI's n, webui's batch_size x n_iter)
  int max_queue = 16;            // waiting requests before 429
  int threads = 0;               // 0: all cores
  bool preview = true;           // TAESD previews in /sdapi/v1/progress while someone watches
  double preview_interval_s = 2; // at most one preview per this many seconds
};

// The seed's image-processor-config ConfigMap, key for key.
struct MediaConfig {
  int max_image_size = 1024;
  std::vector<std::string> supported_formats = {"jpeg", "png", "webp", "gif"};
  std::string resize_mode = "fit"; // fit crop pad
  bool normalize = true;
  uint64_t max_pixels = 8192ull * 8192ull; // header check before decoding (decompression bombs)
  std::string background = "#ffffff";      // alpha is composited on it; pad mode fills with it
  bool cache_enabled = true;               // the on-disk temp cache (storage/temp_cache)
  std::string temp_dir = "/tmp/images";
  uint64_t max_cache_bytes = 10ull << 30; // 10Gi
  double cleanup_interval_s = 3600;
  double cache_max_age_s = 86400; // entries unused this long are deleted by a sweep; 0: never
  // Images clients name by http(s) URL.
  uint64_t fetch_max_bytes = 20ull << 20;
  double fetch_timeout_s = 10;
  int fetch_max_redirects = 3;
  std::vector<std::string> fetch_allow_networks; // CIDRs opened despite being internal (tests, intranets)
  std::string fetch_ca_file;                     // extra PEM bundle for https
};

// Object storage (S3-compatible) and where generated outputs go.
struct S3Config {
  std::string endpoint; // AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL; empty: AWS's regional endpoint
  std::string region;   // AWS_REGION / AWS_DEFAULT_REGION; else us-east-1
  std::string bucket;
  std::string addressing = "auto"; // auto path virtual
  std::string access_key_id;       // AWS_ACCESS_KEY_ID (with the two below) when empty
  std::string secret_access_key;
  std::string session_token;
  uint64_t part_size = 8ull << 20; // multipart upload above this, in parts of this size
  double timeout_s = 60;           // one request
  std::string ca_file;             // extra PEM bundle for https endpoints
};

struct OutputsConfig {
  std::string backend = "local";       // local (image.outputs_dir) or s3
  std::string base_url;                // URL prefix of returned URLs; empty: /outputs/ (local), presigned (s3)
  std::string key_prefix = "outputs/"; // s3 object key prefix
  double presign_expiry_s = 3600;      // presigned GET URLs' lifetime
};

// Uploaded inputs (chat images, audio files) copied to the bucket, content-addressed.
struct InputsConfig {
  std::string backend = "none";        // none or s3
  std::string key_prefix = "inputs/";  // s3 object key prefix
  uint64_t max_pending = 256ull << 20; // bytes queued for upload; more is dropped (and counted)
};

struct StorageConfig {
  S3Config s3;
  OutputsConfig outputs;
  InputsConfig inputs;
};

// The seed's multimodal-gateway Ingress: routes (host + path prefix) to
// pools of service endpoints, with limits, health, auth and rate limits.
struct GatewayRoute {
  std::string host = "*"; // exact name, "*.example.com", or "*" for any host
  std::string path_prefix;
  std::string pool;
};

struct GatewayPool {
  // "http://host:port" each; a name resolving to several addresses gives an
  // endpoint per address. Empty: the service in this process under `serve`,
  // the seed's Service address under `gateway`.
  std::vector<std::string> endpoints;
};

struct RateLimit {
  double requests_per_second = 0; // 0: no limit
  double burst = 0;               // bucket size; 0: max(1, requests_per_second)
};

struct GatewayApiKey {
  std::string name;
  std::string sha256;                  // hex SHA-256 of the key; the key itself is never stored
  std::vector<std::string> routes;     // path prefixes this key may use; empty: all
  std::optional<RateLimit> rate_limit; // overrides gateway.rate_limits.per_key
};

struct GatewayConfig {
  std::vector<GatewayRoute> routes; // default: the seed's three plus the OpenAI paths
  std::map<std::string, GatewayPool> pools;
  double read_timeout_s = 300;  // the seed's proxy-read-timeout: between two reads from the upstream
  double connect_timeout_s = 5; // per connection attempt
  std::string health_path = "/readyz";
  double health_interval_s = 5;
  int max_fails = 3;       // consecutive failures that eject an endpoint
  double eject_time_s = 1; // first ejection; doubles per repeat, up to eject_max_time_s
  double eject_max_time_s = 30;
  double resolve_interval_s = 10; // DNS names are resolved again this often
  int max_idle_connections = 32;  // kept-alive upstream connections per endpoint
  double idle_connection_timeout_s = 30;
  std::vector<GatewayApiKey> api_keys;
  std::string api_keys_file; // a mounted secret: a YAML list like api_keys
  RateLimit per_key_limit;
  RateLimit per_ip_limit;
  std::vector<std::string> cors_origins; // "*" or exact origins; empty: no CORS
};

// More models per service, chosen per request by the OpenAI "model" field,
// loaded on first use and unloaded to keep every loaded model of every
// service within one memory budget.
struct RegistryModel {
  std::string name;    // the id clients send
  std::string service; // vision, speech or image
  std::string path;    // vision: GGUF file or folder with its mmproj; speech: whisper.cpp .bin; image: diffusers
                       // folder or single-file .safetensors
  std::string mmproj;  // vision: projector file, when not found beside the model
  bool preload = false;
};

struct RegistryConfig {
  uint64_t memory_budget = 0; // bytes for all loaded models; 0: auto (90% of the cgroup limit or of RAM)
  // Per GPU (ggml's order), for the models placed there. Empty: auto (90% of
  // each GPU's memory); a list names GPUs in order (later ones: auto); a
  // single size (gpu_memory_budget_each) applies to every GPU.
  std::vector<uint64_t> gpu_memory_budget;
  bool gpu_memory_budget_each = false;
  double idle_unload_s = 0;                  // unload a model unused this long; 0: never
  std::vector<GatewayApiKey> admin_api_keys; // may load/unload; none: loopback clients only
  bool include_store = true;                 // models pulled into models_dir are listed as available
  double rescan_interval_s = 10; // look this often for models put on disk since the start; 0: only when asked for
  std::vector<RegistryModel> models;
};

struct Config {
  std::string models_dir; // MMSERVE_MODELS, default ~/.cache/mmserve/models
  ServerConfig server;
  LoggingConfig logging;
  VisionConfig vision;
  SpeechConfig speech;
  ImageConfig image;
  MediaConfig media;
  StorageConfig storage;
  GatewayConfig gateway;
  RegistryConfig registry;
  std::string media_config_file; // a mounted image-processor-config config.yaml
};

enum class Role { serve, gateway, vision, speech, image };
const char* role_name(Role role);

// Parses YAML text; `source` names it in error messages.
Config parse_config(const std::string& yaml_text, const std::string& source);
Config load_config_file(const std::string& path);
// Reads the seed's image-processor-config (preprocessing/storage) into media.
void load_media_config_file(const std::string& path, MediaConfig& media);

// Applies the seed's environment variables for `role` (MODEL_PATH, LOAD_8BIT,
// MODEL_SIZE, DEVICE, COMPUTE_TYPE, ENABLE_ATTENTION_SLICING,
// ENABLE_VAE_TILING) and MMSERVE_MODELS. `env` maps names to values.
// Returns human-readable lines saying what was overridden.
std::vector<std::string> apply_environment(Config& config, Role role, const std::map<std::string, std::string>& env);
std::map<std::string, std::string> process_environment();

// Fills defaults that depend on the environment (models_dir) and the role
// (gateway pools) and checks cross-field rules. Throws ConfigError.
void finalize_config(Config& config, Role role = Role::serve);

// The gateway routes shipped by default: the seed's Ingress paths and the
// OpenAI paths, to the pools vision, image and speech.
std::vector<GatewayRoute> default_gateway_routes();
// The seed's Service address of each pool (llava-service:8000, ...).
std::map<std::string, std::string> seed_pool_addresses();
// "http://host:port" (port 80 when left out) of a gateway pool endpoint.
struct UpstreamAddress {
  std::string host;
  uint16_t port = 80;
};
std::optional<UpstreamAddress> parse_upstream_url(const std::string& text);
// Reads an api_keys_file (a YAML list of keys). Throws ConfigError.
std::vector<GatewayApiKey> load_api_keys_file(const std::string& path);

// The effective configuration as YAML (what --print-config shows).
std::string dump_config(const Config& config);

// "#rrggbb" to its three bytes; nullopt otherwise.
std::optional<std::array<unsigned char, 3>> parse_hex_colour(const std::string& text);

// Parses "true"/"false"/"1"/"0"/"yes"/"no"/"on"/"off"; nullopt otherwise.
std::optional<bool> parse_bool(const std::string& text);

} // namespace mmserve
