// conn/connection_move.cc: Connection::Export and Import (ktls/move.h), and
// the state's byte format (conn/connection_move.h).
#include "conn/connection_move.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>

#include "conn/connection_impl.h"
#include "conn/tls_constants.h"
#include "conn/traffic_keys.h"
#include "core/errors.h"
#include "kernel/crypto_info.h"
#include "kernel/kernel_tls_build.h"
#include "kernel/syscalls.h"
#include "kernel/tls_uapi.h"
#include "keys/tls13_key_schedule.h"
#include "ktls/move.h"
#include "ktls/probe.h"
#include "net/socket_util.h"

namespace ktls {
namespace detail {
namespace {

constexpr std::array<char, 8> kMagic = {'K', 'T', 'L', 'S', 'C', 'O', 'N', 'N'};
constexpr std::size_t kHeaderLen = kMagic.size() + 2 + 4;

enum MovedFlag : std::uint8_t {
  kFlagKernelRekey = 1 << 0,
  kFlagPeerClosed = 1 << 1,
  kFlagSentClose = 1 << 2,
  kFlagPeerEof = 1 << 3,
  kFlagTxUpdatePending = 1 << 4,
  kFlagTxUpdateRequestPeer = 1 << 5,
  kFlagDiscardHandshakeRecord = 1 << 6,
  kFlagSentFin = 1 << 7,
};
constexpr std::uint8_t kKnownFlags = 0xff;

// Limits no state Export makes can pass: a partial handshake record is at
// most one record, a partial alert one byte, a string a TLS field.
constexpr std::size_t kMaxString = 255;

template <typename Byte>
void Cleanse(std::vector<Byte>& v) {
  if (!v.empty()) OPENSSL_cleanse(v.data(), v.size());
  v.clear();
}

class Writer {
 public:
  explicit Writer(std::size_t size) { out_.reserve(size); }
  void U8(std::uint8_t v) { out_.push_back(static_cast<std::byte>(v)); }
  void U16(std::uint16_t v) { Be(v, 2); }
  void U32(std::uint32_t v) { Be(v, 4); }
  void U64(std::uint64_t v) { Be(v, 8); }
  void Raw(const void* data, std::size_t len) {
    const auto* p = static_cast<const std::byte*>(data);
    out_.insert(out_.end(), p, p + len);
  }
  void Secret8(const Secret& s) {
    U8(static_cast<std::uint8_t>(s.size()));
    Raw(s.bytes().data(), s.size());
  }
  template <typename T>
  void Blob32(const std::vector<T>& v) {
    U32(static_cast<std::uint32_t>(v.size()));
    Raw(v.data(), v.size());
  }
  void String16(const std::string& s) {
    U16(static_cast<std::uint16_t>(s.size()));
    Raw(s.data(), s.size());
  }
  std::vector<std::byte> Take() { return std::move(out_); }

 private:
  void Be(std::uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; --i) U8(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  std::vector<std::byte> out_;
};

// Reader: every read names the field, so a short state says where it ends.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> in) : in_(in) {}

  Result<std::uint64_t> Be(int bytes, const char* field) {
    if (in_.size() < static_cast<std::size_t>(bytes)) return Truncated(field);
    std::uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<std::uint8_t>(in_[static_cast<std::size_t>(i)]);
    in_ = in_.subspan(static_cast<std::size_t>(bytes));
    return v;
  }
  Result<std::span<const std::byte>> Bytes(std::size_t len, const char* field) {
    if (in_.size() < len) return Truncated(field);
    auto out = in_.first(len);
    in_ = in_.subspan(len);
    return out;
  }
  std::size_t left() const { return in_.size(); }

 private:
  static Error Truncated(const char* field) {
    return MakeError(ErrorCategory::kUsage, std::string("Import: the state is truncated (in ") + field + ")");
  }
  std::span<const std::byte> in_;
};

Error Bad(const std::string& what) { return MakeError(ErrorCategory::kUsage, "Import: the state " + what); }

// The reads below stop at the first error: each KTLS_READ declares `name`
// from the next `bytes` of r, or returns the error.
#define KTLS_READ_BE(name, bytes, field)        \
  auto name##_r = r.Be(bytes, field);           \
  if (!name##_r.ok()) return name##_r.error(); \
  const std::uint64_t name = *name##_r

Result<std::span<const std::byte>> ReadBlob(Reader& r, int len_bytes, std::size_t max, const char* field) {
  auto len = r.Be(len_bytes, field);
  if (!len.ok()) return len.error();
  if (*len > max) return Bad(std::string("has a ") + field + " of " + std::to_string(*len) + " bytes");
  return r.Bytes(static_cast<std::size_t>(*len), field);
}

Result<void> ReadSecret(Reader& r, const char* field, Secret& out) {
  auto bytes = ReadBlob(r, 1, Secret::kCapacity, field);
  if (!bytes.ok()) return bytes.error();
  out.Assign({reinterpret_cast<const unsigned char*>(bytes->data()), bytes->size()});
  return {};
}

template <typename T>
Result<void> ReadVector(Reader& r, std::size_t max, const char* field, std::vector<T>& out) {
  auto bytes = ReadBlob(r, 4, max, field);
  if (!bytes.ok()) return bytes.error();
  const auto* p = reinterpret_cast<const T*>(bytes->data());
  out.assign(p, p + bytes->size());
  return {};
}

Result<void> ReadString(Reader& r, const char* field, std::string& out) {
  auto bytes = ReadBlob(r, 2, kMaxString, field);
  if (!bytes.ok()) return bytes.error();
  out.assign(reinterpret_cast<const char*>(bytes->data()), bytes->size());
  return {};
}

std::size_t SerializedSize(const MovedState& s) {
  std::size_t n = kHeaderLen + 1 + 2 + 1 + 1 + 8 * 8 + 1 + 1;
  n += 1 + s.tx_secret.size() + 1 + s.rx_secret.size();
  n += 4 + s.early_plaintext.size() + 4 + s.splice_rx_held.size() + 4 + s.handshake_bytes.size() + 4 +
       s.alert_bytes.size();
  for (const std::string* str : {&s.session.protocol, &s.session.cipher_suite, &s.session.alpn, &s.session.sni}) {
    n += 2 + str->size();
  }
  n += 1 + 2;
  for (const auto& cert : s.session.peer_certificates) n += 4 + cert.size();
  return n + 8 + 8;
}

}  // namespace

MovedState::~MovedState() {
  Cleanse(early_plaintext);
  Cleanse(splice_rx_held);
  Cleanse(handshake_bytes);
  Cleanse(alert_bytes);
}

std::size_t TrafficSecretLength(Cipher cipher) noexcept { return Tls13Params(cipher).secret_len; }

std::vector<std::byte> SerializeMovedState(const MovedState& s) {
  const std::size_t size = SerializedSize(s);
  Writer w(size);
  w.Raw(kMagic.data(), kMagic.size());
  w.U16(kMovedStateFormat);
  w.U32(static_cast<std::uint32_t>(size - kHeaderLen));
  w.U8(s.is_server ? 1 : 0);
  w.U16(s.version == TlsVersion::kTls12 ? uapi::kTls12Version : uapi::kTls13Version);
  w.U8(static_cast<std::uint8_t>(s.cipher));
  std::uint8_t flags = 0;
  if (s.kernel_rekey) flags |= kFlagKernelRekey;
  if (s.peer_closed) flags |= kFlagPeerClosed;
  if (s.sent_close) flags |= kFlagSentClose;
  if (s.peer_eof) flags |= kFlagPeerEof;
  if (s.tx_update_pending) flags |= kFlagTxUpdatePending;
  if (s.tx_update_request_peer) flags |= kFlagTxUpdateRequestPeer;
  if (s.discard_handshake_record) flags |= kFlagDiscardHandshakeRecord;
  if (s.sent_fin) flags |= kFlagSentFin;
  w.U8(flags);
  for (std::uint64_t v : {s.key_update_threshold, s.tx_open_record, s.handshake_record_len, s.tx_key_updates,
                          s.rx_key_updates, s.tickets_relayed, s.tickets_dropped, s.renegotiations_refused}) {
    w.U64(v);
  }
  w.U8(s.tx_warning_pending);
  w.U8(s.warning_alerts_in_a_row);
  w.Secret8(s.tx_secret);
  w.Secret8(s.rx_secret);
  w.Blob32(s.early_plaintext);
  w.Blob32(s.splice_rx_held);
  w.Blob32(s.handshake_bytes);
  w.Blob32(s.alert_bytes);
  w.String16(s.session.protocol);
  w.String16(s.session.cipher_suite);
  w.String16(s.session.alpn);
  w.String16(s.session.sni);
  w.U8(s.session.resumed ? 1 : 0);
  w.U16(static_cast<std::uint16_t>(s.session.peer_certificates.size()));
  for (const auto& cert : s.session.peer_certificates) w.Blob32(cert);
  w.U64(static_cast<std::uint64_t>(s.linger.time.count()));
  w.U64(s.linger.max_bytes);
  return w.Take();
}

Result<MovedState> ParseMovedState(std::span<const std::byte> bytes) {
  if (bytes.size() > kMaxConnectionStateBytes) {
    return Bad("is " + std::to_string(bytes.size()) + " bytes, more than any connection's");
  }
  Reader r(bytes);
  auto magic = r.Bytes(kMagic.size(), "the header");
  if (!magic.ok()) return magic.error();
  if (std::memcmp(magic->data(), kMagic.data(), kMagic.size()) != 0) return Bad("is not a ktls connection state");
  KTLS_READ_BE(format, 2, "the header");
  if (format != kMovedStateFormat) {
    return MakeError(ErrorCategory::kUsage, "Import: the state has format version " + std::to_string(format) +
                                                "; this library reads version " + std::to_string(kMovedStateFormat));
  }
  KTLS_READ_BE(body_len, 4, "the header");
  if (body_len != r.left()) {
    return Bad("says it has " + std::to_string(body_len) + " bytes after its header, and has " +
               std::to_string(r.left()));
  }

  MovedState s;
  KTLS_READ_BE(role, 1, "the role");
  if (role > 1) return Bad("has an unknown role");
  s.is_server = role == 1;
  KTLS_READ_BE(version, 2, "the TLS version");
  if (version != uapi::kTls12Version && version != uapi::kTls13Version) return Bad("has an unknown TLS version");
  s.version = version == uapi::kTls12Version ? TlsVersion::kTls12 : TlsVersion::kTls13;
  KTLS_READ_BE(cipher, 1, "the cipher");
  if (cipher >= kAllCiphers.size()) return Bad("has an unknown cipher");
  s.cipher = kAllCiphers[cipher];
  KTLS_READ_BE(flags, 1, "the flags");
  if ((flags & ~std::uint64_t{kKnownFlags}) != 0) return Bad("has unknown flags");
  s.kernel_rekey = (flags & kFlagKernelRekey) != 0;
  s.peer_closed = (flags & kFlagPeerClosed) != 0;
  s.sent_close = (flags & kFlagSentClose) != 0;
  s.peer_eof = (flags & kFlagPeerEof) != 0;
  s.tx_update_pending = (flags & kFlagTxUpdatePending) != 0;
  s.tx_update_request_peer = (flags & kFlagTxUpdateRequestPeer) != 0;
  s.discard_handshake_record = (flags & kFlagDiscardHandshakeRecord) != 0;
  s.sent_fin = (flags & kFlagSentFin) != 0;
  std::array<std::uint64_t*, 8> counts = {&s.key_update_threshold, &s.tx_open_record,  &s.handshake_record_len,
                                          &s.tx_key_updates,       &s.rx_key_updates,  &s.tickets_relayed,
                                          &s.tickets_dropped,      &s.renegotiations_refused};
  for (std::uint64_t* v : counts) {
    KTLS_READ_BE(value, 8, "the counters");
    *v = value;
  }
  KTLS_READ_BE(warning, 1, "the pending warning");
  s.tx_warning_pending = static_cast<std::uint8_t>(warning);
  KTLS_READ_BE(warnings, 1, "the warning count");
  s.warning_alerts_in_a_row = static_cast<std::uint8_t>(warnings);
  if (auto ok = ReadSecret(r, "the TX secret", s.tx_secret); !ok) return ok.error();
  if (auto ok = ReadSecret(r, "the RX secret", s.rx_secret); !ok) return ok.error();
  if (auto ok = ReadVector(r, kMaxConnectionStateBytes, "the undelivered plaintext", s.early_plaintext); !ok) {
    return ok.error();
  }
  if (auto ok = ReadVector(r, kMaxConnectionStateBytes, "the held splice plaintext", s.splice_rx_held); !ok) {
    return ok.error();
  }
  if (auto ok = ReadVector(r, kMaxConnectionStateBytes, "the partial handshake message", s.handshake_bytes); !ok) {
    return ok.error();
  }
  if (auto ok = ReadVector(r, 1, "the partial alert", s.alert_bytes); !ok) return ok.error();
  if (auto ok = ReadString(r, "the protocol name", s.session.protocol); !ok) return ok.error();
  if (auto ok = ReadString(r, "the cipher suite name", s.session.cipher_suite); !ok) return ok.error();
  if (auto ok = ReadString(r, "the ALPN protocol", s.session.alpn); !ok) return ok.error();
  if (auto ok = ReadString(r, "the server name", s.session.sni); !ok) return ok.error();
  KTLS_READ_BE(resumed, 1, "the resumed flag");
  if (resumed > 1) return Bad("has a resumed flag that is neither 0 nor 1");
  s.session.resumed = resumed == 1;
  KTLS_READ_BE(certs, 2, "the certificate count");
  for (std::uint64_t i = 0; i < certs; ++i) {
    std::vector<unsigned char> cert;
    if (auto ok = ReadVector(r, kMaxConnectionStateBytes, "a peer certificate", cert); !ok) return ok.error();
    if (cert.empty()) return Bad("has an empty peer certificate");
    s.session.peer_certificates.push_back(std::move(cert));
  }
  KTLS_READ_BE(linger_ms, 8, "the linger time");
  if (linger_ms > static_cast<std::uint64_t>(kMaxLingerTime.count())) {
    return Bad("has a linger time of more than a day");
  }
  s.linger.time = std::chrono::milliseconds(static_cast<std::int64_t>(linger_ms));
  KTLS_READ_BE(linger_bytes, 8, "the linger budget");
  s.linger.max_bytes = static_cast<std::size_t>(linger_bytes);
  if (r.left() != 0) return Bad("has bytes after its end");

  // What the values must say together.
  const std::size_t secret_len = s.kernel_rekey ? TrafficSecretLength(s.cipher) : 0;
  if (s.kernel_rekey && s.version != TlsVersion::kTls13) return Bad("has key updates for TLS 1.2");
  if (s.tx_secret.size() != secret_len || s.rx_secret.size() != secret_len) {
    return Bad("has traffic secrets of the wrong length for its cipher and key-update state");
  }
  if (s.key_update_threshold == 1) return Bad("has a key-update threshold of 1");
  if (s.tx_open_record >= kMaxRecordPlaintext) return Bad("has an open TX record longer than a record");
  if (s.handshake_record_len > kMaxRecordPlaintext + 256) return Bad("has a handshake record longer than a record");
  if (s.version == TlsVersion::kTls12 && (s.tx_key_updates != 0 || s.rx_key_updates != 0 || s.tx_update_pending)) {
    return Bad("has key updates for TLS 1.2");
  }
  if (!s.tx_update_pending && s.tx_update_request_peer) return Bad("asks the peer to update with no update pending");
  return s;
}

#undef KTLS_READ_BE

namespace {

Error NotThisSocket(const std::string& why) {
  return MakeError(ErrorCategory::kUsage, "Import: the socket is not the connection the state describes: " + why);
}

int IntOpt(int fd, int level, int name, int* value) {
  socklen_t len = sizeof(*value);
  return sys::GetSockOpt(fd, level, name, value, &len);
}

// CheckDirection: the kernel's crypto_info for TLS_TX or TLS_RX has the
// state's version and cipher; returns its record sequence number. The
// kernel returns the key too: wiped at once.
Result<std::uint64_t> CheckDirection(int fd, int direction, const MovedState& s) {
  alignas(8) std::array<unsigned char, 64> info{};
  socklen_t len = CryptoInfoSize(s.cipher);
  const int rc = sys::GetSockOpt(fd, uapi::kSolTls, direction, info.data(), &len);
  uapi::CryptoInfo header{};
  std::memcpy(&header, info.data(), sizeof(header));
  const std::optional<std::uint64_t> seq = rc == 0 ? RecSeqOf(info.data(), len) : std::nullopt;
  OPENSSL_cleanse(info.data(), info.size());
  const char* name = direction == uapi::kTlsTx ? "TX" : "RX";
  if (rc != 0) {
    return NotThisSocket(std::string("the kernel has no ") + name + " key of its cipher (getsockopt: " +
                         std::strerror(-rc) + ")");
  }
  const std::uint16_t want_version = s.version == TlsVersion::kTls12 ? uapi::kTls12Version : uapi::kTls13Version;
  if (header.version != want_version || header.cipher_type != CryptoInfoCipherType(s.cipher) || !seq) {
    return NotThisSocket(std::string("the kernel's ") + name + " version or cipher differs");
  }
  return *seq;
}

// CheckSocket: fd is a connected TCP socket with both directions in kTLS,
// as the state says. Returns the kernel's TX record sequence number.
Result<std::uint64_t> CheckSocket(int fd, const MovedState& s) {
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return NotThisSocket("not a socket");
  int type = 0, protocol = 0, domain = 0;
  if (IntOpt(fd, SOL_SOCKET, SO_TYPE, &type) != 0 || IntOpt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol) != 0 ||
      IntOpt(fd, SOL_SOCKET, SO_DOMAIN, &domain) != 0 || type != SOCK_STREAM || protocol != IPPROTO_TCP ||
      (domain != AF_INET && domain != AF_INET6)) {
    return NotThisSocket("not a TCP socket");
  }
  sockaddr_storage peer{};
  socklen_t peer_len = sizeof(peer);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) return NotThisSocket("not connected");
  std::array<char, 16> ulp{};
  socklen_t ulp_len = ulp.size();
  if (sys::GetSockOpt(fd, uapi::kSolTcp, uapi::kTcpUlp, ulp.data(), &ulp_len) != 0 ||
      std::strncmp(ulp.data(), uapi::kTlsUlpName, ulp.size()) != 0) {
    return NotThisSocket("it has no tls ULP (not a kTLS socket)");
  }
  auto tx_seq = CheckDirection(fd, uapi::kTlsTx, s);
  if (!tx_seq.ok()) return tx_seq;
  if (auto rx_seq = CheckDirection(fd, uapi::kTlsRx, s); !rx_seq.ok()) return rx_seq.error();
  return tx_seq;
}

}  // namespace

Result<MovedState> ConnectionImpl::SnapshotForMove() {
  if (socket.get() < 0) return MakeError(ErrorCategory::kUsage, "Export on a closed connection");
  std::scoped_lock lock(ssl_mu_, tx_mu_);
  if (failed_ || rx_kernel_failed_) return MakeError(ErrorCategory::kClosed, "Export: an error ended the connection");
  if (tx != Offload::kKernel || rx != Offload::kKernel) {
    return MakeError(ErrorCategory::kUnsupported,
                     std::string("Export: only a connection with both directions in the kernel can move; ") +
                         (tx != Offload::kKernel ? "TX" : "RX") + " is in OpenSSL, in this process");
  }
  if (ticket_relay || ssl) {
    return MakeError(ErrorCategory::kUnsupported,
                     "Export: OpenSSL still holds this connection's state (it relays the server's session tickets; "
                     "OffloadOptions::session_tickets = false leaves nothing in OpenSSL)");
  }
  if (linger_started_) return MakeError(ErrorCategory::kUnsupported, "Export: the connection is lingering to close");
  if (!tx_held_.empty()) return MakeError(ErrorCategory::kInternal, "Export: TX bytes held with TX in the kernel");
  MovedState s;
  s.is_server = is_server;
  s.version = version;
  s.cipher = cipher;
  s.kernel_rekey = kernel_rekey;
  s.peer_closed = peer_closed;
  s.sent_close = sent_close_;
  s.peer_eof = peer_eof_;
  s.tx_update_pending = tx_update_pending_;
  s.tx_update_request_peer = tx_update_request_peer_;
  s.discard_handshake_record = discard_handshake_record_;
  s.sent_fin = sent_fin_;
  s.key_update_threshold = key_update_threshold;
  s.tx_open_record = tx_open_record_;
  s.handshake_record_len = handshake_record_len_;
  s.tx_key_updates = tx_key_updates;
  s.rx_key_updates = rx_key_updates;
  s.tickets_relayed = tickets_relayed;
  s.tickets_dropped = tickets_dropped;
  s.renegotiations_refused = renegotiations_refused;
  s.tx_warning_pending = static_cast<std::uint8_t>(tx_warning_pending_.load());
  s.warning_alerts_in_a_row = static_cast<std::uint8_t>(std::min(warning_alerts_in_a_row_, 255));
  s.tx_secret = tx_secret;
  s.rx_secret = rx_secret;
  s.early_plaintext.assign(early_plaintext.begin() + static_cast<std::ptrdiff_t>(early_plaintext_offset),
                           early_plaintext.end());
  s.splice_rx_held = splice_rx_held_;
  s.handshake_bytes = handshake_bytes_;
  s.alert_bytes = alert_bytes_;
  s.session = session;
  s.linger = linger;
  return s;
}

void ConnectionImpl::WipeAfterMove() {
  std::scoped_lock lock(ssl_mu_, tx_mu_);
  tx_secret.Wipe();
  rx_secret.Wipe();
  Cleanse(early_plaintext);
  early_plaintext_offset = 0;
  Cleanse(splice_rx_held_);
  Cleanse(handshake_bytes_);
  Cleanse(alert_bytes_);
}

std::unique_ptr<ConnectionImpl> ConnectionImpl::FromMoved(UniqueFd fd, MovedState& s, std::uint64_t tx_seq) {
  auto conn = std::make_unique<ConnectionImpl>(std::move(fd), UniqueSsl(), s.is_server);
  conn->tx = Offload::kKernel;
  conn->rx = Offload::kKernel;
  conn->version = s.version;
  conn->cipher = s.cipher;
  conn->kernel_rekey = s.kernel_rekey;
  conn->peer_closed = s.peer_closed;
  conn->sent_close_ = s.sent_close;
  conn->peer_eof_ = s.peer_eof;
  conn->tx_update_pending_ = s.tx_update_pending;
  conn->tx_update_request_peer_ = s.tx_update_request_peer;
  conn->discard_handshake_record_ = s.discard_handshake_record;
  conn->sent_fin_ = s.sent_fin;
  conn->key_update_threshold = s.key_update_threshold;
  // The records sent under the current TX key, as the kernel counts them
  // (sendfile's included): the AEAD limit goes on from there.
  conn->tx_records_bound_ = tx_seq;
  conn->tx_open_record_ = static_cast<std::size_t>(s.tx_open_record);
  conn->handshake_record_len_ = static_cast<std::size_t>(s.handshake_record_len);
  conn->tx_key_updates = s.tx_key_updates;
  conn->rx_key_updates = s.rx_key_updates;
  conn->tickets_relayed = s.tickets_relayed;
  conn->tickets_dropped = s.tickets_dropped;
  if (s.tickets_dropped != 0) conn->tickets_dropped_reason = "dropped before the connection moved";
  conn->no_relay_reason = "the connection moved: session tickets are no longer handed to OpenSSL";
  conn->renegotiations_refused = s.renegotiations_refused;
  conn->tx_warning_pending_ = s.tx_warning_pending;
  conn->warning_alerts_in_a_row_ = s.warning_alerts_in_a_row;
  conn->tx_secret = s.tx_secret;
  conn->rx_secret = s.rx_secret;
  conn->early_plaintext = std::move(s.early_plaintext);
  conn->splice_rx_held_ = std::move(s.splice_rx_held);
  conn->handshake_bytes_ = std::move(s.handshake_bytes);
  conn->alert_bytes_ = std::move(s.alert_bytes);
  conn->session = std::move(s.session);
  conn->linger = s.linger;
  return conn;
}

}  // namespace detail

ConnectionState::ConnectionState(ConnectionState&& other) noexcept : bytes_(std::move(other.bytes_)) {
  other.bytes_.clear();
}

ConnectionState& ConnectionState::operator=(ConnectionState&& other) noexcept {
  if (this != &other) {
    Wipe();
    bytes_ = std::move(other.bytes_);
    other.bytes_.clear();
  }
  return *this;
}

ConnectionState::~ConnectionState() { Wipe(); }

void ConnectionState::Wipe() noexcept {
  if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
  bytes_.clear();
}

ExportedConnection::ExportedConnection(ExportedConnection&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      state_(std::move(other.state_)),
      close_without_waiting_(other.close_without_waiting_) {}

ExportedConnection& ExportedConnection::operator=(ExportedConnection&& other) noexcept {
  if (this != &other) {
    Close();
    fd_ = std::exchange(other.fd_, -1);
    state_ = std::move(other.state_);
    close_without_waiting_ = other.close_without_waiting_;
  }
  return *this;
}

void ExportedConnection::Close() noexcept {
  const int fd = std::exchange(fd_, -1);
  if (close_without_waiting_) {
    detail::CloseOnOwnThread(fd);
  } else if (fd >= 0) {
    ::close(fd);
  }
}

ExportedConnection::~ExportedConnection() { Close(); }

int ExportedConnection::release_fd() noexcept { return std::exchange(fd_, -1); }

Result<ExportedConnection> Connection::Export() {
  if (!impl_) return detail::MakeError(ErrorCategory::kUsage, "empty ktls::Connection");
  auto snapshot = impl_->SnapshotForMove();
  if (!snapshot.ok()) return std::move(snapshot).error();
  ConnectionState state(detail::SerializeMovedState(*snapshot));
  impl_->WipeAfterMove();
  const int fd = impl_->socket.release();
  const bool from_untrusted_sender = impl_->from_untrusted_sender;
  impl_.reset();
  return ExportedConnection(fd, std::move(state), from_untrusted_sender);
}

Result<Connection> Connection::Import(int fd, std::span<const std::byte> state) {
  return detail::ImportConnection(fd, state, /*from_untrusted_sender=*/false);
}

namespace detail {

Result<Connection> ImportConnection(int fd, std::span<const std::byte> state, bool from_untrusted_sender) {
  // A library without kernel TLS could still be handed a socket another
  // process put into kTLS (on Linux), but it has no sendfile or splice for
  // it: it takes none.
  if constexpr (!detail::kKernelTls) {
    return detail::MakeError(ErrorCategory::kUnsupported, std::string("Import: ") + detail::kNoKernelTlsReason);
  }
  auto parsed = detail::ParseMovedState(state);
  if (!parsed.ok()) return std::move(parsed).error();
  if (parsed->kernel_rekey && !CachedCapabilities().rekey) {
    return detail::MakeError(ErrorCategory::kUnsupported,
                             "Import: the state carries TLS 1.3 key updates and this kernel cannot rekey");
  }
  auto tx_seq = detail::CheckSocket(fd, *parsed);
  if (!tx_seq.ok()) return std::move(tx_seq).error();
  auto impl = detail::ConnectionImpl::FromMoved(detail::UniqueFd(fd), *parsed, *tx_seq);
  // TLS_RX_EXPECT_NO_PAD is the socket's, so it came along: say so.
  int no_pad = 0;
  socklen_t len = sizeof(no_pad);
  if (detail::sys::GetSockOpt(fd, detail::uapi::kSolTls, detail::uapi::kTlsRxExpectNoPad, &no_pad, &len) == 0 &&
      no_pad != 0) {
    impl->rx_no_pad = detail::ConnectionImpl::NoPad::kOn;
  }
  impl->from_untrusted_sender = from_untrusted_sender;
  return Connection(std::move(impl));
}

}  // namespace detail

}  // namespace ktls
