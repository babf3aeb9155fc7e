#include "core/model_board.hpp"

#include <algorithm>

namespace mmserve {

const char* model_state_name(ModelState state) {
  switch (state) {
  case ModelState::missing: return "missing";
  case ModelState::available: return "available";
  case ModelState::loading: return "loading";
  case ModelState::loaded: return "loaded";
  case ModelState::failed: return "failed";
  }
  return "unknown";
}

void ModelBoard::publish(const ModelStatus& status) {
  std::lock_guard lock(mutex_);
  auto it = std::find_if(models_.begin(), models_.end(), [&](const ModelStatus& existing) {
    return existing.service == status.service && existing.id == status.id;
  });
  if (it == models_.end())
    models_.push_back(status);
  else
    *it = status;
  metrics_.model_ready.labels({status.service, status.id}).set(serves_requests(status) ? 1 : 0);
}

void ModelBoard::remove(const std::string& service, const std::string& id) {
  std::lock_guard lock(mutex_);
  std::erase_if(models_, [&](const ModelStatus& model) { return model.service == service && model.id == id; });
  metrics_.model_ready.remove({service, id});
}

std::vector<ModelStatus> ModelBoard::snapshot() const {
  std::lock_guard lock(mutex_);
  return models_;
}

bool ModelBoard::all_loaded() const {
  std::lock_guard lock(mutex_);
  return !models_.empty() && std::all_of(models_.begin(), models_.end(),
                                         [](const ModelStatus& model) { return model.state == ModelState::loaded; });
}

} // namespace mmserve
