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
// Header reports a record header of content type `type` (its first byte).
void Header(CaptureState& s, bool write, unsigned char type = SSL3_RT_APPLICATION_DATA, bool tls13 = true) {
  const unsigned char header[5] = {type, 3, 3, 0, 1};
  CountRecordEvent(s, write, SSL3_RT_HEADER, header, sizeof(header), tls13);
}
void Message(CaptureState& s, bool write, unsigned char type, bool tls13 = true) {
  const unsigned char msg[4] = {type, 0, 0, 0};
  CountRecordEvent(s, write, SSL3_RT_HANDSHAKE, msg, sizeof(msg), tls13);
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
  constexpr bool kTls12 = false;
  // Abbreviated handshake, server side: ServerHello, CCS, Finished out;
  // CCS, Finished in.
  Header(s, true, SSL3_RT_HANDSHAKE, kTls12);
  Message(s, true, 2, kTls12);
  Header(s, true, SSL3_RT_CHANGE_CIPHER_SPEC, kTls12);
  const unsigned char ccs[1] = {1};
  CountRecordEvent(s, true, SSL3_RT_CHANGE_CIPHER_SPEC, ccs, sizeof(ccs), kTls12);
  EXPECT_FALSE(s.tx.app_keys) << "ChangeCipherSpec alone does not mark the epoch";
  Header(s, true, SSL3_RT_HANDSHAKE, kTls12);
  Message(s, true, 20, kTls12);
  EXPECT_TRUE(s.tx.app_keys);
  EXPECT_EQ(s.tx.records, 1u);
  Header(s, false, SSL3_RT_CHANGE_CIPHER_SPEC, kTls12);  // Reading, OpenSSL reports only the header.
  Header(s, false, SSL3_RT_HANDSHAKE, kTls12);
  Message(s, false, 20, kTls12);
  EXPECT_TRUE(s.rx.app_keys);
  EXPECT_EQ(s.rx.records, 1u);
  Header(s, true, SSL3_RT_APPLICATION_DATA, kTls12);
  EXPECT_EQ(s.tx.records, 2u);
}

// A TLS 1.2 peer may send its Finished (16 bytes) in 16 records of one byte
// (RFC 5246 6.2.1): all of them are under the new keys, seq 0 to 15, so the
// first record after it is seq 16. Before ChangeCipherSpec, hellos in
// 1-byte records count for nothing. Once seq 1 was assumed here, and the
// kernel failed the peer's first record with bad_record_mac.
TEST(RecordCount, Tls12FinishedInOneByteRecords) {
  CaptureState s;
  constexpr bool kTls12 = false;
  for (int i = 0; i < 200; ++i) Header(s, false, SSL3_RT_HANDSHAKE, kTls12);  // ClientHello, ...
  Message(s, false, 1, kTls12);
  Header(s, false, SSL3_RT_CHANGE_CIPHER_SPEC, kTls12);
  for (int i = 0; i < 16; ++i) Header(s, false, SSL3_RT_HANDSHAKE, kTls12);
  EXPECT_FALSE(s.rx.app_keys);
  Message(s, false, 20, kTls12);
  EXPECT_TRUE(s.rx.app_keys);
  EXPECT_EQ(s.rx.records, 16u);
  Header(s, false, SSL3_RT_APPLICATION_DATA, kTls12);
  EXPECT_EQ(s.rx.records, 17u);
  // Our own Finished in three records (a small max_send_fragment would do it).
  Header(s, true, SSL3_RT_CHANGE_CIPHER_SPEC, kTls12);
  for (int i = 0; i < 3; ++i) Header(s, true, SSL3_RT_HANDSHAKE, kTls12);
  Message(s, true, 20, kTls12);
  EXPECT_EQ(s.tx.records, 3u);
}

// TLS 1.3: a middlebox-compatibility ChangeCipherSpec changes nothing, and a
// Finished, NewSessionTicket or KeyUpdate spread over records counts each
// of them: the key changes after the record that ends the Finished or the
// KeyUpdate (OpenSSL reports the message once it is complete).
TEST(RecordCount, Tls13MessagesInOneByteRecords) {
  CaptureState s;
  Header(s, false, SSL3_RT_HANDSHAKE);  // ClientHello.
  Message(s, false, 1);
  Header(s, false, SSL3_RT_CHANGE_CIPHER_SPEC);
  for (int i = 0; i < 36; ++i) Header(s, false);  // Finished (SHA-256), one byte a record.
  EXPECT_FALSE(s.rx.app_keys);
  Message(s, false, 20);
  EXPECT_TRUE(s.rx.app_keys);
  EXPECT_EQ(s.rx.records, 0u);
  for (int i = 0; i < 233; ++i) Header(s, false);  // A NewSessionTicket (at a client), one byte a record.
  Message(s, false, 4);
  EXPECT_EQ(s.rx.records, 233u);
  for (int i = 0; i < 5; ++i) Header(s, false);  // KeyUpdate: type, length, request.
  Message(s, false, 24);
  EXPECT_TRUE(s.rx.key_updated);
  EXPECT_EQ(s.rx.records, 0u);
  Header(s, false);
  EXPECT_EQ(s.rx.records, 1u);
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
