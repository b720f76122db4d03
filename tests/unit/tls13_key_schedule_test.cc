// Key schedule against published and independently generated vectors.
#include "keys/tls13_key_schedule.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/unit/test_vectors.h"

namespace ktls::detail {
namespace {

using ktls::testing::FromHex;
using ktls::testing::ReadVectorBlocks;

std::string Hex(std::span<const unsigned char> bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out += digits[b >> 4];
    out += digits[b & 0xf];
  }
  return out;
}

std::optional<Cipher> CipherByName(const std::string& name) {
  for (Cipher c : kAllCiphers) {
    if (CipherName(c) == name) return c;
  }
  return std::nullopt;
}

// RFC 8448 section 3 (TLS_AES_128_GCM_SHA256): each traffic secret gives
// the published key and IV.
TEST(Tls13KeySchedule, Rfc8448Section3) {
  auto blocks = ReadVectorBlocks(std::string(KTLS_TEST_DATA_DIR) + "/rfc8448-section3.txt");
  ASSERT_EQ(blocks.size(), 1u);
  auto& v = blocks[0];
  for (std::string who : {"client_handshake", "server_handshake", "client_application", "server_application"}) {
    SCOPED_TRACE(who);
    const std::string secret_name =
        who + (who.find("application") != std::string::npos ? "_traffic_secret_0" : "_traffic_secret");
    ASSERT_TRUE(v.count(secret_name)) << secret_name;
    auto secret = FromHex(v[secret_name]);
    auto keys = DeriveTls13TrafficKeys(Cipher::kAes128Gcm, secret);
    ASSERT_TRUE(keys.ok()) << keys.error().ToString();
    EXPECT_EQ(Hex(keys->key.bytes()), v.at(who + "_key"));
    EXPECT_EQ(Hex(keys->iv.bytes()), v.at(who + "_iv"));
  }
}

// RFC 9001 appendix A.5 uses the same HKDF-Expand-Label with other labels
// and a 32-byte output: checks the label encoding and lengths beyond 16.
TEST(Tls13KeySchedule, HkdfExpandLabelRfc9001ChaCha20) {
  auto secret = FromHex("9ac312a7f877468ebe69422748ad00a15443f18203a07d6060f688f30f21632b");
  std::vector<unsigned char> key(32), iv(12), ku(32);
  ASSERT_TRUE(HkdfExpandLabel("SHA256", secret, "quic key", {}, key).ok());
  ASSERT_TRUE(HkdfExpandLabel("SHA256", secret, "quic iv", {}, iv).ok());
  ASSERT_TRUE(HkdfExpandLabel("SHA256", secret, "quic ku", {}, ku).ok());
  EXPECT_EQ(Hex(key), "c6d98ff3441c3fe1b2182094f69caa2ed4b716b65488960a7a984979fb23e1c8");
  EXPECT_EQ(Hex(iv), "e0459b3474bdd0e44a41c144");
  EXPECT_EQ(Hex(ku), "1223504755036d556342ee9361d253421a826c9ecdf3c7148684b36b714881f9");
}

// Every TLS 1.3 suite the kernel carries, including SHA-384 and the 32-byte
// keys, against tests/data/hkdf_reference.py (which reproduces the RFC 8448
// and RFC 9001 values itself before generating these).
TEST(Tls13KeySchedule, EverySuiteAndKeyUpdateAgainstReference) {
  auto blocks = ReadVectorBlocks(std::string(KTLS_TEST_DATA_DIR) + "/tls13_traffic_vectors.txt");
  ASSERT_EQ(blocks.size(), kAllCiphers.size());
  for (auto& v : blocks) {
    SCOPED_TRACE(v.at("cipher"));
    auto cipher = CipherByName(v.at("cipher"));
    ASSERT_TRUE(cipher.has_value());
    auto secret = FromHex(v.at("secret"));
    auto keys = DeriveTls13TrafficKeys(*cipher, secret);
    ASSERT_TRUE(keys.ok()) << keys.error().ToString();
    EXPECT_EQ(Hex(keys->key.bytes()), v.at("key"));
    EXPECT_EQ(Hex(keys->iv.bytes()), v.at("iv"));

    auto next = NextTls13TrafficSecret(*cipher, secret);
    ASSERT_TRUE(next.ok()) << next.error().ToString();
    EXPECT_EQ(Hex(next->bytes()), v.at("next_secret"));
    auto next_keys = DeriveTls13TrafficKeys(*cipher, next->bytes());
    ASSERT_TRUE(next_keys.ok());
    EXPECT_EQ(Hex(next_keys->key.bytes()), v.at("next_key"));
    EXPECT_EQ(Hex(next_keys->iv.bytes()), v.at("next_iv"));
  }
}

TEST(Tls13KeySchedule, RejectsSecretOfWrongLength) {
  std::vector<unsigned char> sha256_sized(32, 0x11);
  auto keys = DeriveTls13TrafficKeys(Cipher::kAes256Gcm, sha256_sized);  // Needs SHA-384: 48 bytes.
  ASSERT_FALSE(keys.ok());
  EXPECT_EQ(keys.error().category, ErrorCategory::kUsage);
  auto next = NextTls13TrafficSecret(Cipher::kAes128Gcm, std::vector<unsigned char>(48, 0x11));
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.error().category, ErrorCategory::kUsage);
}

TEST(Tls13KeySchedule, RejectsOutOfRangeLabelAndLength) {
  std::vector<unsigned char> secret(32, 0x22), out(16);
  EXPECT_EQ(HkdfExpandLabel("SHA256", secret, std::string(250, 'x'), {}, out).error().category,
            ErrorCategory::kUsage);
  std::vector<unsigned char> context(256, 0);
  EXPECT_EQ(HkdfExpandLabel("SHA256", secret, "key", context, out).error().category, ErrorCategory::kUsage);
  std::vector<unsigned char> empty;
  EXPECT_EQ(HkdfExpandLabel("SHA256", secret, "key", {}, empty).error().category, ErrorCategory::kUsage);
}

TEST(Tls13KeySchedule, SuiteParameters) {
  EXPECT_STREQ(Tls13Params(Cipher::kAes256Gcm).digest_name, "SHA384");
  EXPECT_EQ(Tls13Params(Cipher::kAes256Gcm).secret_len, 48u);
  EXPECT_EQ(Tls13Params(Cipher::kChaCha20Poly1305).key_len, 32u);
  EXPECT_EQ(Tls13Params(Cipher::kAes128Ccm).key_len, 16u);
  EXPECT_EQ(CipherFromTls13SuiteId(0x1302), Cipher::kAes256Gcm);
  EXPECT_EQ(CipherFromTls13SuiteId(0x1304), Cipher::kAes128Ccm);
  EXPECT_EQ(CipherFromTls13SuiteId(0x1305), std::nullopt);  // CCM_8: the kernel has no CCM_8.
}

TEST(Secret, WipesOnReassignAndReportsOverflow) {
  std::vector<unsigned char> big(Secret::kCapacity + 1, 0xaa);
  Secret s;
  EXPECT_FALSE(s.Assign(big));
  EXPECT_TRUE(s.empty());
  std::vector<unsigned char> small = {1, 2, 3};
  EXPECT_TRUE(s.Assign(small));
  EXPECT_EQ(s.size(), 3u);
  s.Wipe();
  EXPECT_TRUE(s.empty());
  // After Wipe the storage is zero, not just the length: widen to capacity.
  ASSERT_TRUE(s.Resize(3));
  EXPECT_EQ(s.bytes()[0], 0);
  EXPECT_EQ(s.bytes()[2], 0);
}

}  // namespace
}  // namespace ktls::detail
