// tests/support/record_codec.cc
#include "tests/support/record_codec.h"

#include <openssl/evp.h>

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>

namespace ktls::testing {
namespace {

constexpr std::uint8_t kLegacyVersionMajor = 0x03;  // 0x0303 on every record we write.
constexpr std::uint8_t kLegacyVersionMinor = 0x03;
constexpr std::size_t kSaltLen = 4;                 // TLS 1.2 AES: iv[0..4] is the salt.
constexpr std::size_t kTls12AadLen = 13;            // seq(8) || type || version(2) || length(2)
// RFC 8446 5.2: a TLS 1.3 ciphertext is at most 2^14 + 256 bytes.
constexpr std::size_t kMaxTls13CiphertextLen = kMaxPlaintextLen + 256;

struct CipherCtxDeleter {
  void operator()(EVP_CIPHER_CTX* ctx) const { EVP_CIPHER_CTX_free(ctx); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter>;

[[noreturn]] void Fail(const std::string& what) {
  throw std::runtime_error("record_codec: " + what);
}

const EVP_CIPHER* EvpCipher(Cipher cipher) {
  switch (cipher) {
    case Cipher::kAes128Gcm: return EVP_aes_128_gcm();
    case Cipher::kAes256Gcm: return EVP_aes_256_gcm();
    case Cipher::kChaCha20Poly1305: return EVP_chacha20_poly1305();
    case Cipher::kAes128Ccm: return EVP_aes_128_ccm();
  }
  Fail("unknown cipher");
}

bool IsCcm(Cipher cipher) { return cipher == Cipher::kAes128Ccm; }

int AsInt(std::size_t len) { return static_cast<int>(len); }

void StoreBigEndian64(std::uint64_t value, std::uint8_t* out) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<std::uint8_t>(value & 0xff);
    value >>= 8;
  }
}

std::uint64_t LoadBigEndian64(const std::uint8_t* in) {
  std::uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = (value << 8) | in[i];
  return value;
}

// SeqNonce: iv XOR the sequence number left-padded to 12 bytes (RFC 8446
// 5.3, RFC 7905 2).
std::array<std::uint8_t, kAeadNonceLen> SeqNonce(const std::array<std::uint8_t, kAeadNonceLen>& iv,
                                                 std::uint64_t seq) {
  std::array<std::uint8_t, kAeadNonceLen> nonce = iv;
  std::array<std::uint8_t, 8> seq_bytes{};
  StoreBigEndian64(seq, seq_bytes.data());
  for (std::size_t i = 0; i < seq_bytes.size(); ++i) nonce[4 + i] ^= seq_bytes[i];
  return nonce;
}

// SaltNonce: salt || explicit nonce (RFC 5288 3, RFC 6655 3).
std::array<std::uint8_t, kAeadNonceLen> SaltNonce(const std::array<std::uint8_t, kAeadNonceLen>& iv,
                                                  std::uint64_t explicit_nonce) {
  std::array<std::uint8_t, kAeadNonceLen> nonce{};
  std::copy_n(iv.begin(), kSaltLen, nonce.begin());
  StoreBigEndian64(explicit_nonce, nonce.data() + kSaltLen);
  return nonce;
}

// Tls12Aad: seq_num || type || version || length (RFC 5246 6.2.3.3).
std::array<std::uint8_t, kTls12AadLen> Tls12Aad(std::uint64_t seq, std::uint8_t content_type,
                                                std::size_t plaintext_len) {
  std::array<std::uint8_t, kTls12AadLen> aad{};
  StoreBigEndian64(seq, aad.data());
  aad[8] = content_type;
  aad[9] = kLegacyVersionMajor;
  aad[10] = kLegacyVersionMinor;
  aad[11] = static_cast<std::uint8_t>(plaintext_len >> 8);
  aad[12] = static_cast<std::uint8_t>(plaintext_len & 0xff);
  return aad;
}

std::array<std::uint8_t, kRecordHeaderLen> Header(std::uint8_t content_type, std::size_t fragment_len) {
  return {content_type, kLegacyVersionMajor, kLegacyVersionMinor,
          static_cast<std::uint8_t>(fragment_len >> 8), static_cast<std::uint8_t>(fragment_len & 0xff)};
}

void CheckKeyAndNonce(Cipher cipher, std::span<const std::uint8_t> key,
                      std::span<const std::uint8_t> nonce) {
  if (key.size() != static_cast<std::size_t>(EVP_CIPHER_get_key_length(EvpCipher(cipher)))) {
    Fail("key length does not match the cipher");
  }
  if (nonce.size() != kAeadNonceLen) Fail("nonce must be 12 bytes");
}

// InitAead starts ctx for one operation. CCM needs the nonce length and the
// tag (its length when encrypting, its value when decrypting) before the key.
void InitAead(EVP_CIPHER_CTX* ctx, bool encrypt, Cipher cipher, std::span<const std::uint8_t> key,
              std::span<const std::uint8_t> nonce, std::uint8_t* ccm_expected_tag) {
  const int enc = encrypt ? 1 : 0;
  if (EVP_CipherInit_ex(ctx, EvpCipher(cipher), nullptr, nullptr, nullptr, enc) != 1) Fail("CipherInit");
  if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, AsInt(kAeadNonceLen), nullptr) != 1) {
    Fail("SET_IVLEN");
  }
  if (IsCcm(cipher) &&
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, AsInt(kAeadTagLen), ccm_expected_tag) != 1) {
    Fail("SET_TAG (CCM)");
  }
  if (EVP_CipherInit_ex(ctx, nullptr, nullptr, key.data(), nonce.data(), enc) != 1) Fail("CipherInit key");
}

}  // namespace

std::vector<std::uint8_t> AeadSeal(Cipher cipher, std::span<const std::uint8_t> key,
                                   std::span<const std::uint8_t> nonce,
                                   std::span<const std::uint8_t> aad,
                                   std::span<const std::uint8_t> plaintext) {
  CheckKeyAndNonce(cipher, key, nonce);
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) Fail("EVP_CIPHER_CTX_new");
  InitAead(ctx.get(), true, cipher, key, nonce, nullptr);

  int len = 0;
  // CCM must know the plaintext length before the AAD.
  if (IsCcm(cipher) &&
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, nullptr, AsInt(plaintext.size())) != 1) {
    Fail("EncryptUpdate (CCM length)");
  }
  if (!aad.empty() && EVP_EncryptUpdate(ctx.get(), nullptr, &len, aad.data(), AsInt(aad.size())) != 1) {
    Fail("EncryptUpdate (AAD)");
  }
  // One spare byte so data() is never null: CCM must see an update call with
  // a non-null input even for an empty plaintext, or it skips the tag.
  std::vector<std::uint8_t> out(plaintext.size() + kAeadTagLen + 1);
  const std::uint8_t empty_input = 0;
  const std::uint8_t* in = plaintext.empty() ? &empty_input : plaintext.data();
  int out_len = 0;
  if (EVP_EncryptUpdate(ctx.get(), out.data(), &out_len, in, AsInt(plaintext.size())) != 1) {
    Fail("EncryptUpdate");
  }
  int final_len = 0;
  if (EVP_EncryptFinal_ex(ctx.get(), out.data() + out_len, &final_len) != 1) Fail("EncryptFinal");
  if (static_cast<std::size_t>(out_len + final_len) != plaintext.size()) Fail("short AEAD output");
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_GET_TAG, AsInt(kAeadTagLen),
                          out.data() + plaintext.size()) != 1) {
    Fail("GET_TAG");
  }
  out.resize(plaintext.size() + kAeadTagLen);
  return out;
}

std::optional<std::vector<std::uint8_t>> AeadOpen(Cipher cipher, std::span<const std::uint8_t> key,
                                                  std::span<const std::uint8_t> nonce,
                                                  std::span<const std::uint8_t> aad,
                                                  std::span<const std::uint8_t> ciphertext_and_tag) {
  CheckKeyAndNonce(cipher, key, nonce);
  if (ciphertext_and_tag.size() < kAeadTagLen) return std::nullopt;
  const std::size_t ciphertext_len = ciphertext_and_tag.size() - kAeadTagLen;
  std::array<std::uint8_t, kAeadTagLen> tag{};
  std::copy_n(ciphertext_and_tag.begin() + static_cast<std::ptrdiff_t>(ciphertext_len), kAeadTagLen,
              tag.begin());

  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) Fail("EVP_CIPHER_CTX_new");
  InitAead(ctx.get(), false, cipher, key, nonce, tag.data());

  int len = 0;
  if (IsCcm(cipher) &&
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, nullptr, AsInt(ciphertext_len)) != 1) {
    Fail("DecryptUpdate (CCM length)");
  }
  if (!aad.empty() && EVP_DecryptUpdate(ctx.get(), nullptr, &len, aad.data(), AsInt(aad.size())) != 1) {
    Fail("DecryptUpdate (AAD)");
  }
  std::vector<std::uint8_t> out(ciphertext_len + 1);
  int out_len = 0;
  // CCM verifies the tag inside this call; GCM and ChaCha20 in Final.
  if (EVP_DecryptUpdate(ctx.get(), out.data(), &out_len, ciphertext_and_tag.data(),
                        AsInt(ciphertext_len)) != 1) {
    return std::nullopt;
  }
  if (!IsCcm(cipher)) {
    if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, AsInt(kAeadTagLen), tag.data()) != 1) {
      Fail("SET_TAG");
    }
    int final_len = 0;
    if (EVP_DecryptFinal_ex(ctx.get(), out.data() + out_len, &final_len) != 1) return std::nullopt;
    out_len += final_len;
  }
  if (static_cast<std::size_t>(out_len) != ciphertext_len) Fail("short AEAD output");
  out.resize(ciphertext_len);
  return out;
}

bool HasExplicitNonce(TlsVersion version, Cipher cipher) {
  return version == TlsVersion::kTls12 && cipher != Cipher::kChaCha20Poly1305;
}

std::size_t RecordOverhead(TlsVersion version, Cipher cipher) {
  if (version == TlsVersion::kTls13) return kRecordHeaderLen + 1 + kAeadTagLen;
  return kRecordHeaderLen + (HasExplicitNonce(version, cipher) ? kTls12ExplicitNonceLen : 0) + kAeadTagLen;
}

RecordKeys MakeRecordKeys(TlsVersion version, Cipher cipher, std::span<const std::uint8_t> key,
                          std::span<const std::uint8_t> iv, std::uint64_t seq) {
  if (key.size() != static_cast<std::size_t>(EVP_CIPHER_get_key_length(EvpCipher(cipher)))) {
    Fail("key length does not match the cipher");
  }
  if (iv.size() != kAeadNonceLen) Fail("iv must be 12 bytes");
  RecordKeys keys;
  keys.version = version;
  keys.cipher = cipher;
  keys.key.assign(key.begin(), key.end());
  std::copy(iv.begin(), iv.end(), keys.iv.begin());
  keys.seq = seq;
  if (HasExplicitNonce(version, cipher)) keys.explicit_nonce = LoadBigEndian64(iv.data() + kSaltLen);
  return keys;
}

std::vector<std::uint8_t> SealRecord(RecordKeys& keys, std::uint8_t content_type,
                                     std::span<const std::uint8_t> plaintext,
                                     std::size_t tls13_padding_len) {
  if (plaintext.size() > kMaxPlaintextLen) Fail("plaintext longer than 2^14 bytes");
  std::vector<std::uint8_t> record;

  if (keys.version == TlsVersion::kTls13) {
    // TLSInnerPlaintext = content || type || zeros (RFC 8446 5.2).
    std::vector<std::uint8_t> inner(plaintext.begin(), plaintext.end());
    inner.push_back(content_type);
    inner.resize(inner.size() + tls13_padding_len, 0);
    const std::size_t fragment_len = inner.size() + kAeadTagLen;
    if (fragment_len > kMaxTls13CiphertextLen) Fail("TLS 1.3 record too long with this padding");
    const auto header = Header(kContentApplicationData, fragment_len);
    const auto nonce = SeqNonce(keys.iv, keys.seq);
    const std::vector<std::uint8_t> body = AeadSeal(keys.cipher, keys.key, nonce, header, inner);
    record.assign(header.begin(), header.end());
    record.insert(record.end(), body.begin(), body.end());
  } else {
    const auto aad = Tls12Aad(keys.seq, content_type, plaintext.size());
    std::vector<std::uint8_t> fragment;
    std::array<std::uint8_t, kAeadNonceLen> nonce{};
    if (HasExplicitNonce(keys.version, keys.cipher)) {
      nonce = SaltNonce(keys.iv, keys.explicit_nonce);
      fragment.assign(nonce.begin() + kSaltLen, nonce.end());  // The explicit part goes on the wire.
      ++keys.explicit_nonce;
    } else {
      nonce = SeqNonce(keys.iv, keys.seq);
    }
    const std::vector<std::uint8_t> body = AeadSeal(keys.cipher, keys.key, nonce, aad, plaintext);
    fragment.insert(fragment.end(), body.begin(), body.end());
    const auto header = Header(content_type, fragment.size());
    record.assign(header.begin(), header.end());
    record.insert(record.end(), fragment.begin(), fragment.end());
  }
  ++keys.seq;
  return record;
}

std::optional<OpenedRecord> OpenRecord(RecordKeys& keys, std::span<const std::uint8_t> record) {
  if (record.size() < kRecordHeaderLen) return std::nullopt;
  const std::size_t fragment_len = (static_cast<std::size_t>(record[3]) << 8) | record[4];
  if (fragment_len != record.size() - kRecordHeaderLen) return std::nullopt;
  if (record[1] != kLegacyVersionMajor || record[2] != kLegacyVersionMinor) return std::nullopt;
  const std::span<const std::uint8_t> header = record.first(kRecordHeaderLen);
  const std::span<const std::uint8_t> fragment = record.subspan(kRecordHeaderLen);

  OpenedRecord opened;
  if (keys.version == TlsVersion::kTls13) {
    if (record[0] != kContentApplicationData) return std::nullopt;
    if (fragment_len > kMaxTls13CiphertextLen) return std::nullopt;
    auto inner = AeadOpen(keys.cipher, keys.key, SeqNonce(keys.iv, keys.seq), header, fragment);
    if (!inner) return std::nullopt;
    // Strip the zero padding; the last non-zero byte is the real type.
    while (!inner->empty() && inner->back() == 0) inner->pop_back();
    if (inner->empty()) return std::nullopt;
    opened.content_type = inner->back();
    inner->pop_back();
    opened.plaintext = std::move(*inner);
  } else {
    std::array<std::uint8_t, kAeadNonceLen> nonce{};
    std::span<const std::uint8_t> sealed = fragment;
    if (HasExplicitNonce(keys.version, keys.cipher)) {
      if (fragment.size() < kTls12ExplicitNonceLen + kAeadTagLen) return std::nullopt;
      opened.explicit_nonce = LoadBigEndian64(fragment.data());
      nonce = SaltNonce(keys.iv, opened.explicit_nonce);
      sealed = fragment.subspan(kTls12ExplicitNonceLen);
    } else {
      if (fragment.size() < kAeadTagLen) return std::nullopt;
      nonce = SeqNonce(keys.iv, keys.seq);
    }
    const auto aad = Tls12Aad(keys.seq, record[0], sealed.size() - kAeadTagLen);
    auto plaintext = AeadOpen(keys.cipher, keys.key, nonce, aad, sealed);
    if (!plaintext) return std::nullopt;
    opened.content_type = record[0];
    opened.plaintext = std::move(*plaintext);
  }
  if (opened.plaintext.size() > kMaxPlaintextLen) return std::nullopt;
  ++keys.seq;
  return opened;
}

void RecordSplitter::Feed(std::span<const std::uint8_t> bytes) {
  // Drop what was already popped before growing, so the buffer stays small.
  if (start_ > 0 && start_ >= buffer_.size() / 2) {
    buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(start_));
    start_ = 0;
  }
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
}

std::optional<std::vector<std::uint8_t>> RecordSplitter::Pop() {
  if (buffered_len() < kRecordHeaderLen) return std::nullopt;
  const std::uint8_t* header = buffer_.data() + start_;
  const std::size_t record_len =
      kRecordHeaderLen + ((static_cast<std::size_t>(header[3]) << 8) | header[4]);
  if (buffered_len() < record_len) return std::nullopt;
  const auto first = buffer_.begin() + static_cast<std::ptrdiff_t>(start_);
  std::vector<std::uint8_t> record(first, first + static_cast<std::ptrdiff_t>(record_len));
  start_ += record_len;
  return record;
}

}  // namespace ktls::testing
