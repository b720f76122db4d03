// The probe on a real kernel with kTLS (inside the UML guests, or a host
// with the tls module).
#include "ktls/probe.h"

#include <gtest/gtest.h>
#include <sys/utsname.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "kernel/tls_uapi.h"
#include "tests/support/fault_syscalls.h"
#include "tests/support/kernel_env.h"

namespace ktls {
namespace {

using testing::Fault;
using testing::ScopedFault;
using testing::Syscall;

// KernelVersion parses "major.minor" out of uname's release string.
std::pair<int, int> KernelVersion() {
  utsname uts{};
  EXPECT_EQ(::uname(&uts), 0);
  int major = 0, minor = 0;
  EXPECT_EQ(std::sscanf(uts.release, "%d.%d", &major, &minor), 2) << uts.release;
  return {major, minor};
}

bool AtLeast(std::pair<int, int> have, int major, int minor) {
  return have.first > major || (have.first == major && have.second >= minor);
}

TEST(ProbeKernel, AllCiphersBothDirections) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const Capabilities caps = Probe();
  ASSERT_TRUE(caps.available) << caps.reason;
  EXPECT_TRUE(caps.ulp);
  EXPECT_TRUE(caps.reason.empty()) << caps.reason;
  // AES-GCM since 4.13/4.17 (RX), AES-256-GCM and TLS 1.3 since 5.1,
  // CCM since 5.2, ChaCha20-Poly1305 since 5.11: every kernel we test on
  // has all of them, in both versions and both directions.
  ASSERT_TRUE(AtLeast(KernelVersion(), 5, 11));
  for (const CipherSupport& row : caps.ciphers) {
    SCOPED_TRACE(std::string(CipherName(row.cipher)) + " TLS " + std::string(TlsVersionName(row.version)));
    EXPECT_TRUE(row.tx);
    EXPECT_TRUE(row.rx);
  }
}

// Rekey support arrived in Linux 6.14 (TLS 1.3 KeyUpdate, both directions).
TEST(ProbeKernel, RekeyMatchesKernelVersion) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const Capabilities caps = Probe();
  const bool expect_rekey = AtLeast(KernelVersion(), 6, 14);
  EXPECT_EQ(caps.rekey, expect_rekey) << "kernel " << caps.kernel;

  // Inside the test harness we also know which kernel we asked for.
  if (const char* which = std::getenv("KTLS_UML_KERNEL")) {
    EXPECT_EQ(caps.kernel.rfind(which, 0), 0u) << "asked for " << which << ", running " << caps.kernel;
    if (std::string(which) == "6.1") EXPECT_FALSE(caps.rekey);
    if (std::string(which) == "7.2") EXPECT_TRUE(caps.rekey);
  }
}

// The second TLS_TX failing with EBUSY is exactly what a kernel without
// rekey says; the probe must read it as "no rekey" and still be available.
TEST(ProbeKernel, EbusyOnSecondTxMeansNoRekey) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  // The 8 rows set TLS_TX once each, the rekey check once more: fail the 10th.
  // Counters are per process: start from zero.
  testing::ClearFaults();
  ScopedFault fault(Fault{.call = Syscall::kSetSockOpt, .err = EBUSY, .level = detail::uapi::kSolTls,
                          .name = detail::uapi::kTlsTx, .skip = 9});
  const Capabilities caps = Probe();
  EXPECT_TRUE(caps.available) << caps.reason;
  EXPECT_FALSE(caps.rekey);
  EXPECT_EQ(testing::CallCount(Syscall::kSetSockOpt), 1 + 8 * 3 + 3 + 3)
      << "one ULP probe, ULP+TX+RX per row, ULP+TX+TX for rekey, ULP+RX+TLS_RX_EXPECT_NO_PAD for no-pad";
}

// A kernel before 6.0 does not know TLS_RX_EXPECT_NO_PAD (ENOPROTOOPT): no
// no-pad, said so, and everything else as before.
TEST(ProbeKernel, UnknownNoPadOptionMeansNoNoPad) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  ScopedFault fault(Fault{.call = Syscall::kSetSockOpt, .err = ENOPROTOOPT, .level = detail::uapi::kSolTls,
                          .name = detail::uapi::kTlsRxExpectNoPad, .times = -1});
  const Capabilities caps = Probe();
  EXPECT_TRUE(caps.available) << caps.reason;
  EXPECT_FALSE(caps.rx_no_pad);
  EXPECT_NE(caps.rx_no_pad_reason.find("Linux 6.0"), std::string::npos) << caps.rx_no_pad_reason;
}

TEST(ProbeKernel, CipherRejectedByKernelIsReportedPerDirection) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  // As if the kernel had no CCM for RX (e.g. a kernel built without it):
  // fail every TLS_RX so each row shows TX yes, RX no.
  ScopedFault fault(Fault{.call = Syscall::kSetSockOpt, .err = EINVAL, .level = detail::uapi::kSolTls,
                          .name = detail::uapi::kTlsRx, .times = -1});
  const Capabilities caps = Probe();
  EXPECT_FALSE(caps.available);
  EXPECT_TRUE(caps.ulp);
  EXPECT_FALSE(caps.reason.empty());
  for (const CipherSupport& row : caps.ciphers) {
    EXPECT_TRUE(row.tx);
    EXPECT_FALSE(row.rx);
  }
}

TEST(ProbeKernel, AvailableShortcut) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  EXPECT_TRUE(Available());
  EXPECT_TRUE(CachedCapabilities().Supports(TlsVersion::kTls13, Cipher::kAes256Gcm, true));
}

}  // namespace
}  // namespace ktls
