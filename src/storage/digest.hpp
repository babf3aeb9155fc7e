// SHA-256 and HMAC-SHA256 (OpenSSL), the hashes storage names and signs with.
#pragma once

#include <string>
#include <string_view>

namespace mmserve::storage {

// Lowercase hex, as image ids and cache keys are written.
std::string sha256_hex(std::string_view bytes);
// A file's SHA-256, read in chunks (model files are gigabytes). Throws
// std::system_error naming the path when it cannot be read.
std::string sha256_file_hex(const std::string& path);
// The raw 32-byte MAC.
std::string hmac_sha256(std::string_view key, std::string_view data);
std::string to_hex(std::string_view bytes);

} // namespace mmserve::storage
