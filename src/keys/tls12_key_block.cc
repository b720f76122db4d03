// keys/tls12_key_block.cc
#include "keys/tls12_key_block.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <array>
#include <memory>

#include "core/errors.h"
#include "kernel/crypto_info.h"

namespace ktls::detail {
namespace {

struct KdfDeleter {
  void operator()(EVP_KDF* kdf) const { EVP_KDF_free(kdf); }
  void operator()(EVP_KDF_CTX* ctx) const { EVP_KDF_CTX_free(ctx); }
};

constexpr char kKeyExpansion[] = "key expansion";
constexpr std::size_t kRandomLen = 32;

}  // namespace

std::size_t Tls12FixedIvLength(Cipher cipher) noexcept { return cipher == Cipher::kChaCha20Poly1305 ? 12 : 4; }

Result<Tls12Keys> DeriveTls12Keys(Cipher cipher, const char* digest_name, std::span<const unsigned char> master_secret,
                                  std::span<const unsigned char> client_random,
                                  std::span<const unsigned char> server_random) {
  if (client_random.size() != kRandomLen || server_random.size() != kRandomLen || master_secret.size() != 48) {
    return MakeError(ErrorCategory::kUsage, "TLS 1.2 key block: master secret must be 48 bytes, randoms 32");
  }
  const std::size_t key_len = KeyLength(cipher);
  const std::size_t iv_len = Tls12FixedIvLength(cipher);
  std::array<unsigned char, sizeof(kKeyExpansion) - 1 + 2 * kRandomLen> seed{};
  std::copy(kKeyExpansion, kKeyExpansion + sizeof(kKeyExpansion) - 1, seed.begin());
  std::copy(server_random.begin(), server_random.end(), seed.begin() + sizeof(kKeyExpansion) - 1);
  std::copy(client_random.begin(), client_random.end(), seed.begin() + sizeof(kKeyExpansion) - 1 + kRandomLen);

  std::unique_ptr<EVP_KDF, KdfDeleter> kdf(EVP_KDF_fetch(nullptr, OSSL_KDF_NAME_TLS1_PRF, nullptr));
  if (!kdf) return OpenSslError(ErrorCategory::kInternal, "EVP_KDF_fetch(TLS1-PRF)");
  std::unique_ptr<EVP_KDF_CTX, KdfDeleter> ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) return OpenSslError(ErrorCategory::kInternal, "EVP_KDF_CTX_new");
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(digest_name), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, const_cast<unsigned char*>(master_secret.data()),
                                        master_secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, seed.data(), seed.size()),
      OSSL_PARAM_construct_end(),
  };
  // At most 2 * (32 + 12) bytes; wiped before returning.
  std::array<unsigned char, 2 * (32 + 12)> block{};
  const std::size_t block_len = 2 * (key_len + iv_len);
  const int ok = EVP_KDF_derive(ctx.get(), block.data(), block_len, params);
  Tls12Keys keys;
  if (ok == 1) {
    const std::span<const unsigned char> bytes(block.data(), block_len);
    keys.client_key.Assign(bytes.subspan(0, key_len));
    keys.server_key.Assign(bytes.subspan(key_len, key_len));
    keys.client_iv.Assign(bytes.subspan(2 * key_len, iv_len));
    keys.server_iv.Assign(bytes.subspan(2 * key_len + iv_len, iv_len));
  }
  OPENSSL_cleanse(block.data(), block.size());
  if (ok != 1) return OpenSslError(ErrorCategory::kInternal, "TLS 1.2 PRF");
  return keys;
}

}  // namespace ktls::detail
