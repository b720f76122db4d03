// ktls/move.h: moving a live connection to another process.
//
// Once both directions of a connection are in the kernel, its TLS state is
// the socket plus a few hundred bytes that ktls keeps (the traffic secrets a
// TLS 1.3 key update needs, the key-update policy, the session's details,
// plaintext OpenSSL decrypted before offload, a control record read in
// part). Connection::Export packs those bytes and hands over the socket;
// Connection::Import, in the same or another process, checks both and goes
// on exactly where the exporter stopped. SendConnection and
// ReceiveConnection carry descriptor and state over an AF_UNIX socket in
// one sendmsg (SCM_RIGHTS).
//
//   // The process that did the handshake:
//   if (auto sent = ktls::SendConnection(unix_fd, conn); !sent) { ...conn is still usable... }
//   // The worker:
//   auto conn = ktls::ReceiveConnection(unix_fd, {.peer_uid = 0});
//
// The state holds secrets: it wipes itself when it goes away; never log it,
// never store it. Anyone who has it and the socket can read and write the
// connection, and nothing else.
#ifndef KTLS_MOVE_H_
#define KTLS_MOVE_H_

#include <sys/types.h>

#include <cstddef>
#include <optional>
#include <span>
#include <vector>

#include "ktls/connection.h"
#include "ktls/export.h"
#include "ktls/result.h"

namespace ktls {

// kMaxConnectionStateBytes: the largest state Import accepts (most of it,
// when large, is the peer's certificate chain).
inline constexpr std::size_t kMaxConnectionStateBytes = 1024 * 1024;

// ConnectionState: the bytes Export made. Move-only; wiped when destroyed.
class KTLS_API ConnectionState {
 public:
  ConnectionState() = default;
  explicit ConnectionState(std::vector<std::byte> bytes) : bytes_(std::move(bytes)) {}
  ConnectionState(ConnectionState&& other) noexcept;
  ConnectionState& operator=(ConnectionState&& other) noexcept;
  ConnectionState(const ConnectionState&) = delete;
  ConnectionState& operator=(const ConnectionState&) = delete;
  ~ConnectionState();

  std::span<const std::byte> bytes() const noexcept { return bytes_; }

 private:
  void Wipe() noexcept;
  std::vector<std::byte> bytes_;
};

// ExportedConnection: what Export hands over, the socket and the state.
// Owns the socket until release_fd(); destroying it closes the socket (on
// a thread of its own, as CloseWithoutWaiting without reset, with
// close_without_waiting: Export sets it for a connection that
// ReceiveConnection took from an untrusted_sender).
class KTLS_API ExportedConnection {
 public:
  ExportedConnection(int fd, ConnectionState state, bool close_without_waiting = false) noexcept
      : fd_(fd), state_(std::move(state)), close_without_waiting_(close_without_waiting) {}
  ExportedConnection(ExportedConnection&& other) noexcept;
  ExportedConnection& operator=(ExportedConnection&& other) noexcept;
  ExportedConnection(const ExportedConnection&) = delete;
  ExportedConnection& operator=(const ExportedConnection&) = delete;
  ~ExportedConnection();

  int fd() const noexcept { return fd_; }
  // release_fd: the caller owns the socket from now on.
  int release_fd() noexcept;
  const ConnectionState& state() const noexcept { return state_; }

 private:
  void Close() noexcept;

  int fd_ = -1;
  ConnectionState state_;
  bool close_without_waiting_ = false;
};

// SendConnection exports conn and sends its socket and state over
// unix_socket (a connected, blocking AF_UNIX SOCK_STREAM socket) in one
// sendmsg: a 4-byte big-endian length, then the state, the socket as
// SCM_RIGHTS. On success conn is empty (every call on it is a kUsage
// error). If the connection cannot move (see Connection::Export) or nothing
// could be sent, the error says why and conn is as it was, still usable. If
// the socket broke after part of the state went out, the connection is lost
// to both sides: the error says so, and conn is empty.
struct KTLS_API SendConnectionOptions {
  // dont_wait: never wait for a receiver that is behind. If unix_socket
  // cannot take the whole state now, nothing is sent: the error is kIo with
  // sys_errno EAGAIN, and conn is as it was, still usable (hand it to
  // another receiver, or end it). A state that fits in one buffer of the
  // socket (up to half its SO_SNDBUF) goes whole or not at all; a larger one
  // goes only when the socket's queue has room for it twice over, so that
  // its rest never waits for long.
  bool dont_wait = false;
  // untrusted_receiver: the receiver may set the socket up to make this
  // process wait when it closes its copy (SO_LINGER with a timeout, set and
  // the receiver's copy closed before this process's close: that close is
  // then the last, and lingers). This process's copy is then closed with
  // CloseWithoutWaiting (not reset: the receiver's connection goes on).
  bool untrusted_receiver = false;
};

KTLS_API Result<void> SendConnection(int unix_socket, Connection& conn, const SendConnectionOptions& options = {});

struct KTLS_API ReceiveConnectionOptions {
  // peer_uid: when set, the sending process must run as this user
  // (SO_PEERCRED), or nothing is received.
  std::optional<uid_t> peer_uid;
  // untrusted_sender: the sender may have set the socket up to make this
  // process wait (O_NONBLOCK off, SO_LINGER with a long timeout: a close or
  // write here would block on them). Every descriptor received is made
  // non-blocking with SO_LINGER off before anything else; but both live in
  // state the sender shares (the open file description, the socket), and
  // it can set them again from the copy it keeps, then close that copy so
  // that this process's close is the last. So a descriptor refused here is
  // closed with CloseWithoutWaiting (a reset); and the connection returned
  // never waits on them either: its reads and writes through the kernel
  // pass MSG_DONTWAIT, its Close never lingers blocking, and its socket is
  // closed as CloseWithoutWaiting closes (its ExportedConnection's too). Only
  // SendFile and the splice calls still follow the shared O_NONBLOCK.
  bool untrusted_sender = false;
};

// CloseWithoutWaiting closes fd, a socket that another process holds or
// held too, such that nothing that process set makes the caller wait: it
// may have set SO_LINGER with a timeout and closed its own copy first, so
// that this close is the socket's last and waits for the peer to take what
// is unsent. reset (for a connection refused or given up): the close is
// abortive (SO_LINGER 0: the peer gets a TCP reset, what was unsent is
// dropped), so it has nothing to wait for. A socket whose SO_LINGER could
// make the close wait (on, with a timeout) is closed on a thread of its
// own (detached): only that thread waits, and a process that exits ends
// its wait. Any other is closed on the caller's thread (no thread for each
// connection a key holder hands on); what is left is a holder that sets
// SO_LINGER, and closes its own copy, between this function's getsockopt
// and its close, two system calls in a row it cannot see. If no thread can
// be started, fd is closed on the caller's. Errors are ignored; fd < 0
// does nothing.
KTLS_API void CloseWithoutWaiting(int fd, bool reset = true) noexcept;

// ReceiveConnection receives one connection that SendConnection sent and
// imports it. A malformed state, a descriptor that is not the connection
// the state describes, or more than one descriptor, is an error (the
// descriptors received are closed, from an untrusted_sender with
// CloseWithoutWaiting), and the socket is ready for the next
// message; only a length beyond kMaxConnectionStateBytes leaves it out of
// step (close it). End of stream before a connection arrived:
// ErrorCategory::kClosed.
KTLS_API Result<Connection> ReceiveConnection(int unix_socket, const ReceiveConnectionOptions& options = {});

}  // namespace ktls

#endif  // KTLS_MOVE_H_
