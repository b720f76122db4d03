// keys/tls13_key_schedule.cc
#include "keys/tls13_key_schedule.h"

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <array>
#include <memory>
#include <string>

#include "core/errors.h"

namespace ktls::detail {
namespace {

constexpr std::string_view kLabelPrefix = "tls13 ";

// HkdfLabel encoding bounds (RFC 8446 section 7.1): label<7..255>,
// context<0..255>, and a 16-bit length.
constexpr std::size_t kMaxLabelLen = 255;
constexpr std::size_t kMaxContextLen = 255;

struct KdfDeleter {
  void operator()(EVP_KDF* kdf) const { EVP_KDF_free(kdf); }
  void operator()(EVP_KDF_CTX* ctx) const { EVP_KDF_CTX_free(ctx); }
};

}  // namespace

const Tls13SuiteParams& Tls13Params(Cipher cipher) noexcept {
  // RFC 8446 appendix B.4; key lengths from each AEAD's definition.
  static constexpr Tls13SuiteParams kAes128Gcm{Cipher::kAes128Gcm, "SHA256", 32, 16, 12};
  static constexpr Tls13SuiteParams kAes256Gcm{Cipher::kAes256Gcm, "SHA384", 48, 32, 12};
  static constexpr Tls13SuiteParams kChaCha{Cipher::kChaCha20Poly1305, "SHA256", 32, 32, 12};
  static constexpr Tls13SuiteParams kAes128Ccm{Cipher::kAes128Ccm, "SHA256", 32, 16, 12};
  switch (cipher) {
    case Cipher::kAes128Gcm: return kAes128Gcm;
    case Cipher::kAes256Gcm: return kAes256Gcm;
    case Cipher::kChaCha20Poly1305: return kChaCha;
    case Cipher::kAes128Ccm: return kAes128Ccm;
  }
  return kAes128Gcm;
}

Result<void> HkdfExpandLabel(const char* digest_name, std::span<const unsigned char> secret,
                             std::string_view label, std::span<const unsigned char> context,
                             std::span<unsigned char> out) {
  const std::size_t full_label_len = kLabelPrefix.size() + label.size();
  if (full_label_len > kMaxLabelLen || context.size() > kMaxContextLen ||
      out.size() > 0xffff || out.empty()) {
    return MakeError(ErrorCategory::kUsage, "HKDF-Expand-Label: label, context or length out of range");
  }

  // struct HkdfLabel { uint16 length; opaque label<7..255>; opaque context<0..255>; }
  std::array<unsigned char, 2 + 1 + kMaxLabelLen + 1 + kMaxContextLen> info{};
  std::size_t info_len = 0;
  info[info_len++] = static_cast<unsigned char>(out.size() >> 8);
  info[info_len++] = static_cast<unsigned char>(out.size());
  info[info_len++] = static_cast<unsigned char>(full_label_len);
  for (char c : kLabelPrefix) info[info_len++] = static_cast<unsigned char>(c);
  for (char c : label) info[info_len++] = static_cast<unsigned char>(c);
  info[info_len++] = static_cast<unsigned char>(context.size());
  for (unsigned char c : context) info[info_len++] = c;

  std::unique_ptr<EVP_KDF, KdfDeleter> kdf(EVP_KDF_fetch(nullptr, OSSL_KDF_NAME_HKDF, nullptr));
  if (!kdf) return OpenSslError(ErrorCategory::kInternal, "EVP_KDF_fetch(HKDF)");
  std::unique_ptr<EVP_KDF_CTX, KdfDeleter> ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) return OpenSslError(ErrorCategory::kInternal, "EVP_KDF_CTX_new");

  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(digest_name), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
                                        const_cast<unsigned char*>(secret.data()), secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info_len),
      OSSL_PARAM_construct_end(),
  };
  const int ok = EVP_KDF_derive(ctx.get(), out.data(), out.size(), params);
  OPENSSL_cleanse(info.data(), info.size());  // The context may be a transcript hash; cheap to wipe.
  if (ok != 1) return OpenSslError(ErrorCategory::kInternal, "HKDF-Expand-Label");
  return {};
}

Result<TrafficKeys> DeriveTls13TrafficKeys(Cipher cipher,
                                           std::span<const unsigned char> traffic_secret) {
  const Tls13SuiteParams& params = Tls13Params(cipher);
  if (traffic_secret.size() != params.secret_len) {
    return MakeError(ErrorCategory::kUsage, "traffic secret length does not match the suite's hash");
  }
  TrafficKeys keys;
  keys.key.Resize(params.key_len);
  keys.iv.Resize(params.iv_len);
  if (auto r = HkdfExpandLabel(params.digest_name, traffic_secret, "key", {}, keys.key.mutable_bytes()); !r) {
    return std::move(r).error();
  }
  if (auto r = HkdfExpandLabel(params.digest_name, traffic_secret, "iv", {}, keys.iv.mutable_bytes()); !r) {
    return std::move(r).error();
  }
  return keys;
}

Result<Secret> NextTls13TrafficSecret(Cipher cipher, std::span<const unsigned char> traffic_secret) {
  const Tls13SuiteParams& params = Tls13Params(cipher);
  if (traffic_secret.size() != params.secret_len) {
    return MakeError(ErrorCategory::kUsage, "traffic secret length does not match the suite's hash");
  }
  Secret next;
  next.Resize(params.secret_len);
  if (auto r = HkdfExpandLabel(params.digest_name, traffic_secret, "traffic upd", {}, next.mutable_bytes()); !r) {
    return std::move(r).error();
  }
  return next;
}

}  // namespace ktls::detail
