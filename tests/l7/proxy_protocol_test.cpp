#include "moat/l7/proxy_protocol.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <string>

using namespace moat::l7;

namespace {

std::string addr(const ProxyHeader& h) {
  char buf[64] = {};
  inet_ntop(h.srcLen == 4 ? AF_INET : AF_INET6, h.src, buf, sizeof buf);
  return buf;
}

ProxyHeaderStatus parse(const std::string& s, ProxyHeader& h) {
  return parseProxyHeader(s.data(), s.size(), h);
}

std::string v2(uint8_t verCmd, uint8_t famProto, const std::string& body) {
  std::string s("\r\n\r\n\0\r\nQUIT\n", 12);
  s += static_cast<char>(verCmd);
  s += static_cast<char>(famProto);
  s += static_cast<char>(body.size() >> 8);
  s += static_cast<char>(body.size() & 0xff);
  return s + body;
}

}  // namespace

TEST(ProxyProtocolV1, Tcp4AndTcp6) {
  ProxyHeader h;
  std::string s = "PROXY TCP4 198.51.100.7 10.0.0.1 4711 443\r\nGET / HTTP/1.1\r\n";
  ASSERT_EQ(parse(s, h), ProxyHeaderStatus::kDone);
  EXPECT_TRUE(h.hasAddress);
  EXPECT_EQ(addr(h), "198.51.100.7");
  EXPECT_EQ(h.srcPort, 4711);
  EXPECT_EQ(h.length, s.find("GET"));
  ASSERT_EQ(parse("PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n", h), ProxyHeaderStatus::kDone);
  EXPECT_EQ(addr(h), "2001:db8::7");
  ASSERT_EQ(parse("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", h), ProxyHeaderStatus::kDone);
  EXPECT_FALSE(h.hasAddress);
  ASSERT_EQ(parse("PROXY UNKNOWN\r\n", h), ProxyHeaderStatus::kDone);
}

TEST(ProxyProtocolV1, IncompleteThenError) {
  ProxyHeader h;
  EXPECT_EQ(parse("PRO", h), ProxyHeaderStatus::kIncomplete);
  EXPECT_EQ(parse("PROXY TCP4 1.2.3.4", h), ProxyHeaderStatus::kIncomplete);
  EXPECT_EQ(parse("PROXY TCP4 " + std::string(120, '1'), h), ProxyHeaderStatus::kError);
  for (const char* bad : {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                          "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY TCP4 ::1 ::1 1 2\r\n",
                          "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
                          "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
                          "GET / HTTP/1.1\r\n"}) {
    EXPECT_EQ(parse(bad, h), ProxyHeaderStatus::kError) << bad;
    EXPECT_NE(h.error, nullptr);
  }
}

TEST(ProxyProtocolV2, ProxyAndLocal) {
  ProxyHeader h;
  std::string ipv4 = std::string("\xC6\x33\x64\x07\x0A\x00\x00\x01\x12\x67\x01\xBB", 12);
  std::string s = v2(0x21, 0x11, ipv4) + "GET";
  ASSERT_EQ(parse(s, h), ProxyHeaderStatus::kDone);
  EXPECT_EQ(addr(h), "198.51.100.7");
  EXPECT_EQ(h.srcPort, 4711);
  EXPECT_EQ(h.length, 28u);
  ASSERT_EQ(parse(v2(0x20, 0x00, ""), h), ProxyHeaderStatus::kDone);
  EXPECT_FALSE(h.hasAddress);
  std::string ipv6(36, '\0');
  ipv6[0] = '\x20';
  ipv6[1] = '\x01';
  ipv6[15] = '\x09';
  ASSERT_EQ(parse(v2(0x21, 0x21, ipv6 + "tlvs"), h), ProxyHeaderStatus::kDone);
  EXPECT_EQ(addr(h), "2001::9");
  EXPECT_EQ(h.length, 16u + 40u);
}

TEST(ProxyProtocolV2, IncompleteAndBad) {
  ProxyHeader h;
  std::string full = v2(0x21, 0x11, std::string(12, '\1'));
  for (size_t i = 1; i < full.size(); ++i) {
    EXPECT_EQ(parse(full.substr(0, i), h), ProxyHeaderStatus::kIncomplete) << i;
  }
  EXPECT_EQ(parse(v2(0x31, 0x11, std::string(12, '\1')), h), ProxyHeaderStatus::kError);
  EXPECT_EQ(parse(v2(0x22, 0x11, std::string(12, '\1')), h), ProxyHeaderStatus::kError);
  EXPECT_EQ(parse(v2(0x21, 0x11, std::string(8, '\1')), h), ProxyHeaderStatus::kError);
  EXPECT_EQ(parse(v2(0x21, 0x21, std::string(20, '\1')), h), ProxyHeaderStatus::kError);
}
