// tests/support/kernel_env.h: gtest guards for tests that need kernel TLS.
//
// On a machine without kTLS a kernel test is skipped, and says why. Where
// kTLS must be there (inside the UML kernels, or a CI job that promises it),
// set KTLS_REQUIRE_KERNEL=1 and the same test fails instead: a missing feature
// must never pass silently.
#ifndef KTLS_TESTS_SUPPORT_KERNEL_ENV_H_
#define KTLS_TESTS_SUPPORT_KERNEL_ENV_H_

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "ktls/probe.h"
#include "ktls/types.h"

namespace ktls::testing {

// KernelRequired: true when the environment says KTLS_REQUIRE_KERNEL=1.
inline bool KernelRequired() {
  const char* value = std::getenv("KTLS_REQUIRE_KERNEL");
  return value != nullptr && std::strcmp(value, "1") == 0;
}

}  // namespace ktls::testing

// KTLS_REQUIRE_KTLS_OR_SKIP: first statement of every kernel test. Uses the
// process-wide probe (ktls::CachedCapabilities), so the probe runs once per
// test binary. Only usable in a function returning void (a TEST body).
#define KTLS_REQUIRE_KTLS_OR_SKIP()                                                          \
  do {                                                                                       \
    const ::ktls::Capabilities& ktls_caps_ = ::ktls::CachedCapabilities();                   \
    if (!ktls_caps_.available) {                                                             \
      if (::ktls::testing::KernelRequired()) {                                               \
        FAIL() << "KTLS_REQUIRE_KERNEL=1 but kernel TLS is unavailable on "                  \
               << ktls_caps_.kernel << ": " << ktls_caps_.reason;                            \
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
        FAIL() << "KTLS_REQUIRE_KERNEL=1 but the kernel rejects TLS "                        \
               << ::ktls::TlsVersionName(version) << " " << ::ktls::CipherName(cipher);      \
      }                                                                                      \
      GTEST_SKIP() << "the kernel rejects TLS " << ::ktls::TlsVersionName(version) << " "   \
                   << ::ktls::CipherName(cipher);                                            \
    }                                                                                        \
  } while (0)

#endif  // KTLS_TESTS_SUPPORT_KERNEL_ENV_H_
