// The playground's static files, compiled into the binary by
// cmake/EmbedFiles.cmake (the generated source defines embedded_files()).
#pragma once

#include <string_view>
#include <vector>

namespace mmserve::playground {

struct EmbeddedFile {
  std::string_view path; // relative to src/playground, e.g. "playground.js"
  std::string_view bytes;
  std::string_view sha256; // hex; the strong ETag
};

const std::vector<EmbeddedFile>& embedded_files();

} // namespace mmserve::playground
