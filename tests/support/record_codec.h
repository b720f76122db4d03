// tests/support/record_codec.h: a reference TLS record protection layer for
// tests, written from the RFCs on OpenSSL's EVP AEAD API.
//
// It exists so tests can check what the kernel puts on the wire, and feed the
// kernel records it did not make. It deliberately shares no code with the
// library under test (no PackCryptoInfo, no key schedule): a bug there must
// not be able to cancel itself out here.
//
// Record formats (every record: type(1) || 0x0303 || length(2) || fragment):
//  - TLS 1.3, every cipher (RFC 8446 5.2-5.3): outer type 23; fragment =
//    AEAD(content || type || zero padding); nonce = iv XOR left-padded seq;
//    AAD = the 5-byte header.
//  - TLS 1.2 AES-GCM (RFC 5288) and AES-CCM (RFC 6655): fragment =
//    explicit_nonce(8) || ciphertext || tag(16); nonce = iv[0..4] (the salt) ||
//    explicit_nonce; AAD = seq(8) || type || 0x0303 || plaintext length(2).
//  - TLS 1.2 ChaCha20-Poly1305 (RFC 7905): no explicit nonce; nonce = iv XOR
//    left-padded seq; AAD as for TLS 1.2 AES.
// Every AEAD here has a 16-byte tag.
#ifndef KTLS_TESTS_SUPPORT_RECORD_CODEC_H_
#define KTLS_TESTS_SUPPORT_RECORD_CODEC_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "ktls/types.h"

namespace ktls::testing {

inline constexpr std::size_t kRecordHeaderLen = 5;
inline constexpr std::size_t kAeadTagLen = 16;
inline constexpr std::size_t kAeadNonceLen = 12;
inline constexpr std::size_t kTls12ExplicitNonceLen = 8;
// RFC 8446 5.1 / RFC 5246 6.2.1: a record carries at most 2^14 bytes of
// plaintext.
inline constexpr std::size_t kMaxPlaintextLen = 16384;

// Content types (RFC 8446 5.1).
inline constexpr std::uint8_t kContentChangeCipherSpec = 20;
inline constexpr std::uint8_t kContentAlert = 21;
inline constexpr std::uint8_t kContentHandshake = 22;
inline constexpr std::uint8_t kContentApplicationData = 23;

// RecordKeys: one direction's record protection state.
struct RecordKeys {
  TlsVersion version = TlsVersion::kTls13;
  Cipher cipher = Cipher::kAes128Gcm;
  std::vector<std::uint8_t> key;
  // TLS 1.3 and TLS 1.2 ChaCha20: the 12-byte IV. TLS 1.2 AES: the 4-byte
  // salt followed by 8 bytes that only seed explicit_nonce (see
  // MakeRecordKeys).
  std::array<std::uint8_t, kAeadNonceLen> iv{};
  // The sequence number of the next record, sealed or opened.
  std::uint64_t seq = 0;
  // TLS 1.2 AES only: the explicit nonce the next sealed record carries.
  // Incremented per sealed record. Opening reads it from the record instead.
  std::uint64_t explicit_nonce = 0;
};

// MakeRecordKeys builds RecordKeys the way the kernel starts a direction from
// its crypto_info: for TLS 1.2 AES the first explicit nonce is iv[4..12]
// (big-endian), and it goes up by one per record (kernel
// tls_advance_record_sn). key must be the cipher's key length.
RecordKeys MakeRecordKeys(TlsVersion version, Cipher cipher, std::span<const std::uint8_t> key,
                          std::span<const std::uint8_t> iv, std::uint64_t seq);

// HasExplicitNonce: true for TLS 1.2 AES-GCM and AES-CCM.
bool HasExplicitNonce(TlsVersion version, Cipher cipher);

// RecordOverhead: bytes a record adds to its plaintext (header, explicit
// nonce, tag, and TLS 1.3's inner content type), without TLS 1.3 padding.
std::size_t RecordOverhead(TlsVersion version, Cipher cipher);

// SealRecord protects one record of content_type carrying plaintext (at most
// kMaxPlaintextLen bytes) and advances keys.seq (and, TLS 1.2 AES,
// keys.explicit_nonce). tls13_padding_len zero bytes are appended to a TLS 1.3
// inner plaintext (ignored for TLS 1.2). Throws std::runtime_error if
// OpenSSL fails or an argument is out of range; test code only.
std::vector<std::uint8_t> SealRecord(RecordKeys& keys, std::uint8_t content_type,
                                     std::span<const std::uint8_t> plaintext,
                                     std::size_t tls13_padding_len = 0);

// OpenedRecord: what OpenRecord recovered.
struct OpenedRecord {
  std::uint8_t content_type = 0;
  std::vector<std::uint8_t> plaintext;
  // TLS 1.2 AES only: the explicit nonce the record carried.
  std::uint64_t explicit_nonce = 0;
};

// OpenRecord authenticates and decrypts one whole record (header included)
// at sequence number keys.seq. Returns nullopt if the record is malformed or
// fails authentication (keys unchanged); on success advances keys.seq.
// TLS 1.3: the outer type must be 23, and the trailing zero padding is
// stripped; a record with no non-zero byte inside is rejected.
std::optional<OpenedRecord> OpenRecord(RecordKeys& keys, std::span<const std::uint8_t> record);

// AeadSeal / AeadOpen: the bare AEAD underneath, exposed so tests can check it
// against published AEAD vectors. nonce is 12 bytes; the output of AeadSeal
// and the input of AeadOpen are ciphertext || 16-byte tag. AeadOpen returns
// nullopt when authentication fails.
std::vector<std::uint8_t> AeadSeal(Cipher cipher, std::span<const std::uint8_t> key,
                                   std::span<const std::uint8_t> nonce,
                                   std::span<const std::uint8_t> aad,
                                   std::span<const std::uint8_t> plaintext);
std::optional<std::vector<std::uint8_t>> AeadOpen(Cipher cipher, std::span<const std::uint8_t> key,
                                                  std::span<const std::uint8_t> nonce,
                                                  std::span<const std::uint8_t> aad,
                                                  std::span<const std::uint8_t> ciphertext_and_tag);

// RecordSplitter cuts a byte stream into whole records by the length in each
// 5-byte header. It does not look inside records.
class RecordSplitter {
 public:
  // Feed appends bytes read from the stream.
  void Feed(std::span<const std::uint8_t> bytes);
  // Pop returns the next whole record (header included), or nullopt until
  // enough bytes have been fed.
  std::optional<std::vector<std::uint8_t>> Pop();
  // buffered_len: bytes fed but not yet popped (a partial record at the end
  // of a stream shows up here).
  std::size_t buffered_len() const { return buffer_.size() - start_; }

 private:
  std::vector<std::uint8_t> buffer_;
  std::size_t start_ = 0;
};

}  // namespace ktls::testing

#endif  // KTLS_TESTS_SUPPORT_RECORD_CODEC_H_
