// Finds each enabled service's model files from the configuration, and says
// precisely what is missing and how to provide it when they are not there.
#pragma once

#include "core/config.hpp"
#include "core/model_board.hpp"

#include <chrono>
#include <string>

namespace mmserve {

struct VisionModelFiles {
  std::string model;  // GGUF text model
  std::string mmproj; // GGUF projector; empty when none was found
};

ModelStatus discover_vision_model(const VisionConfig& config, VisionModelFiles* files = nullptr);
ModelStatus discover_speech_model(const SpeechConfig& config);
ModelStatus discover_image_model(const ImageConfig& config);

// Whether the files of a model found at `path` (a file, or a folder of its
// files) have stopped changing: no download in progress beside them
// (*.part) and nothing there created or written for `quiet`. A model put on
// a volume while the server runs is taken only once whole: a folder whose
// projector or pipeline components are still arriving is not.
bool model_files_settled(const std::string& path, std::chrono::seconds quiet);

} // namespace mmserve
