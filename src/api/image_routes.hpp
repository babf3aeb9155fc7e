// The image service's HTTP API: OpenAI's POST /v1/images/generations (and
// the seed's /v1/images/generate), the A1111 webui's /sdapi/v1/txt2img,
// progress, interrupt, sd-models and samplers, and GET /outputs/{name} for
// the images kept in a local outputs folder.
#pragma once

#include "api/image_request.hpp"
#include "app/image_service.hpp"
#include "core/model_board.hpp"
#include "core/model_registry.hpp"
#include "core/router.hpp"
#include "storage/output_store.hpp"

#include <memory>

namespace mmserve::api {

struct ImageRouteContext {
  ModelRegistry& registry; // image models (engines: image::ImageService)
  const ModelBoard& board; // the image models' statuses, for /sdapi/v1/sd-models
  std::shared_ptr<image::ImageActivity> activity;
  std::shared_ptr<storage::OutputStore> store;
  bool serve_outputs = false; // storage.outputs.backend local: GET /outputs/{name} reads the folder
  ImageLimits limits;
};

void register_image_routes(http::Router& router, const ImageRouteContext& context);

} // namespace mmserve::api
