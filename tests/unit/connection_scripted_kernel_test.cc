// A Connection with both directions "in the kernel", the kernel played by
// the syscall seam (tests/support/scripted_ktls.h): what ktls does with
// each record kTLS RX hands it, exactly, on any host. The real kernels are
// in tests/kernel; inputs found by the kernel_rx fuzzer are pinned here.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "conn/connection_impl.h"
#include "conn/traffic_keys.h"
#include "core/unique_fd.h"
#include "kernel/crypto_info.h"
#include "kernel/tls_uapi.h"
#include "keys/tls13_key_schedule.h"
#include "tests/support/fault_syscalls.h"
#include "tests/support/scripted_ktls.h"

namespace ktls::testing {
namespace {

namespace uapi = detail::uapi;
using Bytes = std::vector<std::uint8_t>;

// ScriptedConnection: a TLS 1.3 connection offloaded both ways, on a kernel
// that can install new keys, over a scripted kernel that records what ktls
// sends and which keys it installs.
class ScriptedConnection : public ::testing::Test {
 protected:
  void SetUp() override {
    ClearFaults();
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    peer_ = detail::UniqueFd(fds[1]);
    conn_ = std::make_unique<detail::ConnectionImpl>(detail::UniqueFd(fds[0]), detail::UniqueSsl(), false);
    conn_->tx = Offload::kKernel;
    conn_->rx = Offload::kKernel;
    conn_->version = TlsVersion::kTls13;
    conn_->cipher = Cipher::kAes128Gcm;
    conn_->kernel_rekey = true;
    const Bytes secret(detail::Tls13Params(conn_->cipher).secret_len, 0x11);
    ASSERT_TRUE(conn_->tx_secret.Assign(secret));
    ASSERT_TRUE(conn_->rx_secret.Assign(secret));
    SetStandIns({
        .set_sock_opt = [this](int, int level, int name, const void* value, socklen_t len) -> std::optional<int> {
          if (level == uapi::kSolTls) {
            installed_.push_back(name == uapi::kTlsTx ? "TLS_TX" : "TLS_RX");
            installed_seqs_.push_back(detail::RecSeqOf(static_cast<const unsigned char*>(value), len).value_or(~0ULL));
          }
          return 0;
        },
        .get_sock_opt = [this](int, int level, int, void* value, socklen_t* len) -> std::optional<int> {
          std::memset(value, 0, *len);  // SO_ERROR: none.
          if (level == IPPROTO_TCP) *static_cast<unsigned char*>(value) = TCP_ESTABLISHED;  // tcp_info's state.
          if (level == uapi::kSolTls) {  // The kernel's crypto_info, at its next record.
            const Bytes zeros(32, 0);
            auto info = detail::PackCryptoInfo(conn_->version, conn_->cipher, std::span(zeros).first(16),
                                               std::span(zeros).first(12), kernel_seq_);
            *len = std::min(*len, info->size());
            std::memcpy(value, info->data(), *len);
          }
          return 0;
        },
        .send_msg = [this](int, const msghdr* msg, int) -> std::optional<ssize_t> {
          sent_.push_back(ParseSentRecord(msg));
          return static_cast<ssize_t>(sent_.back().bytes.size());
        },
        .recv_msg = [this](int, msghdr* msg, int) -> std::optional<ssize_t> { return kernel_.RecvMsg(msg); },
    });
  }
  void TearDown() override { ClearFaults(); }

  // ReadAll reads until the end of the stream, an error or "would block".
  Bytes ReadAll(std::string* error) {
    Bytes out;
    std::vector<std::byte> buf(1000);
    for (;;) {
      auto got = conn_->Read(buf);
      if (!got.ok()) {
        *error = got.error().ToString();
        return out;
      }
      const auto* p = reinterpret_cast<const std::uint8_t*>(buf.data());
      out.insert(out.end(), p, p + got->bytes);
      if (got->end_of_stream || got->would_block) return out;
    }
  }

  // Reset starts over with a new connection and an empty script.
  void Reset() {
    kernel_ = ScriptedKtlsRx();
    sent_.clear();
    installed_.clear();
    installed_seqs_.clear();
    SetUp();
  }

  ScriptedKtlsRx kernel_;
  std::uint64_t kernel_seq_ = 0;  // What getsockopt(SOL_TLS) says the next record is.
  std::vector<SentRecord> sent_;
  std::vector<std::string> installed_;
  std::vector<std::uint64_t> installed_seqs_;
  detail::UniqueFd peer_;
  std::unique_ptr<detail::ConnectionImpl> conn_;
};

const Bytes kCloseNotify = {1, 0};
const Bytes kKeyUpdateRequested = {24, 0, 0, 1, 1};

TEST_F(ScriptedConnection, PeerKeyUpdateRequestIsAnsweredBeforeOurNextData) {
  kernel_.QueueRecord(uapi::kRecordHandshake, kKeyUpdateRequested);
  kernel_.QueueRecord(uapi::kRecordApplicationData, Bytes{'h', 'i'});
  std::string error;
  EXPECT_EQ(ReadAll(&error), (Bytes{'h', 'i'}));
  EXPECT_EQ(error, "");
  ASSERT_EQ(sent_.size(), 1u);
  EXPECT_EQ(sent_[0].type, uapi::kRecordHandshake);
  EXPECT_EQ(sent_[0].bytes, (Bytes{24, 0, 0, 1, 0}));  // update_not_requested.
  EXPECT_EQ(installed_, (std::vector<std::string>{"TLS_RX", "TLS_TX"}));
}

// Found by the kernel_rx fuzzer (corpus: regress-key-update-after-shutdown).
// After our close_notify we send nothing more, so the peer's update_requested
// needs no answer (RFC 8446 4.6.3 wants one before our next application
// data). ktls answered anyway: a KeyUpdate after close_notify, which a real
// kernel refuses after shutdown(SHUT_WR) with EPIPE, failing the Read of the
// data the peer still sends to a half-closed connection.
TEST_F(ScriptedConnection, PeerKeyUpdateRequestAfterOurCloseNotifyIsNotAnswered) {
  ASSERT_TRUE(conn_->Shutdown().ok());
  kernel_.QueueRecord(uapi::kRecordApplicationData, Bytes{'b'});
  kernel_.QueueRecord(uapi::kRecordHandshake, kKeyUpdateRequested);
  kernel_.QueueRecord(uapi::kRecordApplicationData, Bytes{'a'});
  kernel_.QueueRecord(uapi::kRecordAlert, kCloseNotify);
  std::string error;
  EXPECT_EQ(ReadAll(&error), (Bytes{'b', 'a'}));
  EXPECT_EQ(error, "");
  ASSERT_EQ(sent_.size(), 1u) << "only our close_notify goes out";
  EXPECT_EQ(sent_[0].type, uapi::kRecordAlert);
  EXPECT_EQ(sent_[0].bytes, kCloseNotify);
  EXPECT_EQ(installed_, (std::vector<std::string>{"TLS_RX"})) << "RX still follows the peer's key";
}

// What OpenSSL 3 answers to the same records, as the peer sees it: each
// case below was checked against openssl s_server by
// tests/interop/conformance_interop.py, which repeats them on the real
// kernels.
class ScriptedConformance : public ScriptedConnection {
 protected:
  // FatalAlertSent: the one record ktls sent is a fatal alert `alert`.
  void ExpectFatalAlertSent(std::uint8_t alert) {
    ASSERT_EQ(sent_.size(), 1u);
    EXPECT_EQ(sent_[0].type, uapi::kRecordAlert);
    EXPECT_EQ(sent_[0].bytes, (Bytes{2, alert}));
  }
};

constexpr std::uint8_t kUnexpectedMessage = 10;
constexpr std::uint8_t kIllegalParameter = 47;
constexpr std::uint8_t kNoRenegotiation = 100;

TEST_F(ScriptedConformance, AlertRecordsOfAnyLengthButTwoAreUnexpectedMessage) {
  for (const Bytes& alert : {Bytes{}, Bytes{2}, Bytes{2, 10, 0}}) {
    Reset();
    kernel_.QueueRecord(uapi::kRecordAlert, alert);
    std::string error;
    ReadAll(&error);
    EXPECT_NE(error.find("an alert record of " + std::to_string(alert.size()) + " bytes"), std::string::npos) << error;
    ExpectFatalAlertSent(kUnexpectedMessage);
  }
}

TEST_F(ScriptedConformance, AnAlertReadOneByteAtATimeIsOneAlert) {
  kernel_.QueueRecord(uapi::kRecordAlert, kCloseNotify);
  std::byte one[1];
  auto got = conn_->Read(one);  // Two recvmsg of one byte each; the second ends the record.
  ASSERT_TRUE(got.ok()) << got.error().ToString();
  EXPECT_TRUE(got->end_of_stream);
  EXPECT_TRUE(sent_.empty());
}

TEST_F(ScriptedConformance, EmptyApplicationDataBeforeAnAlertIsNotTheEndOfTheStream) {
  kernel_.QueueRecord(uapi::kRecordApplicationData, Bytes{});
  kernel_.QueueRecord(uapi::kRecordAlert, kCloseNotify);
  std::byte buf[100];
  auto got = conn_->Read(buf);
  ASSERT_TRUE(got.ok()) << got.error().ToString();
  EXPECT_TRUE(got->end_of_stream) << "close_notify, not a truncation";
}

TEST_F(ScriptedConformance, AnEmptyHandshakeRecordIsUnexpectedMessage) {
  kernel_.QueueRecord(uapi::kRecordHandshake, Bytes{});
  std::string error;
  ReadAll(&error);
  EXPECT_NE(error.find("an empty handshake record"), std::string::npos) << error;
  ExpectFatalAlertSent(kUnexpectedMessage);
}

TEST_F(ScriptedConformance, FourUserCanceledWarningsAreIgnoredTheFifthIsFatal) {
  const Bytes user_canceled = {1, 90};
  for (int i = 0; i < 4; ++i) kernel_.QueueRecord(uapi::kRecordAlert, user_canceled);
  kernel_.QueueRecord(uapi::kRecordApplicationData, Bytes{'x'});  // Resets the count, as in OpenSSL.
  for (int i = 0; i < 4; ++i) kernel_.QueueRecord(uapi::kRecordAlert, user_canceled);
  std::string error;
  EXPECT_EQ(ReadAll(&error), Bytes{'x'});
  EXPECT_EQ(error, "");
  EXPECT_TRUE(sent_.empty());
  kernel_.QueueRecord(uapi::kRecordAlert, user_canceled);
  ReadAll(&error);
  EXPECT_NE(error.find("5 warning alerts in a row"), std::string::npos) << error;
  ExpectFatalAlertSent(kUnexpectedMessage);
}

TEST_F(ScriptedConformance, AKeyUpdateLongerThanOneByteIsIllegalParameterBeforeItsBody) {
  kernel_.QueueRecord(uapi::kRecordHandshake, Bytes{24, 0, 0, 2});  // The header alone.
  std::string error;
  ReadAll(&error);
  EXPECT_NE(error.find("more than it can have"), std::string::npos) << error;
  ExpectFatalAlertSent(kIllegalParameter);
}

TEST_F(ScriptedConformance, AKeyUpdateFollowedByMoreOfItsRecordIsUnexpectedMessage) {
  // The reader's buffer ends right after the KeyUpdate, the record does not.
  kernel_.QueueRecord(uapi::kRecordHandshake, Bytes{24, 0, 0, 1, 0, 24});
  std::byte buf[5];
  auto got = conn_->Read(buf);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.error().ToString().find("does not end its record"), std::string::npos) << got.error().ToString();
  ExpectFatalAlertSent(kUnexpectedMessage);
  EXPECT_TRUE(installed_.empty()) << "no new RX key";
}

TEST_F(ScriptedConformance, AFragmentedKeyUpdateResumesRxThenRekeys) {
  // The kernel pauses RX after the first fragment (it starts with 24).
  kernel_.QueueRecord(uapi::kRecordHandshake, Bytes{24});
  kernel_.QueueError(EKEYEXPIRED);
  kernel_seq_ = 8;
  kernel_.QueueRecord(uapi::kRecordHandshake, Bytes{0, 0, 1, 0});
  kernel_.QueueRecord(uapi::kRecordApplicationData, Bytes{'o', 'k'});
  std::string error;
  EXPECT_EQ(ReadAll(&error), (Bytes{'o', 'k'}));
  EXPECT_EQ(error, "");
  EXPECT_TRUE(sent_.empty());
  // The current key again (to read the rest of the KeyUpdate), then the next.
  EXPECT_EQ(installed_, (std::vector<std::string>{"TLS_RX", "TLS_RX"}));
  EXPECT_EQ(installed_seqs_, (std::vector<std::uint64_t>{8, 0}));
  EXPECT_EQ(conn_->rx_key_updates.load(), 1u);
}

TEST_F(ScriptedConformance, Tls12RenegotiationGetsAWarningAndTheConnectionGoesOn) {
  for (const bool server : {true, false}) {
    Reset();
    conn_->is_server = server;
    conn_->version = TlsVersion::kTls12;
    conn_->kernel_rekey = false;
    // A ClientHello (to a server) or HelloRequest (to a client), with more
    // of the record after its header, which OpenSSL drops with it.
    const Bytes opener = server ? Bytes{1, 0, 0, 2, 3, 3} : Bytes{0, 0, 0, 0};
    kernel_.QueueRecord(uapi::kRecordHandshake, opener);
    kernel_.QueueRecord(uapi::kRecordApplicationData, Bytes{'o', 'k'});
    std::string error;
    EXPECT_EQ(ReadAll(&error), (Bytes{'o', 'k'})) << (server ? "server" : "client");
    EXPECT_EQ(error, "");
    ASSERT_EQ(sent_.size(), 1u);
    EXPECT_EQ(sent_[0].type, uapi::kRecordAlert);
    EXPECT_EQ(sent_[0].bytes, (Bytes{1, kNoRenegotiation}));
    EXPECT_EQ(conn_->renegotiations_refused.load(), 1u);
    auto wrote = conn_->Write(std::as_bytes(std::span("more", 4)));
    EXPECT_TRUE(wrote.ok()) << "the connection goes on: " << wrote.error().ToString();
  }
}

}  // namespace
}  // namespace ktls::testing
