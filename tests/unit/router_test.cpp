#include "core/router.hpp"
#include "core/task.hpp"

#include <gtest/gtest.h>

using mmserve::http::Router;

namespace {
mmserve::http::Handler noop() {
  return [](mmserve::http::HttpExchange&) -> mmserve::Task<void> { co_return; };
}
} // namespace

TEST(Router, ExactParamAndPrefix) {
  Router router;
  router.add("GET", "/v1/models", noop());
  router.add("GET", "/v1/models/{id}", noop());
  router.add("POST", "/v1/models/{id}/load", noop());
  router.add("GET", "/outputs/*", noop());

  auto exact = router.match("GET", "/v1/models");
  ASSERT_NE(exact.route, nullptr);
  EXPECT_EQ(exact.route->pattern, "/v1/models");

  auto param = router.match("GET", "/v1/models/llava-7b");
  ASSERT_NE(param.route, nullptr);
  EXPECT_EQ(param.params.at("id"), "llava-7b");

  auto nested = router.match("POST", "/v1/models/abc/load");
  ASSERT_NE(nested.route, nullptr);
  EXPECT_EQ(nested.params.at("id"), "abc");

  auto prefix = router.match("GET", "/outputs/ab/cd.png");
  ASSERT_NE(prefix.route, nullptr);
  EXPECT_EQ(prefix.params.at("*"), "ab/cd.png");
}

TEST(Router, MethodMismatchListsAllowedMethods) {
  Router router;
  router.add("GET", "/healthz", noop());
  auto match = router.match("POST", "/healthz");
  EXPECT_EQ(match.route, nullptr);
  ASSERT_EQ(match.allowed_methods.size(), 1u);
  EXPECT_EQ(match.allowed_methods[0], "GET");
}

TEST(Router, HeadFallsBackToGet) {
  Router router;
  router.add("GET", "/healthz", noop());
  EXPECT_NE(router.match("HEAD", "/healthz").route, nullptr);
}

TEST(Router, NoMatch) {
  Router router;
  router.add("GET", "/v1/models/{id}", noop());
  router.add("GET", "/outputs/*", noop());
  EXPECT_EQ(router.match("GET", "/v1/models/").route, nullptr);
  EXPECT_EQ(router.match("GET", "/v1/models/a/b").route, nullptr);
  EXPECT_EQ(router.match("GET", "/outputs/").route, nullptr);
  EXPECT_TRUE(router.match("GET", "/nothing").allowed_methods.empty());
}

TEST(Router, RejectsDuplicates) {
  Router router;
  router.add("GET", "/a", noop());
  EXPECT_THROW(router.add("GET", "/a", noop()), std::invalid_argument);
}
