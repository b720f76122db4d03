// tests/support/kernel_env.h: gtest guards for tests that need kernel TLS.
//
// On a machine without kTLS a kernel test is skipped, and says why. Where
// kTLS must be there (inside the UML kernels, which set KTLS_IN_UML=1, or a
// CI job that sets KTLS_REQUIRE_KERNEL=1), the same test fails instead: a
// missing feature must never pass silently. (strict_gtest_main.cc fails any
// other skip there too.)
#ifndef KTLS_TESTS_SUPPORT_KERNEL_ENV_H_
#define KTLS_TESTS_SUPPORT_KERNEL_ENV_H_

#include <gtest/gtest.h>

#include "common/kernel_promise.h"
#include "ktls/probe.h"
#include "ktls/types.h"

namespace ktls::testing {

// KernelRequired: true where kernel TLS is promised (KernelTlsPromised).
inline bool KernelRequired() { return ::ktls::tools::KernelTlsPromised(); }

}  // namespace ktls::testing

// KTLS_REQUIRE_KTLS_OR_SKIP: first statement of every kernel test. Uses the
// process-wide probe (ktls::CachedCapabilities), so the probe runs once per
// test binary. Only usable in a function returning void (a TEST body).
#define KTLS_REQUIRE_KTLS_OR_SKIP()                                                          \
  do {                                                                                       \
    const ::ktls::Capabilities& ktls_caps_ = ::ktls::CachedCapabilities();                   \
    if (!ktls_caps_.available) {                                                             \
      if (::ktls::testing::KernelRequired()) {                                               \
        FAIL() << "kernel TLS is promised (KTLS_REQUIRE_KERNEL=1 or a UML guest) but "        \
               << "unavailable on " << ktls_caps_.kernel << ": " << ktls_caps_.reason;       \
      }                                                                                      \
      GTEST_SKIP() << "kernel TLS unavailable on " << ktls_caps_.kernel << ": "              \
                   << ktls_caps_.reason;                                                     \
    }                                                                                        \
  } while (0)

// KTLS_REQUIRE_CIPHER_OR_SKIP(version, cipher): as above, and also the probe
// must have seen the kernel accept TX and RX for this (version, cipher).
#define KTLS_REQUIRE_CIPHER_OR_SKIP(version, cipher)                                         \
  do {                                                                                       \
    KTLS_REQUIRE_KTLS_OR_SKIP();                                                             \
    if (!::ktls::CachedCapabilities().Supports((version), (cipher), /*need_rx=*/true)) {     \
      if (::ktls::testing::KernelRequired()) {                                               \
        FAIL() << "kernel TLS is promised but the kernel rejects TLS "                       \
               << ::ktls::TlsVersionName(version) << " " << ::ktls::CipherName(cipher);      \
      }                                                                                      \
      GTEST_SKIP() << "the kernel rejects TLS " << ::ktls::TlsVersionName(version) << " "   \
                   << ::ktls::CipherName(cipher);                                            \
    }                                                                                        \
  } while (0)

#endif  // KTLS_TESTS_SUPPORT_KERNEL_ENV_H_
