// Packing keys into the kernel's crypto_info structs.
#include "kernel/crypto_info.h"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "kernel/tls_uapi.h"

#if __has_include(<linux/tls.h>)
#include <linux/tls.h>
#define KTLS_HAVE_SYSTEM_TLS_H 1
#endif

namespace ktls::detail {
namespace {

#if defined(KTLS_HAVE_SYSTEM_TLS_H)
// Our own copy of the ABI must agree with the system's uapi header where
// one is installed (it is not needed to build ktls).
static_assert(uapi::kTlsTx == TLS_TX && uapi::kTlsRx == TLS_RX);
static_assert(uapi::kTlsSetRecordType == TLS_SET_RECORD_TYPE);
static_assert(uapi::kTlsGetRecordType == TLS_GET_RECORD_TYPE);
static_assert(uapi::kTls12Version == TLS_1_2_VERSION && uapi::kTls13Version == TLS_1_3_VERSION);
static_assert(uapi::kCipherAesGcm128 == TLS_CIPHER_AES_GCM_128);
static_assert(uapi::kCipherAesGcm256 == TLS_CIPHER_AES_GCM_256);
static_assert(uapi::kCipherAesCcm128 == TLS_CIPHER_AES_CCM_128);
static_assert(uapi::kCipherChaCha20Poly1305 == TLS_CIPHER_CHACHA20_POLY1305);
static_assert(sizeof(uapi::CryptoInfoAesGcm128) == sizeof(tls12_crypto_info_aes_gcm_128));
static_assert(sizeof(uapi::CryptoInfoAesGcm256) == sizeof(tls12_crypto_info_aes_gcm_256));
static_assert(sizeof(uapi::CryptoInfoAesCcm128) == sizeof(tls12_crypto_info_aes_ccm_128));
static_assert(sizeof(uapi::CryptoInfoChaCha20Poly1305) == sizeof(tls12_crypto_info_chacha20_poly1305));
static_assert(offsetof(uapi::CryptoInfoAesGcm128, rec_seq) == offsetof(tls12_crypto_info_aes_gcm_128, rec_seq));
static_assert(offsetof(uapi::CryptoInfoAesGcm256, salt) == offsetof(tls12_crypto_info_aes_gcm_256, salt));
static_assert(offsetof(uapi::CryptoInfoChaCha20Poly1305, rec_seq) ==
              offsetof(tls12_crypto_info_chacha20_poly1305, rec_seq));
#endif

std::vector<unsigned char> Iota(std::size_t n, unsigned char first) {
  std::vector<unsigned char> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

std::vector<unsigned char> ToVector(std::span<const unsigned char> s) { return {s.begin(), s.end()}; }

TEST(PackCryptoInfo, Tls13AesSplitsIvIntoSaltAndIv) {
  const auto key = Iota(16, 0x10);
  const auto iv = Iota(12, 0xa0);  // a0 a1 ... ab
  auto info = PackCryptoInfo(TlsVersion::kTls13, Cipher::kAes128Gcm, key, iv, 0x0102030405060708ULL);
  ASSERT_TRUE(info.ok()) << info.error().ToString();
  EXPECT_EQ(info->size(), sizeof(uapi::CryptoInfoAesGcm128));
  EXPECT_EQ(info->version(), 0x0304);
  EXPECT_EQ(info->cipher_type(), 51);
  EXPECT_EQ(ToVector(info->key()), key);
  EXPECT_EQ(ToVector(info->salt()), (std::vector<unsigned char>{0xa0, 0xa1, 0xa2, 0xa3}));
  EXPECT_EQ(ToVector(info->iv()), (std::vector<unsigned char>{0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab}));
  EXPECT_EQ(ToVector(info->rec_seq()), (std::vector<unsigned char>{1, 2, 3, 4, 5, 6, 7, 8}));  // Big-endian.
}

TEST(PackCryptoInfo, ChaChaTakesAllTwelveIvBytes) {
  const auto key = Iota(32, 0x40);
  const auto iv = Iota(12, 0xc0);
  auto info = PackCryptoInfo(TlsVersion::kTls13, Cipher::kChaCha20Poly1305, key, iv, 5);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->size(), 56u);
  EXPECT_EQ(info->cipher_type(), 54);
  EXPECT_EQ(ToVector(info->iv()), iv);
  EXPECT_TRUE(info->salt().empty());
  EXPECT_EQ(ToVector(info->key()), key);
  EXPECT_EQ(info->rec_seq().back(), 5);
}

TEST(PackCryptoInfo, EveryCipherAndVersionHasTheKernelLayout) {
  struct Expected {
    Cipher cipher;
    std::uint16_t type;
    socklen_t size;
  };
  for (auto e : {Expected{Cipher::kAes128Gcm, 51, 40}, Expected{Cipher::kAes256Gcm, 52, 56},
                 Expected{Cipher::kAes128Ccm, 53, 40}, Expected{Cipher::kChaCha20Poly1305, 54, 56}}) {
    for (TlsVersion version : kAllVersions) {
      SCOPED_TRACE(std::string(CipherName(e.cipher)) + " TLS " + std::string(TlsVersionName(version)));
      const auto key = Iota(KeyLength(e.cipher), 1);
      const auto iv = Iota(12, 100);
      auto info = PackCryptoInfo(version, e.cipher, key, iv, 0);
      ASSERT_TRUE(info.ok());
      EXPECT_EQ(info->cipher_type(), e.type);
      EXPECT_EQ(info->size(), e.size);
      EXPECT_EQ(info->version(), version == TlsVersion::kTls13 ? 0x0304 : 0x0303);
      EXPECT_EQ(ToVector(info->key()), key);
      EXPECT_EQ(ToVector(info->rec_seq()), std::vector<unsigned char>(8, 0));
    }
  }
}

TEST(PackCryptoInfo, RejectsWrongKeyOrIvLength) {
  const auto iv = Iota(12, 0);
  auto short_key = PackCryptoInfo(TlsVersion::kTls13, Cipher::kAes256Gcm, Iota(16, 0), iv, 0);
  ASSERT_FALSE(short_key.ok());
  EXPECT_EQ(short_key.error().category, ErrorCategory::kUsage);
  auto short_iv = PackCryptoInfo(TlsVersion::kTls13, Cipher::kAes128Gcm, Iota(16, 0), Iota(8, 0), 0);
  ASSERT_FALSE(short_iv.ok());
  EXPECT_EQ(short_iv.error().category, ErrorCategory::kUsage);
}

TEST(PackCryptoInfo, MovedFromIsWipedAndEmpty) {
  auto info = PackCryptoInfo(TlsVersion::kTls13, Cipher::kAes128Gcm, Iota(16, 0x55), Iota(12, 0), 0);
  ASSERT_TRUE(info.ok());
  KernelCryptoInfo moved = std::move(info).value();
  EXPECT_EQ(moved.size(), 40u);
  EXPECT_EQ(moved.key()[0], 0x55);
  KernelCryptoInfo target;
  target = std::move(moved);
  EXPECT_EQ(moved.size(), 0u);  // NOLINT(bugprone-use-after-move): checking the wipe.
  EXPECT_TRUE(moved.key().empty());
  EXPECT_EQ(target.key()[1], 0x56);
}

}  // namespace
}  // namespace ktls::detail
