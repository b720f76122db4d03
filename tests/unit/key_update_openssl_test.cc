// tests/unit/key_update_openssl_test.cc: the TLS 1.3 key update (RFC 8446
// 7.2) checked against OpenSSL's own key schedule, for every suite the
// kernel carries.
//
// A plain OpenSSL client and server talk over memory BIOs that the test
// moves by hand, so it sees every record each side writes. OpenSSL's key-log
// callback gives the application traffic secrets of generation 0; OpenSSL
// never logs an updated secret, so generation 1 and 2 exist only inside
// OpenSSL. The test derives them from generation 0 with
// ktls::detail::NextTls13TrafficSecret, derives key and IV with
// DeriveTls13TrafficKeys, and opens the records OpenSSL sent after its
// KeyUpdate with the reference codec (tests/support/record_codec.h, which
// shares no code with the library). Such a record must open under the next
// generation's keys and must not open under the old ones: then ktls's
// "traffic upd" step is OpenSSL's, byte for byte.
//
// The sequence, per suite:
//   1. client: 3 records under generation 0 (the baseline: key and IV
//      derivation agree with OpenSSL before any update);
//   2. client: SSL_key_update(update_requested) + "x": KeyUpdate at seq 3
//      under generation 0, "x" at seq 0 under generation 1;
//   3. server: "y": OpenSSL answers the request first, so KeyUpdate
//      (update_not_requested) at seq 0 under generation 0, "y" at seq 0
//      under generation 1;
//   4. client: SSL_key_update(update_not_requested) + "z": generation 1 to
//      2 (the step from a secret that was itself updated);
//   5. server: "w": no KeyUpdate, seq 1 under generation 1.
// Each side also reads what the other sent, so OpenSSL agrees with itself.
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/openssl_ptr.h"
#include "keys/tls13_key_schedule.h"
#include "ktls/types.h"
#include "tests/support/memory_bios.h"
#include "tests/support/record_codec.h"
#include "tests/support/tls_peers.h"
#include "tests/unit/test_vectors.h"

namespace ktls::testing {
namespace {

using Bytes = std::vector<std::uint8_t>;
using plain_openssl::OpenSslErrors;
using detail::UniqueSsl;
using detail::UniqueSslCtx;

// KeyUpdate (RFC 8446 4.6.3): handshake type 24, a 1-byte body.
constexpr std::uint8_t kHandshakeKeyUpdate = 24;
constexpr std::uint8_t kUpdateNotRequested = 0;
constexpr std::uint8_t kUpdateRequested = 1;

// SuiteCase: one TLS 1.3 suite, by OpenSSL name, kernel cipher, and the
// length of its HKDF hash (and so of every traffic secret).
struct SuiteCase {
  const char* name;
  Cipher cipher;
  std::size_t secret_len;
};

void PrintTo(const SuiteCase& suite, std::ostream* out) { *out << suite.name; }

constexpr std::array<SuiteCase, 4> kSuites = {{
    {"TLS_AES_128_GCM_SHA256", Cipher::kAes128Gcm, 32},
    {"TLS_AES_256_GCM_SHA384", Cipher::kAes256Gcm, 48},
    {"TLS_CHACHA20_POLY1305_SHA256", Cipher::kChaCha20Poly1305, 32},
    // Not in OpenSSL's default list, but allowed when named (both ends).
    {"TLS_AES_128_CCM_SHA256", Cipher::kAes128Ccm, 32},
}};

// KeyLog: the generation-0 application traffic secrets one SSL logged.
struct KeyLog {
  Bytes client_secret_0;  // CLIENT_TRAFFIC_SECRET_0
  Bytes server_secret_0;  // SERVER_TRAFFIC_SECRET_0
};

// RecordKeyLog: the key-log callback; "LABEL client_random secret" per
// line (NSS key log format), into the KeyLog that is the SSL's app data.
void RecordKeyLog(const SSL* ssl, const char* line) {
  auto* log = static_cast<KeyLog*>(SSL_get_app_data(const_cast<SSL*>(ssl)));
  if (log == nullptr) return;
  std::istringstream words(line);
  std::string label, client_random, secret_hex;
  if (!(words >> label >> client_random >> secret_hex)) return;
  if (label == "CLIENT_TRAFFIC_SECRET_0") log->client_secret_0 = FromHex(secret_hex);
  if (label == "SERVER_TRAFFIC_SECRET_0") log->server_secret_0 = FromHex(secret_hex);
}

// SplitRecords cuts bytes into whole records; a partial record left over is
// an error.
std::vector<Bytes> SplitRecords(std::span<const std::uint8_t> bytes) {
  RecordSplitter splitter;
  splitter.Feed(bytes);
  std::vector<Bytes> records;
  while (auto record = splitter.Pop()) records.push_back(std::move(*record));
  if (splitter.buffered_len() != 0) throw std::runtime_error("a partial record at the end of the captured bytes");
  return records;
}

// KeysFor: the record keys of one traffic secret, at sequence number seq,
// from the library's key derivation (what ktls hands the kernel).
RecordKeys KeysFor(Cipher cipher, std::span<const std::uint8_t> secret, std::uint64_t seq) {
  auto keys = detail::DeriveTls13TrafficKeys(cipher, secret);
  if (!keys.ok()) throw std::runtime_error("DeriveTls13TrafficKeys: " + keys.error().ToString());
  return MakeRecordKeys(TlsVersion::kTls13, cipher, keys->key.bytes(), keys->iv.bytes(), seq);
}

// NextSecret: the library's "traffic upd" step, the function under test.
Bytes NextSecret(Cipher cipher, std::span<const std::uint8_t> secret) {
  auto next = detail::NextTls13TrafficSecret(cipher, secret);
  if (!next.ok()) throw std::runtime_error("NextTls13TrafficSecret: " + next.error().ToString());
  return Bytes(next->bytes().begin(), next->bytes().end());
}

// Opens reports whether record authenticates under secret at seq; on
// success the record's inner content type and plaintext go to *opened.
bool Opens(Cipher cipher, std::span<const std::uint8_t> secret, std::uint64_t seq, const Bytes& record,
           OpenedRecord* opened = nullptr) {
  RecordKeys keys = KeysFor(cipher, secret, seq);
  std::optional<OpenedRecord> result = OpenRecord(keys, record);
  if (result && opened != nullptr) *opened = std::move(*result);
  return result.has_value();
}

Bytes KeyUpdateMessage(std::uint8_t request) { return {kHandshakeKeyUpdate, 0, 0, 1, request}; }

Bytes Text(const std::string& text) { return Bytes(text.begin(), text.end()); }

// OpenSslPair: a plain OpenSSL client and server for one suite, TLS 1.3
// only, with TestCert (tests/support/tls_peers.h), no session tickets (so
// the server's first application record is the test's), over memory BIOs.
class OpenSslPair {
 public:
  explicit OpenSslPair(const char* suite)
      : client_ctx_(NewTestContext(/*server=*/false, suite)), server_ctx_(NewTestContext(/*server=*/true, suite)) {
    if (!client_ctx_ || !server_ctx_) {
      throw std::runtime_error(std::string("TLS 1.3 contexts for ") + suite + ": " + OpenSslErrors());
    }
    for (SSL_CTX* ctx : {client_ctx_.get(), server_ctx_.get()}) SSL_CTX_set_keylog_callback(ctx, RecordKeyLog);
    if (SSL_CTX_set_num_tickets(server_ctx_.get(), 0) != 1) throw std::runtime_error("SSL_CTX_set_num_tickets");
    client_.reset(SSL_new(client_ctx_.get()));
    server_.reset(SSL_new(server_ctx_.get()));
    if (!client_ || !server_) throw std::runtime_error("SSL_new: " + OpenSslErrors());
    SSL_set_app_data(client_.get(), &client_log_);
    SSL_set_app_data(server_.get(), &server_log_);
    SSL_set_connect_state(client_.get());
    SSL_set_accept_state(server_.get());
    client_bios_ = AttachMemoryBios(client_.get());
    server_bios_ = AttachMemoryBios(server_.get());
  }

  // Handshake runs both sides to completion, moving every flight across.
  // Returns what went wrong, or an empty string.
  std::string Handshake() {
    if (std::string failed = RunHandshake(client_.get(), client_bios_, server_.get(), server_bios_); !failed.empty()) {
      return failed;
    }
    if (BIO_pending(client_bios_.out) != 0 || BIO_pending(server_bios_.out) != 0) {
      return "records left over after the handshake";
    }
    return {};
  }

  SSL* client() const { return client_.get(); }
  SSL* server() const { return server_.get(); }
  const KeyLog& client_log() const { return client_log_; }
  const KeyLog& server_log() const { return server_log_; }

  // ClientSends: what the client wrote since the last call, as records;
  // delivered to the server too. ServerSends: the other way.
  std::vector<Bytes> ClientSends() { return Deliver(client_bios_.out, server_bios_.in); }
  std::vector<Bytes> ServerSends() { return Deliver(server_bios_.out, client_bios_.in); }

 private:
  static std::vector<Bytes> Deliver(BIO* from, BIO* to) {
    const Bytes bytes = TakeBytes(from);
    GiveBytes(to, bytes);
    return SplitRecords(bytes);
  }

  UniqueSslCtx client_ctx_;
  UniqueSslCtx server_ctx_;
  UniqueSsl client_;
  UniqueSsl server_;
  MemoryBios client_bios_;
  MemoryBios server_bios_;
  KeyLog client_log_;
  KeyLog server_log_;
};

// Write writes text with SSL_write; Read reads one SSL_read's worth.
std::string Write(SSL* ssl, const std::string& text) {
  std::size_t written = 0;
  ERR_clear_error();
  if (SSL_write_ex(ssl, text.data(), text.size(), &written) != 1 || written != text.size()) {
    return "SSL_write: " + OpenSslErrors();
  }
  return {};
}

std::string Read(SSL* ssl) {
  std::array<char, 256> buf{};
  std::size_t n = 0;
  ERR_clear_error();
  if (SSL_read_ex(ssl, buf.data(), buf.size(), &n) != 1) return "<SSL_read failed: " + OpenSslErrors() + ">";
  return std::string(buf.data(), n);
}

// ExpectKeyUpdateThenData checks records[0] is a KeyUpdate with request,
// under old_secret at old_seq, and records[1] is text under new_secret at
// sequence number 0, which the old key does not open (neither at the next
// old sequence number nor at 0).
void ExpectKeyUpdateThenData(const SuiteCase& suite, const std::vector<Bytes>& records, const Bytes& old_secret,
                             std::uint64_t old_seq, std::uint8_t request, const Bytes& new_secret,
                             const std::string& text) {
  ASSERT_EQ(records.size(), 2u) << "a KeyUpdate record and one data record";
  OpenedRecord key_update;
  ASSERT_TRUE(Opens(suite.cipher, old_secret, old_seq, records[0], &key_update))
      << "the KeyUpdate should be protected by the old key, at sequence number " << old_seq;
  EXPECT_EQ(key_update.content_type, kContentHandshake);
  EXPECT_EQ(key_update.plaintext, KeyUpdateMessage(request));

  EXPECT_FALSE(Opens(suite.cipher, old_secret, old_seq + 1, records[1]))
      << "the record after the KeyUpdate must not open under the old key";
  EXPECT_FALSE(Opens(suite.cipher, old_secret, 0, records[1]))
      << "the record after the KeyUpdate must not open under the old key at sequence number 0 either";
  OpenedRecord data;
  ASSERT_TRUE(Opens(suite.cipher, new_secret, 0, records[1], &data))
      << "the record after the KeyUpdate should open under NextTls13TrafficSecret(old secret) at sequence number 0";
  EXPECT_EQ(data.content_type, kContentApplicationData);
  EXPECT_EQ(data.plaintext, Text(text));
  EXPECT_FALSE(Opens(suite.cipher, new_secret, 1, records[1])) << "the new key's sequence numbers start at 0";
}

class KeyUpdateOpenSslTest : public ::testing::TestWithParam<SuiteCase> {};

TEST_P(KeyUpdateOpenSslTest, NextSecretOpensWhatOpenSslSendsAfterKeyUpdate) {
  const SuiteCase& suite = GetParam();
  OpenSslPair pair(suite.name);
  ASSERT_EQ(pair.Handshake(), "");
  ASSERT_STREQ(SSL_get_version(pair.client()), "TLSv1.3");
  ASSERT_STREQ(SSL_CIPHER_standard_name(SSL_get_current_cipher(pair.client())), suite.name);

  const Bytes client_0 = pair.client_log().client_secret_0;
  const Bytes server_0 = pair.client_log().server_secret_0;
  ASSERT_EQ(client_0.size(), suite.secret_len) << "OpenSSL's key log should give CLIENT_TRAFFIC_SECRET_0";
  ASSERT_EQ(server_0.size(), suite.secret_len) << "OpenSSL's key log should give SERVER_TRAFFIC_SECRET_0";
  EXPECT_EQ(pair.server_log().client_secret_0, client_0) << "both ends should log the same secrets";
  EXPECT_EQ(pair.server_log().server_secret_0, server_0);

  // 1. Generation 0: three records at sequence numbers 0, 1, 2.
  const std::array<std::string, 3> before = {"one", "two", "three"};
  for (const std::string& text : before) ASSERT_EQ(Write(pair.client(), text), "");
  const std::vector<Bytes> baseline = pair.ClientSends();
  ASSERT_EQ(baseline.size(), before.size());
  for (std::size_t i = 0; i < before.size(); ++i) {
    OpenedRecord opened;
    ASSERT_TRUE(Opens(suite.cipher, client_0, i, baseline[i], &opened))
        << "record " << i << " should open under CLIENT_TRAFFIC_SECRET_0 (baseline, before any update)";
    EXPECT_EQ(opened.plaintext, Text(before[i]));
    EXPECT_EQ(Read(pair.server()), before[i]);
  }

  // 2. The client updates and asks the server to update too.
  const Bytes client_1 = NextSecret(suite.cipher, client_0);
  ASSERT_EQ(client_1.size(), suite.secret_len) << "the next secret has the hash's length (48 bytes for SHA-384)";
  EXPECT_NE(client_1, client_0);
  ASSERT_EQ(SSL_key_update(pair.client(), SSL_KEY_UPDATE_REQUESTED), 1) << OpenSslErrors();
  ASSERT_EQ(Write(pair.client(), "x"), "");
  {
    SCOPED_TRACE("client generation 0 -> 1, update_requested");
    ExpectKeyUpdateThenData(suite, pair.ClientSends(), client_0, before.size(), kUpdateRequested, client_1, "x");
  }
  EXPECT_EQ(Read(pair.server()), "x") << "OpenSSL's server should read it too";

  // 3. The server's next write answers with its own KeyUpdate first.
  const Bytes server_1 = NextSecret(suite.cipher, server_0);
  ASSERT_EQ(Write(pair.server(), "y"), "");
  {
    SCOPED_TRACE("server generation 0 -> 1, answering update_requested");
    ExpectKeyUpdateThenData(suite, pair.ServerSends(), server_0, 0, kUpdateNotRequested, server_1, "y");
  }
  EXPECT_EQ(Read(pair.client()), "y");

  // 4. An updated secret updated again: generation 1 -> 2.
  const Bytes client_2 = NextSecret(suite.cipher, client_1);
  EXPECT_NE(client_2, client_1);
  ASSERT_EQ(SSL_key_update(pair.client(), SSL_KEY_UPDATE_NOT_REQUESTED), 1) << OpenSslErrors();
  ASSERT_EQ(Write(pair.client(), "z"), "");
  {
    SCOPED_TRACE("client generation 1 -> 2, update_not_requested");
    ExpectKeyUpdateThenData(suite, pair.ClientSends(), client_1, 1, kUpdateNotRequested, client_2, "z");
  }
  EXPECT_EQ(Read(pair.server()), "z");

  // 5. Not asked to update: the server stays at generation 1.
  ASSERT_EQ(Write(pair.server(), "w"), "");
  const std::vector<Bytes> last = pair.ServerSends();
  ASSERT_EQ(last.size(), 1u) << "no KeyUpdate without update_requested";
  OpenedRecord opened;
  ASSERT_TRUE(Opens(suite.cipher, server_1, 1, last[0], &opened)) << "server generation 1, sequence number 1";
  EXPECT_EQ(opened.plaintext, Text("w"));
  EXPECT_EQ(Read(pair.client()), "w");
}

INSTANTIATE_TEST_SUITE_P(Tls13, KeyUpdateOpenSslTest, ::testing::ValuesIn(kSuites),
                         [](const ::testing::TestParamInfo<SuiteCase>& param_info) {
                           return std::string(CipherName(param_info.param.cipher));
                         });

}  // namespace
}  // namespace ktls::testing
