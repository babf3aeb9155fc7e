// `mmserve pull` and `mmserve models list|rm`: a short catalogue of
// well-known models (name -> Hugging Face repository and files), the pull
// itself (downloads into the model store, then its manifest) and the store's
// listing. Each function prints for the user and returns the exit status.
#pragma once

#include <string>
#include <vector>

namespace mmserve {

struct CatalogueEntry {
  std::string name;
  std::string family; // vision, speech, image
  std::string repo;
  std::vector<std::string> files;
  std::string description;
};
const std::vector<CatalogueEntry>& model_catalogue();

struct PullOptions {
  std::string models_dir;
  std::string endpoint = "https://huggingface.co"; // HF_ENDPOINT
  std::string token;                               // HF_TOKEN
  std::string revision;                            // empty: main
  std::string name;                                // REPO:FILE pulls: the local name (default: file stem)
  std::string family;                              // REPO:FILE pulls: default guessed from the file name
};

// SPEC: a catalogue name (or a bare whisper size such as base.en), or REPO:FILE.
int run_pull(const std::string& spec, const PullOptions& options);
int run_models_list(const std::string& models_dir);
int run_models_rm(const std::string& models_dir, const std::string& name);

} // namespace mmserve
