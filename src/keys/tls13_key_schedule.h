// keys/tls13_key_schedule.h: from a TLS 1.3 traffic secret to the record
// protection key and IV (RFC 8446 section 7.1 and 7.3), and to the next
// traffic secret for a KeyUpdate (section 7.2).
#ifndef KTLS_SRC_KEYS_TLS13_KEY_SCHEDULE_H_
#define KTLS_SRC_KEYS_TLS13_KEY_SCHEDULE_H_

#include <cstddef>
#include <span>
#include <string_view>

#include "keys/secret.h"
#include "ktls/result.h"
#include "ktls/types.h"

namespace ktls::detail {

// Tls13SuiteParams: what the key schedule needs to know about a suite.
struct Tls13SuiteParams {
  Cipher cipher;
  const char* digest_name;  // "SHA256" or "SHA384": the suite's HKDF hash.
  std::size_t secret_len;   // The hash's output length.
  std::size_t key_len;      // AEAD key length.
  std::size_t iv_len;       // Always 12 for the suites the kernel carries.
};

// Tls13Params returns the parameters of cipher's TLS 1.3 suite.
const Tls13SuiteParams& Tls13Params(Cipher cipher) noexcept;

// HkdfExpandLabel computes HKDF-Expand-Label(secret, label, context, out.size())
// with the hash digest_name (RFC 8446 section 7.1). label is given without the
// "tls13 " prefix; this function adds it.
Result<void> HkdfExpandLabel(const char* digest_name,
                             std::span<const unsigned char> secret,
                             std::string_view label,
                             std::span<const unsigned char> context,
                             std::span<unsigned char> out);

// TrafficKeys: one direction's record protection key and 12-byte IV.
struct TrafficKeys {
  Secret key;
  Secret iv;
};

// DeriveTls13TrafficKeys derives key = HKDF-Expand-Label(secret, "key", "",
// key_len) and iv = HKDF-Expand-Label(secret, "iv", "", 12) for cipher's
// suite. The secret must be exactly the suite's hash length.
Result<TrafficKeys> DeriveTls13TrafficKeys(Cipher cipher,
                                           std::span<const unsigned char> traffic_secret);

// NextTls13TrafficSecret computes application_traffic_secret_N+1 =
// HKDF-Expand-Label(secret_N, "traffic upd", "", hash_len) (section 7.2).
Result<Secret> NextTls13TrafficSecret(Cipher cipher,
                                      std::span<const unsigned char> traffic_secret);

}  // namespace ktls::detail

#endif  // KTLS_SRC_KEYS_TLS13_KEY_SCHEDULE_H_
