// The media temp cache a running server uses (media.storage), with its
// statistics exported as mmserve_media_cache_* metrics.
#pragma once

#include "core/config.hpp"
#include "core/server_metrics.hpp"
#include "storage/temp_cache.hpp"

#include <memory>

namespace mmserve {

// Null when media.storage.enabled is false or the folder cannot be used
// (logged as a warning: the server then runs without the disk cache).
std::shared_ptr<storage::TempCache> open_media_cache(const MediaConfig& media, ServerMetrics& metrics);

} // namespace mmserve
