#include "moat/l4/cidr.h"

#include <gtest/gtest.h>

using moat::l4::CidrSet;
using moat::l4::IpAddress;

namespace {
IpAddress ip(const char* s) {
  IpAddress a;
  EXPECT_TRUE(IpAddress::parse(s, a)) << s;
  return a;
}
}  // namespace

TEST(Cidr, MatchesPrefixesOfBothFamilies) {
  CidrSet s;
  std::string err;
  ASSERT_TRUE(s.add("10.0.0.0/8", &err)) << err;
  ASSERT_TRUE(s.add("192.0.2.7", &err)) << err;
  ASSERT_TRUE(s.add("2001:db8::/32", &err)) << err;
  ASSERT_TRUE(s.add("::1", &err)) << err;
  ASSERT_TRUE(s.add("10.0.0.0/8", &err)) << err;  // duplicate folds
  s.seal();
  EXPECT_EQ(s.size(), 4u);
  EXPECT_TRUE(s.contains(ip("10.255.0.1")));
  EXPECT_FALSE(s.contains(ip("11.0.0.1")));
  EXPECT_TRUE(s.contains(ip("192.0.2.7")));
  EXPECT_FALSE(s.contains(ip("192.0.2.8")));
  EXPECT_TRUE(s.contains(ip("2001:db8:ffff::1")));
  EXPECT_FALSE(s.contains(ip("2001:db9::1")));
  EXPECT_TRUE(s.contains(ip("::1")));
  EXPECT_TRUE(s.contains(ip("::ffff:10.1.1.1")));  // v4-mapped is v4
  EXPECT_FALSE(s.contains(IpAddress{}));
}

TEST(Cidr, ZeroLengthPrefixMatchesAFamily) {
  CidrSet s;
  ASSERT_TRUE(s.add("0.0.0.0/0", nullptr));
  s.seal();
  EXPECT_TRUE(s.contains(ip("203.0.113.1")));
  EXPECT_FALSE(s.contains(ip("2001:db8::1")));
}

TEST(Cidr, RejectsBadInputWithAReason) {
  CidrSet s;
  std::string err;
  EXPECT_FALSE(s.add("10.0.0.1/8", &err));
  EXPECT_EQ(err, "\"10.0.0.1/8\": address has bits set beyond the /8 prefix");
  EXPECT_FALSE(s.add("10.0.0.0/33", &err));
  EXPECT_EQ(err, "\"10.0.0.0/33\": an IPv4 prefix length is 0-32");
  EXPECT_FALSE(s.add("2001:db8::/129", &err));
  EXPECT_FALSE(s.add("300.1.1.1", &err));
  EXPECT_EQ(err, "\"300.1.1.1\": not an IPv4 address");
  EXPECT_FALSE(s.add("10.0.0.0/", &err));
  EXPECT_FALSE(s.add("10.0.0.0/x", &err));
  EXPECT_FALSE(s.add("", &err));
  EXPECT_FALSE(s.add("fe80::1%eth0", &err));
  s.seal();
  EXPECT_TRUE(s.empty());
}

TEST(Cidr, AddressRoundTrip) {
  EXPECT_EQ(ip("2001:0db8::0001").toString(), "2001:db8::1");
  EXPECT_EQ(ip("::ffff:192.0.2.1").toString(), "192.0.2.1");
  IpAddress a;
  EXPECT_FALSE(IpAddress::parse("1.2.3", a));
  EXPECT_FALSE(IpAddress::parse("example.com", a));
}
