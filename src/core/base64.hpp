// Base64 (RFC 4648) for data: URIs in requests and b64_json in responses.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace mmserve {

// Accepts the standard and the URL-safe alphabet, optional padding and
// line breaks; nullopt for anything else.
std::optional<std::string> decode_base64(std::string_view text);
std::string encode_base64(std::string_view bytes);

} // namespace mmserve
