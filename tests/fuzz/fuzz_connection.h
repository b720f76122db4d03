// tests/fuzz/fuzz_connection.h: what the connection fuzzers share: reading
// the input, the kernel's TX side as the seam plays it (with checks on
// everything ktls hands it), and the model of what Read may deliver.
#ifndef KTLS_TESTS_FUZZ_FUZZ_CONNECTION_H_
#define KTLS_TESTS_FUZZ_FUZZ_CONNECTION_H_

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "kernel/crypto_info.h"
#include "kernel/tls_uapi.h"
#include "ktls/connection.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/support/scripted_ktls.h"

namespace ktls::testing {

// FuzzInput reads the input front to back; past the end, every read fails.
class FuzzInput {
 public:
  explicit FuzzInput(std::span<const std::uint8_t> data) : data_(data) {}
  bool Byte(std::uint8_t* out) {
    if (pos_ >= data_.size()) return false;
    *out = data_[pos_++];
    return true;
  }
  std::span<const std::uint8_t> Bytes(std::size_t len) {
    len = std::min(len, data_.size() - pos_);
    auto out = data_.subspan(pos_, len);
    pos_ += len;
    return out;
  }

 private:
  std::span<const std::uint8_t> data_;
  std::size_t pos_ = 0;
};

// KernelTx: the kernel's side of a socket whose TX is "in the kernel", for
// the seam's send_msg, set_sock_opt and get_sock_opt stand-ins. It checks
// that ktls sends only application data, 2-byte alerts and KeyUpdates,
// nothing after an alert that went out, and crypto_info of the right size
// for its cipher; it counts records for getsockopt(TLS_TX).
struct KernelTx {
  bool set_key_fails = false;  // setsockopt(TLS_TX/TLS_RX) on a live socket.
  bool sendmsg_fails = false;
  std::optional<Cipher> cipher;  // Learnt from the crypto_info ktls installs.
  std::uint64_t records = 0;     // Under the current TX key.
  bool sent_alert = false;

  static constexpr std::size_t kMaxRecordPlaintext = 16 * 1024;

  std::optional<ssize_t> SendMsg(const msghdr* msg) {
    const SentRecord record = ParseSentRecord(msg);
    FUZZ_CHECK(!sent_alert);  // Nothing follows an alert that ended it (fatal, or close_notify).
    if (record.type == detail::uapi::kRecordAlert) {
      FUZZ_CHECK(record.bytes.size() == 2);
      FUZZ_CHECK(record.bytes[0] == 1 || record.bytes[0] == 2);
      // A warning (no_renegotiation, to a TLS 1.2 peer that tried) does not
      // end the connection; a fatal alert or close_notify does.
      FUZZ_CHECK(record.bytes[0] == 2 || record.bytes[1] == 0 || record.bytes[1] == 100);
      sent_alert = !sendmsg_fails && (record.bytes[0] == 2 || record.bytes[1] == 0);
    } else if (record.type == detail::uapi::kRecordHandshake) {
      // Only KeyUpdate: type 24, length 1, update_not_requested/requested.
      FUZZ_CHECK(record.bytes.size() == 5);
      FUZZ_CHECK(record.bytes[0] == 24 && record.bytes[1] == 0 && record.bytes[2] == 0 && record.bytes[3] == 1);
      FUZZ_CHECK(record.bytes[4] <= 1);
    } else {
      FUZZ_CHECK(record.type == detail::uapi::kRecordApplicationData);
      FUZZ_CHECK(!record.bytes.empty());
    }
    if (sendmsg_fails) return -EPIPE;
    records += std::max<std::uint64_t>(1, (record.bytes.size() + kMaxRecordPlaintext - 1) / kMaxRecordPlaintext);
    return static_cast<ssize_t>(record.bytes.size());
  }

  // SetKey: setsockopt(SOL_TLS, TLS_TX or TLS_RX). initial: the first key
  // of a direction (offload), which the fuzzers let through.
  std::optional<int> SetKey(int name, const void* value, socklen_t len, bool initial) {
    FUZZ_CHECK(name == detail::uapi::kTlsTx || name == detail::uapi::kTlsRx);
    FUZZ_CHECK(len >= sizeof(detail::uapi::CryptoInfo));
    detail::uapi::CryptoInfo header;
    std::memcpy(&header, value, sizeof(header));
    std::optional<Cipher> type;
    for (Cipher c : {Cipher::kAes128Gcm, Cipher::kAes256Gcm, Cipher::kChaCha20Poly1305, Cipher::kAes128Ccm}) {
      auto probe = detail::PackCryptoInfo(TlsVersion::kTls13, c, std::vector<unsigned char>(detail::KeyLength(c)),
                                          std::vector<unsigned char>(detail::kNonceLen), 0);
      if (probe.ok() && probe->cipher_type() == header.cipher_type) type = c;
    }
    FUZZ_CHECK(type.has_value());
    FUZZ_CHECK(len == detail::CryptoInfoSize(*type));
    FUZZ_CHECK(!cipher || *cipher == *type);  // A key update keeps the cipher.
    cipher = type;
    if (set_key_fails && !initial) return -EINVAL;
    if (name == detail::uapi::kTlsTx) records = 0;
    return 0;
  }

  std::optional<int> GetSockOpt(int level, int name, void* value, socklen_t* len) {
    if (level == SOL_SOCKET && name == SO_ERROR) {
      FUZZ_CHECK(*len >= sizeof(int));
      std::memset(value, 0, sizeof(int));
      return 0;
    }
    if (level != detail::uapi::kSolTls) return std::nullopt;  // SO_RCVTIMEO and such: the real socket.
    FUZZ_CHECK((name == detail::uapi::kTlsTx || name == detail::uapi::kTlsRx) && cipher.has_value());
    FUZZ_CHECK(*len == detail::CryptoInfoSize(*cipher));
    // TLS_RX (to resume RX the kernel paused): the fuzzers do not count RX
    // records; any sequence number will do for a scripted kernel.
    auto info = detail::PackCryptoInfo(TlsVersion::kTls13, *cipher,
                                       std::vector<unsigned char>(detail::KeyLength(*cipher)),
                                       std::vector<unsigned char>(detail::kNonceLen),
                                       name == detail::uapi::kTlsTx ? records : 0);
    FUZZ_CHECK(info.ok());
    std::memcpy(value, info->data(), info->size());
    return 0;
  }
};

// ReadModel: what Read may deliver. data is every application-data byte the
// peer sent, in order; deliverable stops at the first event after which
// nothing may be delivered.
struct ReadModel {
  std::vector<std::uint8_t> data;
  std::size_t deliverable = SIZE_MAX;
  std::size_t delivered = 0;
  bool ended = false;  // Read reported an error or the end of the stream.

  void Fatal() { deliverable = std::min(deliverable, data.size()); }

  void Check(const Result<IoProgress>& got, std::span<const std::byte> buf) {
    if (!got.ok()) {
      ended = true;
      return;
    }
    if (got->bytes > 0) {
      FUZZ_CHECK(!ended);
      FUZZ_CHECK(!got->end_of_stream && !got->would_block);
      FUZZ_CHECK(got->bytes <= buf.size());
      FUZZ_CHECK(delivered + got->bytes <= std::min(deliverable, data.size()));
      FUZZ_CHECK(std::memcmp(buf.data(), data.data() + delivered, got->bytes) == 0);
      delivered += got->bytes;
    }
    if (got->end_of_stream) ended = true;
  }
};

}  // namespace ktls::testing

#endif  // KTLS_TESTS_FUZZ_FUZZ_CONNECTION_H_
