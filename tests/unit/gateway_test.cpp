// The gateway's pieces on their own: route matching, API keys, CORS, token
// buckets, and the gateway section of the configuration.
#include "core/config.hpp"
#include "gateway/access_control.hpp"
#include "gateway/rate_limiter.hpp"
#include "gateway/route_table.hpp"

#include <gtest/gtest.h>
#include <openssl/sha.h>

#include <fmt/format.h>

using namespace mmserve;
using namespace mmserve::gateway;

namespace {

std::string sha256_hex(const std::string& text) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  std::string hex;
  for (unsigned char byte : digest)
    hex += fmt::format("{:02x}", byte);
  return hex;
}

} // namespace

TEST(RouteTable, LongestPrefixWinsAndMatchesWholeSegments) {
  RouteTable table(default_gateway_routes());
  EXPECT_EQ(table.match("api.example.com", "/v1/chat/vision")->pool, "vision");
  EXPECT_EQ(table.match("x", "/v1/chat/vision?x=1")->path_prefix, "/v1/chat/vision");
  EXPECT_EQ(table.match("x", "/v1/images/generate")->pool, "image");
  EXPECT_EQ(table.match("x", "/v1/audio/transcriptions")->pool, "speech");
  EXPECT_EQ(table.match("x", "/v1/audio/translations")->pool, "speech");
  EXPECT_EQ(table.match("x", "/sdapi/v1/txt2img")->pool, "image");
  EXPECT_FALSE(table.match("x", "/v1/chat/visionary"));
  EXPECT_FALSE(table.match("x", "/v1/models")); // merged by the gateway itself
  EXPECT_FALSE(table.match("x", "/"));

  RouteTable nested({{"*", "/v1/", "a"}, {"*", "/v1/chat/", "b"}, {"*", "/v1/chat/completions", "c"}});
  EXPECT_EQ(nested.match("h", "/v1/embeddings")->pool, "a");
  EXPECT_EQ(nested.match("h", "/v1/chat/vision")->pool, "b");
  EXPECT_EQ(nested.match("h", "/v1/chat/completions")->pool, "c");
}

TEST(RouteTable, ExactHostBeatsWildcardBeatsAny) {
  RouteTable table({{"*", "/v1/", "any"}, {"*.example.com", "/v1/", "wild"}, {"api.example.com", "/v1/", "exact"}});
  EXPECT_EQ(table.match("api.example.com", "/v1/x")->pool, "exact");
  EXPECT_EQ(table.match("API.EXAMPLE.COM:8443", "/v1/x")->pool, "exact");
  EXPECT_EQ(table.match("api.example.com.", "/v1/x")->pool, "exact");
  EXPECT_EQ(table.match("eu.api.example.com", "/v1/x")->pool, "wild");
  EXPECT_EQ(table.match("example.com", "/v1/x")->pool, "any"); // *.example.com needs a label in front
  EXPECT_EQ(table.match("[::1]:8080", "/v1/x")->pool, "any");
  RouteTable only_host({{"api.example.com", "/v1/", "exact"}});
  EXPECT_FALSE(only_host.match("other.example.com", "/v1/x"));
  // A longer prefix beats a better host match.
  RouteTable mixed({{"api.example.com", "/v1/", "short"}, {"*", "/v1/chat/", "long"}});
  EXPECT_EQ(mixed.match("api.example.com", "/v1/chat/completions")->pool, "long");
}

TEST(ApiKeyRing, FindsKeysByTheirDigestAndChecksRoutes) {
  GatewayApiKey all{"all", sha256_hex("sk-one-long-enough-to-leave-small-string-storage"), {}, std::nullopt};
  GatewayApiKey audio{"audio", sha256_hex("sk-audio"), {"/v1/audio/"}, std::nullopt};
  ApiKeyRing ring({all, audio});
  EXPECT_TRUE(ring.enabled());
  ASSERT_NE(ring.find("sk-one-long-enough-to-leave-small-string-storage"), nullptr);
  EXPECT_EQ(ring.find("sk-audio")->name, "audio");
  EXPECT_EQ(ring.find("sk-audi"), nullptr);
  EXPECT_EQ(ring.find(""), nullptr);
  EXPECT_TRUE(ApiKeyRing::allows(*ring.find("sk-audio"), "/v1/audio/transcriptions"));
  EXPECT_FALSE(ApiKeyRing::allows(*ring.find("sk-audio"), "/v1/chat/completions"));
  EXPECT_TRUE(ApiKeyRing::allows(all, "/anything"));
  EXPECT_FALSE(ApiKeyRing({}).enabled());
}

TEST(ApiKeyRing, BearerToken) {
  EXPECT_EQ(bearer_token("Bearer sk-1"), "sk-1");
  EXPECT_EQ(bearer_token("bearer   sk-1  "), "sk-1");
  EXPECT_FALSE(bearer_token("Basic c2s="));
  EXPECT_FALSE(bearer_token("Bearer "));
  EXPECT_FALSE(bearer_token(""));
}

TEST(CorsPolicy, AllowsListedOriginsOrAny) {
  CorsPolicy listed({"https://app.example.com"});
  EXPECT_EQ(listed.allow_origin("https://app.example.com"), "https://app.example.com");
  EXPECT_FALSE(listed.allow_origin("https://evil.example"));
  EXPECT_FALSE(listed.allow_origin(""));
  EXPECT_EQ(CorsPolicy({"*"}).allow_origin("https://x"), "*");
  EXPECT_FALSE(CorsPolicy({}).enabled());
}

TEST(RateLimiter, TokenBucketRefillsAtItsRate) {
  RateLimiter limiter;
  const auto t0 = RateLimiter::Clock::now();
  const RateLimit limit{2, 3}; // 2 per second, bursts of 3
  for (int i = 0; i < 3; ++i) {
    const auto decision = limiter.take("ip:a", limit, t0);
    EXPECT_TRUE(decision.allowed) << i;
    EXPECT_EQ(decision.limit, 3);
    EXPECT_EQ(decision.remaining, 2 - i);
  }
  const auto refused = limiter.take("ip:a", limit, t0);
  EXPECT_FALSE(refused.allowed);
  EXPECT_NEAR(refused.retry_after_seconds, 0.5, 1e-9);
  EXPECT_NEAR(refused.reset_seconds, 1.5, 1e-9);
  EXPECT_TRUE(limiter.take("ip:b", limit, t0).allowed); // another client, another bucket
  EXPECT_TRUE(limiter.take("ip:a", limit, t0 + std::chrono::milliseconds(500)).allowed);
  EXPECT_FALSE(limiter.take("ip:a", limit, t0 + std::chrono::milliseconds(600)).allowed);
  EXPECT_TRUE(limiter.take("ip:a", RateLimit{}, t0).allowed); // no limit configured
}

TEST(RateLimiter, KeepsANumberOfBucketsBounded) {
  RateLimiter limiter(100);
  const auto t0 = RateLimiter::Clock::now();
  for (int i = 0; i < 1000; ++i)
    limiter.take(fmt::format("ip:{}", i), RateLimit{1, 5}, t0);
  EXPECT_LE(limiter.buckets(), 100u);
  // Buckets that refilled are forgotten first: a client mid-burst keeps its state.
  RateLimiter small(3);
  for (int i = 0; i < 5; ++i)
    small.take("busy", RateLimit{1, 5}, t0);
  small.take("a", RateLimit{1, 5}, t0 - std::chrono::seconds(60));
  small.take("b", RateLimit{1, 5}, t0 - std::chrono::seconds(60));
  small.take("c", RateLimit{1, 5}, t0); // evicts the refilled a and b
  EXPECT_FALSE(small.take("busy", RateLimit{1, 5}, t0).allowed);
}

TEST(GatewayConfig, DefaultsFollowTheSeedAndTheRole) {
  Config serve;
  finalize_config(serve, Role::serve);
  EXPECT_EQ(serve.gateway.routes.size(), default_gateway_routes().size());
  EXPECT_TRUE(serve.gateway.pools.at("vision").endpoints.empty()); // in-process
  EXPECT_EQ(serve.gateway.read_timeout_s, 300);
  Config gateway;
  finalize_config(gateway, Role::gateway);
  EXPECT_EQ(gateway.gateway.pools.at("vision").endpoints, std::vector<std::string>{"http://llava-service:8000"});
  EXPECT_EQ(gateway.gateway.pools.at("image").endpoints, std::vector<std::string>{"http://stable-diffusion:7860"});
  EXPECT_EQ(gateway.gateway.pools.at("speech").endpoints, std::vector<std::string>{"http://whisper-service:8080"});
}

TEST(GatewayConfig, ParsesEveryKeyAndRoundTrips) {
  Config config = parse_config(R"(
gateway:
  routes:
    - {host: api.example.com, path: /v1/chat/vision, pool: gpu}
  pools:
    gpu: {endpoints: ["http://llava:8000", "http://10.0.0.5:8000/"]}
  read_timeout: 120
  connect_timeout: 2s
  resolve_interval: 30s
  health_check: {path: /healthz, interval: 10s}
  ejection: {max_fails: 5, base_time: 2s, max_time: 1m}
  upstream_keepalive: {max_idle: 8, idle_timeout: 15s}
  auth:
    api_keys:
      - {name: a, sha256: ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789, routes: [/v1/], rate_limit: {requests_per_second: 5, burst: 10}}
  rate_limits: {per_key: {requests_per_second: 1}, per_ip: {requests_per_second: 50, burst: 100}}
  cors: {allowed_origins: ["https://app.example.com"]}
)",
                               "test");
  finalize_config(config, Role::gateway);
  const auto& g = config.gateway;
  ASSERT_EQ(g.routes.size(), 1u);
  EXPECT_EQ(g.routes[0].host, "api.example.com");
  EXPECT_EQ(g.pools.at("gpu").endpoints.size(), 2u);
  EXPECT_EQ(g.read_timeout_s, 120);
  EXPECT_EQ(g.connect_timeout_s, 2);
  EXPECT_EQ(g.health_path, "/healthz");
  EXPECT_EQ(g.max_fails, 5);
  EXPECT_EQ(g.eject_max_time_s, 60);
  EXPECT_EQ(g.max_idle_connections, 8);
  ASSERT_EQ(g.api_keys.size(), 1u);
  EXPECT_EQ(g.api_keys[0].sha256, "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789");
  EXPECT_EQ(g.api_keys[0].rate_limit->burst, 10);
  EXPECT_EQ(g.per_key_limit.requests_per_second, 1);
  EXPECT_EQ(g.per_ip_limit.burst, 100);
  EXPECT_EQ(g.cors_origins, std::vector<std::string>{"https://app.example.com"});

  Config again = parse_config(dump_config(config), "dump");
  finalize_config(again, Role::gateway);
  EXPECT_EQ(dump_config(again), dump_config(config));
}

TEST(GatewayConfig, UpstreamUrls) {
  EXPECT_EQ(parse_upstream_url("http://llava-service:8000")->host, "llava-service");
  EXPECT_EQ(parse_upstream_url("http://llava-service:8000")->port, 8000);
  EXPECT_EQ(parse_upstream_url("http://svc")->port, 80);
  EXPECT_EQ(parse_upstream_url("http://[fd00::1]:9000")->host, "fd00::1");
  EXPECT_FALSE(parse_upstream_url("https://svc:443"));
  EXPECT_FALSE(parse_upstream_url("http://svc:0"));
  EXPECT_FALSE(parse_upstream_url("http://svc:99999"));
  EXPECT_FALSE(parse_upstream_url("http://svc:8000/path"));
  EXPECT_FALSE(parse_upstream_url("http://user@svc"));
  EXPECT_FALSE(parse_upstream_url("svc:8000"));
}

TEST(GatewayConfig, BadValuesNameTheirKey) {
  auto error_of = [](const std::string& yaml, Role role = Role::gateway) {
    try {
      Config config = parse_config(yaml, "test");
      finalize_config(config, role);
    } catch (const ConfigError& error) {
      return std::string(error.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(error_of("gateway:\n  routes: [{path: /v1/, pool: nope}]\n").find("names pool 'nope'"), std::string::npos);
  EXPECT_NE(error_of("gateway:\n  routes: [{pool: vision}]\n").find("gateway.routes[0]: needs path"),
            std::string::npos);
  EXPECT_NE(error_of("gateway:\n  routes: [{host: 'a*b', path: /v1/, pool: vision}]\n").find("gateway.routes[0].host"),
            std::string::npos);
  EXPECT_NE(error_of("gateway:\n  pools: {extra: {}}\n").find("gateway.pools.extra.endpoints"), std::string::npos);
  EXPECT_EQ(error_of("gateway:\n  pools: {extra: {}}\n", Role::serve), "(no error)"); // in-process under serve
  EXPECT_NE(error_of("gateway:\n  ejection: {max_fails: 0}\n").find("gateway.ejection.max_fails"), std::string::npos);
  EXPECT_NE(error_of("gateway:\n  auth: {api_keys: [{name: x}]}\n").find("needs sha256"), std::string::npos);
  EXPECT_NE(error_of("gateway:\n  auth: {api_keys_file: /nonexistent/keys.yaml}\n").find("/nonexistent/keys.yaml"),
            std::string::npos);
  EXPECT_NE(error_of("gateway:\n  timeout: 3\n").find("gateway.timeout: unknown key"), std::string::npos);
}
