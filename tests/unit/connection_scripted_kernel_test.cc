// A Connection with both directions "in the kernel", the kernel played by
// the syscall seam (tests/support/scripted_ktls.h): what ktls does with
// each record kTLS RX hands it, exactly, on any host. The real kernels are
// in tests/kernel; inputs found by the kernel_rx fuzzer are pinned here.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "conn/connection_impl.h"
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
        .set_sock_opt = [this](int, int level, int name, const void*, socklen_t) -> std::optional<int> {
          if (level == uapi::kSolTls) installed_.push_back(name == uapi::kTlsTx ? "TLS_TX" : "TLS_RX");
          return 0;
        },
        .get_sock_opt = [](int, int, int, void* value, socklen_t* len) -> std::optional<int> {
          std::memset(value, 0, *len);  // SO_ERROR: none.
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

  ScriptedKtlsRx kernel_;
  std::vector<SentRecord> sent_;
  std::vector<std::string> installed_;
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

}  // namespace
}  // namespace ktls::testing
