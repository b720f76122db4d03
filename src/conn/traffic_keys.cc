// conn/traffic_keys.cc
#include "conn/traffic_keys.h"

#include <cstring>

#include "kernel/tls_uapi.h"
#include "keys/tls13_key_schedule.h"

namespace ktls::detail {

Result<KernelCryptoInfo> PackTls13Direction(Cipher cipher, const Secret& secret, std::uint64_t rec_seq) {
  auto keys = DeriveTls13TrafficKeys(cipher, secret.bytes());
  if (!keys.ok()) return std::move(keys).error();
  return PackCryptoInfo(TlsVersion::kTls13, cipher, keys->key.bytes(), keys->iv.bytes(), rec_seq);
}

std::uint64_t DefaultKeyUpdateThreshold(Cipher cipher) noexcept {
  switch (cipher) {
    case Cipher::kAes128Gcm:
    case Cipher::kAes256Gcm:
      return std::uint64_t{1} << 24;
    case Cipher::kAes128Ccm:
      return std::uint64_t{1} << 21;
    case Cipher::kChaCha20Poly1305:
      return 0;
  }
  return 0;
}

std::optional<std::uint64_t> RecSeqOf(const unsigned char* info, std::size_t len) {
  if (len < sizeof(uapi::CryptoInfo)) return std::nullopt;
  uapi::CryptoInfo header;
  std::memcpy(&header, info, sizeof(header));
  std::size_t offset = 0;
  switch (header.cipher_type) {
    case uapi::kCipherAesGcm128: offset = offsetof(uapi::CryptoInfoAesGcm128, rec_seq); break;
    case uapi::kCipherAesGcm256: offset = offsetof(uapi::CryptoInfoAesGcm256, rec_seq); break;
    case uapi::kCipherAesCcm128: offset = offsetof(uapi::CryptoInfoAesCcm128, rec_seq); break;
    case uapi::kCipherChaCha20Poly1305: offset = offsetof(uapi::CryptoInfoChaCha20Poly1305, rec_seq); break;
    default: return std::nullopt;
  }
  if (offset + 8 > len) return std::nullopt;
  std::uint64_t seq = 0;
  for (std::size_t i = 0; i < 8; ++i) seq = seq << 8 | info[offset + i];
  return seq;
}

}  // namespace ktls::detail
