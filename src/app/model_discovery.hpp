// Finds each enabled service's model files from the configuration, and says
// precisely what is missing and how to provide it when they are not there.
#pragma once

#include "core/config.hpp"
#include "core/model_board.hpp"

namespace mmserve {

struct VisionModelFiles {
  std::string model;  // GGUF text model
  std::string mmproj; // GGUF projector; empty when none was found
};

ModelStatus discover_vision_model(const VisionConfig& config, VisionModelFiles* files = nullptr);
ModelStatus discover_speech_model(const SpeechConfig& config);
ModelStatus discover_image_model(const ImageConfig& config);

} // namespace mmserve
