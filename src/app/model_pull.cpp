#include "app/model_pull.hpp"

#include "app/hf_download.hpp"
#include "app/model_store.hpp"
#include "storage/digest.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <iostream>

namespace mmserve {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;

std::string human_size(uint64_t bytes) {
  if (bytes < 1024) return fmt::format("{} B", bytes);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes) / 1024;
  int unit = 0;
  while (value >= 1024 && unit < 3) {
    value /= 1024;
    ++unit;
  }
  return fmt::format("{:.1f} {}", value, units[unit]);
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

// A bar redrawn in place on a terminal; in logs and CI (not a tty), a plain
// line when a transfer starts, every few seconds, and when it ends.
class ProgressPrinter {
public:
  explicit ProgressPrinter(std::string label) : label_(std::move(label)), tty_(isatty(STDERR_FILENO) == 1) {}
  ~ProgressPrinter() {
    if (tty_ && drawn_) std::cerr << '\n';
  }
  void operator()(uint64_t done, std::optional<uint64_t> total) {
    const auto now = Clock::now();
    const bool finished = total && done >= *total;
    const auto interval = tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(5000);
    if (drawn_ && !finished && now - last_ < interval) return;
    if (finished && finished_) return;
    finished_ = finished;
    last_ = now;
    drawn_ = true;
    const std::string amount = total ? fmt::format("{} / {}", human_size(done), human_size(*total)) : human_size(done);
    const int percent = total && *total > 0 ? static_cast<int>(done * 100 / *total) : -1;
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = percent < 0 ? 0 : percent * kWidth / 100;
      std::cerr << fmt::format("\r{} [{}{}] {} {}   ", label_, std::string(filled, '#'),
                               std::string(kWidth - filled, '-'), percent < 0 ? "" : fmt::format("{:3}%", percent),
                               amount)
                << (finished ? "\n" : "") << std::flush;
      if (finished) drawn_ = false; // the line is closed; the destructor adds none
    } else {
      std::cerr << fmt::format("{}: {}{}\n", label_, percent < 0 ? "" : fmt::format("{}% ", percent), amount);
    }
  }

private:
  std::string label_;
  bool tty_;
  bool drawn_ = false;
  bool finished_ = false;
  Clock::time_point last_{};
};

struct PullPlan {
  std::string name, family, repo, revision;
  std::vector<std::string> files;
};

std::string guess_family(const std::string& file) {
  const std::string base = fs::path(file).filename().string();
  if (base.starts_with("ggml-") && base.ends_with(".bin")) return "speech"; // whisper.cpp's naming
  if (base.ends_with(".gguf")) return "vision";
  if (base.ends_with(".safetensors") || base.ends_with(".ckpt")) return "image";
  return {};
}

PullPlan plan_for(const std::string& spec, const PullOptions& options) {
  PullPlan plan;
  for (const auto& entry : model_catalogue()) {
    if (spec == entry.name || "whisper-" + spec == entry.name) {
      plan = {entry.name, entry.family, entry.repo, "main", entry.files};
      break;
    }
  }
  if (plan.repo.empty()) {
    const auto colon = spec.find(':');
    const std::string repo = spec.substr(0, colon);
    if (repo.find('/') == std::string::npos) {
      std::string names;
      for (const auto& entry : model_catalogue())
        names += (names.empty() ? "" : ", ") + entry.name;
      throw std::invalid_argument(
          fmt::format("'{}' is neither a known model ({}) nor a Hugging Face REPO:FILE", spec, names));
    }
    if (colon == std::string::npos || colon + 1 == spec.size()) {
      throw std::invalid_argument(fmt::format("name the file to pull from {}: `mmserve pull {}:FILE`", repo, repo));
    }
    const std::string file = spec.substr(colon + 1);
    plan = {
        options.name.empty() ? fs::path(file).stem().string() : options.name, guess_family(file), repo, "main", {file}};
    if (plan.family.empty()) {
      throw std::invalid_argument(
          fmt::format("cannot tell the family of '{}' from its name: pass --family vision|speech|image", file));
    }
  }
  if (!options.family.empty()) plan.family = options.family;
  if (!options.name.empty()) plan.name = options.name;
  if (!options.revision.empty()) plan.revision = options.revision;
  if (!valid_model_name(plan.name)) {
    throw std::invalid_argument(
        fmt::format("'{}' is not a usable model name (letters, digits, '.', '_', '-'): pass --name", plan.name));
  }
  return plan;
}

// The repository's licence from its model card metadata, when the server
// offers it; a pull never fails for want of it.
std::string fetch_license(const std::string& endpoint, const PullPlan& plan, const DownloadOptions& options) {
  try {
    const auto text =
        fetch_text(fmt::format("{}/api/models/{}/revision/{}", endpoint, plan.repo, plan.revision), options);
    if (!text) return {};
    const auto doc = nlohmann::json::parse(*text, nullptr, false);
    if (!doc.is_object()) return {};
    if (const auto card = doc.find("cardData"); card != doc.end() && card->is_object()) {
      if (const auto license = card->find("license"); license != card->end()) {
        if (license->is_string()) return license->get<std::string>();
        if (license->is_array() && !license->empty() && license->front().is_string())
          return license->front().get<std::string>();
      }
    }
    if (const auto tags = doc.find("tags"); tags != doc.end() && tags->is_array()) {
      for (const auto& tag : *tags) {
        if (tag.is_string() && tag.get<std::string>().starts_with("license:")) return tag.get<std::string>().substr(8);
      }
    }
  } catch (const std::exception&) {
  }
  return {};
}

std::string usage_hint(const ModelManifest& manifest, const std::string& models_dir) {
  if (manifest.family == "speech") {
    const std::string file = fs::path(manifest.files.front().path).filename().string();
    if (file.starts_with("ggml-") && file.ends_with(".bin") && models_dir.size() > 0) {
      return fmt::format("mmserve speech --model-size {}", file.substr(5, file.size() - 9));
    }
    return fmt::format("mmserve speech --model {}/{}", models_dir, manifest.files.front().path);
  }
  const std::string folder = (fs::path(models_dir) / manifest.name).string();
  return manifest.family == "vision"
             ? "mmserve vision --model " + folder
             : fmt::format("mmserve image --model {}/{}", models_dir, manifest.files.front().path);
}

} // namespace

const std::vector<CatalogueEntry>& model_catalogue() {
  // Kept short: small, well-known models whose files run as they are.
  static const std::vector<CatalogueEntry> catalogue = {
      {"whisper-tiny.en", "speech", "ggerganov/whisper.cpp", {"ggml-tiny.en.bin"}, "Whisper tiny, English (75 MiB)"},
      {"whisper-base.en", "speech", "ggerganov/whisper.cpp", {"ggml-base.en.bin"}, "Whisper base, English (142 MiB)"},
      {"whisper-large-v3", "speech", "ggerganov/whisper.cpp", {"ggml-large-v3.bin"}, "Whisper large-v3 (2.9 GiB)"},
      {"whisper-large-v3-turbo",
       "speech",
       "ggerganov/whisper.cpp",
       {"ggml-large-v3-turbo.bin"},
       "Whisper large-v3-turbo (1.5 GiB)"},
      {"smolvlm-500m",
       "vision",
       "ggml-org/SmolVLM-500M-Instruct-GGUF",
       {"SmolVLM-500M-Instruct-Q8_0.gguf", "mmproj-SmolVLM-500M-Instruct-Q8_0.gguf"},
       "SmolVLM 500M Instruct, Q8_0, with its projector"},
      {"sd-turbo", "image", "stabilityai/sd-turbo", {"sd_turbo.safetensors"}, "SD-Turbo, single-file checkpoint"},
      {"sdxl-base-1.0",
       "image",
       "stabilityai/stable-diffusion-xl-base-1.0",
       {"sd_xl_base_1.0.safetensors"},
       "SDXL base 1.0, single-file checkpoint"},
  };
  return catalogue;
}

int run_pull(const std::string& spec, const PullOptions& options) {
  PullPlan plan;
  try {
    plan = plan_for(spec, options);
  } catch (const std::invalid_argument& error) {
    std::cerr << "mmserve pull: " << error.what() << '\n';
    return 2;
  }
  std::string endpoint = options.endpoint.empty() ? "https://huggingface.co" : options.endpoint;
  while (endpoint.ends_with('/'))
    endpoint.pop_back();
  DownloadOptions download;
  download.token = options.token;
  download.token_origin = url_origin(endpoint);
  if (download.token_origin.empty()) {
    std::cerr << "mmserve pull: HF_ENDPOINT '" << endpoint << "' is not an http(s) URL\n";
    return 2;
  }

  const ModelStore store(options.models_dir);
  ModelManifest manifest;
  manifest.name = plan.name;
  manifest.family = plan.family;
  manifest.repo = plan.repo;
  manifest.revision = plan.revision;
  try {
    manifest.license = fetch_license(endpoint, plan, download);
    // Speech models go straight into models_dir, where `mmserve speech`
    // looks for ggml-<size>.bin; the others get a folder of their own.
    const fs::path folder =
        plan.family == "speech" ? fs::path(options.models_dir) : fs::path(options.models_dir) / plan.name;
    fs::create_directories(folder);
    for (const auto& file : plan.files) {
      const fs::path dest = folder / fs::path(file).filename();
      const std::string url = fmt::format("{}/{}/resolve/{}/{}", endpoint, plan.repo, plan.revision, file);
      ModelFileEntry entry{fs::relative(dest, options.models_dir).string(), 0, {}, url};
      std::error_code ec;
      if (fs::is_regular_file(dest, ec) && !fs::exists(dest.string() + ".part", ec)) {
        entry.size = fs::file_size(dest);
        entry.sha256 = storage::sha256_file_hex(dest.string());
        std::cerr << fmt::format("{}: already present ({})\n", entry.path, human_size(entry.size));
      } else {
        ProgressPrinter printer(entry.path);
        download.progress = std::ref(printer);
        const auto result = download_file(url, dest.string(), download);
        download.progress = nullptr;
        entry.size = result.size;
        entry.sha256 = result.sha256;
        std::cerr << fmt::format("{}: {}{}{}\n", entry.path, human_size(result.size),
                                 result.resumed_from ? fmt::format(", resumed at {}", human_size(result.resumed_from))
                                                     : std::string(),
                                 result.expected_sha256.empty() ? ", no checksum offered" : ", sha256 verified");
      }
      manifest.files.push_back(std::move(entry));
    }
    manifest.pulled_at = utc_now();
    store.save(manifest);
  } catch (const std::exception& error) {
    std::cerr << "mmserve pull: " << error.what() << '\n';
    return 1;
  }
  std::cout << fmt::format("pulled {} ({}, {}) into {}\nrun it: {}\n", manifest.name, manifest.family,
                           human_size(manifest.total_size()), options.models_dir,
                           usage_hint(manifest, options.models_dir));
  return 0;
}

int run_models_list(const std::string& models_dir) {
  const auto models = ModelStore(models_dir).list();
  if (models.empty()) {
    std::cout << fmt::format("no models in {} (`mmserve pull NAME` adds one)\n", models_dir);
    return 0;
  }
  std::cout << fmt::format("{:<28} {:<7} {:>10}  {}\n", "NAME", "FAMILY", "SIZE", "SOURCE");
  for (const auto& model : models) {
    std::cout << fmt::format("{:<28} {:<7} {:>10}  {}@{}{}\n", model.name, model.family, human_size(model.total_size()),
                             model.repo, model.revision, model.license.empty() ? "" : " (" + model.license + ")");
  }
  return 0;
}

int run_models_rm(const std::string& models_dir, const std::string& name) {
  if (!ModelStore(models_dir).remove(name)) {
    std::cerr << fmt::format("mmserve models rm: no model '{}' in {} (see `mmserve models list`)\n", name, models_dir);
    return 1;
  }
  std::cout << fmt::format("removed {}\n", name);
  return 0;
}

} // namespace mmserve
