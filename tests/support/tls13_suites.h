// tests/support/tls13_suites.h: the TLS 1.3 cipher suites the kernel
// carries, for tests parameterised over them.
#ifndef KTLS_TESTS_SUPPORT_TLS13_SUITES_H_
#define KTLS_TESTS_SUPPORT_TLS13_SUITES_H_

#include <array>
#include <ostream>

#include "ktls/types.h"

namespace ktls::testing {

// SuiteCase: one TLS 1.3 cipher suite, by OpenSSL name and kernel cipher.
struct SuiteCase {
  const char* name;
  Cipher cipher;
};

inline void PrintTo(const SuiteCase& suite, std::ostream* out) { *out << suite.name; }

// kTls13Suites: AES-128-CCM is not in OpenSSL's default list; contexts
// that should negotiate it must name it (both ends).
inline constexpr std::array<SuiteCase, 4> kTls13Suites = {{
    {"TLS_AES_128_GCM_SHA256", Cipher::kAes128Gcm},
    {"TLS_AES_256_GCM_SHA384", Cipher::kAes256Gcm},
    {"TLS_CHACHA20_POLY1305_SHA256", Cipher::kChaCha20Poly1305},
    {"TLS_AES_128_CCM_SHA256", Cipher::kAes128Ccm},
}};

}  // namespace ktls::testing

#endif  // KTLS_TESTS_SUPPORT_TLS13_SUITES_H_
