#include "app/model_pull.hpp"

#include "app/hf_download.hpp"
#include "app/model_store.hpp"
#include "core/http_url.hpp"
#include "core/text.hpp"
#include "storage/digest.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <map>
#include <system_error>

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
  std::vector<std::string> files; // empty: chosen from the repository's file list
  bool keep_paths = false;        // files keep their folders (a diffusers repository)
};

std::string guess_family(const std::string& file) {
  const std::string base = fs::path(file).filename().string();
  if (base.starts_with("ggml-") && base.ends_with(".bin")) return "speech"; // whisper.cpp's naming
  if (base.ends_with(".gguf")) return "vision";
  if (base.ends_with(".safetensors") || base.ends_with(".ckpt")) return "image";
  return {};
}

// A repository's file as a relative path of ordinary parts (no "..", ".",
// empty part, leading '/', backslash or control character), so that it
// lands inside its model folder: file names come from the user and from the
// listing the endpoint sends.
bool is_path_inside(std::string_view file) {
  if (file.empty() || file.front() == '/') return false;
  for (size_t start = 0;;) {
    const auto slash = file.find('/', start);
    const auto part = file.substr(start, slash == std::string_view::npos ? slash : slash - start);
    if (part.empty() || part == "." || part == "..") return false;
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return std::none_of(file.begin(), file.end(), [](char c) {
    const auto byte = static_cast<unsigned char>(c);
    return byte < 0x20 || byte == 0x7f || c == '\\';
  });
}

// OWNER/NAME, each part of letters, digits, '.', '_' and '-' (Hugging Face's rule).
bool valid_repo_id(std::string_view repo) {
  const auto slash = repo.find('/');
  if (slash == std::string_view::npos) return false;
  const auto valid_part = [](std::string_view part) {
    return !part.empty() && part != "." && part != ".." && std::all_of(part.begin(), part.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
    });
  };
  return valid_part(repo.substr(0, slash)) && valid_part(repo.substr(slash + 1));
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
          fmt::format("'{}' is neither a known model ({}) nor a Hugging Face REPO or REPO:FILE", spec, names));
    }
    if (!valid_repo_id(repo)) {
      throw std::invalid_argument(fmt::format(
          "'{}' is not a Hugging Face repository id (OWNER/NAME, of letters, digits, '.', '_', '-')", repo));
    }
    if (colon + 1 == spec.size()) {
      throw std::invalid_argument(fmt::format("name the file after the colon: `mmserve pull {}:FILE`", repo));
    }
    if (colon == std::string::npos) {
      // The whole repository: its files (and family) are chosen once its file list is read.
      plan = {repo.substr(repo.rfind('/') + 1), "", repo, "main", {}};
    } else {
      const std::string file = spec.substr(colon + 1);
      if (!is_path_inside(file)) {
        throw std::invalid_argument(fmt::format("'{}' is not a file path inside a repository", file));
      }
      plan = {fs::path(file).stem().string(), guess_family(file), repo, "main", {file}};
      if (plan.family.empty() && options.family.empty()) {
        throw std::invalid_argument(
            fmt::format("cannot tell the family of '{}' from its name: pass --family vision|speech|image", file));
      }
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

// The repository's metadata (Hugging Face's /api/models/{repo}/revision/{rev}):
// licence, file list. Null when the server offers none.
nlohmann::json fetch_repo_info(const std::string& endpoint, const PullPlan& plan, const DownloadOptions& options) {
  const auto text =
      fetch_text(fmt::format("{}/api/models/{}/revision/{}", endpoint, plan.repo, percent_encode(plan.revision)),
                 options, 16 << 20);
  if (!text) return nullptr;
  auto doc = nlohmann::json::parse(*text, nullptr, false);
  return doc.is_object() ? doc : nlohmann::json(nullptr);
}

// The first of `candidates` whose name holds the earliest of `preferences`;
// the only candidate, or nullopt when several match none.
std::optional<std::string> preferred(const std::vector<std::string>& candidates,
                                     std::initializer_list<const char*> preferences) {
  for (const char* preference : preferences) {
    for (const auto& candidate : candidates) {
      if (text::lowered(candidate).find(preference) != std::string::npos) return candidate;
    }
  }
  if (candidates.size() == 1) return candidates.front();
  return std::nullopt;
}

// What to pull from a whole repository, by its file list: a diffusers
// pipeline (model_index.json, each component's configs, tokenizer files and
// safetensors weights, fp16 variants preferred), a GGUF model (Q8_0, then
// other common quantizations) with its projector, one whisper.cpp file, or
// one single-file checkpoint. Anything ambiguous asks for REPO:FILE.
void choose_repo_files(PullPlan& plan, const std::vector<std::string>& files) {
  const auto list_of = [&](const std::vector<std::string>& names) {
    std::string text;
    for (size_t i = 0; i < names.size() && i < 20; ++i)
      text += (i ? ", " : "") + names[i];
    if (names.size() > 20) text += fmt::format(" and {} more", names.size() - 20);
    return text;
  };
  const auto ambiguous = [&](const std::string& what, const std::vector<std::string>& names) {
    return std::invalid_argument(fmt::format("{} holds several {} ({}): pick one with `mmserve pull {}:FILE`",
                                             plan.repo, what, list_of(names), plan.repo));
  };
  const auto has = [&](const std::string& name) { return std::find(files.begin(), files.end(), name) != files.end(); };

  if (has("model_index.json")) {
    plan.family = plan.family.empty() ? "image" : plan.family;
    plan.keep_paths = true;
    plan.files = {"model_index.json"};
    std::map<std::string, std::vector<std::string>> weights; // folder -> safetensors
    for (const auto& file : files) {
      const auto slash = file.find('/');
      if (slash == std::string::npos || file.find('/', slash + 1) != std::string::npos) continue;
      if (file.ends_with(".json") || file.ends_with(".txt")) plan.files.push_back(file);
      if (file.ends_with(".safetensors")) weights[file.substr(0, slash)].push_back(file);
    }
    for (const auto& [folder, names] : weights) {
      std::vector<std::string> half, full;
      for (const auto& name : names)
        (name.find(".fp16.") != std::string::npos ? half : full).push_back(name);
      const auto& chosen = half.empty() ? full : half;
      plan.files.insert(plan.files.end(), chosen.begin(), chosen.end());
    }
    if (weights.empty()) {
      throw std::invalid_argument(
          fmt::format("{} is a diffusers repository without safetensors weights: mmserve reads only those", plan.repo));
    }
    return;
  }
  std::vector<std::string> models, projectors, whisper, checkpoints;
  for (const auto& file : files) {
    const std::string base = fs::path(file).filename().string();
    if (file.ends_with(".gguf"))
      (text::lowered(base).find("mmproj") != std::string::npos ? projectors : models).push_back(file);
    if (base.starts_with("ggml-") && base.ends_with(".bin")) whisper.push_back(file);
    if (file.ends_with(".safetensors") && file.find('/') == std::string::npos) checkpoints.push_back(file);
  }
  if (!models.empty()) {
    const auto model = preferred(models, {"q8_0", "q4_k_m", "q5_k_m", "q6_k", "f16", "bf16", "f32"});
    if (!model) throw ambiguous("GGUF models", models);
    plan.files = {*model};
    if (!projectors.empty()) plan.files.push_back(*preferred(projectors, {"f16", "q8_0", ""}));
    if (plan.family.empty()) plan.family = "vision";
    return;
  }
  if (!whisper.empty()) {
    if (whisper.size() > 1) throw ambiguous("whisper.cpp models", whisper);
    plan.files = whisper;
    if (plan.family.empty()) plan.family = "speech";
    return;
  }
  if (checkpoints.size() == 1) {
    plan.files = checkpoints;
    if (plan.family.empty()) plan.family = "image";
    return;
  }
  if (checkpoints.size() > 1) throw ambiguous("checkpoints", checkpoints);
  throw std::invalid_argument(fmt::format("{} has no model file mmserve can serve (GGUF, whisper.cpp ggml-*.bin, "
                                          "safetensors, or a diffusers folder){}{}",
                                          plan.repo, files.empty() ? "" : ": it holds ", list_of(files)));
}

// The repository's licence from its model card metadata, when the server
// offers it; a pull never fails for want of it.
std::string license_of(const nlohmann::json& doc) {
  try {
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
  if (manifest.files.front().path.ends_with("model_index.json")) return "mmserve image --model " + folder;
  return manifest.family == "vision"
             ? "mmserve vision --model " + folder
             : fmt::format("mmserve image --model {}/{}", models_dir, manifest.files.front().path);
}

// An exclusive flock(2) on models_dir/.locks/<name>.lock, held for the pull;
// the kernel drops it if the process dies.
class PullLock {
public:
  PullLock() = default;
  PullLock(const std::string& models_dir, const std::string& name) {
    const fs::path dir = fs::path(models_dir) / ".locks";
    fs::create_directories(dir);
    const std::string path = (dir / (name + ".lock")).string();
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0)
      throw std::runtime_error(fmt::format("cannot open {}: {}", path, std::generic_category().message(errno)));
    if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) return;
    std::cerr << fmt::format("waiting for another `mmserve pull` of {} to finish\n", name);
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno != EINTR)
        throw std::runtime_error(fmt::format("cannot lock {}: {}", path, std::generic_category().message(errno)));
    }
  }
  PullLock(PullLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  PullLock& operator=(PullLock&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  PullLock(const PullLock&) = delete;
  PullLock& operator=(const PullLock&) = delete;
  ~PullLock() {
    if (fd_ >= 0) ::close(fd_); // releases the lock
  }

private:
  int fd_ = -1;
};

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
  // Two pulls of one model would write the same .part files: the second
  // waits for the first, then finds its files present.
  PullLock lock;
  try {
    lock = PullLock(options.models_dir, plan.name);
  } catch (const std::exception& error) {
    std::cerr << "mmserve pull: " << error.what() << '\n';
    return 1;
  }
  ModelManifest manifest;
  manifest.name = plan.name;
  manifest.family = plan.family;
  manifest.repo = plan.repo;
  manifest.revision = plan.revision;
  try {
    nlohmann::json info;
    try {
      info = fetch_repo_info(endpoint, plan, download);
    } catch (const DownloadError&) {
      if (plan.files.empty()) throw; // the file list is needed; a licence is not
    }
    manifest.license = license_of(info);
    if (plan.files.empty()) {
      if (!info.is_object() || !info.contains("siblings") || !info["siblings"].is_array()) {
        throw std::invalid_argument(fmt::format("{} did not list the files of {} (revision {}): pull REPO:FILE instead",
                                                endpoint, plan.repo, plan.revision));
      }
      std::vector<std::string> files, outside;
      for (const auto& sibling : info["siblings"]) {
        if (!sibling.is_object() || !sibling.contains("rfilename") || !sibling["rfilename"].is_string()) continue;
        auto file = sibling["rfilename"].get<std::string>();
        (is_path_inside(file) ? files : outside).push_back(std::move(file));
      }
      if (!outside.empty()) {
        std::cerr << fmt::format("{}: ignoring {} listed name{} that would land outside the model folder: {}\n",
                                 plan.repo, outside.size(), outside.size() == 1 ? "" : "s", fmt::join(outside, ", "));
      }
      choose_repo_files(plan, files);
      manifest.family = plan.family;
      std::cerr << fmt::format("{}: pulling {} file{}: {}\n", plan.repo, plan.files.size(),
                               plan.files.size() == 1 ? "" : "s", fmt::join(plan.files, ", "));
    }
    // Speech models go straight into models_dir, where `mmserve speech`
    // looks for ggml-<size>.bin; the others get a folder of their own.
    const fs::path folder =
        plan.family == "speech" ? fs::path(options.models_dir) : fs::path(options.models_dir) / plan.name;
    fs::create_directories(folder);
    for (const auto& file : plan.files) {
      if (!is_path_inside(file))
        throw std::invalid_argument(fmt::format("'{}' would land outside {}", file, folder.string()));
      const fs::path dest = folder / (plan.keep_paths ? fs::path(file) : fs::path(file).filename());
      if (plan.keep_paths) fs::create_directories(dest.parent_path());
      // Quoted as Hugging Face's own client quotes them: the revision whole, the file by path part.
      const std::string url = fmt::format("{}/{}/resolve/{}/{}", endpoint, plan.repo, percent_encode(plan.revision),
                                          percent_encode(file, "/"));
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
  } catch (const std::invalid_argument& error) { // the repository holds nothing clear to pull
    std::cerr << "mmserve pull: " << error.what() << '\n';
    return 2;
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
