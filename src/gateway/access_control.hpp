// Who may call the gateway: API keys (stored as SHA-256 digests, compared in
// constant time, each with the routes it may use) and the browser origins
// CORS lets in.
#pragma once

#include "core/config.hpp"

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mmserve::gateway {

class ApiKeyRing {
public:
  explicit ApiKeyRing(const std::vector<GatewayApiKey>& keys);

  // No keys configured: the gateway is open.
  bool enabled() const { return !keys_.empty(); }
  // The configured key the presented secret hashes to, or nullptr. Every
  // stored digest is compared, in constant time, whatever matches.
  const GatewayApiKey* find(std::string_view presented) const;
  // Whether `key` may use the route with this path prefix.
  static bool allows(const GatewayApiKey& key, std::string_view path);

private:
  struct Entry {
    GatewayApiKey key;
    std::array<unsigned char, 32> digest{};
  };
  std::vector<Entry> keys_;
};

// The secret of "Authorization: Bearer <secret>"; nullopt when absent or
// of another scheme.
std::optional<std::string_view> bearer_token(std::string_view authorization);

class CorsPolicy {
public:
  explicit CorsPolicy(std::vector<std::string> allowed_origins);
  bool enabled() const { return !allowed_.empty(); }
  // The value for Access-Control-Allow-Origin, or nullopt when the origin is not let in.
  std::optional<std::string> allow_origin(std::string_view origin) const;

private:
  std::vector<std::string> allowed_;
  bool any_ = false;
};

} // namespace mmserve::gateway
