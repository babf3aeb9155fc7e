#include "gateway/access_control.hpp"

#include "core/text.hpp"
#include "gateway/route_table.hpp"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <algorithm>

namespace mmserve::gateway {
namespace {

std::array<unsigned char, 32> sha256(std::string_view text) {
  std::array<unsigned char, 32> digest{};
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest.data());
  return digest;
}

std::array<unsigned char, 32> from_hex(const std::string& hex) {
  std::array<unsigned char, 32> bytes{};
  for (size_t i = 0; i < bytes.size(); ++i)
    bytes[i] = static_cast<unsigned char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return bytes;
}

} // namespace

ApiKeyRing::ApiKeyRing(const std::vector<GatewayApiKey>& keys) {
  for (const auto& key : keys)
    keys_.push_back({key, from_hex(key.sha256)});
}

const GatewayApiKey* ApiKeyRing::find(std::string_view presented) const {
  const auto digest = sha256(presented);
  const GatewayApiKey* found = nullptr;
  for (const auto& entry : keys_) {
    // No early exit: the time taken says nothing about which key (if any) matched.
    const bool equal = CRYPTO_memcmp(digest.data(), entry.digest.data(), digest.size()) == 0;
    if (equal && !found) found = &entry.key;
  }
  return found;
}

bool ApiKeyRing::allows(const GatewayApiKey& key, std::string_view path) {
  if (key.routes.empty()) return true;
  return std::any_of(key.routes.begin(), key.routes.end(),
                     [&](const std::string& prefix) { return path_has_prefix(path, prefix); });
}

std::optional<std::string_view> bearer_token(std::string_view authorization) {
  constexpr std::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size()) return std::nullopt;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (text::ascii_lower(authorization[i]) != kScheme[i]) return std::nullopt;
  }
  std::string_view token = authorization.substr(kScheme.size());
  while (!token.empty() && token.front() == ' ')
    token.remove_prefix(1);
  while (!token.empty() && token.back() == ' ')
    token.remove_suffix(1);
  if (token.empty()) return std::nullopt;
  return token;
}

CorsPolicy::CorsPolicy(std::vector<std::string> allowed_origins) : allowed_(std::move(allowed_origins)) {
  any_ = std::find(allowed_.begin(), allowed_.end(), "*") != allowed_.end();
}

std::optional<std::string> CorsPolicy::allow_origin(std::string_view origin) const {
  if (origin.empty() || allowed_.empty()) return std::nullopt;
  if (any_) return std::string("*");
  for (const auto& allowed : allowed_) {
    if (allowed == origin) return allowed;
  }
  return std::nullopt;
}

} // namespace mmserve::gateway
