// mmserve: one binary, several roles. Parses the command line, loads the
// configuration (file, then environment, then flags) and runs the role.
#include "app/model_pull.hpp"
#include "app/roles.hpp"
#include "core/config.hpp"
#include "core/crash_report.hpp"
#include "core/logging.hpp"
#include "core/version.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <iostream>

namespace {

using mmserve::Config;
using mmserve::Role;

// Flags every role takes.
struct CommonFlags {
  std::string config_file;
  std::string host;
  int port = -1;
  std::string log_level;
  std::string log_format;
  bool print_config = false;
};

// Role-specific flags; only those set on the command line are applied.
struct ServiceFlags {
  std::string model;
  std::string mmproj;
  std::string served_model_name;
  std::string dtype;
  int max_model_len = 0;
  bool trust_remote_code = false;
  std::string model_size;
  std::string device;
  std::string compute_type;
  std::string outputs_dir;
  bool attention_slicing = false;
  bool vae_tiling = false;
  std::map<std::string, CLI::Option*> options; // by long name, to tell given from default
  bool given(const std::string& name) const {
    const auto it = options.find(name);
    return it != options.end() && it->second->count() > 0;
  }
};

void add_common_flags(CLI::App& command, CommonFlags& flags) {
  command.add_option("-c,--config", flags.config_file, "YAML configuration file (see docs/configuration.md)")
      ->check(CLI::ExistingFile);
  command.add_option("--host", flags.host, "Address to listen on (server.host)");
  command.add_option("-p,--port", flags.port, "Port to listen on (server.port)")->check(CLI::Range(0, 65535));
  command.add_option("--log-level", flags.log_level, "trace, debug, info, warn or error (logging.level)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  command.add_option("--log-format", flags.log_format, "text or json (logging.format)")
      ->check(CLI::IsMember({"text", "json"}));
  command.add_flag("--print-config", flags.print_config, "Print the effective configuration as YAML and exit");
}

void add_vision_flags(CLI::App& command, ServiceFlags& flags) {
  flags.options["--model"] =
      command.add_option("--model", flags.model, "GGUF model file or folder (vision.model_path; vLLM's --model)");
  flags.options["--mmproj"] = command.add_option("--mmproj", flags.mmproj, "GGUF projector file (vision.mmproj_path)");
  flags.options["--served-model-name"] =
      command.add_option("--served-model-name", flags.served_model_name, "Model id clients use (vision.model_name)");
  flags.options["--dtype"] =
      command.add_option("--dtype", flags.dtype, "Weight type: auto, float16, bfloat16, float32 (vision.dtype)")
          ->check(CLI::IsMember({"auto", "half", "float16", "bfloat16", "float", "float32"}));
  flags.options["--max-model-len"] =
      command.add_option("--max-model-len", flags.max_model_len, "Context length in tokens (vision.max_model_len)")
          ->check(CLI::Range(64, 1 << 22));
  flags.options["--trust-remote-code"] =
      command.add_flag("--trust-remote-code", flags.trust_remote_code,
                       "Accepted for vLLM compatibility; mmserve runs no code from model folders");
}

void add_speech_flags(CLI::App& command, ServiceFlags& flags) {
  flags.options["--model"] = command.add_option("--model", flags.model, "whisper.cpp model file (speech.model_path)");
  flags.options["--model-size"] = command.add_option("--model-size", flags.model_size,
                                                     "Model size to find in the model folder (speech.model_size)");
  flags.options["--device"] = command.add_option("--device", flags.device, "cpu, cuda or auto (speech.device)")
                                  ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  flags.options["--compute-type"] = command
                                        .add_option("--compute-type", flags.compute_type,
                                                    "float16, float32, int8, int8_float16 (speech.compute_type)")
                                        ->check(CLI::IsMember({"float16", "float32", "int8", "int8_float16"}));
}

void add_image_flags(CLI::App& command, ServiceFlags& flags) {
  flags.options["--model"] =
      command.add_option("--model", flags.model, "Diffusers folder or .safetensors checkpoint (image.model_path)");
  flags.options["--outputs-dir"] =
      command.add_option("--outputs-dir", flags.outputs_dir, "Where generated images are written (image.outputs_dir)");
  flags.options["--attention-slicing"] = command.add_flag("--attention-slicing", flags.attention_slicing,
                                                          "Bound attention memory (image.attention_slicing)");
  flags.options["--vae-tiling"] =
      command.add_flag("--vae-tiling", flags.vae_tiling, "Decode latents in tiles (image.vae_tiling)");
}

void apply_flags(Config& config, Role role, const CommonFlags& common, const ServiceFlags& flags) {
  if (!common.host.empty()) config.server.host = common.host;
  if (common.port >= 0) config.server.port = static_cast<uint16_t>(common.port);
  if (!common.log_level.empty()) config.logging.level = common.log_level;
  if (!common.log_format.empty()) config.logging.format = common.log_format;
  auto given = [&](const char* name) { return flags.given(name); };
  if (role == Role::vision) {
    if (given("--model")) config.vision.model_path = flags.model;
    if (given("--mmproj")) config.vision.mmproj_path = flags.mmproj;
    if (given("--served-model-name")) config.vision.model_name = flags.served_model_name;
    if (given("--dtype")) {
      // vLLM spells float16 "half" and float32 "float".
      config.vision.dtype = flags.dtype == "half" ? "float16" : flags.dtype == "float" ? "float32" : flags.dtype;
    }
    if (given("--max-model-len")) config.vision.max_model_len = flags.max_model_len;
  } else if (role == Role::speech) {
    if (given("--model")) config.speech.model_path = flags.model;
    if (given("--model-size")) config.speech.model_size = flags.model_size;
    if (given("--device")) config.speech.device = flags.device;
    if (given("--compute-type")) config.speech.compute_type = flags.compute_type;
  } else if (role == Role::image) {
    if (given("--model")) config.image.model_path = flags.model;
    if (given("--outputs-dir")) config.image.outputs_dir = flags.outputs_dir;
    if (given("--attention-slicing")) config.image.attention_slicing = true;
    if (given("--vae-tiling")) config.image.vae_tiling = true;
  }
}

// Where the model store is: --models-dir, else MMSERVE_MODELS, else the
// config file's models_dir, else the default under the user's cache.
std::string models_dir_for(const std::string& config_file, const std::string& flag) {
  Config config = config_file.empty() ? Config{} : mmserve::load_config_file(config_file);
  if (const char* env = std::getenv("MMSERVE_MODELS"); env && *env) config.models_dir = env;
  if (!flag.empty()) config.models_dir = flag;
  mmserve::finalize_config(config);
  return config.models_dir;
}

struct StoreFlags {
  std::string config_file;
  std::string models_dir;
};

void add_store_flags(CLI::App& command, StoreFlags& flags) {
  command.add_option("-c,--config", flags.config_file, "YAML configuration file (its models_dir)")
      ->check(CLI::ExistingFile);
  command.add_option("--models-dir", flags.models_dir, "Model store folder (default: MMSERVE_MODELS, models_dir)");
}

// What a command returns, or its failure said on stderr: 2 for a
// configuration error, 1 for any other.
template <typename Command> int exit_code_of(Command&& command) {
  try {
    return command();
  } catch (const mmserve::ConfigError& error) {
    std::cerr << "mmserve: configuration error: " << error.what() << '\n';
    return 2;
  } catch (const std::exception& error) {
    std::cerr << "mmserve: " << error.what() << '\n';
    return 1;
  }
}

} // namespace

int main(int argc, char** argv) {
  mmserve::install_crash_reporting();
  CLI::App app{"mmserve: vision-language chat, speech recognition and image generation behind one "
               "OpenAI-compatible API"};
  app.set_version_flag("--version", std::string("mmserve ") + mmserve::kVersion);
  app.require_subcommand(1);

  struct RoleCommand {
    Role role;
    CLI::App* command;
    CommonFlags common;
    ServiceFlags service;
  };
  std::vector<std::unique_ptr<RoleCommand>> roles;
  auto add_role = [&](Role role, const char* description) -> RoleCommand& {
    auto entry = std::make_unique<RoleCommand>();
    entry->role = role;
    entry->command = app.add_subcommand(mmserve::role_name(role), description);
    add_common_flags(*entry->command, entry->common);
    roles.push_back(std::move(entry));
    return *roles.back();
  };
  add_role(Role::serve, "All in one: every enabled service behind one listener");
  add_role(Role::gateway, "API gateway in front of remote service pools");
  auto& vision = add_role(Role::vision, "Vision-language chat service (LLaVA / Qwen-VL class)");
  add_vision_flags(*vision.command, vision.service);
  auto& speech = add_role(Role::speech, "Speech recognition service (Whisper)");
  add_speech_flags(*speech.command, speech.service);
  auto& image = add_role(Role::image, "Image generation service (Stable Diffusion)");
  add_image_flags(*image.command, image.service);

  // Model store commands, beside the roles.
  StoreFlags pull_store;
  mmserve::PullOptions pull_options;
  std::string pull_spec;
  auto* pull = app.add_subcommand("pull", "Download a model from Hugging Face (HF_ENDPOINT, HF_TOKEN) into the store");
  pull->add_option("model", pull_spec,
                   "A known name (see `mmserve pull --list`), REPO:FILE, or REPO (its servable files)");
  pull->add_option("--revision", pull_options.revision, "Branch, tag or commit (default: main)");
  pull->add_option("--name", pull_options.name,
                   "Local name (default: the file's stem for REPO:FILE, the repository's name for REPO)");
  pull->add_option("--family", pull_options.family, "vision, speech or image (default: from the file name)")
      ->check(CLI::IsMember({"vision", "speech", "image"}));
  bool pull_list = false;
  pull->add_flag("--list", pull_list, "List the known model names and exit");
  add_store_flags(*pull, pull_store);
  StoreFlags models_store;
  auto* models = app.add_subcommand("models", "The model store: list and remove pulled models");
  models->require_subcommand(1);
  auto* models_list = models->add_subcommand("list", "Pulled models with their sizes and sources");
  add_store_flags(*models_list, models_store);
  std::string rm_name;
  auto* models_rm = models->add_subcommand("rm", "Remove a pulled model's files and manifest");
  models_rm->add_option("name", rm_name, "Model name, as `mmserve models list` shows it")->required();
  add_store_flags(*models_rm, models_store);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error);
  }

  if (pull->parsed() || models->parsed()) {
    return exit_code_of([&] {
      if (pull->parsed() && pull_list) {
        for (const auto& entry : mmserve::model_catalogue())
          std::cout << fmt::format("{:<24} {:<7} {}\n", entry.name, entry.family, entry.description);
        return 0;
      }
      if (pull->parsed()) {
        if (pull_spec.empty()) {
          std::cerr << "mmserve pull: name a model (`mmserve pull --list`) REPO:FILE or REPO\n";
          return 2;
        }
        pull_options.models_dir = models_dir_for(pull_store.config_file, pull_store.models_dir);
        if (const char* endpoint = std::getenv("HF_ENDPOINT"); endpoint && *endpoint) pull_options.endpoint = endpoint;
        if (const char* token = std::getenv("HF_TOKEN"); token && *token) pull_options.token = token;
        return mmserve::run_pull(pull_spec, pull_options);
      }
      const std::string dir = models_dir_for(models_store.config_file, models_store.models_dir);
      return models_list->parsed() ? mmserve::run_models_list(dir) : mmserve::run_models_rm(dir, rm_name);
    });
  }

  for (const auto& entry : roles) {
    if (!entry->command->parsed()) continue;
    return exit_code_of([&] {
      Config config =
          entry->common.config_file.empty() ? Config{} : mmserve::load_config_file(entry->common.config_file);
      const auto applied = mmserve::apply_environment(config, entry->role, mmserve::process_environment());
      apply_flags(config, entry->role, entry->common, entry->service);
      mmserve::finalize_config(config, entry->role);
      if (entry->common.print_config) {
        std::cout << mmserve::dump_config(config);
        return 0;
      }
      mmserve::configure_logging(config.logging);
      for (const auto& line : applied)
        spdlog::info("environment: {}", line);
      if (entry->service.trust_remote_code) {
        spdlog::info("--trust-remote-code accepted and not needed: mmserve runs no code from model folders");
      }
      return mmserve::run_role(entry->role, config);
    });
  }
  return 2;
}
