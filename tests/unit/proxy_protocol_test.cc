// Unit tests: ktls-proxy's PROXY protocol v2 header (tools/ktls-proxy/
// proxy_protocol), byte for byte against HAProxy's specification
// (doc/proxy-protocol.txt 2.2), and its command line's refusals.
#include "ktls-proxy/proxy_protocol.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "ktls-proxy/options.h"

namespace ktls::proxy {
namespace {

sockaddr_storage V4(const char* addr, std::uint16_t port) {
  sockaddr_storage out{};
  auto& in = reinterpret_cast<sockaddr_in&>(out);
  in.sin_family = AF_INET;
  in.sin_port = htons(port);
  EXPECT_EQ(inet_pton(AF_INET, addr, &in.sin_addr), 1);
  return out;
}

sockaddr_storage V6(const char* addr, std::uint16_t port) {
  sockaddr_storage out{};
  auto& in6 = reinterpret_cast<sockaddr_in6&>(out);
  in6.sin6_family = AF_INET6;
  in6.sin6_port = htons(port);
  EXPECT_EQ(inet_pton(AF_INET6, addr, &in6.sin6_addr), 1);
  return out;
}

const std::vector<std::uint8_t> kSignature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                              0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

std::vector<std::uint8_t> Concat(std::vector<std::vector<std::uint8_t>> parts) {
  std::vector<std::uint8_t> out;
  for (const auto& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

TEST(ProxyProtocolTest, TcpOverIpv4) {
  const auto header = BuildProxyV2Header(V4("192.0.2.10", 51234), V4("198.51.100.1", 443));
  const auto expected = Concat({kSignature,
                                {0x21, 0x11, 0x00, 0x0C},  // v2 PROXY, TCP4, 12 bytes of addresses
                                {192, 0, 2, 10},           // source address
                                {198, 51, 100, 1},         // destination address
                                {0xC8, 0x22},              // source port 51234
                                {0x01, 0xBB}});            // destination port 443
  EXPECT_EQ(header, expected);
  EXPECT_EQ(header.size(), 28u);
}

TEST(ProxyProtocolTest, TcpOverIpv6) {
  const auto header = BuildProxyV2Header(V6("2001:db8::1", 40000), V6("2001:db8::ff", 8443));
  std::vector<std::uint8_t> src(16, 0), dst(16, 0);
  src[0] = 0x20, src[1] = 0x01, src[2] = 0x0d, src[3] = 0xb8, src[15] = 0x01;
  dst[0] = 0x20, dst[1] = 0x01, dst[2] = 0x0d, dst[3] = 0xb8, dst[15] = 0xff;
  const auto expected = Concat({kSignature, {0x21, 0x21, 0x00, 0x24}, src, dst, {0x9C, 0x40}, {0x20, 0xFB}});
  EXPECT_EQ(header, expected);
  EXPECT_EQ(header.size(), 52u);
}

TEST(ProxyProtocolTest, MappedIpv4OnADualStackListenerIsSentAsIpv4) {
  const auto header = BuildProxyV2Header(V6("::ffff:10.0.0.2", 1000), V6("::ffff:10.0.0.1", 2000));
  const auto expected = Concat({kSignature, {0x21, 0x11, 0x00, 0x0C}, {10, 0, 0, 2}, {10, 0, 0, 1}, {0x03, 0xE8},
                                {0x07, 0xD0}});
  EXPECT_EQ(header, expected);
}

TEST(ProxyProtocolTest, UnknownFamilyIsUnspecWithoutAddresses) {
  sockaddr_storage unix_addr{};
  unix_addr.ss_family = AF_UNIX;
  EXPECT_EQ(BuildProxyV2Header(unix_addr, V4("127.0.0.1", 1)), Concat({kSignature, {0x21, 0x00, 0x00, 0x00}}));
  EXPECT_EQ(BuildProxyV2Header(V4("127.0.0.1", 1), V6("::1", 2)), Concat({kSignature, {0x21, 0x00, 0x00, 0x00}}))
      << "mixed families";
}

// ParseError: what ktls-proxy says about a command line it refuses (the
// first line of its message).
std::string ParseError(std::vector<const char*> args) {
  args.insert(args.begin(), "ktls-proxy");
  ProxyOptions options;
  std::string text;
  const ParseOutcome outcome = ParseProxyOptions(static_cast<int>(args.size()), args.data(), options, text);
  if (outcome != ParseOutcome::kError) return "accepted";
  return text.substr(0, text.find('\n'));
}

TEST(ProxyOptionsTest, RefusesBadCommandLines) {
  EXPECT_EQ(ParseError({}), "ktls-proxy: --backend HOST:PORT is required");
  EXPECT_EQ(ParseError({"--backend", "localhost"}),
            "ktls-proxy: --backend wants HOST:PORT with a port from 1 to 65535, got \"localhost\"");
  EXPECT_EQ(ParseError({"--backend", "127.0.0.1:0"}),
            "ktls-proxy: --backend wants HOST:PORT with a port from 1 to 65535, got \"127.0.0.1:0\"");
  EXPECT_EQ(ParseError({"--backend", "127.0.0.1:70000"}),
            "ktls-proxy: --backend wants HOST:PORT with a port from 1 to 65535, got \"127.0.0.1:70000\"");
  EXPECT_EQ(ParseError({"--backend", "b:80", "--listen", ":443"}),
            "ktls-proxy: --listen wants HOST:PORT with a port from 0 to 65535, got \":443\"");
  EXPECT_EQ(ParseError({"--backend", "b:80", "--cert", "c.pem"}), "ktls-proxy: --cert and --key go together");
  EXPECT_EQ(ParseError({"--backend", "b:80", "--rx", "--no-rx"}), "ktls-proxy: --rx and --no-rx contradict each other");
  EXPECT_EQ(ParseError({"--backend", "b:80", "--backend-ca", "ca.pem"}), "ktls-proxy: --backend-ca needs --backend-tls");
  EXPECT_EQ(ParseError({"--backend", "b:80", "--idle-timeout", "0"}),
            "ktls-proxy: --idle-timeout and --max-connections must be positive");
  EXPECT_EQ(ParseError({"--backend", "b:80", "--connect-timeout", "-1"}),
            "ktls-proxy: --connect-timeout must be positive");
  EXPECT_EQ(ParseError({"--backend", "b:80", "--threads", "-2"}),
            "ktls-proxy: --threads must be from 0 (one per core) to 1024");
  EXPECT_EQ(ParseError({"--backend", "b:80", "stray"}), "ktls-proxy: unexpected argument: stray");
  EXPECT_NE(ParseError({"--backend", "b:80", "--no-such-flag"}), "accepted");
}

TEST(ProxyOptionsTest, ReadsAFullCommandLine) {
  const char* argv[] = {"ktls-proxy", "--listen", "[::1]:0", "--backend", "[::1]:9000", "--backend-tls",
                        "--backend-ca", "ca.pem", "--backend-sni", "app.internal", "--proxy-protocol", "--copy",
                        "--threads", "3", "--max-connections", "7", "--idle-timeout", "1500", "--no-rx"};
  ProxyOptions options;
  std::string text;
  ASSERT_EQ(ParseProxyOptions(static_cast<int>(std::size(argv)), argv, options, text), ParseOutcome::kRun) << text;
  EXPECT_EQ(options.listen.host, "::1");
  EXPECT_EQ(options.listen.port, 0);
  EXPECT_EQ(options.backend.host, "::1");
  EXPECT_EQ(options.backend.port, 9000);
  EXPECT_TRUE(options.backend_tls);
  EXPECT_TRUE(options.backend_verify);
  EXPECT_EQ(options.backend_ca, "ca.pem");
  EXPECT_EQ(options.backend_sni, "app.internal");
  EXPECT_TRUE(options.proxy_protocol);
  EXPECT_TRUE(options.copy);
  EXPECT_EQ(options.threads, 3u);
  EXPECT_EQ(options.limits.max_connections, 7u);
  EXPECT_EQ(options.limits.idle_timeout.count(), 1500);
  EXPECT_TRUE(options.offload.no_rx);
}

}  // namespace
}  // namespace ktls::proxy
