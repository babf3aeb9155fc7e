#include "api/model_lookup.hpp"

#include "core/api_error.hpp"

#include <algorithm>
#include <fmt/format.h>
#include <fmt/ranges.h>

namespace mmserve::api {

ModelStatus loaded_model_for(const ModelBoard& board, const std::string& service, const std::string& requested,
                             const std::string& kind, std::initializer_list<const char*> aliases) {
  std::vector<ModelStatus> models;
  for (const auto& model : board.snapshot()) {
    if (model.service == service) models.push_back(model);
  }
  const bool any = requested.empty() ||
                   std::any_of(aliases.begin(), aliases.end(), [&](const char* alias) { return requested == alias; });
  const ModelStatus* target = nullptr;
  for (const auto& model : models) {
    if (any || model.id == requested) {
      target = &model;
      break;
    }
  }
  if (!target) {
    std::vector<std::string> ids;
    for (const auto& model : models)
      ids.push_back(model.id);
    throw ApiError::not_found(fmt::format("The model '{}' does not exist. Available {} models: {}.", requested, kind,
                                          ids.empty() ? std::string("none") : fmt::format("{}", fmt::join(ids, ", "))),
                              "model_not_found");
  }
  if (target->state != ModelState::loaded) {
    throw ApiError::unavailable(fmt::format("The model '{}' is not loaded ({}){}{}.", target->id,
                                            model_state_name(target->state), target->detail.empty() ? "" : ": ",
                                            target->detail),
                                target->state == ModelState::loading ? 5 : 30, "model_not_loaded");
  }
  return *target;
}

} // namespace mmserve::api
