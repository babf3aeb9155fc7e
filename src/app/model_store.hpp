// The model store: models_dir (MMSERVE_MODELS) holds the files of pulled
// models and, in manifests/<name>.json, one manifest per model saying what
// it is (family), which files it has (size, SHA-256), where it came from
// and under which licence. `mmserve models list|rm` and the services read it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mmserve {

struct ModelFileEntry {
  std::string path; // relative to models_dir
  uint64_t size = 0;
  std::string sha256;
  std::string url; // where it was downloaded from
};

struct ModelManifest {
  std::string name;
  std::string family; // vision, speech or image
  std::string repo;
  std::string revision;
  std::string license;   // empty when the repository states none
  std::string pulled_at; // UTC, ISO 8601
  std::vector<ModelFileEntry> files;
  uint64_t total_size() const;
};

// Names become file names: letters, digits, '.', '_', '-', not starting with '.'.
bool valid_model_name(const std::string& name);

class ModelStore {
public:
  explicit ModelStore(std::string dir) : dir_(std::move(dir)) {}
  const std::string& dir() const { return dir_; }
  std::string manifest_path(const std::string& name) const;

  // Writes the manifest atomically. Throws std::runtime_error.
  void save(const ModelManifest& manifest) const;
  std::optional<ModelManifest> find(const std::string& name) const;
  // Every readable manifest, by name; unreadable ones are skipped with a warning on stderr.
  std::vector<ModelManifest> list() const;
  // Removes the model's files, its folder when left empty, and its manifest;
  // false when there is no such model.
  bool remove(const std::string& name) const;

private:
  std::string dir_;
};

} // namespace mmserve
