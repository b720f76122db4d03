// Options that cannot work are refused with kUsage by every way of making a
// connection, before anything is built from them.
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "ktls/client.h"
#include "ktls/handshake.h"
#include "ktls/offload.h"
#include "ktls/server.h"

namespace ktls {
namespace {

// Refusals lists one OffloadOptions per mistake, with the words the error
// must name.
struct Refusal {
  const char* name;
  OffloadOptions options;
  const char* names;
};

std::vector<Refusal> Refusals() {
  std::vector<Refusal> refusals;
  OffloadOptions options;
  options.key_update_after_records = 1;  // Writes would send KeyUpdates and no data, forever.
  refusals.push_back({"threshold of one record", options, "key_update_after_records"});
  options = {};
  options.tx = static_cast<TxOffload>(7);
  refusals.push_back({"tx out of range", options, "OffloadOptions::tx"});
  options = {};
  options.rx = static_cast<RxOffload>(7);
  refusals.push_back({"rx out of range", options, "OffloadOptions::rx"});
  options = {};
  options.linger.time = std::chrono::milliseconds(-1);
  refusals.push_back({"negative linger", options, "linger.time"});
  options = {};
  // Import refuses a state that lingers longer: such a connection could
  // move out and never in (nor back, when SendConnection fails).
  options.linger.time = kMaxLingerTime + std::chrono::milliseconds(1);
  refusals.push_back({"linger longer than a day", options, "linger.time must be at most a day"});
  return refusals;
}

void ExpectUsage(const Error& error, const std::string& names, const char* what) {
  EXPECT_EQ(error.category, ErrorCategory::kUsage) << what << ": " << error.ToString();
  EXPECT_NE(error.detail.find(names), std::string::npos) << what << ": " << error.ToString();
}

TEST(OptionsTest, ServerContextRefusesOptionsThatCannotWork) {
  for (const Refusal& refusal : Refusals()) {
    ServerConfig config;
    config.cert_file = "/nonexistent/cert.pem";  // Never read: the options are checked first.
    config.key_file = "/nonexistent/key.pem";
    config.offload = refusal.options;
    auto context = ServerContext::Create(config);
    ASSERT_FALSE(context.ok()) << refusal.name;
    ExpectUsage(context.error(), refusal.names, refusal.name);
  }
}

TEST(OptionsTest, ClientHandshakeRefusesOptionsThatCannotWorkAndClosesTheSocket) {
  for (const Refusal& refusal : Refusals()) {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    ClientConfig config;
    config.offload = refusal.options;
    auto handshake = StartClientHandshake(fds[0], "localhost", config);
    ASSERT_FALSE(handshake.ok()) << refusal.name;
    ExpectUsage(handshake.error(), refusal.names, refusal.name);
    EXPECT_EQ(::fcntl(fds[0], F_GETFD), -1) << refusal.name << ": the socket should be closed, as on any failure";
    ::close(fds[1]);
  }
}

TEST(OptionsTest, OffloadSslRefusesOptionsThatCannotWork) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_method());
  ASSERT_NE(ctx, nullptr);
  for (const Refusal& refusal : Refusals()) {
    SSL* ssl = SSL_new(ctx);
    ASSERT_NE(ssl, nullptr);
    auto conn = OffloadSsl(ssl, refusal.options);
    ASSERT_FALSE(conn.ok()) << refusal.name;
    ExpectUsage(conn.error(), refusal.names, refusal.name);
    SSL_free(ssl);  // Refused: still the caller's.
  }
  SSL_CTX_free(ctx);
}

TEST(OptionsTest, ConfigsRefuseANegativeHandshakeTimeoutAndAVersionOutOfRange) {
  ServerConfig server;
  server.handshake_timeout = std::chrono::milliseconds(-5);
  auto context = ServerContext::Create(server);
  ASSERT_FALSE(context.ok());
  ExpectUsage(context.error(), "handshake_timeout", "server");
  ClientConfig client;
  client.max_version = static_cast<TlsVersion>(9);
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  auto handshake = StartClientHandshake(fds[0], "localhost", client);
  ASSERT_FALSE(handshake.ok());
  ExpectUsage(handshake.error(), "max_version", "client");
  ::close(fds[1]);
}

TEST(OptionsTest, ThresholdOfTwoAndZeroAreAccepted) {
  for (std::uint64_t threshold : {0, 2}) {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    ClientConfig config;
    config.offload.key_update_after_records = threshold;
    auto handshake = StartClientHandshake(fds[0], "localhost", config);
    EXPECT_TRUE(handshake.ok()) << threshold << ": " << handshake.error().ToString();
    ::close(fds[1]);
  }
}

}  // namespace
}  // namespace ktls
