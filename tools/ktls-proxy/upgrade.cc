// tools/ktls-proxy/upgrade.cc: see upgrade.h.
#include "ktls-proxy/upgrade.h"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <utility>

#include "common/privsep.h"
#include "ktls/move.h"

namespace ktls::proxy {
namespace {

constexpr char kListenerTag = 'L';
constexpr char kServingTag = 'R';
constexpr char kRelayTag = 'C';
constexpr char kBackendTag = 'B';
// kMovedTag: before a relay a key holder hands to a --privsep worker
// (HandRelayToWorker), where a handshaken connection (its first byte 0:
// ktls::SendConnection's length) or tools::kRecall may come instead.
constexpr char kMovedTag = 'M';
// kHandshakenTag: before a client connection only (no backend yet) on the
// stream to the successor, where a relay starts with 'B' or a 0 (the
// backend's ktls::SendConnection length). --privsep: a handshake the old
// key holder finished after it recalled its workers.
constexpr char kHandshakenTag = 'H';
// The header between a connection's backend and its client: the tag, the
// flags below (the backend's kind: both processes have the same
// --backend-tls; which directions are done), then up, up_copied, down,
// down_copied and the age in ms, each 8 bytes big-endian.
constexpr std::uint8_t kBackendTls = 1;
constexpr std::uint8_t kUpEnded = 2;
constexpr std::uint8_t kUpTruncated = 4;
constexpr std::uint8_t kDownEnded = 8;
constexpr std::uint8_t kDownTruncated = 16;
constexpr std::uint8_t kAllFlags = 31;
constexpr std::size_t kNumCounts = 5;
constexpr std::size_t kHeaderLen = 2 + 8 * kNumCounts;
// kMessagesPerUnit: the sends HandRelayToWorker makes for one relay: the
// tag, the backend, the header, the client.
constexpr std::size_t kMessagesPerUnit = 4;

ktls::Error SysError(int err, std::string what) { return ktls::Error{ktls::ErrorCategory::kIo, err, std::move(what), -1}; }

void PutU64(std::uint8_t* at, std::uint64_t value) {
  for (int i = 7; i >= 0; --i, value >>= 8) at[i] = static_cast<std::uint8_t>(value);
}

std::uint64_t GetU64(const std::uint8_t* at) {
  std::uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = (value << 8) | at[i];
  return value;
}

// ReceivePart: one connection of a relay (ktls::ReceiveConnection). An
// error that leaves the stream out of step or broken (the sender gone, a
// length beyond any state: nothing more can be read in step) becomes kIo;
// any other (a malformed state, a descriptor that is not its connection)
// refused this part only, the stream read to its end. The caller checked
// the sender's uid.
ktls::Result<ktls::Connection> ReceivePart(int sock, uid_t peer_uid, const char* what, std::size_t& wire_bytes) {
  std::array<std::uint8_t, 4> length{};
  ssize_t n;
  while ((n = ::recv(sock, length.data(), length.size(), MSG_PEEK | MSG_WAITALL)) < 0 && errno == EINTR) {
  }
  std::size_t len = 0;
  for (std::uint8_t b : length) len = (len << 8) | b;
  if (n == static_cast<ssize_t>(length.size()) && len > ktls::kMaxConnectionStateBytes) {
    return SysError(EPROTO, std::string(what) + " from the other process: a state of " + std::to_string(len) +
                                " bytes (out of step)");
  }
  wire_bytes += length.size() + len;
  // Distrusted (non-blocking, no linger): a key holder may end what it
  // receives, from a worker or (an upgrade) from the previous key holder,
  // which had it from one; an event loop wants it non-blocking anyway.
  auto conn = ktls::ReceiveConnection(sock, {.peer_uid = peer_uid, .untrusted_sender = true});
  if (!conn.ok() &&
      (conn.error().category == ktls::ErrorCategory::kIo || conn.error().category == ktls::ErrorCategory::kClosed)) {
    return SysError(conn.error().sys_errno != 0 ? conn.error().sys_errno : EPROTO,
                    std::string(what) + " from the other process: " + conn.error().ToString());
  }
  return conn;
}

void KillAndReap(pid_t pid) {
  ::kill(pid, SIGKILL);
  while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
}

}  // namespace

bool Successor::Start(const std::string& path, const std::vector<std::string>& args,
                      const std::vector<int>& listeners, std::chrono::milliseconds timeout, std::string& error) {
  if (path.empty()) {
    error = "the binary's path is unknown (/proc/self/exe unreadable at start-up)";
    return false;
  }
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    error = std::string("socketpair: ") + std::strerror(errno);
    return false;
  }
  UniqueFd sock(pair[0]);
  const pid_t child = tools::StartSelf(path, "ktls-proxy", args, "--upgrade-from", pair[1], nullptr);
  const int start_errno = errno;
  ::close(pair[1]);
  if (child < 0) {
    error = "cannot start " + path + ": " + std::strerror(start_errno);
    return false;
  }
  std::fprintf(stderr, "ktls-proxy: upgrade: started %s as pid %d\n", path.c_str(), static_cast<int>(child));
  for (int fd : listeners) {
    if (!tools::SendFd(sock.get(), fd, kListenerTag)) {
      error = "pid " + std::to_string(child) + " (" + path + ") exited before it took the listeners";
      KillAndReap(child);
      return false;
    }
  }
  pollfd pfd{sock.get(), POLLIN, 0};
  int ready;
  while ((ready = ::poll(&pfd, 1, static_cast<int>(timeout.count()))) < 0 && errno == EINTR) {
  }
  char byte = 0;
  if (ready <= 0 || ::read(sock.get(), &byte, 1) != 1 || byte != kServingTag) {
    error = "pid " + std::to_string(child) + " (" + path + ") " +
            (ready == 0 ? "did not take over in time" : "exited before it took over");
    KillAndReap(child);
    return false;
  }
  // A new process that stops reading must not hold the event loops in a
  // send for ever: after this long the hand-over fails, and what is left
  // stays here.
  const timeval send_timeout{static_cast<time_t>(timeout.count() / 1000),
                             static_cast<suseconds_t>(timeout.count() % 1000 * 1000)};
  (void)::setsockopt(sock.get(), SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));
  sock_ = std::move(sock);
  pid_ = child;
  return true;
}

ktls::Result<void> Successor::Send(const RelayCounts& counts, ktls::Connection& client, Endpoint& backend) {
  std::lock_guard lock(mu_);
  if (broken_ || sock_.get() < 0) return SysError(EPIPE, "an earlier hand-over failed");
  return SendRelay(sock_.get(), counts, client, backend, broken_);
}

ktls::Result<void> Successor::SendHandshaken(ktls::Connection& client) {
  std::lock_guard lock(mu_);
  if (broken_ || sock_.get() < 0) return SysError(EPIPE, "an earlier hand-over failed");
  // The caller checked that it can move (tools::WhyNotMovable): its Export
  // does not refuse after the tag went.
  ssize_t n;
  while ((n = ::send(sock_.get(), &kHandshakenTag, 1, MSG_NOSIGNAL)) < 0 && errno == EINTR) {
  }
  if (n != 1) {
    broken_ = true;
    return SysError(n < 0 ? errno : EPIPE, "sending to the new process");
  }
  auto sent = ktls::SendConnection(sock_.get(), client);
  if (!sent.ok()) broken_ = true;  // Out of step: the tag went without its connection.
  return sent;
}

ktls::Result<void> SendRelay(int sock, const RelayCounts& counts, ktls::Connection& client, Endpoint& backend,
                             bool& broken) {
  // The backend first: an Export it refuses leaves nothing sent, the
  // stream in step and the connection here.
  if (backend.tls()) {
    if (auto sent = ktls::SendConnection(sock, backend.connection()); !sent.ok()) {
      // A socket error (the other process gone, or not reading for the
      // timeout) fails every later send as well: stop here.
      if (!backend.open() || sent.error().category == ktls::ErrorCategory::kIo) broken = true;
      return sent;
    }
  } else if (!tools::SendFd(sock, backend.fd(), kBackendTag)) {
    broken = true;
    return SysError(errno, "sending the backend's socket");
  }
  // From here on a failure leaves the stream out of step, and the backend's
  // socket with the other process: the connection is lost to both.
  broken = true;
  backend.Close();  // This process's copy; the other process has its own.
  std::array<std::uint8_t, kHeaderLen> header{};
  header[0] = kRelayTag;
  header[1] = static_cast<std::uint8_t>((backend.tls() ? kBackendTls : 0) | (counts.up_ended ? kUpEnded : 0) |
                                        (counts.up_truncated ? kUpTruncated : 0) |
                                        (counts.down_ended ? kDownEnded : 0) |
                                        (counts.down_truncated ? kDownTruncated : 0));
  const std::uint64_t values[kNumCounts] = {counts.up, counts.up_copied, counts.down, counts.down_copied,
                                            static_cast<std::uint64_t>(std::max<std::int64_t>(counts.age.count(), 0))};
  for (std::size_t i = 0; i < kNumCounts; ++i) PutU64(header.data() + 2 + 8 * i, values[i]);
  ssize_t n;
  while ((n = ::send(sock, header.data(), header.size(), MSG_NOSIGNAL)) < 0 && errno == EINTR) {
  }
  if (n != static_cast<ssize_t>(header.size())) return SysError(n < 0 ? errno : EPIPE, "sending to the other process");
  if (auto sent = ktls::SendConnection(sock, client); !sent.ok()) return sent;
  broken = false;
  return {};
}

ktls::Result<void> HandRelayToWorker(int sock, ReceivedRelay& relay) {
  // All or nothing, never waiting: a worker that is behind (its queue
  // without room for the whole unit) is passed over (WorkerPool::HandWith)
  // with nothing sent, rather than waited for, with its slot's lock held,
  // in the middle of a unit. The unit takes on to the worker what it took
  // here (the same states, just imported), and the tag.
  if (!tools::HasRoom(sock, 1 + relay.wire_bytes, kMessagesPerUnit)) {
    return SysError(EAGAIN, "the worker is behind (no room for a whole moved connection)");
  }
  ssize_t n;
  while ((n = ::send(sock, &kMovedTag, 1, MSG_NOSIGNAL | MSG_DONTWAIT)) < 0 && errno == EINTR) {
  }
  if (n != 1) return SysError(n < 0 ? errno : EPIPE, "handing a moved connection to a worker");
  // Both connections came in whole just now: their Export does not refuse.
  // A socket error after the tag loses the unit (and the worker is gone).
  bool broken = false;
  auto sent = SendRelay(sock, relay.counts, relay.client, relay.backend, broken);
  if (!sent.ok()) {
    relay.backend.Close();
    relay.client = ktls::Connection();
  }
  return sent;
}

std::chrono::milliseconds RelayAge(std::uint64_t wire_ms) {
  // Compared as unsigned: a value past INT64_MAX is no negative age.
  return wire_ms > static_cast<std::uint64_t>(kMaxRelayAge.count())
             ? kMaxRelayAge
             : std::chrono::milliseconds(static_cast<std::chrono::milliseconds::rep>(wire_ms));
}

bool TakeMovedTag(int sock) { return tools::TakeTag(sock, kMovedTag); }

void Successor::Close() {
  std::lock_guard lock(mu_);
  sock_.reset();
}

bool AcceptPredecessor(int sock, std::string& error) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    error = std::string("--upgrade-from: fd 3 is no socket from the previous process: ") + std::strerror(errno);
    return false;
  }
  if (cred.uid != ::getuid() || cred.pid != ::getppid()) {
    error = "--upgrade-from: fd 3 comes from pid " + std::to_string(cred.pid) + " uid " + std::to_string(cred.uid) +
            ", not from this process's parent as this user";
    return false;
  }
  return true;
}

int ReceiveListener(int sock) { return tools::ReceiveFd(sock, kListenerTag); }

bool SayServing(int sock) { return ::write(sock, &kServingTag, 1) == 1; }

ktls::Result<ReceivedRelay> ReceiveRelay(int sock, uid_t peer_uid, bool backend_tls, bool from_predecessor) {
  char next = 0;
  ssize_t n;
  while ((n = ::recv(sock, &next, 1, MSG_PEEK)) < 0 && errno == EINTR) {
  }
  if (n == 0) return ktls::Error{ktls::ErrorCategory::kClosed, 0, "the other process handed over everything", -1};
  if (n < 0) return SysError(errno, "receiving from the other process");
  // The sender's uid, checked once (it cannot change): every later
  // refusal is then about one part only.
  ucred cred{};
  socklen_t cred_len = sizeof(cred);
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) != 0 || cred.uid != peer_uid) {
    return SysError(EPERM, "the other process does not run as uid " + std::to_string(peer_uid));
  }
  if (n == 1 && next == kHandshakenTag && from_predecessor) {
    (void)::recv(sock, &next, 1, 0);
    ReceivedRelay handshaken;
    auto client = ReceivePart(sock, peer_uid, "a handshaken connection", handshaken.wire_bytes);
    if (!client.ok()) return client.error();
    handshaken.client = std::move(client).value();
    return handshaken;  // No backend yet.
  }
  // Every part is read even when one is refused (a malformed state): the
  // stream stays in step, and only this connection is lost. A part the
  // stream itself breaks in (a short read, a wrong tag) is a kIo error:
  // the stream is out of step, read nothing more from it.
  ReceivedRelay relay;
  std::optional<ktls::Error> refused;
  if (backend_tls) {
    auto backend = ReceivePart(sock, peer_uid, "the backend's connection", relay.wire_bytes);
    if (!backend.ok()) {
      if (backend.error().category == ktls::ErrorCategory::kIo) return backend.error();
      refused = backend.error();
    } else {
      relay.backend = Endpoint::Tls(std::move(backend).value());
    }
  } else {
    const int fd = tools::ReceiveFd(sock, kBackendTag);
    if (fd < 0) return SysError(errno, "the backend's socket from the other process");
    // The worker keeps its copy: closed here without waiting on it.
    relay.backend = Endpoint::Plain(UniqueFd(fd, /*shared_with_untrusted=*/true));
    relay.wire_bytes += 1;
  }
  relay.wire_bytes += kHeaderLen;
  std::array<std::uint8_t, kHeaderLen> header{};
  while ((n = ::recv(sock, header.data(), header.size(), MSG_WAITALL)) < 0 && errno == EINTR) {
  }
  if (n != static_cast<ssize_t>(header.size()) || header[0] != kRelayTag || (header[1] & ~kAllFlags) != 0 ||
      ((header[1] & kBackendTls) != 0) != backend_tls) {
    return SysError(n < 0 ? errno : EPROTO, "a connection's header from the other process");
  }
  std::uint64_t values[kNumCounts];
  for (std::size_t i = 0; i < kNumCounts; ++i) values[i] = GetU64(header.data() + 2 + 8 * i);
  relay.counts = {values[0],
                  values[1],
                  values[2],
                  values[3],
                  RelayAge(values[4]),
                  (header[1] & kUpEnded) != 0,
                  (header[1] & kUpTruncated) != 0,
                  (header[1] & kDownEnded) != 0,
                  (header[1] & kDownTruncated) != 0};
  auto client = ReceivePart(sock, peer_uid, "the client's connection", relay.wire_bytes);
  if (!client.ok()) return client.error();
  if (refused) return *refused;  // The client's connection goes too (closed): it had no backend.
  relay.client = std::move(client).value();
  return relay;
}

}  // namespace ktls::proxy
