// Files that appear whole or not at all: bytes go to a temporary name in the
// destination's own folder (same filesystem), are flushed to disk, and are
// renamed over the final name. A reader in any process sees the old file,
// the new file, or no file, never a partial one.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace mmserve::storage {

// Temporary names start with this, so a sweep can tell a crashed writer's
// leftovers from finished files.
inline constexpr std::string_view kTempFilePrefix = ".tmp-";

// Writes `bytes` to `path` atomically (temp file, fsync, rename). Throws
// std::system_error naming the path when any step fails; the temporary file
// is removed then.
void write_file_atomically(const std::filesystem::path& path, std::string_view bytes);

// The whole file; nullopt when it does not exist. Throws std::system_error
// for other failures.
std::optional<std::string> read_whole_file(const std::filesystem::path& path);

} // namespace mmserve::storage
