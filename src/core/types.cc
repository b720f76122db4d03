// core/types.cc: names and mappings for the public enums.
#include "ktls/types.h"

namespace ktls {

std::string_view TlsVersionName(TlsVersion version) noexcept {
  return version == TlsVersion::kTls12 ? "1.2" : "1.3";
}

std::string_view CipherName(Cipher cipher) noexcept {
  switch (cipher) {
    case Cipher::kAes128Gcm: return "AES_128_GCM";
    case Cipher::kAes256Gcm: return "AES_256_GCM";
    case Cipher::kChaCha20Poly1305: return "CHACHA20_POLY1305";
    case Cipher::kAes128Ccm: return "AES_128_CCM";
  }
  return "UNKNOWN";
}

std::optional<Cipher> CipherFromTls13SuiteId(std::uint16_t suite_id) noexcept {
  // IANA TLS Cipher Suites registry; RFC 8446 appendix B.4.
  switch (suite_id) {
    case 0x1301: return Cipher::kAes128Gcm;         // TLS_AES_128_GCM_SHA256
    case 0x1302: return Cipher::kAes256Gcm;         // TLS_AES_256_GCM_SHA384
    case 0x1303: return Cipher::kChaCha20Poly1305;  // TLS_CHACHA20_POLY1305_SHA256
    case 0x1304: return Cipher::kAes128Ccm;         // TLS_AES_128_CCM_SHA256
    default: return std::nullopt;                   // 0x1305 CCM_8: no kernel support
  }
}

std::string_view AlertName(int alert) noexcept {
  // RFC 8446 section 6 and the IANA TLS Alerts registry.
  switch (alert) {
    case 0: return "close_notify";
    case 10: return "unexpected_message";
    case 20: return "bad_record_mac";
    case 22: return "record_overflow";
    case 40: return "handshake_failure";
    case 42: return "bad_certificate";
    case 43: return "unsupported_certificate";
    case 44: return "certificate_revoked";
    case 45: return "certificate_expired";
    case 46: return "certificate_unknown";
    case 47: return "illegal_parameter";
    case 48: return "unknown_ca";
    case 49: return "access_denied";
    case 50: return "decode_error";
    case 51: return "decrypt_error";
    case 70: return "protocol_version";
    case 71: return "insufficient_security";
    case 80: return "internal_error";
    case 86: return "inappropriate_fallback";
    case 90: return "user_canceled";
    case 100: return "no_renegotiation";
    case 109: return "missing_extension";
    case 110: return "unsupported_extension";
    case 112: return "unrecognized_name";
    case 113: return "bad_certificate_status_response";
    case 115: return "unknown_psk_identity";
    case 116: return "certificate_required";
    case 120: return "no_application_protocol";
    default: return "unknown_alert";
  }
}

const char* FallbackReasonName(FallbackReason reason) noexcept {
  switch (reason) {
    case FallbackReason::kNone: return "none";
    case FallbackReason::kDisabled: return "disabled";
    case FallbackReason::kNoKernelTls: return "no_ktls";
    case FallbackReason::kProtocol: return "protocol";
    case FallbackReason::kCipher: return "cipher";
    case FallbackReason::kNoRekey: return "no_rekey";
    case FallbackReason::kSessionState: return "session_state";
    case FallbackReason::kKernelRefused: return "kernel_refused";
  }
  return "unknown";
}

}  // namespace ktls
