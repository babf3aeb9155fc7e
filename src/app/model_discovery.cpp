#include "app/model_discovery.hpp"
#include "core/text.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fmt/format.h>

namespace mmserve {
namespace fs = std::filesystem;
namespace {

int64_t file_time_unix(const fs::path& path) {
  std::error_code ec;
  const auto time = fs::last_write_time(path, ec);
  if (ec) return 0;
  const auto system = std::chrono::file_clock::to_sys(time);
  return std::chrono::duration_cast<std::chrono::seconds>(system.time_since_epoch()).count();
}

bool has_extension(const fs::path& path, std::initializer_list<const char*> extensions) {
  const std::string ext = text::lowered(path.extension().string());
  return std::any_of(extensions.begin(), extensions.end(), [&](const char* e) { return ext == e; });
}

ModelStatus found(ModelStatus status, const fs::path& path) {
  status.path = path.string();
  status.created = file_time_unix(path);
  status.state = ModelState::available;
  status.detail = "found on disk, not loaded yet";
  return status;
}

} // namespace

ModelStatus discover_vision_model(const VisionConfig& config, VisionModelFiles* files) {
  ModelStatus status;
  status.service = "vision";
  status.id = config.model_name.empty() ? "vision" : config.model_name;
  if (config.model_path.empty()) {
    status.detail = "no model configured: set vision.model_path in the config (MODEL_PATH or --model for `mmserve "
                    "vision`) to a GGUF model file, or to a folder holding the model and its mmproj GGUF";
    return status;
  }
  const fs::path path(config.model_path);
  std::error_code ec;
  fs::path model;
  fs::path mmproj = config.mmproj_path;
  // The id it will have once found, also while missing: a model put there
  // later (a volume filled after the start) keeps the id clients were shown.
  const fs::path named = path.has_filename() ? path : path.parent_path(); // "dir/" names dir
  if (config.model_name.empty())
    status.id = has_extension(named, {".gguf"}) ? named.stem().string() : named.filename().string();
  if (fs::is_directory(path, ec)) {
    std::vector<fs::path> models;
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      if (!entry.is_regular_file() || !has_extension(entry.path(), {".gguf"})) continue;
      if (text::lowered(entry.path().filename().string()).find("mmproj") != std::string::npos) {
        if (mmproj.empty()) mmproj = entry.path();
      } else {
        models.push_back(entry.path());
      }
    }
    std::sort(models.begin(), models.end());
    if (models.empty()) {
      status.path = path.string();
      status.detail =
          fmt::format("no GGUF model file in '{}' (expected a *.gguf model and its *mmproj*.gguf)", path.string());
      return status;
    }
    // With several quantisations in one folder, 8-bit loading prefers Q8_0.
    model = models.front();
    if (config.load_8bit) {
      for (const auto& candidate : models) {
        if (text::lowered(candidate.filename().string()).find("q8_0") != std::string::npos) model = candidate;
      }
    }
  } else if (fs::is_regular_file(path, ec)) {
    model = path;
    if (config.model_name.empty()) status.id = path.stem().string();
  } else {
    status.path = path.string();
    status.detail = fmt::format("model file or folder '{}' does not exist", path.string());
    return status;
  }
  if (!mmproj.empty() && !fs::is_regular_file(mmproj, ec)) {
    status.path = model.string();
    status.detail = fmt::format("projector file '{}' does not exist", mmproj.string());
    return status;
  }
  if (files) *files = {model.string(), mmproj.string()};
  return found(status, model);
}

ModelStatus discover_speech_model(const SpeechConfig& config) {
  ModelStatus status;
  status.service = "speech";
  status.id = "whisper-" + config.model_size;
  std::error_code ec;
  if (!config.model_path.empty()) {
    const fs::path path(config.model_path);
    status.id = path.stem().string();
    if (!fs::is_regular_file(path, ec)) {
      status.path = path.string();
      status.detail = fmt::format("whisper model file '{}' does not exist", path.string());
      return status;
    }
    return found(status, path);
  }
  const fs::path dir(config.model_dir);
  // int8 compute prefers an 8-bit file; the others take the plain model.
  std::vector<std::string> names;
  if (config.compute_type.starts_with("int8")) names.push_back("ggml-" + config.model_size + "-q8_0.bin");
  names.push_back("ggml-" + config.model_size + ".bin");
  for (const auto& name : names) {
    if (fs::is_regular_file(dir / name, ec)) return found(status, dir / name);
  }
  status.path = (dir / names.back()).string();
  status.detail = fmt::format("'{}' not found in '{}': put a whisper.cpp (ggml) model there, or set MODEL_PATH / "
                              "speech.model_path to the file",
                              names.back(), dir.string());
  return status;
}

ModelStatus discover_image_model(const ImageConfig& config) {
  ModelStatus status;
  status.service = "image";
  status.id = "stable-diffusion";
  if (config.model_path.empty()) {
    status.detail = "no model configured: set image.model_path in the config (MODEL_PATH for `mmserve image`) to a "
                    "diffusers folder or a single-file .safetensors checkpoint";
    return status;
  }
  const fs::path path(config.model_path);
  std::error_code ec;
  status.id = path.has_stem() ? path.stem().string() : path.parent_path().filename().string();
  if (fs::is_directory(path, ec)) {
    if (!fs::is_regular_file(path / "model_index.json", ec)) {
      status.path = path.string();
      status.detail =
          fmt::format("'{}' is a folder without model_index.json (expected a diffusers folder)", path.string());
      return status;
    }
    return found(status, path);
  }
  if (fs::is_regular_file(path, ec) && has_extension(path, {".safetensors"})) return found(status, path);
  status.path = path.string();
  status.detail = fs::exists(path, ec)
                      ? fmt::format("'{}' is neither a diffusers folder nor a .safetensors checkpoint", path.string())
                      : fmt::format("model file or folder '{}' does not exist", path.string());
  return status;
}

bool model_files_settled(const std::string& path, std::chrono::seconds quiet) {
  std::error_code ec;
  const fs::path found(path);
  const bool folder = fs::is_directory(found, ec);
  const fs::path dir = folder ? found : found.parent_path();
  const auto now = fs::file_time_type::clock::now();
  const auto recent = [&](const fs::path& entry) {
    std::error_code time_ec;
    const auto written = fs::last_write_time(entry, time_ec);
    return !time_ec && now - written < quiet;
  };
  // A folder's own time moves when a file is created in it.
  if (recent(dir)) return false;
  const auto unsettled = [&](const fs::directory_entry& entry) {
    return entry.path().extension() == ".part" || recent(entry.path());
  };
  if (!folder) { // the file and what is beside it, not the neighbours' folders
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      std::error_code type_ec;
      if (!entry.is_directory(type_ec) && unsettled(entry)) return false;
    }
    return !ec;
  }
  size_t seen = 0;
  for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (unsettled(*it)) return false;
    if (++seen > 100000) break; // a pipeline has dozens of files; this bounds a mistaken path
  }
  return !ec;
}

} // namespace mmserve
