// kernel/crypto_info.h: packing one direction's key, IV and starting record
// sequence number into the struct the kernel takes with setsockopt(SOL_TLS,
// TLS_TX or TLS_RX).
#ifndef KTLS_SRC_KERNEL_CRYPTO_INFO_H_
#define KTLS_SRC_KERNEL_CRYPTO_INFO_H_

#include <sys/socket.h>

#include <cstdint>
#include <span>

#include "kernel/tls_uapi.h"
#include "ktls/result.h"
#include "ktls/types.h"

namespace ktls::detail {

// KernelCryptoInfo: the packed struct, ready for setsockopt. Move-only and
// wiped on destruction, so the key never outlives the call that installs it.
class KernelCryptoInfo {
 public:
  KernelCryptoInfo() = default;
  KernelCryptoInfo(const KernelCryptoInfo&) = delete;
  KernelCryptoInfo& operator=(const KernelCryptoInfo&) = delete;
  KernelCryptoInfo(KernelCryptoInfo&& other) noexcept;
  KernelCryptoInfo& operator=(KernelCryptoInfo&& other) noexcept;
  ~KernelCryptoInfo();

  const void* data() const { return &storage_; }
  socklen_t size() const { return len_; }

  // The parts, as views into the packed struct (for tests and rekeying).
  std::span<const unsigned char> key() const;
  std::span<const unsigned char> salt() const;
  std::span<const unsigned char> iv() const;
  std::span<const unsigned char> rec_seq() const;
  std::uint16_t version() const { return storage_.info.version; }
  std::uint16_t cipher_type() const { return storage_.info.cipher_type; }

 private:
  friend Result<KernelCryptoInfo> PackCryptoInfo(TlsVersion, Cipher, std::span<const unsigned char>,
                                                 std::span<const unsigned char>, std::uint64_t);
  void Wipe();

  // Large enough for every layout; the cipher-specific struct is written
  // through the matching uapi type.
  union Storage {
    uapi::CryptoInfo info;
    uapi::CryptoInfoAesGcm128 aes_gcm_128;
    uapi::CryptoInfoAesGcm256 aes_gcm_256;
    uapi::CryptoInfoAesCcm128 aes_ccm_128;
    uapi::CryptoInfoChaCha20Poly1305 chacha20_poly1305;
  } storage_{};
  socklen_t len_ = 0;
};

// PackCryptoInfo builds the crypto_info for one direction.
//
// iv is always the 12-byte per-direction nonce material:
//  - TLS 1.3, every cipher: the IV from the key schedule (RFC 8446 7.3).
//  - TLS 1.2, AES-GCM and AES-CCM: the 4-byte implicit salt from the key
//    block followed by the 8-byte explicit nonce of the first record. The
//    kernel increments that explicit part per record.
//  - TLS 1.2, ChaCha20-Poly1305: the 12-byte IV from the key block (RFC 7905).
// For AES the first 4 bytes become `salt` and the last 8 `iv`; ChaCha20 puts
// all 12 in `iv`. rec_seq is the sequence number of the next record in this
// direction, stored big-endian.
Result<KernelCryptoInfo> PackCryptoInfo(TlsVersion version, Cipher cipher,
                                        std::span<const unsigned char> key,
                                        std::span<const unsigned char> iv,
                                        std::uint64_t rec_seq);

// CryptoInfoSize is sizeof the kernel's crypto_info struct for cipher; the
// kernel insists on exactly this optlen for TLS_TX/TLS_RX, set or get.
socklen_t CryptoInfoSize(Cipher cipher) noexcept;

// CryptoInfoCipherType is the kernel's cipher_type for cipher
// (TLS_CIPHER_AES_GCM_128, ...).
std::uint16_t CryptoInfoCipherType(Cipher cipher) noexcept;

// KeyLength returns the AEAD key length for cipher.
std::size_t KeyLength(Cipher cipher) noexcept;

// kNonceLen: every kernel-supported AEAD uses a 12-byte nonce.
inline constexpr std::size_t kNonceLen = 12;

}  // namespace ktls::detail

#endif  // KTLS_SRC_KERNEL_CRYPTO_INFO_H_
