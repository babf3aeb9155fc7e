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
  std::string outputs_dir = "outputs";
  int max_width = 2048;
  int max_height = 2048;
  int max_queue = 16;
};

// The seed's image-processor-config ConfigMap, key for key.
struct MediaConfig {
  int max_image_size = 1024;
  std::vector<std::string> supported_formats = {"jpeg", "png", "webp", "gif"};
  std::string resize_mode = "fit"; // fit crop pad
  bool normalize = true;
  uint64_t max_pixels = 8192ull * 8192ull; // header check before decoding (decompression bombs)
  std::string background = "#ffffff";      // alpha is composited on it; pad mode fills with it
  std::string temp_dir = "/tmp/images";
  uint64_t max_cache_bytes = 10ull << 30; // 10Gi
  double cleanup_interval_s = 3600;
  // Images clients name by http(s) URL.
  uint64_t fetch_max_bytes = 20ull << 20;
  double fetch_timeout_s = 10;
  int fetch_max_redirects = 3;
  std::vector<std::string> fetch_allow_networks; // CIDRs opened despite being internal (tests, intranets)
  std::string fetch_ca_file;                     // extra PEM bundle for https
};

struct Config {
  std::string models_dir; // MMSERVE_MODELS, default ~/.cache/mmserve/models
  ServerConfig server;
  LoggingConfig logging;
  VisionConfig vision;
  SpeechConfig speech;
  ImageConfig image;
  MediaConfig media;
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

// Fills defaults that depend on the environment (models_dir) and checks
// cross-field rules. Throws ConfigError.
void finalize_config(Config& config);

// The effective configuration as YAML (what --print-config shows).
std::string dump_config(const Config& config);

// "#rrggbb" to its three bytes; nullopt otherwise.
std::optional<std::array<unsigned char, 3>> parse_hex_colour(const std::string& text);

// Parses "true"/"false"/"1"/"0"/"yes"/"no"/"on"/"off"; nullopt otherwise.
std::optional<bool> parse_bool(const std::string& text);

} // namespace mmserve
