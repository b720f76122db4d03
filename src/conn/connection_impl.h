// conn/connection_impl.h: the state behind ktls::Connection. Its member
// functions are defined by job across connection.cc (lifetime, the public
// forwarding layer), connection_read.cc, control_records.cc,
// connection_write.cc, key_update.cc and linger.cc.
#ifndef KTLS_SRC_CONN_CONNECTION_IMPL_H_
#define KTLS_SRC_CONN_CONNECTION_IMPL_H_

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "conn/ticket_relay.h"
#include "core/openssl_ptr.h"
#include "core/unique_fd.h"
#include "keys/secret.h"
#include "ktls/connection.h"
#include "ktls/offload.h"
#include "ktls/types.h"

namespace ktls::detail {

struct MovedState;  // conn/connection_move.h

class ConnectionImpl {
 public:
  // fd: the socket. ssl: the OpenSSL connection, while any direction needs
  // it. Directions start in userspace; Offload moves them.
  ConnectionImpl(UniqueFd fd, UniqueSsl ssl, bool is_server);
  ~ConnectionImpl();

  Result<IoProgress> Read(std::span<std::byte> buf);
  Result<void> UpdateKeys(bool request_peer_update);
  // SetTxRecordsBound starts the TX record count at offload: the kernel's
  // first sequence number, after records OpenSSL sent under the same key
  // (session tickets, a TLS 1.2 Finished).
  void SetTxRecordsBound(std::uint64_t records) { tx_records_bound_ = records; }
  Result<IoProgress> Write(std::span<const std::byte> data, WriteFlags flags = WriteFlags::kNone);
  Result<IoProgress> SendFile(int file_fd, off_t offset, std::size_t count);
  Result<IoProgress> SpliceRead(int pipe_fd, std::size_t len);
  Result<IoProgress> SpliceWrite(int pipe_fd, std::size_t len, WriteFlags flags);
  Result<IoProgress> Shutdown(ShutdownFlags flags = ShutdownFlags::kNone);
  // Linger: one non-blocking step of the lingering close (see
  // Connection::Linger).
  Result<IoProgress> Linger();
  std::chrono::steady_clock::time_point LingerDeadline();
  void Close();
  // KernelRecSeq asks the kernel for the next record's sequence number in
  // one direction (uapi::kTlsTx or kTlsRx).
  Result<std::uint64_t> KernelRecSeq(int direction);

  // --- moving to another process (conn/connection_move.cc) ---
  // SnapshotForMove copies what Export carries, or says why the connection
  // cannot move; it changes nothing. WipeAfterMove then wipes the secrets
  // and plaintext kept here. FromMoved builds the importer's side; tx_seq
  // is the kernel's TX record sequence number.
  Result<MovedState> SnapshotForMove();
  void WipeAfterMove();
  static std::unique_ptr<ConnectionImpl> FromMoved(UniqueFd fd, MovedState& state, std::uint64_t tx_seq);

  // --- set up by offload (conn/offload.cc) ---
  UniqueFd socket;
  UniqueSsl ssl;  // Null once both directions are in the kernel.
  bool is_server;
  Offload tx = Offload::kUser;
  Offload rx = Offload::kUser;
  // Why a direction stayed in OpenSSL (kNone where it went to the kernel).
  FallbackReason tx_fallback = FallbackReason::kNone;
  FallbackReason rx_fallback = FallbackReason::kNone;
  // TLS_RX_EXPECT_NO_PAD (OffloadOptions::rx_expect_no_pad): on, or why
  // not; kernel_state() puts it in words (no string kept per connection).
  enum class NoPad : std::uint8_t { kOn, kNotAsked, kRxInOpenSsl, kTls12, kUnsafeKernel, kRefused };
  NoPad rx_no_pad = NoPad::kNotAsked;
  int rx_no_pad_errno = 0;  // kRefused: what setsockopt failed with.
  SessionInfo session;
  // Plaintext OpenSSL decrypted before RX went to the kernel; delivered
  // before anything the kernel returns.
  std::vector<std::byte> early_plaintext;
  std::size_t early_plaintext_offset = 0;
  // The peer's close_notify was already seen (before or after offload).
  std::atomic<bool> peer_closed = false;
  // How Close lingers (OffloadOptions::linger).
  LingerOptions linger;
  // from_untrusted_sender (ReceiveConnectionOptions::untrusted_sender): the
  // process that sent the socket keeps a copy, and can change what the two
  // share (O_NONBLOCK: the open file description; SO_LINGER: the socket).
  // So this connection is non-blocking whatever O_NONBLOCK says (DontWait
  // on its reads and writes through the kernel; WaitFor and Close never
  // wait), and its socket is closed on a thread of its own (CloseSocket).
  bool from_untrusted_sender = false;
  // DontWait: the flag for a recvmsg or sendmsg on the socket.
  int DontWait() const noexcept { return from_untrusted_sender ? MSG_DONTWAIT : 0; }
  // CloseSocket closes the socket (once; see from_untrusted_sender).
  void CloseSocket() noexcept;
  // OpenSSL tried to write with TX in the kernel (mixed mode); see
  // conn/no_write_bio.h. Written under ssl_mu_.
  bool openssl_write_attempted = false;
  // --- TLS 1.3 session tickets received with RX in the kernel ---
  // ticket_relay: hands them to OpenSSL (conn/ticket_relay.h); null when
  // they are dropped, for the reason in no_relay_reason. Reader only.
  std::unique_ptr<TicketRelay> ticket_relay;
  const char* no_relay_reason = nullptr;
  std::atomic<std::uint64_t> tickets_relayed = 0;
  std::atomic<std::uint64_t> tickets_dropped = 0;
  std::atomic<const char*> tickets_dropped_reason = nullptr;
  // TLS 1.2 renegotiation attempts (ClientHello or HelloRequest) answered
  // with a no_renegotiation warning after offload.
  std::atomic<std::uint64_t> renegotiations_refused = 0;

  // --- TLS 1.3 key updates ---
  TlsVersion version = TlsVersion::kTls13;
  Cipher cipher = Cipher::kAes128Gcm;
  // kernel_rekey: TLS 1.3 and the kernel accepts new keys on a live socket
  // (6.14+).
  bool kernel_rekey = false;
  // The current traffic secrets of the directions in the kernel, kept only
  // where the kernel can rekey (they are needed to derive the next ones).
  Secret tx_secret;  // Guarded by tx_mu_.
  Secret rx_secret;  // Used by the reader only.
  // key_update_threshold: TX records under one key before a KeyUpdate (or,
  // without kernel rekey, a clean close); 0: never.
  std::uint64_t key_update_threshold = 0;
  std::atomic<std::uint64_t> tx_key_updates = 0;
  std::atomic<std::uint64_t> rx_key_updates = 0;

 private:
  Result<IoProgress> ReadKernel(std::span<std::byte> buf);
  Result<IoProgress> ReadUser(std::span<std::byte> buf);
  // --- splice (conn/connection_splice.cc) ---
  Result<IoProgress> SpliceReadKernel(int pipe_fd, std::size_t len);
  Result<IoProgress> SpliceReadCopy(int pipe_fd, std::size_t len);
  // SpliceNextRecord: splice failed with EINVAL at the next record
  // (after_einval), or returned 0; read the record with recvmsg and handle
  // it as Read does (nullopt: splice on).
  std::optional<Result<IoProgress>> SpliceNextRecord(int pipe_fd, std::size_t len, bool after_einval);
  // DeliverHeldPlaintext writes what the pipe takes of splice_rx_held_.
  Result<IoProgress> DeliverHeldPlaintext(int pipe_fd, std::size_t len);
  Result<IoProgress> SpliceWriteKernel(int pipe_fd, std::size_t len, WriteFlags flags);
  Result<IoProgress> SpliceWriteCopy(int pipe_fd, std::size_t len, WriteFlags flags);
  // KernelRxFailed: kTLS RX failed with err (not EAGAIN). Returns the
  // outcome to report (the alert OpenSSL would send is sent), or nullopt
  // where reading can go on (a rekey pause that was no KeyUpdate).
  std::optional<Result<IoProgress>> KernelRxFailed(int err);
  // HandleControlRecord consumes bytes of a non-data record that the
  // kernel returned. Returns an IoProgress with end_of_stream set for
  // close_notify, nullopt to keep reading, or the error that ends the
  // connection.
  // record_end: the kernel returned the record's last byte (MSG_EOR).
  std::optional<Result<IoProgress>> HandleControlRecord(unsigned char type, std::span<const std::byte> bytes,
                                                        bool record_end);
  // MessageIsPartial: a TLS 1.3 post-handshake message has begun and not
  // ended; until it does, only handshake records (and alerts) may come
  // (RFC 8446 5.1).
  bool MessageIsPartial() const { return version == TlsVersion::kTls13 && !handshake_bytes_.empty(); }
  // RefuseDataInsideMessage: called for a data record, before any of it is
  // delivered. While MessageIsPartial, sends unexpected_message, as
  // OpenSSL does, and returns the error; otherwise nullopt.
  std::optional<Result<IoProgress>> RefuseDataInsideMessage();
  // SendWarningAlert sends a warning alert through the kernel, now or, if
  // a write is in progress or the send buffer is full, ahead of the next
  // write (tx_warning_pending_).
  Result<void> SendWarningAlert(int alert);
  Result<void> SendPendingWarningLocked(int alert);  // Under tx_mu_.
  // EndWithoutCloseNotify: the error for a read that found the end of the
  // stream without close_notify: truncated, unless the connection was in
  // fact reset. A reset's error can be gone by then: kTLS's sendmsg
  // consumes it (sk_err) while still returning the bytes it took, so the
  // next read sees only the end of the stream. Sends decode_error, as
  // OpenSSL does for a FIN without close_notify. fin_read: a FIN was
  // already told from a reset (the socket BIO's EOF).
  Error EndWithoutCloseNotify(Error truncated, bool fin_read = false);
  // SendFatalAlert sends a fatal alert (best effort: the connection is
  // ending) and shuts down the write side.
  // fin false: no FIN after it (the close sends one).
  void SendFatalAlert(int alert, bool fin = true);
  // SendFin shuts the socket's write side (our FIN), once: Shutdown, a
  // fatal alert and the lingering close each want it, and a second
  // shutdown(2) only costs a syscall.
  void SendFin();
  // SendKernelControlRecord sends one whole control record through kernel
  // TX (SendControlRecord, conn/kernel_io.h); a short write is an error.
  Result<void> SendKernelControlRecord(unsigned char type, std::span<const unsigned char> payload);
  Result<IoProgress> Fail(Error error);
  // SendWentNowhere: after a kernel send that returned len, the error to
  // report if the socket could not actually send (see connection_write.cc).
  std::optional<Error> SendWentNowhere(std::size_t len);
  // --- kernel TX, all under tx_mu_ ---
  // BeforeKernelWrite runs before every write of up to *len bytes: it sends
  // a KeyUpdate the peer asked for, and keeps the record count below the
  // threshold (updating keys, or closing where the kernel cannot rekey). It
  // may shorten *len so that this write's records fit under the limit.
  Result<void> BeforeKernelWrite(std::size_t* len);
  // UpdateTxKeyLocked sends KeyUpdate under the current key, then installs
  // the next one.
  Result<void> UpdateTxKeyLocked(bool request_peer_update);
  // AnswerPeerKeyUpdate: the peer sent update_requested; answer now if no
  // write is in progress, else the next write does (RFC 8446 4.6.3 wants
  // it before our next application data).
  Result<void> AnswerPeerKeyUpdate();
  // HandleOpenSslWrites deals with what OpenSSL tried to write while reading
  // with TX in the kernel (mixed mode): a KeyUpdate answer is sent by the
  // kernel instead, an alert is relayed.
  std::optional<Result<IoProgress>> HandleOpenSslWrites();
  // AnswerOpenSslKeyUpdates answers, through the kernel, the peer's
  // update_requested KeyUpdates that OpenSSL read (RX in OpenSSL, TX in the
  // kernel). Called under ssl_mu_ after every SSL_read.
  std::optional<Result<IoProgress>> AnswerOpenSslKeyUpdates();
  std::uint64_t answered_update_requests_ = 0;  // Under ssl_mu_.
  Result<void> RekeyRx();
  // HandleSessionTicket gives one complete NewSessionTicket to OpenSSL
  // through the relay, or drops it (counted, with the reason).
  std::optional<Result<IoProgress>> HandleSessionTicket(std::span<const unsigned char> message);
  // DropTicketRelay ends the relaying of tickets, wiping its key, and frees
  // the SSL if nothing else needs it; later tickets are dropped for reason.
  void DropTicketRelay(const char* reason);
  // ReleaseSsl frees the SSL (and the ticket relay), telling OpenSSL first
  // when ktls closed the connection properly.
  void ReleaseSsl();
  // ResumeRx installs the current RX key again at the kernel's next RX
  // sequence number, which ends a pause the kernel took for a KeyUpdate
  // that was not one (Linux 6.14+; kernel_rekey only).
  Result<void> ResumeRx();
  // WaitFor waits for the socket to become readable (POLLIN) or writable
  // (POLLOUT) when the socket is blocking. Returns false, without waiting,
  // when the caller made the socket non-blocking: then "would block" is the
  // answer to give.
  bool WaitFor(short events);

  // One reader and one writer may run at once: OpenSSL calls are serialised
  // by ssl_mu_ (never held while waiting); the flags are atomic.
  std::mutex ssl_mu_;
  // Kernel TX writes and TX key changes: a KeyUpdate record and the switch
  // to the next key must not have application data between them.
  std::mutex tx_mu_;
  std::atomic<bool> tx_update_pending_ = false;
  std::atomic<bool> tx_update_request_peer_ = false;  // The pending update asks the peer to update too.
  std::uint64_t tx_records_bound_ = 0;  // >= records sent under the TX key. Under tx_mu_.
  // Plaintext in kTLS's open TX record: WriteFlags::kMore writes that
  // filled no record, so pushed nothing. Under tx_mu_.
  std::size_t tx_open_record_ = 0;
  std::atomic<bool> failed_ = false;     // An error ended the connection.
  std::atomic<bool> sent_close_ = false;  // We sent close_notify (or a fatal alert).
  std::atomic<bool> sent_fin_ = false;    // Our write side is shut (SendFin).
  // Bytes a Write with WriteFlags::kMore held back, with TX in OpenSSL: they
  // lead the next write's first record. Writer side only, like every write.
  std::vector<std::byte> tx_held_;
  // Plaintext read into this process for SpliceRead that the pipe had no
  // room for yet; the next SpliceRead (or Read) delivers it first. Reader
  // side only.
  std::vector<std::byte> splice_rx_held_;
  int splice_pipe_checked_ = -1;  // The pipe fd whose size SpliceReadKernel last checked.
  std::vector<unsigned char> handshake_bytes_;  // Partial post-handshake message.
  std::vector<unsigned char> alert_bytes_;      // Partial alert record.
  // --- the reader's record state ---
  std::size_t handshake_record_len_ = 0;    // Bytes of the handshake record being read so far.
  bool discard_handshake_record_ = false;   // Drop the rest of this record (a refused renegotiation).
  int warning_alerts_in_a_row_ = 0;         // Ignored warning alerts since the last other record.
  std::atomic<int> tx_warning_pending_ = 0;  // A warning alert owed, ahead of the next write.
  // --- the lingering close ---
  // LingerOwed: ktls ended the connection (close_notify or a fatal alert
  // went out, or an error ended it) and the peer may still be sending.
  bool LingerOwed() const;
  std::atomic<bool> peer_eof_ = false;  // The peer's FIN (or reset) was seen: nothing more comes.
  // kTLS RX cannot hand over another record: it returned an error it
  // cannot read past, or it holds a key the peer has retired.
  bool rx_kernel_failed_ = false;
  bool linger_started_ = false;
  bool linger_done_ = false;
  std::size_t linger_discarded_ = 0;
  std::chrono::steady_clock::time_point linger_deadline_{};
};

// Blocked: no progress now; call again once the socket is ready for `wait`.
inline IoProgress Blocked(Wait wait) { return IoProgress{0, true, false, wait}; }

}  // namespace ktls::detail

#endif  // KTLS_SRC_CONN_CONNECTION_IMPL_H_
