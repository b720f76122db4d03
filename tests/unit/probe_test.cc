// The probe on the host, and its handling of kernel answers it cannot get
// from this host's kernel (made through the fault seam).
#include "ktls/probe.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cerrno>

#include "kernel/tls_uapi.h"
#include "tests/support/fault_syscalls.h"

namespace ktls {
namespace {

using testing::Fault;
using testing::ScopedFault;
using testing::Syscall;

bool HostHasTlsStat() {
  struct stat st {};
  return ::stat("/proc/net/tls_stat", &st) == 0;
}

TEST(Probe, HasOneRowPerVersionAndCipher) {
  const Capabilities caps = Probe();
  ASSERT_EQ(caps.ciphers.size(), 8u);
  EXPECT_EQ(caps.ciphers.front().version, TlsVersion::kTls12);
  EXPECT_EQ(caps.ciphers.back().version, TlsVersion::kTls13);
  EXPECT_FALSE(caps.kernel.empty());
}

// The host's own answer must agree with /proc: a kernel with the tls module
// loaded has /proc/net/tls_stat; without one, TCP_ULP "tls" is refused.
TEST(Probe, HostAnswerAgreesWithProcfs) {
  const Capabilities caps = Probe();
  if (HostHasTlsStat()) {
    EXPECT_TRUE(caps.available) << caps.reason;
  } else {
    EXPECT_FALSE(caps.available);
    EXPECT_FALSE(caps.ulp);
    EXPECT_NE(caps.reason.find("tls"), std::string::npos) << caps.reason;
  }
}

TEST(Probe, MissingUlpIsReportedWithReason) {
  ScopedFault fault(Fault{.call = Syscall::kSetSockOpt, .err = ENOENT, .level = detail::uapi::kSolTcp,
                          .name = detail::uapi::kTcpUlp, .times = -1});
  const Capabilities caps = Probe();
  EXPECT_FALSE(caps.available);
  EXPECT_FALSE(caps.ulp);
  EXPECT_FALSE(caps.rekey);
  EXPECT_NE(caps.reason.find("\"tls\" upper-layer protocol"), std::string::npos) << caps.reason;
  EXPECT_FALSE(caps.rx_no_pad);
  EXPECT_EQ(caps.rx_no_pad_reason, caps.reason);
  for (const CipherSupport& row : caps.ciphers) EXPECT_FALSE(row.tx || row.rx);
  EXPECT_FALSE(caps.Supports(TlsVersion::kTls13, Cipher::kAes128Gcm, false));
}

TEST(Probe, OtherUlpErrorIsNamed) {
  ScopedFault fault(Fault{.call = Syscall::kSetSockOpt, .err = EPERM, .level = detail::uapi::kSolTcp,
                          .name = detail::uapi::kTcpUlp, .times = -1});
  const Capabilities caps = Probe();
  EXPECT_FALSE(caps.available);
  EXPECT_NE(caps.reason.find("TCP_ULP"), std::string::npos) << caps.reason;
}

// ExpectSameAnswer: two probes' answers agree in every field.
void ExpectSameAnswer(const Capabilities& got, const Capabilities& want) {
  EXPECT_EQ(got.available, want.available);
  EXPECT_EQ(got.ulp, want.ulp);
  EXPECT_EQ(got.rekey, want.rekey);
  EXPECT_EQ(got.kernel, want.kernel);
  EXPECT_EQ(got.reason, want.reason);
  ASSERT_EQ(got.ciphers.size(), want.ciphers.size());
  for (std::size_t i = 0; i < got.ciphers.size(); ++i) {
    EXPECT_EQ(got.ciphers[i].version, want.ciphers[i].version) << i;
    EXPECT_EQ(got.ciphers[i].cipher, want.ciphers[i].cipher) << i;
    EXPECT_EQ(got.ciphers[i].tx, want.ciphers[i].tx) << i;
    EXPECT_EQ(got.ciphers[i].rx, want.ciphers[i].rx) << i;
  }
}

// The cached answer is what a probe finds, taken once: a kernel that
// answers differently later (here, TCP_ULP refused with EPERM) changes a
// fresh Probe, not CachedCapabilities or Available.
TEST(Probe, CachedAnswerIsTheFirstProbesAndStaysSo) {
  const Capabilities fresh = Probe();
  ExpectSameAnswer(CachedCapabilities(), fresh);
  ScopedFault fault(Fault{.call = Syscall::kSetSockOpt, .err = EPERM, .level = detail::uapi::kSolTcp,
                          .name = detail::uapi::kTcpUlp, .times = -1});
  const Capabilities refused = Probe();
  ASSERT_NE(refused.reason, fresh.reason) << "the fault must change what a fresh probe finds";
  ExpectSameAnswer(CachedCapabilities(), fresh);
  EXPECT_EQ(Available(), fresh.available);
}

}  // namespace
}  // namespace ktls
