// Secret capture and record counting (src/handshake).
#include "handshake/capture.h"

#include <gtest/gtest.h>
#include <openssl/ssl.h>

#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/self_signed.h"
#include "handshake/keylog_line.h"
#include "ktls/client.h"
#include "ktls/offload.h"
#include "ktls/server.h"
#include "tests/support/sockets.h"

namespace ktls::detail {
namespace {

const std::string kRandom(64, 'a');  // 32 bytes of 0xaa, in hex.

TEST(KeylogLine, ParsesTrafficSecrets) {
  const std::string secret(96, 'f');  // A 48-byte SHA-384 secret.
  auto line = ParseKeylogLine("SERVER_TRAFFIC_SECRET_0 " + kRandom + " " + secret);
  ASSERT_TRUE(line.has_value());
  EXPECT_EQ(line->label, KeylogLabel::kServerTrafficSecret0);
  EXPECT_EQ(line->client_random[0], 0xaa);
  ASSERT_EQ(line->secret.size(), 48u);
  EXPECT_EQ(line->secret.bytes()[47], 0xff);
  auto client = ParseKeylogLine("CLIENT_TRAFFIC_SECRET_0 " + kRandom + " " + std::string(64, '0'));
  ASSERT_TRUE(client.has_value());
  EXPECT_EQ(client->label, KeylogLabel::kClientTrafficSecret0);
}

TEST(KeylogLine, RejectsEverythingElse) {
  const std::string ok_secret(64, '1');
  for (const std::string& bad : {
           std::string("CLIENT_HANDSHAKE_TRAFFIC_SECRET ") + kRandom + " " + ok_secret,  // Not needed.
           std::string("CLIENT_TRAFFIC_SECRET_0 ") + kRandom,                          // Missing field.
           std::string("CLIENT_TRAFFIC_SECRET_0 ") + kRandom + " " + ok_secret + " x",  // Extra field.
           std::string("CLIENT_TRAFFIC_SECRET_0 ") + kRandom.substr(2) + " " + ok_secret,  // Short random.
           std::string("CLIENT_TRAFFIC_SECRET_0 ") + kRandom + " " + ok_secret + "1",  // Odd hex.
           std::string("CLIENT_TRAFFIC_SECRET_0 ") + kRandom + " " + std::string(130, 'a'),  // > 64 bytes.
           std::string("CLIENT_TRAFFIC_SECRET_0 ") + kRandom + " zz" + ok_secret.substr(2),  // Bad digit.
           std::string("CLIENT_TRAFFIC_SECRET_0  ") + kRandom + " " + ok_secret,  // Double space.
           // Found by the keylog_line fuzzer: a space after the secret was
           // taken for the end of the line.
           std::string("CLIENT_TRAFFIC_SECRET_0 ") + kRandom + " " + ok_secret + " ",  // Trailing space.
           std::string(" CLIENT_TRAFFIC_SECRET_0 ") + kRandom + " " + ok_secret,  // Leading space.
           std::string(""),
       }) {
    EXPECT_FALSE(ParseKeylogLine(bad).has_value()) << bad;
  }
}

// Replays of the message-callback events OpenSSL 3 makes, as a record
// counter sees them: the record header first, then the messages it carries.
void Header(CaptureState& s, bool write) { CountRecordEvent(s, write, SSL3_RT_HEADER, nullptr, 5); }
void Message(CaptureState& s, bool write, unsigned char type) {
  const unsigned char msg[4] = {type, 0, 0, 0};
  CountRecordEvent(s, write, SSL3_RT_HANDSHAKE, msg, sizeof(msg));
}

TEST(RecordCount, ServerWithTicketsAndClientCertificate) {
  CaptureState s;
  // Server flight: ServerHello, (CCS), EE, Certificate, CertificateVerify,
  // Finished: each its own record.
  for (unsigned char type : {2, 8, 11, 15, 20}) {
    Header(s, true);
    Message(s, true, type);
  }
  EXPECT_TRUE(s.tx.app_keys);
  EXPECT_EQ(s.tx.records, 0u);
  // Client's Certificate, CertificateVerify, Finished under its handshake key.
  for (unsigned char type : {11, 15, 20}) {
    Header(s, false);
    Message(s, false, type);
  }
  EXPECT_TRUE(s.rx.app_keys);
  EXPECT_EQ(s.rx.records, 0u);
  // Three NewSessionTickets under the server's application key.
  for (int i = 0; i < 3; ++i) {
    Header(s, true);
    Message(s, true, 4);
  }
  EXPECT_EQ(s.tx.records, 3u);
  EXPECT_FALSE(s.tx.key_updated);
}

TEST(RecordCount, KeyUpdateRestartsTheCountAndIsRemembered) {
  CaptureState s;
  Header(s, false);
  Message(s, false, 20);
  Header(s, false);  // Application data.
  Header(s, false);
  Message(s, false, 24);  // KeyUpdate.
  EXPECT_TRUE(s.rx.key_updated);
  EXPECT_EQ(s.rx.records, 0u);
  Header(s, false);
  EXPECT_EQ(s.rx.records, 1u);
}

TEST(RecordCount, OnlyTheFirstFinishedSwitchesKeys) {
  CaptureState s;
  Header(s, true);
  Message(s, true, 20);
  Header(s, true);
  Header(s, true);
  Message(s, true, 20);  // A later Finished (post-handshake auth) must not reset.
  EXPECT_EQ(s.tx.records, 2u);
}

// TLS 1.2: the Finished is the first record under the new keys (seq 0), so
// the next record after it is seq 1, in each direction, whichever side
// finishes first (full handshake or resumption).
TEST(RecordCount, Tls12FinishedIsSequenceZero) {
  CaptureState s;
  const auto event = [&s](bool write, int type, unsigned char msg) {
    const unsigned char body[4] = {msg, 0, 0, 0};
    CountRecordEvent(s, write, type, body, sizeof(body), /*tls13=*/false);
  };
  // Abbreviated handshake, server side: ServerHello, CCS, Finished out;
  // CCS, Finished in.
  event(true, SSL3_RT_HEADER, 0);
  event(true, SSL3_RT_HANDSHAKE, 2);
  event(true, SSL3_RT_HEADER, 0);
  event(true, SSL3_RT_CHANGE_CIPHER_SPEC, 1);
  EXPECT_FALSE(s.tx.app_keys) << "ChangeCipherSpec alone does not mark the epoch";
  event(true, SSL3_RT_HEADER, 0);
  event(true, SSL3_RT_HANDSHAKE, 20);
  EXPECT_TRUE(s.tx.app_keys);
  EXPECT_EQ(s.tx.records, 1u);
  event(false, SSL3_RT_HEADER, 0);  // CCS record, reported only as a header.
  event(false, SSL3_RT_HEADER, 0);
  event(false, SSL3_RT_HANDSHAKE, 20);
  EXPECT_TRUE(s.rx.app_keys);
  EXPECT_EQ(s.rx.records, 1u);
  event(true, SSL3_RT_HEADER, 0);  // Application data.
  EXPECT_EQ(s.tx.records, 2u);
}

// A key-log callback the application set before PrepareContext keeps
// receiving every line.
std::mutex lines_mu;
std::vector<std::string> app_lines;
void AppKeylog(const SSL* /*ssl*/, const char* line) {
  std::lock_guard lock(lines_mu);
  app_lines.emplace_back(line);
}

TEST(Capture, ChainsTheApplicationsKeylogCallbackAndIsIdempotent) {
  tools::SelfSigned cert;
  std::string error;
  ASSERT_TRUE(tools::MakeSelfSigned(cert, error)) << error;
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  ASSERT_NE(ctx, nullptr);
  ASSERT_EQ(SSL_CTX_use_certificate_chain_file(ctx, cert.cert_file.c_str()), 1);
  ASSERT_EQ(SSL_CTX_use_PrivateKey_file(ctx, cert.key_file.c_str(), SSL_FILETYPE_PEM), 1);
  SSL_CTX_set_keylog_callback(ctx, AppKeylog);
  ASSERT_TRUE(PrepareContext(ctx).ok());
  ASSERT_TRUE(PrepareContext(ctx).ok());  // Twice must not chain ktls to itself.

  ServerConfig config;
  config.ssl_ctx = ctx;
  auto listener = Listener::Listen("127.0.0.1:0", config);
  SSL_CTX_free(ctx);  // The listener holds its own reference.
  ASSERT_TRUE(listener.ok()) << listener.error().ToString();
  std::thread server([&] { (void)listener->Accept(); });
  ClientConfig client;
  client.verify = false;
  auto conn = Connect("127.0.0.1", static_cast<std::uint16_t>(listener->port()), client);
  server.join();
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  std::lock_guard lock(lines_mu);
  int traffic_lines = 0;
  for (const std::string& line : app_lines) {
    if (line.rfind("SERVER_TRAFFIC_SECRET_0 ", 0) == 0 || line.rfind("CLIENT_TRAFFIC_SECRET_0 ", 0) == 0) {
      ++traffic_lines;
    }
  }
  EXPECT_EQ(traffic_lines, 2) << "each line exactly once, to the application's callback";
}

TEST(Capture, OffloadRefusesUnpreparedOrUnfinishedSsl) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL* ssl = SSL_new(ctx);
  auto not_prepared = OffloadSsl(ssl, {});
  ASSERT_FALSE(not_prepared.ok());
  EXPECT_EQ(not_prepared.error().category, ErrorCategory::kUsage);
  EXPECT_FALSE(PrepareSsl(ssl).ok()) << "PrepareSsl before PrepareContext must be refused";
  ASSERT_TRUE(PrepareContext(ctx).ok());
  ASSERT_TRUE(PrepareSsl(ssl).ok());
  auto pair = testing::LoopbackTcpPair();
  SSL_set_fd(ssl, pair.client.get());
  auto unfinished = OffloadSsl(ssl, {});
  ASSERT_FALSE(unfinished.ok());
  EXPECT_NE(unfinished.error().detail.find("handshake has not finished"), std::string::npos);
  SSL_free(ssl);  // Still the caller's after a usage error.
  SSL_CTX_free(ctx);
}

}  // namespace
}  // namespace ktls::detail
