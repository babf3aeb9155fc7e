#include "core/api_error.hpp"

#include <gtest/gtest.h>

using mmserve::ApiError;

TEST(ApiError, RendersOpenAiShape) {
  const auto error = ApiError::bad_request("Invalid value for 'n'.", "n", "invalid_value");
  const auto body = error.to_json();
  ASSERT_TRUE(body.contains("error"));
  EXPECT_EQ(body["error"]["message"], "Invalid value for 'n'.");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["param"], "n");
  EXPECT_EQ(body["error"]["code"], "invalid_value");
  EXPECT_EQ(error.status(), 400);
}

TEST(ApiError, NullParamWhenAbsent) {
  const auto body = ApiError::not_found("nope").to_json();
  EXPECT_TRUE(body["error"]["param"].is_null());
}

TEST(ApiError, StatusesAndRetryAfter) {
  EXPECT_EQ(ApiError::unauthorized("x").status(), 401);
  EXPECT_EQ(ApiError::payload_too_large("x").status(), 413);
  EXPECT_EQ(ApiError::unsupported_media_type("x").status(), 415);
  EXPECT_EQ(ApiError::unprocessable("x").status(), 422);
  EXPECT_EQ(ApiError::too_many_requests("x", 3).status(), 429);
  EXPECT_EQ(ApiError::too_many_requests("x", 3).retry_after_seconds(), 3);
  EXPECT_EQ(ApiError::unavailable("x", 7).status(), 503);
  EXPECT_EQ(ApiError::unavailable("x", 7).retry_after_seconds(), 7);
  EXPECT_EQ(ApiError::timeout("x").status(), 504);
  EXPECT_EQ(ApiError::too_many_requests("x", 1).type(), "rate_limit_error");
  EXPECT_EQ(ApiError::internal("x").type(), "server_error");
}
