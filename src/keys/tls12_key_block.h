// keys/tls12_key_block.h: TLS 1.2 record keys for the AEAD suites the
// kernel carries, from the master secret (RFC 5246 6.3).
#ifndef KTLS_SRC_KEYS_TLS12_KEY_BLOCK_H_
#define KTLS_SRC_KEYS_TLS12_KEY_BLOCK_H_

#include <span>

#include "keys/secret.h"
#include "ktls/result.h"
#include "ktls/types.h"

namespace ktls::detail {

// Tls12Keys: both directions' write keys and implicit IVs. For AES-GCM and
// AES-CCM the IV is the 4-byte salt (RFC 5288, RFC 6655); for
// ChaCha20-Poly1305 the 12-byte IV (RFC 7905).
struct Tls12Keys {
  Secret client_key;
  Secret server_key;
  Secret client_iv;
  Secret server_iv;
};

// Tls12FixedIvLength is the implicit IV length of cipher in TLS 1.2.
std::size_t Tls12FixedIvLength(Cipher cipher) noexcept;

// DeriveTls12Keys computes key_block = PRF(master_secret, "key expansion",
// server_random + client_random) with the suite's PRF hash (digest_name,
// e.g. "SHA256"), through OpenSSL's TLS1-PRF KDF, and splits it. AEAD suites
// have no MAC keys. The master secret already reflects the extended master
// secret extension (RFC 7627) when it was negotiated.
Result<Tls12Keys> DeriveTls12Keys(Cipher cipher, const char* digest_name, std::span<const unsigned char> master_secret,
                                  std::span<const unsigned char> client_random,
                                  std::span<const unsigned char> server_random);

}  // namespace ktls::detail

#endif  // KTLS_SRC_KEYS_TLS12_KEY_BLOCK_H_
