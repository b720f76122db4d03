// keys/tls13_key_schedule.cc
#include "keys/tls13_key_schedule.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <algorithm>
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

struct MacDeleter {
  void operator()(EVP_MAC* mac) const { EVP_MAC_free(mac); }
  void operator()(EVP_MAC_CTX* ctx) const { EVP_MAC_CTX_free(ctx); }
};
using MacCtx = std::unique_ptr<EVP_MAC_CTX, MacDeleter>;

// HmacTemplate: an HMAC context with the digest already set, made once per
// digest and process. Fetching HMAC and the digest costs property queries
// and locks; a handshake's four derivations dup the template instead (the
// template holds no key, and dup only reads it, from any thread).
const EVP_MAC_CTX* HmacTemplate(const char* digest_name) {
  const auto make = [](const char* digest) -> EVP_MAC_CTX* {
    std::unique_ptr<EVP_MAC, MacDeleter> mac(EVP_MAC_fetch(nullptr, OSSL_MAC_NAME_HMAC, nullptr));
    if (!mac) return nullptr;
    MacCtx ctx(EVP_MAC_CTX_new(mac.get()));
    const OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>(digest), 0),
        OSSL_PARAM_construct_end(),
    };
    if (!ctx || EVP_MAC_CTX_set_params(ctx.get(), params) != 1) return nullptr;
    return ctx.release();  // Kept for the process's life.
  };
  static const EVP_MAC_CTX* const sha256 = make("SHA256");
  static const EVP_MAC_CTX* const sha384 = make("SHA384");
  const std::string_view name = digest_name;
  if (name == "SHA256") return sha256;
  if (name == "SHA384") return sha384;
  return nullptr;
}

// HkdfExpand is RFC 5869's HKDF-Expand: T(i) = HMAC(prk, T(i-1) | info | i).
Result<void> HkdfExpand(const char* digest_name, std::span<const unsigned char> prk,
                        std::span<const unsigned char> info, std::span<unsigned char> out) {
  const EVP_MAC_CTX* tmpl = HmacTemplate(digest_name);
  if (tmpl == nullptr) return OpenSslError(ErrorCategory::kInternal, "HMAC for " + std::string(digest_name));
  std::array<unsigned char, EVP_MAX_MD_SIZE> block;
  std::size_t block_len = 0;
  Result<void> result;
  for (unsigned i = 1; !out.empty(); ++i) {
    const unsigned char counter = static_cast<unsigned char>(i);
    MacCtx ctx(i <= 255 ? EVP_MAC_CTX_dup(tmpl) : nullptr);  // At most 255 blocks (RFC 5869 2.3).
    if (!ctx || EVP_MAC_init(ctx.get(), prk.data(), prk.size(), nullptr) != 1 ||
        EVP_MAC_update(ctx.get(), block.data(), block_len) != 1 ||
        EVP_MAC_update(ctx.get(), info.data(), info.size()) != 1 || EVP_MAC_update(ctx.get(), &counter, 1) != 1 ||
        EVP_MAC_final(ctx.get(), block.data(), &block_len, block.size()) != 1) {
      result = OpenSslError(ErrorCategory::kInternal, "HKDF-Expand-Label");
      break;
    }
    const std::size_t n = std::min(block_len, out.size());
    std::copy_n(block.begin(), n, out.begin());
    out = out.subspan(n);
  }
  OPENSSL_cleanse(block.data(), block.size());  // Key material.
  return result;
}

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

  auto expanded = HkdfExpand(digest_name, secret, std::span(info.data(), info_len), out);
  OPENSSL_cleanse(info.data(), info.size());  // The context may be a transcript hash; cheap to wipe.
  return expanded;
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
