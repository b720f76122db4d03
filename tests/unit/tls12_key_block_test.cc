// TLS 1.2 key block against an independent reference (tests/data/
// tls12_prf_reference.py, which first reproduces the published TLS 1.2 PRF
// test vector).
#include "keys/tls12_key_block.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/unit/test_vectors.h"

namespace ktls::detail {
namespace {

using ktls::testing::FromHex;

std::string Hex(std::span<const unsigned char> bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out += digits[b >> 4];
    out += digits[b & 0xf];
  }
  return out;
}

TEST(Tls12KeyBlock, EveryKernelCipherAgainstReference) {
  auto blocks = ktls::testing::ReadVectorBlocks(std::string(KTLS_TEST_DATA_DIR) + "/tls12_key_block_vectors.txt");
  ASSERT_EQ(blocks.size(), 4u);
  for (auto& v : blocks) {
    SCOPED_TRACE(v.at("cipher"));
    std::optional<Cipher> cipher;
    for (Cipher c : kAllCiphers) {
      if (CipherName(c) == v.at("cipher")) cipher = c;
    }
    ASSERT_TRUE(cipher.has_value());
    const std::string digest = v.at("prf_hash") == "sha384" ? "SHA384" : "SHA256";
    auto keys = DeriveTls12Keys(*cipher, digest.c_str(), FromHex(v.at("master")), FromHex(v.at("client_random")),
                                FromHex(v.at("server_random")));
    ASSERT_TRUE(keys.ok()) << keys.error().ToString();
    EXPECT_EQ(Hex(keys->client_key.bytes()), v.at("client_key"));
    EXPECT_EQ(Hex(keys->server_key.bytes()), v.at("server_key"));
    EXPECT_EQ(Hex(keys->client_iv.bytes()), v.at("client_iv"));
    EXPECT_EQ(Hex(keys->server_iv.bytes()), v.at("server_iv"));
  }
}

TEST(Tls12KeyBlock, RejectsWrongLengths) {
  std::vector<unsigned char> master(47, 1), random(32, 2);
  auto keys = DeriveTls12Keys(Cipher::kAes128Gcm, "SHA256", master, random, random);
  ASSERT_FALSE(keys.ok());
  EXPECT_EQ(keys.error().category, ErrorCategory::kUsage);
}

TEST(Tls12KeyBlock, FixedIvLengths) {
  EXPECT_EQ(Tls12FixedIvLength(Cipher::kAes128Gcm), 4u);
  EXPECT_EQ(Tls12FixedIvLength(Cipher::kAes128Ccm), 4u);
  EXPECT_EQ(Tls12FixedIvLength(Cipher::kChaCha20Poly1305), 12u);
}

}  // namespace
}  // namespace ktls::detail
