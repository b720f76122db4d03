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

TEST(Probe, CachedAnswerIsStable) {
  const Capabilities& first = CachedCapabilities();
  const Capabilities& second = CachedCapabilities();
  EXPECT_EQ(&first, &second);
  EXPECT_EQ(Available(), first.available);
}

}  // namespace
}  // namespace ktls
