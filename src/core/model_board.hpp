// What each enabled service's model is doing right now: the one place that
// /readyz, /v1/models and the mmserve_model_ready metric read from.
#pragma once

#include "core/server_metrics.hpp"

#include <mutex>
#include <string>
#include <vector>

namespace mmserve {

enum class ModelState { missing, available, loading, loaded, failed };
const char* model_state_name(ModelState state);

struct ModelStatus {
  std::string id;      // what clients put in "model"
  std::string service; // vision, speech, image
  std::string path;    // file or folder on disk, when known
  ModelState state = ModelState::missing;
  double progress = 0;                    // 0..1 while loading
  std::string detail;                     // why it is not loaded and how to fix that
  int64_t created = 0;                    // unix seconds: file time, for OpenAI's "created"
  uint64_t memory_bytes = 0;              // estimated memory while loaded (0: not estimated)
  std::vector<uint64_t> gpu_memory_bytes; // per GPU (ggml's device order); empty: none
  bool on_demand = false;                 // the model registry loads it when a request names it (available is servable)
};

// Whether the model can serve a request now: loaded, or loaded by the
// registry when a request names it. /readyz and mmserve_model_ready count it so.
inline bool serves_requests(const ModelStatus& status) {
  return status.state == ModelState::loaded || (status.state == ModelState::available && status.on_demand);
}

class ModelBoard {
public:
  explicit ModelBoard(ServerMetrics& metrics) : metrics_(metrics) {}

  // Adds or replaces the entry with the same service and id.
  void publish(const ModelStatus& status);
  // Drops the entry (and its mmserve_model_ready series): a model gone for good.
  void remove(const std::string& service, const std::string& id);
  std::vector<ModelStatus> snapshot() const;
  // True when every published model is loaded (and at least one service runs).
  bool all_loaded() const;

private:
  ServerMetrics& metrics_;
  mutable std::mutex mutex_;
  std::vector<ModelStatus> models_;
};

} // namespace mmserve
