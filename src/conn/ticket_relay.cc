// conn/ticket_relay.cc
#include "conn/ticket_relay.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include <algorithm>
#include <array>

#include "core/errors.h"
#include "keys/tls13_key_schedule.h"

namespace ktls::detail {
namespace {

constexpr unsigned char kRecordHandshake = 22;
constexpr unsigned char kRecordApplicationData = 23;  // TLS 1.3's outer type.
constexpr std::size_t kRecordHeaderLen = 5;
constexpr std::size_t kTagLen = 16;
constexpr std::size_t kNonceLen = 12;
constexpr std::size_t kMaxFragmentLen = 16 * 1024;  // RFC 8446 5.1.

const EVP_CIPHER* AeadFor(Cipher cipher) {
  switch (cipher) {
    case Cipher::kAes128Gcm: return EVP_aes_128_gcm();
    case Cipher::kAes256Gcm: return EVP_aes_256_gcm();
    case Cipher::kChaCha20Poly1305: return EVP_chacha20_poly1305();
    case Cipher::kAes128Ccm: return EVP_aes_128_ccm();
  }
  return nullptr;
}

struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* ctx) const { EVP_CIPHER_CTX_free(ctx); }
};

}  // namespace

Result<std::unique_ptr<TicketRelay>> TicketRelay::Create(SSL* ssl, Cipher cipher, const Secret& peer_secret,
                                                         std::uint64_t next_read_seq) {
  auto keys = DeriveTls13TrafficKeys(cipher, peer_secret.bytes());
  if (!keys.ok()) return std::move(keys).error();
  BIO* rbio = BIO_new(BIO_s_mem());
  if (rbio == nullptr) return OpenSslError(ErrorCategory::kInternal, "BIO_new for the ticket relay");
  BIO_set_mem_eof_return(rbio, -1);  // Empty means "wait for more", not the end of the stream.
  SSL_set0_rbio(ssl, rbio);
  // Between tickets OpenSSL needs no buffers: give back those of the
  // handshake now, and each one a ticket takes after it.
  SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
  (void)SSL_free_buffers(ssl);
  std::unique_ptr<TicketRelay> relay(new TicketRelay(ssl, rbio, cipher, next_read_seq));
  relay->key_ = keys->key;
  relay->iv_ = keys->iv;
  return relay;
}

Result<void> TicketRelay::Seal(std::span<const unsigned char> fragment, std::vector<unsigned char>& out) {
  // TLSInnerPlaintext (RFC 8446 5.2): the message, then its real type.
  const std::size_t inner_len = fragment.size() + 1;
  const std::size_t body_len = inner_len + kTagLen;
  const std::array<unsigned char, kRecordHeaderLen> header{kRecordApplicationData, 0x03, 0x03,
                                                           static_cast<unsigned char>(body_len >> 8),
                                                           static_cast<unsigned char>(body_len)};
  std::array<unsigned char, kNonceLen> nonce{};
  std::copy(iv_.bytes().begin(), iv_.bytes().end(), nonce.begin());
  for (int i = 0; i < 8; ++i) nonce[kNonceLen - 1 - static_cast<std::size_t>(i)] ^= static_cast<unsigned char>(seq_ >> (8 * i));

  std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree> ctx(EVP_CIPHER_CTX_new());
  const bool ccm = cipher_ == Cipher::kAes128Ccm;
  int len = 0;
  const std::size_t start = out.size();
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), fragment.begin(), fragment.end());
  out.push_back(kRecordHandshake);
  out.resize(start + kRecordHeaderLen + body_len);
  unsigned char* text = out.data() + start + kRecordHeaderLen;
  const bool sealed =
      ctx && EVP_EncryptInit_ex(ctx.get(), AeadFor(cipher_), nullptr, nullptr, nullptr) == 1 &&
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_IVLEN, kNonceLen, nullptr) == 1 &&
      (!ccm || EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, kTagLen, nullptr) == 1) &&
      EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, key_.bytes().data(), nonce.data()) == 1 &&
      // CCM must know the length before the additional data.
      (!ccm || EVP_EncryptUpdate(ctx.get(), nullptr, &len, nullptr, static_cast<int>(inner_len)) == 1) &&
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, header.data(), static_cast<int>(header.size())) == 1 &&
      EVP_EncryptUpdate(ctx.get(), text, &len, text, static_cast<int>(inner_len)) == 1 &&
      EVP_EncryptFinal_ex(ctx.get(), text + len, &len) == 1 &&
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_GET_TAG, kTagLen, text + inner_len) == 1;
  if (!sealed) {
    out.resize(start);
    return OpenSslError(ErrorCategory::kInternal, "sealing a session ticket for OpenSSL");
  }
  ++seq_;
  return {};
}

Result<void> TicketRelay::Deliver(std::span<const unsigned char> message) {
  std::vector<unsigned char> records;
  // A ticket can be larger than one record (up to 128 KiB): OpenSSL
  // reassembles handshake messages across records.
  for (std::size_t offset = 0; offset < message.size(); offset += kMaxFragmentLen) {
    const std::size_t n = std::min(kMaxFragmentLen, message.size() - offset);
    if (auto sealed = Seal(message.subspan(offset, n), records); !sealed) return sealed;
  }
  if (BIO_write(rbio_, records.data(), static_cast<int>(records.size())) != static_cast<int>(records.size())) {
    return OpenSslError(ErrorCategory::kInternal, "BIO_write of a session ticket");
  }
  ERR_clear_error();
  unsigned char byte = 0;
  std::size_t n = 0;
  const int ret = SSL_read_ex(ssl_, &byte, 1, &n);
  const int code = ret == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_, ret);
  // OpenSSL took the whole ticket and waits for the next record.
  if (code == SSL_ERROR_WANT_READ && BIO_ctrl_pending(rbio_) == 0) {
    (void)SSL_free_buffers(ssl_);
    return {};
  }
  Error error = code == SSL_ERROR_NONE
                    ? MakeError(ErrorCategory::kInternal, "OpenSSL read application data out of a session ticket")
                    : SslCallError(ssl_, ret, "OpenSSL processing a session ticket");
  (void)BIO_reset(rbio_);
  return error;
}

}  // namespace ktls::detail
