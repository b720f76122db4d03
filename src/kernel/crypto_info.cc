// kernel/crypto_info.cc
#include "kernel/crypto_info.h"

#include <openssl/crypto.h>

#include <cstring>

#include "core/errors.h"

namespace ktls::detail {
namespace {

constexpr std::size_t kSaltLen = 4;  // AES-GCM and AES-CCM, both versions.

void StoreBigEndian64(std::uint64_t value, unsigned char out[8]) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<unsigned char>(value & 0xff);
    value >>= 8;
  }
}

// Fill packs an AES-style struct (salt + 8-byte iv).
template <typename Struct>
void FillAes(Struct& s, std::span<const unsigned char> key, std::span<const unsigned char> iv,
             std::uint64_t rec_seq) {
  static_assert(sizeof(s.salt) == kSaltLen && sizeof(s.iv) == kNonceLen - kSaltLen);
  std::memcpy(s.key, key.data(), sizeof(s.key));
  std::memcpy(s.salt, iv.data(), sizeof(s.salt));
  std::memcpy(s.iv, iv.data() + kSaltLen, sizeof(s.iv));
  StoreBigEndian64(rec_seq, s.rec_seq);
}

}  // namespace

socklen_t CryptoInfoSize(Cipher cipher) noexcept {
  switch (cipher) {
    case Cipher::kAes128Gcm: return sizeof(uapi::CryptoInfoAesGcm128);
    case Cipher::kAes256Gcm: return sizeof(uapi::CryptoInfoAesGcm256);
    case Cipher::kChaCha20Poly1305: return sizeof(uapi::CryptoInfoChaCha20Poly1305);
    case Cipher::kAes128Ccm: return sizeof(uapi::CryptoInfoAesCcm128);
  }
  return 0;
}

std::size_t KeyLength(Cipher cipher) noexcept {
  switch (cipher) {
    case Cipher::kAes128Gcm: return uapi::kAesGcm128KeyLen;
    case Cipher::kAes256Gcm: return uapi::kAesGcm256KeyLen;
    case Cipher::kChaCha20Poly1305: return uapi::kChaCha20Poly1305KeyLen;
    case Cipher::kAes128Ccm: return uapi::kAesCcm128KeyLen;
  }
  return 0;
}

KernelCryptoInfo::KernelCryptoInfo(KernelCryptoInfo&& other) noexcept
    : storage_(other.storage_), len_(other.len_) {
  other.Wipe();
}

KernelCryptoInfo& KernelCryptoInfo::operator=(KernelCryptoInfo&& other) noexcept {
  if (this != &other) {
    Wipe();
    storage_ = other.storage_;
    len_ = other.len_;
    other.Wipe();
  }
  return *this;
}

KernelCryptoInfo::~KernelCryptoInfo() { Wipe(); }

void KernelCryptoInfo::Wipe() {
  OPENSSL_cleanse(&storage_, sizeof(storage_));
  len_ = 0;
}

std::span<const unsigned char> KernelCryptoInfo::key() const {
  switch (storage_.info.cipher_type) {
    case uapi::kCipherAesGcm128: return storage_.aes_gcm_128.key;
    case uapi::kCipherAesGcm256: return storage_.aes_gcm_256.key;
    case uapi::kCipherAesCcm128: return storage_.aes_ccm_128.key;
    case uapi::kCipherChaCha20Poly1305: return storage_.chacha20_poly1305.key;
  }
  return {};
}

std::span<const unsigned char> KernelCryptoInfo::salt() const {
  switch (storage_.info.cipher_type) {
    case uapi::kCipherAesGcm128: return storage_.aes_gcm_128.salt;
    case uapi::kCipherAesGcm256: return storage_.aes_gcm_256.salt;
    case uapi::kCipherAesCcm128: return storage_.aes_ccm_128.salt;
  }
  return {};
}

std::span<const unsigned char> KernelCryptoInfo::iv() const {
  switch (storage_.info.cipher_type) {
    case uapi::kCipherAesGcm128: return storage_.aes_gcm_128.iv;
    case uapi::kCipherAesGcm256: return storage_.aes_gcm_256.iv;
    case uapi::kCipherAesCcm128: return storage_.aes_ccm_128.iv;
    case uapi::kCipherChaCha20Poly1305: return storage_.chacha20_poly1305.iv;
  }
  return {};
}

std::span<const unsigned char> KernelCryptoInfo::rec_seq() const {
  switch (storage_.info.cipher_type) {
    case uapi::kCipherAesGcm128: return storage_.aes_gcm_128.rec_seq;
    case uapi::kCipherAesGcm256: return storage_.aes_gcm_256.rec_seq;
    case uapi::kCipherAesCcm128: return storage_.aes_ccm_128.rec_seq;
    case uapi::kCipherChaCha20Poly1305: return storage_.chacha20_poly1305.rec_seq;
  }
  return {};
}

std::uint16_t CryptoInfoCipherType(Cipher cipher) noexcept {
  switch (cipher) {
    case Cipher::kAes128Gcm: return uapi::kCipherAesGcm128;
    case Cipher::kAes256Gcm: return uapi::kCipherAesGcm256;
    case Cipher::kAes128Ccm: return uapi::kCipherAesCcm128;
    case Cipher::kChaCha20Poly1305: return uapi::kCipherChaCha20Poly1305;
  }
  return 0;
}

Result<KernelCryptoInfo> PackCryptoInfo(TlsVersion version, Cipher cipher,
                                        std::span<const unsigned char> key,
                                        std::span<const unsigned char> iv, std::uint64_t rec_seq) {
  if (key.size() != KeyLength(cipher)) {
    return MakeError(ErrorCategory::kUsage, "key length does not match the cipher");
  }
  if (iv.size() != kNonceLen) {
    return MakeError(ErrorCategory::kUsage, "IV must be 12 bytes");
  }
  const uapi::CryptoInfo info_for{version == TlsVersion::kTls13 ? uapi::kTls13Version : uapi::kTls12Version,
                                  CryptoInfoCipherType(cipher)};

  // Each case writes one whole member of the union, `info` included; every
  // member starts with `info`, so reading storage_.info afterwards is valid
  // (common initial sequence).
  KernelCryptoInfo out;
  switch (cipher) {
    case Cipher::kAes128Gcm:
      out.storage_.aes_gcm_128.info = info_for;
      FillAes(out.storage_.aes_gcm_128, key, iv, rec_seq);
      out.len_ = sizeof(uapi::CryptoInfoAesGcm128);
      break;
    case Cipher::kAes256Gcm:
      out.storage_.aes_gcm_256.info = info_for;
      FillAes(out.storage_.aes_gcm_256, key, iv, rec_seq);
      out.len_ = sizeof(uapi::CryptoInfoAesGcm256);
      break;
    case Cipher::kAes128Ccm:
      out.storage_.aes_ccm_128.info = info_for;
      FillAes(out.storage_.aes_ccm_128, key, iv, rec_seq);
      out.len_ = sizeof(uapi::CryptoInfoAesCcm128);
      break;
    case Cipher::kChaCha20Poly1305: {
      auto& s = out.storage_.chacha20_poly1305;
      s.info = info_for;
      std::memcpy(s.key, key.data(), sizeof(s.key));
      std::memcpy(s.iv, iv.data(), sizeof(s.iv));
      StoreBigEndian64(rec_seq, s.rec_seq);
      out.len_ = sizeof(uapi::CryptoInfoChaCha20Poly1305);
      break;
    }
  }
  return out;
}

}  // namespace ktls::detail
