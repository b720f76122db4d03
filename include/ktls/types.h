// ktls/types.h: the protocol versions and ciphers kernel TLS can carry.
#ifndef KTLS_TYPES_H_
#define KTLS_TYPES_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "ktls/export.h"

namespace ktls {

// TlsVersion: the record-layer versions the kernel implements.
enum class TlsVersion : std::uint8_t { kTls12, kTls13 };

// Cipher: the AEADs the kernel implements in software for both versions.
// (The kernel also has SM4 and ARIA; OpenSSL does not negotiate them for us.)
enum class Cipher : std::uint8_t {
  kAes128Gcm,
  kAes256Gcm,
  kChaCha20Poly1305,
  kAes128Ccm,
};

inline constexpr std::array<TlsVersion, 2> kAllVersions = {TlsVersion::kTls12,
                                                           TlsVersion::kTls13};
inline constexpr std::array<Cipher, 4> kAllCiphers = {
    Cipher::kAes128Gcm, Cipher::kAes256Gcm, Cipher::kChaCha20Poly1305,
    Cipher::kAes128Ccm};

// TlsVersionName returns "1.2" or "1.3".
KTLS_API std::string_view TlsVersionName(TlsVersion version) noexcept;

// CipherName returns the name used in ktls-probe's output:
// "AES_128_GCM", "AES_256_GCM", "CHACHA20_POLY1305" or "AES_128_CCM".
KTLS_API std::string_view CipherName(Cipher cipher) noexcept;

// CipherFromTls13SuiteId maps an IANA TLS 1.3 cipher suite id (the low 16
// bits of OpenSSL's SSL_CIPHER_get_id) to its Cipher, or nullopt for a suite
// the kernel cannot carry (TLS_AES_128_CCM_8_SHA256).
KTLS_API std::optional<Cipher> CipherFromTls13SuiteId(std::uint16_t suite_id) noexcept;

// AlertName returns the RFC 8446 section 6 name of a TLS alert description
// ("close_notify", "bad_record_mac", ...), or "unknown_alert".
KTLS_API std::string_view AlertName(int alert) noexcept;

// FallbackReason: why one direction stayed in OpenSSL, from a small fixed
// set (for metrics and programs; OffloadReport::reason says it in words).
enum class FallbackReason : std::uint8_t {
  kNone,           // It went to the kernel.
  kDisabled,       // Turned off: TxOffload::kOff, RxOffload::kOff.
  kNoKernelTls,    // The kernel has no kTLS (no tls module).
  kProtocol,       // Neither TLS 1.2 nor TLS 1.3.
  kCipher,         // The kernel cannot carry the negotiated suite (this way).
  kNoRekey,        // RX, RxOffload::kAuto: the kernel cannot take new RX keys (before 6.14).
  kSessionState,   // ktls cannot take over this connection's records exactly (OpenSSL holds
                   // unsent or partial records, the record count or secrets are unknown, the
                   // peer already closed).
  kKernelRefused,  // setsockopt(TCP_ULP, TLS_TX or TLS_RX) failed.
};
inline constexpr std::size_t kNumFallbackReasons = 8;

// FallbackReasonName returns "none", "disabled", "no_ktls", "protocol",
// "cipher", "no_rekey", "session_state" or "kernel_refused".
KTLS_API const char* FallbackReasonName(FallbackReason reason) noexcept;

}  // namespace ktls

#endif  // KTLS_TYPES_H_
