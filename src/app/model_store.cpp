#include "app/model_store.hpp"

#include "storage/atomic_file.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <iostream>

namespace mmserve {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json to_json(const ModelManifest& manifest) {
  json files = json::array();
  for (const auto& file : manifest.files) {
    files.push_back({{"path", file.path}, {"size", file.size}, {"sha256", file.sha256}, {"url", file.url}});
  }
  return {{"name", manifest.name},
          {"family", manifest.family},
          {"source", {{"repo", manifest.repo}, {"revision", manifest.revision}}},
          {"license", manifest.license},
          {"pulled_at", manifest.pulled_at},
          {"files", files}};
}

ModelManifest from_json(const json& doc) {
  ModelManifest manifest;
  manifest.name = doc.at("name").get<std::string>();
  manifest.family = doc.value("family", "");
  if (const auto source = doc.find("source"); source != doc.end() && source->is_object()) {
    manifest.repo = source->value("repo", "");
    manifest.revision = source->value("revision", "");
  }
  manifest.license = doc.value("license", "");
  manifest.pulled_at = doc.value("pulled_at", "");
  for (const auto& file : doc.at("files")) {
    manifest.files.push_back({file.at("path").get<std::string>(), file.value("size", uint64_t{0}),
                              file.value("sha256", ""), file.value("url", "")});
  }
  return manifest;
}

} // namespace

uint64_t ModelManifest::total_size() const {
  uint64_t total = 0;
  for (const auto& file : files)
    total += file.size;
  return total;
}

bool valid_model_name(const std::string& name) {
  return !name.empty() && name.size() <= 128 && name.front() != '.' &&
         std::all_of(name.begin(), name.end(),
                     [](unsigned char c) { return std::isalnum(c) || c == '.' || c == '_' || c == '-'; });
}

std::string ModelStore::manifest_path(const std::string& name) const {
  return (fs::path(dir_) / "manifests" / (name + ".json")).string();
}

void ModelStore::save(const ModelManifest& manifest) const {
  fs::create_directories(fs::path(dir_) / "manifests");
  storage::write_file_atomically(manifest_path(manifest.name), to_json(manifest).dump(2) + "\n");
}

std::optional<ModelManifest> ModelStore::find(const std::string& name) const {
  if (!valid_model_name(name)) return std::nullopt;
  const auto text = storage::read_whole_file(manifest_path(name));
  if (!text) return std::nullopt;
  return from_json(json::parse(*text));
}

std::vector<ModelManifest> ModelStore::list() const {
  std::vector<ModelManifest> models;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(fs::path(dir_) / "manifests", ec)) {
    if (entry.path().extension() != ".json") continue;
    try {
      models.push_back(from_json(json::parse(storage::read_whole_file(entry.path()).value_or("{}"))));
    } catch (const std::exception& error) {
      std::cerr << fmt::format("mmserve: skipping unreadable manifest {}: {}\n", entry.path().string(), error.what());
    }
  }
  std::sort(models.begin(), models.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return models;
}

bool ModelStore::remove(const std::string& name) const {
  const auto manifest = find(name);
  if (!manifest) return false;
  std::error_code ec;
  const fs::path root = fs::weakly_canonical(dir_, ec);
  for (const auto& file : manifest->files) {
    // A hand-edited manifest must not reach outside the store.
    const fs::path path = fs::weakly_canonical(root / file.path, ec);
    const auto relative = path.lexically_relative(root);
    if (relative.empty() || *relative.begin() == "..") continue;
    fs::remove(path, ec);
    fs::remove(path.string() + ".part", ec);
    if (path.parent_path() != root && fs::is_empty(path.parent_path(), ec)) fs::remove(path.parent_path(), ec);
  }
  fs::remove(manifest_path(name), ec);
  return true;
}

} // namespace mmserve
