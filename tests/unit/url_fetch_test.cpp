// The address policy of image URL fetches: which addresses count as
// internal, and the allow-list networks.
#include "media/url_fetch.hpp"

#include <gtest/gtest.h>

using namespace mmserve::media;

TEST(UrlFetchPolicy, InternalAddressesAreRecognised) {
  namespace ip = boost::asio::ip;
  for (const char* internal :
       {"127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fd00:ec2::254", "fc00::1", "ff02::1",
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe"}) {
    EXPECT_TRUE(is_internal_address(ip::make_address(internal))) << internal;
  }
  for (const char* external :
       {"8.8.8.8", "1.1.1.1", "172.32.0.1", "192.169.0.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"}) {
    EXPECT_FALSE(is_internal_address(ip::make_address(external))) << external;
  }
}

TEST(UrlFetchPolicy, NetworksParseAndMatch) {
  namespace ip = boost::asio::ip;
  const auto loopback = parse_network("127.0.0.0/8");
  ASSERT_TRUE(loopback);
  EXPECT_TRUE(loopback->contains(ip::make_address("127.9.9.9")));
  EXPECT_TRUE(loopback->contains(ip::make_address("::ffff:127.0.0.1")));
  EXPECT_FALSE(loopback->contains(ip::make_address("128.0.0.1")));
  const auto host = parse_network("10.1.2.3");
  ASSERT_TRUE(host);
  EXPECT_EQ(host->prefix, 32);
  EXPECT_FALSE(host->contains(ip::make_address("10.1.2.4")));
  const auto ula = parse_network("fd00::/8");
  ASSERT_TRUE(ula);
  EXPECT_TRUE(ula->contains(ip::make_address("fd12::1")));
  EXPECT_FALSE(ula->contains(ip::make_address("fe80::1")));
  for (const char* bad : {"", "10.0.0.0/33", "::/129", "10.0.0/8", "example.com", "10.0.0.0/", "10.0.0.0/x"}) {
    EXPECT_FALSE(parse_network(bad)) << bad;
  }
}
