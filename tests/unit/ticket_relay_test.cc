// tests/unit/ticket_relay_test.cc: TLS 1.3 session tickets that the kernel
// would have received (so OpenSSL never read them) become resumable
// sessions through ktls's relay, for every suite the kernel carries.
//
// A plain OpenSSL server and a ktls-prepared OpenSSL client talk over
// memory BIOs. The server's tickets never reach the client's record layer:
// the test takes their plaintext from the server's message callback (what
// kTLS would hand ktls as control records) and gives it to the relay. The
// relay must seal each ticket exactly as the client's record layer expects
// (key, IV, sequence number); OpenSSL then makes a session of it, the
// context's new-session callback gets it, and a second handshake resumes
// with it. Bad tickets and a wrong sequence number must fail as OpenSSL
// fails them, with the alert OpenSSL sends.
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "conn/ticket_relay.h"
#include "core/openssl_ptr.h"
#include "handshake/capture.h"
#include "ktls/offload.h"
#include "ktls/types.h"
#include "tests/support/memory_bios.h"
#include "tests/support/tls13_suites.h"
#include "tests/support/tls_peers.h"

namespace ktls::testing {
namespace {

using Bytes = std::vector<std::uint8_t>;
using plain_openssl::OpenSslErrors;
using detail::UniqueSession;
using detail::UniqueSsl;
using detail::UniqueSslCtx;

constexpr std::uint8_t kHandshakeNewSessionTicket = 4;
constexpr int kAlertBadRecordMac = 20;
constexpr int kAlertDecodeError = 50;

// Sessions: what the client context's new-session callback received.
struct Sessions {
  std::vector<UniqueSession> got;
};

int KeepSession(SSL* ssl, SSL_SESSION* session) {
  static_cast<Sessions*>(SSL_get_app_data(ssl))->got.emplace_back(session);
  return 1;  // The reference is ours now.
}

// CollectTickets is the server's message callback: the plaintext of every
// NewSessionTicket it writes.
void CollectTickets(int write_p, int /*version*/, int content_type, const void* buf, std::size_t len, SSL* /*ssl*/,
                    void* arg) {
  const auto* bytes = static_cast<const std::uint8_t*>(buf);
  if (write_p == 1 && content_type == SSL3_RT_HANDSHAKE && len >= 4 && bytes[0] == kHandshakeNewSessionTicket) {
    static_cast<std::vector<Bytes>*>(arg)->emplace_back(bytes, bytes + len);
  }
}

// TicketFixture: one full handshake whose two tickets are withheld from
// the client, as kTLS RX would withhold them.
class TicketFixture {
 public:
  explicit TicketFixture(const char* suite)
      : client_ctx_(NewTestContext(/*server=*/false, suite)), server_ctx_(NewTestContext(/*server=*/true, suite)) {
    if (!client_ctx_ || !server_ctx_) throw std::runtime_error("contexts: " + OpenSslErrors());
    if (!PrepareContext(client_ctx_.get()).ok()) throw std::runtime_error("PrepareContext");
    SSL_CTX_set_session_cache_mode(client_ctx_.get(), SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(client_ctx_.get(), KeepSession);
    SSL_CTX_set_num_tickets(server_ctx_.get(), 2);
  }

  // FullHandshake connects a new client and returns the server's tickets'
  // plaintext; the client saw none of them.
  std::string FullHandshake(std::vector<Bytes>& tickets) {
    client_.reset(SSL_new(client_ctx_.get()));
    UniqueSsl server(SSL_new(server_ctx_.get()));
    if (!client_ || !server || !PrepareSsl(client_.get()).ok()) return "SSL_new/PrepareSsl: " + OpenSslErrors();
    SSL_set_app_data(client_.get(), &sessions_);
    SSL_set_msg_callback(server.get(), CollectTickets);
    SSL_set_msg_callback_arg(server.get(), &tickets);
    SSL_set_connect_state(client_.get());
    SSL_set_accept_state(server.get());
    const MemoryBios client_bios = AttachMemoryBios(client_.get());
    const MemoryBios server_bios = AttachMemoryBios(server.get());
    if (std::string failed = RunHandshake(client_.get(), client_bios, server.get(), server_bios); !failed.empty()) {
      return failed;
    }
    (void)TakeBytes(server_bios.out);  // The ticket records: "the kernel" has them.
    return {};
  }

  // Resumes runs a new handshake offering session; true if it resumed.
  bool Resumes(SSL_SESSION* session) {
    UniqueSsl client(SSL_new(client_ctx_.get()));
    UniqueSsl server(SSL_new(server_ctx_.get()));
    Sessions ignored;
    SSL_set_app_data(client.get(), &ignored);
    if (SSL_set_session(client.get(), session) != 1) return false;
    SSL_set_connect_state(client.get());
    SSL_set_accept_state(server.get());
    const MemoryBios client_bios = AttachMemoryBios(client.get());
    const MemoryBios server_bios = AttachMemoryBios(server.get());
    if (!RunHandshake(client.get(), client_bios, server.get(), server_bios).empty()) return false;
    return SSL_session_reused(client.get()) == 1;
  }

  SSL* client() const { return client_.get(); }
  const detail::CaptureState& capture() const { return *detail::GetCaptureState(client_.get()); }
  Sessions& sessions() { return sessions_; }

  // Relay makes the relay for the client, as offload does.
  std::unique_ptr<detail::TicketRelay> Relay(Cipher cipher, std::uint64_t seq) {
    auto relay = detail::TicketRelay::Create(client_.get(), cipher, capture().server_secret, seq);
    if (!relay.ok()) throw std::runtime_error("TicketRelay::Create: " + relay.error().ToString());
    return std::move(relay).value();
  }

 private:
  UniqueSslCtx client_ctx_;
  UniqueSslCtx server_ctx_;
  UniqueSsl client_;
  Sessions sessions_;
};

class TicketRelayTest : public ::testing::TestWithParam<SuiteCase> {};

TEST_P(TicketRelayTest, TicketsTheClientNeverReadBecomeResumableSessions) {
  TicketFixture fixture(GetParam().name);
  std::vector<Bytes> tickets;
  ASSERT_EQ(fixture.FullHandshake(tickets), "");
  ASSERT_EQ(tickets.size(), 2u);
  ASSERT_TRUE(fixture.sessions().got.empty()) << "the client must not have read a ticket itself";
  auto relay = fixture.Relay(GetParam().cipher, fixture.capture().rx.records);
  for (const Bytes& ticket : tickets) ASSERT_TRUE(relay->Deliver(ticket).ok());
  ASSERT_EQ(fixture.sessions().got.size(), 2u);
  for (const UniqueSession& session : fixture.sessions().got) {
    EXPECT_EQ(SSL_SESSION_is_resumable(session.get()), 1);
    EXPECT_EQ(SSL_SESSION_get_protocol_version(session.get()), TLS1_3_VERSION);
    EXPECT_TRUE(fixture.Resumes(session.get())) << "a relayed ticket must resume";
  }
}

TEST_P(TicketRelayTest, AWrongSequenceNumberIsRefusedAsOpenSslRefusesABadRecord) {
  TicketFixture fixture(GetParam().name);
  std::vector<Bytes> tickets;
  ASSERT_EQ(fixture.FullHandshake(tickets), "");
  ASSERT_FALSE(tickets.empty());
  auto relay = fixture.Relay(GetParam().cipher, fixture.capture().rx.records + 1);
  auto delivered = relay->Deliver(tickets[0]);
  ASSERT_FALSE(delivered.ok());
  EXPECT_EQ(fixture.capture().last_written_alert[1], kAlertBadRecordMac);
  EXPECT_TRUE(fixture.sessions().got.empty());
  ERR_clear_error();
}

INSTANTIATE_TEST_SUITE_P(Suites, TicketRelayTest, ::testing::ValuesIn(kTls13Suites));

TEST(TicketRelay, AMalformedTicketGetsOpenSslsDecodeError) {
  TicketFixture fixture("TLS_AES_128_GCM_SHA256");
  std::vector<Bytes> tickets;
  ASSERT_EQ(fixture.FullHandshake(tickets), "");
  ASSERT_FALSE(tickets.empty());
  // The nonce's length byte (after lifetime and age_add) claims more bytes
  // than the message holds.
  Bytes bad = tickets[0];
  bad[4 + 8] = 0xff;
  auto relay = fixture.Relay(Cipher::kAes128Gcm, fixture.capture().rx.records);
  ASSERT_FALSE(relay->Deliver(bad).ok());
  EXPECT_EQ(fixture.capture().last_written_alert[0], 2);  // fatal
  EXPECT_EQ(fixture.capture().last_written_alert[1], kAlertDecodeError);
  EXPECT_TRUE(fixture.sessions().got.empty());
  ERR_clear_error();
}

TEST(TicketRelay, ATicketLargerThanARecordIsSplitAcrossRecords) {
  TicketFixture fixture("TLS_AES_256_GCM_SHA384");
  std::vector<Bytes> tickets;
  ASSERT_EQ(fixture.FullHandshake(tickets), "");
  ASSERT_FALSE(tickets.empty());
  // Append an unknown extension of 40,000 bytes (clients ignore unknown
  // NewSessionTicket extensions, RFC 8446 4.6.1), fixing the lengths: the
  // message needs three records.
  Bytes big = tickets[0];
  // The extensions block is last; find its length field by walking the body.
  std::size_t at = 4 + 4 + 4;
  at += 1 + big[at];                                     // nonce
  at += 2 + (std::size_t{big[at]} << 8 | big[at + 1]);  // ticket
  const std::size_t ext_len = std::size_t{big[at]} << 8 | big[at + 1];
  ASSERT_EQ(at + 2 + ext_len, big.size());
  constexpr std::size_t kPadLen = 40000;
  const Bytes extension = {0xfa, 0xfa, static_cast<std::uint8_t>(kPadLen >> 8), static_cast<std::uint8_t>(kPadLen)};
  big.insert(big.end(), extension.begin(), extension.end());
  big.insert(big.end(), kPadLen, 0);
  const std::size_t new_ext_len = ext_len + extension.size() + kPadLen;
  big[at] = static_cast<std::uint8_t>(new_ext_len >> 8);
  big[at + 1] = static_cast<std::uint8_t>(new_ext_len);
  const std::size_t body_len = big.size() - 4;
  big[1] = static_cast<std::uint8_t>(body_len >> 16);
  big[2] = static_cast<std::uint8_t>(body_len >> 8);
  big[3] = static_cast<std::uint8_t>(body_len);
  auto relay = fixture.Relay(Cipher::kAes256Gcm, fixture.capture().rx.records);
  auto delivered = relay->Deliver(big);
  ASSERT_TRUE(delivered.ok()) << delivered.error().ToString();
  ASSERT_EQ(fixture.sessions().got.size(), 1u);
  EXPECT_TRUE(fixture.Resumes(fixture.sessions().got[0].get()));
  // The next ticket follows at the sequence number after the three records.
  ASSERT_TRUE(relay->Deliver(tickets[1]).ok());
  EXPECT_EQ(fixture.sessions().got.size(), 2u);
}

}  // namespace
}  // namespace ktls::testing
