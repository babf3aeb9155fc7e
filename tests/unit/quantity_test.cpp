#include "core/quantity.hpp"

#include <gtest/gtest.h>

using mmserve::parse_byte_size;
using mmserve::parse_duration_seconds;

TEST(ByteSize, KubernetesBinarySuffixes) {
  EXPECT_EQ(parse_byte_size("10Gi"), 10ull << 30);
  EXPECT_EQ(parse_byte_size("512Mi"), 512ull << 20);
  EXPECT_EQ(parse_byte_size("16Ki"), 16ull << 10);
  EXPECT_EQ(parse_byte_size("1.5Gi"), 3ull << 29);
}

TEST(ByteSize, KubernetesDecimalSuffixes) {
  EXPECT_EQ(parse_byte_size("1G"), 1'000'000'000ull);
  EXPECT_EQ(parse_byte_size("5M"), 5'000'000ull);
  EXPECT_EQ(parse_byte_size("2k"), 2000ull);
}

TEST(ByteSize, NginxLowercaseMegabytes) {
  // The seed's ingress annotation proxy-body-size: "100m" means 100 MiB.
  EXPECT_EQ(parse_byte_size("100m"), 100ull << 20);
  EXPECT_EQ(parse_byte_size("1g"), 1ull << 30);
}

TEST(ByteSize, PlainBytes) {
  EXPECT_EQ(parse_byte_size("1048576"), 1048576ull);
  EXPECT_EQ(parse_byte_size(" 42 "), 42ull);
}

TEST(ByteSize, RejectsNonsense) {
  for (const char* bad : {"", "Gi", "-1", "10 Gi", "10GB", "1e3", "0.5", "10Qi", "abc", "99999999999Ei"}) {
    EXPECT_FALSE(parse_byte_size(bad).has_value()) << bad;
  }
}

TEST(Duration, SecondsAndSuffixes) {
  EXPECT_DOUBLE_EQ(*parse_duration_seconds("300"), 300);
  EXPECT_DOUBLE_EQ(*parse_duration_seconds("90s"), 90);
  EXPECT_DOUBLE_EQ(*parse_duration_seconds("500ms"), 0.5);
  EXPECT_DOUBLE_EQ(*parse_duration_seconds("5m"), 300);
  EXPECT_DOUBLE_EQ(*parse_duration_seconds("1h"), 3600);
  EXPECT_FALSE(parse_duration_seconds("5 minutes").has_value());
  EXPECT_FALSE(parse_duration_seconds("-3").has_value());
}
