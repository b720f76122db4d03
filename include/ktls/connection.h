// ktls/connection.h: one TLS connection after its handshake, with each
// direction either in the kernel or still in OpenSSL.
#ifndef KTLS_CONNECTION_H_
#define KTLS_CONNECTION_H_

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ktls/export.h"
#include "ktls/kernel_state.h"
#include "ktls/result.h"

namespace ktls {

namespace detail {
class ConnectionImpl;
}  // namespace detail

class ExportedConnection;  // ktls/move.h

// Where one direction's records are protected.
enum class Offload : std::uint8_t {
  kUser,    // OpenSSL, in this process.
  kKernel,  // The kernel (kTLS).
};

// OffloadName returns "user" or "kernel".
KTLS_API const char* OffloadName(Offload where) noexcept;

// Wait: the socket readiness a call that would block waits for. A read can
// need the socket writable (OpenSSL answering the peer), a write readable.
enum class Wait : std::uint8_t {
  kNone,      // Nothing to wait for.
  kReadable,  // Wait until the socket is readable (POLLIN).
  kWritable,  // Wait until the socket is writable (POLLOUT).
  // kPipe: SpliceRead found the pipe full, or SpliceWrite found it empty.
  // Drain (or fill) the pipe, then call again. ktls never waits for a pipe.
  kPipe,
};

// IoProgress: what one Read, Write or SendFile call did.
struct KTLS_API IoProgress {
  // bytes: how many bytes were read or written (possibly fewer than asked).
  std::size_t bytes = 0;
  // would_block: the socket is non-blocking (or its SO_RCVTIMEO /
  // SO_SNDTIMEO ran out) and the call could make no progress now. Wait for
  // the fd to be readable or writable, then call again. Not an error.
  bool would_block = false;
  // end_of_stream: Read only. The peer sent close_notify: no more data will
  // come. Not an error (a peer that closes TCP without close_notify gets
  // ErrorCategory::kTruncated instead).
  bool end_of_stream = false;
  // wait: with would_block, what to wait for before calling again.
  Wait wait = Wait::kNone;
  // copied: SpliceRead and SpliceWrite only. How many of `bytes` passed
  // through this process (a direction in OpenSSL, or plaintext OpenSSL had
  // read before offload); the rest moved by splice(2), kernel to kernel.
  std::size_t copied = 0;
};

// WriteFlags: how Write treats the bytes it is given.
enum class WriteFlags : std::uint8_t {
  kNone,  // Send now: the bytes end a record.
  // kMore: more bytes follow at once (an HTTP header before its body), so
  // these may share a TLS record with what comes next instead of leaving in
  // a record of their own. With TX in the kernel, sendmsg gets MSG_MORE: the
  // record stays open and the next Write or SendFile fills it (whether
  // sendfile(2) joins it is the kernel's choice; see the README). With TX in
  // OpenSSL, up to 16 KiB are held back and go out in one record with the
  // first bytes of the next Write or SendFile. Either way, follow with a
  // Write or SendFile without kMore, or Shutdown, which send them: until
  // then they may not leave. Write reports held bytes as written.
  kMore,
};

// ShutdownFlags: what Shutdown does after close_notify.
enum class ShutdownFlags : std::uint8_t {
  kNone,  // Then shut the socket's write side (our FIN) at once.
  // kCloseNotifyOnly: close_notify and nothing else, as OpenSSL's
  // SSL_shutdown: our FIN goes with Close (or its lingering close). For a
  // caller that closes right after, one system call fewer.
  kCloseNotifyOnly,
};

// SessionInfo: what a request handler needs to know about the session.
// Captured at offload, so it stays available after the SSL object is gone.
struct KTLS_API SessionInfo {
  std::string protocol;      // "TLSv1.3"
  std::string cipher_suite;  // IANA name, e.g. "TLS_AES_128_GCM_SHA256".
  std::string alpn;          // Negotiated ALPN protocol, or empty.
  std::string sni;           // Server name the client asked for, or empty.
  bool resumed = false;      // The handshake resumed an earlier session.
  // The peer's certificate chain, leaf first, DER-encoded. Empty when the
  // peer sent no certificate, or with OffloadOptions::keep_peer_certificates
  // false.
  std::vector<std::vector<unsigned char>> peer_certificates;
};

// Connection: an established TLS connection. Move-only; owns the socket.
//
// Thread safety: one thread may read while another writes; two concurrent
// reads, or two concurrent writes, are not allowed.
class KTLS_API Connection {
 public:
  Connection();  // An empty connection: every call fails with kUsage.
  Connection(Connection&&) noexcept;
  Connection& operator=(Connection&&) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  // ~Connection closes the socket without sending close_notify; call
  // Shutdown first for an orderly end.
  ~Connection();

  // Read reads up to buf.size() bytes of application data. Plaintext that
  // OpenSSL had already decrypted before offload comes first. Control
  // records (session tickets, alerts) are handled inside: a ticket is
  // consumed, close_notify ends the stream (IoProgress::end_of_stream), any
  // other alert is an Error of category kAlert naming it. After an error the
  // connection is dead: later calls fail with kClosed.
  Result<IoProgress> Read(std::span<std::byte> buf);

  // Write writes up to data.size() bytes. Like write(2), it may return
  // after writing only part (a signal, a non-blocking socket); WriteAll
  // loops until everything is written.
  Result<IoProgress> Write(std::span<const std::byte> data);
  // Write with flags: WriteFlags::kMore lets data share a record with what
  // follows (see WriteFlags); kNone is Write(data).
  Result<IoProgress> Write(std::span<const std::byte> data, WriteFlags flags);

  // WriteAll writes all of data, or fails. Blocking sockets only: on a
  // non-blocking socket it returns what it wrote when the socket would block.
  Result<IoProgress> WriteAll(std::span<const std::byte> data);

  // SendFile sends count bytes of file_fd starting at offset. With TX in the
  // kernel this is sendfile(2) on the socket: no copy through userspace.
  // With TX in OpenSSL (always, in a library built without kernel TLS), the
  // file is read and written in 16 KiB pieces. May
  // return after sending part, like Write. Like sendfile(2) itself, it can
  // raise SIGPIPE when the peer is gone (sendfile has no MSG_NOSIGNAL): a
  // program that uses it should ignore SIGPIPE, as servers do. Everything
  // else in ktls sends with MSG_NOSIGNAL.
  Result<IoProgress> SendFile(int file_fd, off_t offset, std::size_t count);

  // SpliceRead moves up to len bytes of application data from the
  // connection into a pipe (pipe_fd, its write end): with RX in the kernel
  // by splice(2), so the plaintext never enters this process; with RX in
  // OpenSSL by reading and writing it (IoProgress::copied). Records that are
  // not application data are handled as Read handles them, and splicing
  // goes on after them: a session ticket or KeyUpdate is consumed (a
  // requested update answered), close_notify gives end_of_stream, another
  // alert or a bad record an Error. The socket's blocking mode applies as
  // for Read; a full pipe is never waited for (would_block, Wait::kPipe).
  // With RX in the kernel, SpliceRead splices only into an empty pipe
  // (otherwise would_block, Wait::kPipe, until it is drained) of at least
  // 64 KiB, the default size (kUsage otherwise): kTLS splice can drop the
  // part of a record that a pipe has no room for. So drain the pipe
  // completely between calls. A library built without kernel TLS (CMake
  // option KTLS_KERNEL_TLS off) has no splice: kUnsupported.
  Result<IoProgress> SpliceRead(int pipe_fd, std::size_t len);

  // SpliceWrite moves up to len bytes from a pipe (pipe_fd, its read end)
  // into the connection: with TX in the kernel by splice(2), with TX in
  // OpenSSL by reading and writing them. Partial progress as Write; an
  // empty pipe is never waited for (would_block, Wait::kPipe). With
  // WriteFlags::kMore the last record may stay open for what follows, as
  // Write's kMore. With TX in OpenSSL, bytes are taken from the pipe a
  // record at a time; what could not be sent yet (a full socket) is held
  // and counted as moved, and goes first with the next write: a caller
  // whose pipe is now empty sends it with an empty Write({}) once the
  // socket is writable (ktls-proxy does), or with Shutdown. Like SendFile,
  // splice into a socket whose peer is gone can raise SIGPIPE. Without
  // kernel TLS in the library: kUnsupported, as SpliceRead.
  Result<IoProgress> SpliceWrite(int pipe_fd, std::size_t len, WriteFlags flags = WriteFlags::kNone);

  // Shutdown sends close_notify (as an alert record, whichever side holds
  // TX) and then, unless flags is kCloseNotifyOnly, shuts down the socket's
  // write side. Reading still works. On a non-blocking socket whose send
  // buffer is full it returns would_block (nothing sent): wait as
  // IoProgress::wait says and call again. Once close_notify went out,
  // further calls only shut the write side (unless kCloseNotifyOnly).
  Result<IoProgress> Shutdown(ShutdownFlags flags = ShutdownFlags::kNone);

  // Close closes the socket (and frees anything still held). Idempotent.
  // When ktls ended the connection (Shutdown's close_notify, or a fatal
  // alert after an error) and the peer has not closed yet, a blocking
  // socket lingers first: its write side is shut, and what the peer still
  // sends is read and dropped until the peer closes, or for at most
  // OffloadOptions::linger (2 s, 256 KiB by default). Closing with unread
  // data would send a TCP reset, which can destroy our alert in the peer's
  // receive buffer before the peer reads it. A non-blocking socket never
  // waits here: drive Linger from your event loop first.
  void Close();

  // Linger is one non-blocking step of that lingering close, for event
  // loops: it reads and drops what the peer sends. would_block (wait for
  // Wait::kReadable, but not past linger_deadline()) while the peer may
  // still send; end_of_stream once there is nothing to wait for (the peer
  // closed, the budget is spent, or ktls did not end the connection): then
  // call Close. ktls::asio::stream::async_close does this.
  Result<IoProgress> Linger();
  // linger_deadline: when lingering gives up (set by the first Linger).
  std::chrono::steady_clock::time_point linger_deadline() const noexcept;

  // UpdateKeys sends a TLS 1.3 KeyUpdate now and switches TX to the next
  // traffic secret; with request_peer_update, the peer is asked to do the
  // same for its direction. With TX in the kernel this needs Linux 6.14 or
  // later (ErrorCategory::kUnsupported otherwise). On a non-blocking socket
  // whose send buffer is full, the KeyUpdate is queued and goes out ahead of
  // the next write's data.
  Result<void> UpdateKeys(bool request_peer_update);

  // Key updates done on this connection since offload, per direction.
  std::uint64_t tx_key_updates() const noexcept;
  std::uint64_t rx_key_updates() const noexcept;

  // Where each direction's records are protected now.
  Offload tx() const noexcept;
  Offload rx() const noexcept;

  // kernel_state asks the kernel about this connection now: each
  // direction's record sequence number and the tls ULP's view (sock_diag).
  // A few system calls; safe while another thread reads or writes.
  KernelState kernel_state() const;

  // The session's details (available in every offload state).
  const SessionInfo& session() const noexcept;

  // fd is the socket, for poll/epoll. Do not read or write it directly
  // unless both directions are in the kernel and you handle control
  // records yourself.
  int fd() const noexcept;

  // tickets_relayed: TLS 1.3 session tickets the kernel received (RX in the
  // kernel) and ktls handed to OpenSSL, which made each a session for the
  // context's new-session callback (OffloadOptions::session_tickets).
  std::uint64_t tickets_relayed() const noexcept;
  // tickets_dropped: session tickets that arrived after RX went to the
  // kernel and could not be used; tickets_dropped_reason says why (null
  // while none was dropped): session tickets off, a context that keeps no
  // client sessions, or a ticket after the peer's KeyUpdate retired the
  // key OpenSSL reads with.
  std::uint64_t tickets_dropped() const noexcept;
  const char* tickets_dropped_reason() const noexcept;

  // Export hands the connection over to be imported elsewhere, typically
  // in another process (ktls/move.h: SendConnection does it over an
  // AF_UNIX socket). Only a connection with both directions in the kernel
  // and nothing left in OpenSSL can move: one that still has a direction
  // in OpenSSL, a TLS 1.3 client still relaying session tickets to OpenSSL
  // (OffloadOptions::session_tickets), a connection an error ended, or one
  // that started lingering, fails with kUnsupported (or kClosed) saying
  // why, and stays usable here. On success this Connection is empty: its
  // copy of the secrets is wiped, the socket belongs to the
  // ExportedConnection, and every later call is a kUsage error. No other
  // thread may use the connection during Export.
  Result<ExportedConnection> Export();

  // Import makes a Connection from a socket and the state Export made for
  // it, and goes on where the exporter stopped: the same records, keys,
  // key-update policy, session details and undelivered plaintext. It
  // trusts neither: the state must parse exactly (its format version,
  // every length), and fd must be a connected TCP socket with the tls ULP
  // whose kernel TX and RX ciphers and versions are the state's. Otherwise
  // kUsage (or kUnsupported, for a state this kernel cannot carry on, such
  // as key updates where the kernel cannot rekey, or any state in a library
  // built without kernel TLS), and fd still belongs to the caller. On
  // success the Connection owns fd.
  static Result<Connection> Import(int fd, std::span<const std::byte> state);

  explicit Connection(std::unique_ptr<detail::ConnectionImpl> impl);

 private:
  std::unique_ptr<detail::ConnectionImpl> impl_;
};

}  // namespace ktls

#endif  // KTLS_CONNECTION_H_
