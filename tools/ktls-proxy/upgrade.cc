// tools/ktls-proxy/upgrade.cc: see upgrade.h.
#include "ktls-proxy/upgrade.h"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <utility>

#include "common/privsep.h"
#include "ktls/move.h"

namespace ktls::proxy {
namespace {

constexpr char kListenerTag = 'L';
constexpr char kServingTag = 'R';
constexpr char kRelayTag = 'C';
constexpr char kBackendTag = 'B';
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

ktls::Error SysError(int err, std::string what) { return ktls::Error{ktls::ErrorCategory::kIo, err, std::move(what), -1}; }

void PutU64(std::uint8_t* at, std::uint64_t value) {
  for (int i = 7; i >= 0; --i, value >>= 8) at[i] = static_cast<std::uint8_t>(value);
}

std::uint64_t GetU64(const std::uint8_t* at) {
  std::uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = (value << 8) | at[i];
  return value;
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
  // The backend first: an Export it refuses leaves nothing sent, the
  // stream in step and the connection here.
  if (backend.tls()) {
    if (auto sent = ktls::SendConnection(sock_.get(), backend.connection()); !sent.ok()) {
      // A socket error (the new process gone, or not reading for the
      // timeout) fails every later send as well: stop here.
      if (!backend.open() || sent.error().category == ktls::ErrorCategory::kIo) broken_ = true;
      return sent;
    }
  } else if (!tools::SendFd(sock_.get(), backend.fd(), kBackendTag)) {
    broken_ = true;
    return SysError(errno, "sending the backend's socket");
  }
  // From here on a failure leaves the stream out of step, and the backend's
  // socket with the new process: the connection is lost to both.
  broken_ = true;
  backend.Close();  // This process's copy; the new process has its own.
  std::array<std::uint8_t, kHeaderLen> header{};
  header[0] = kRelayTag;
  header[1] = static_cast<std::uint8_t>((backend.tls() ? kBackendTls : 0) | (counts.up_ended ? kUpEnded : 0) |
                                        (counts.up_truncated ? kUpTruncated : 0) |
                                        (counts.down_ended ? kDownEnded : 0) |
                                        (counts.down_truncated ? kDownTruncated : 0));
  const std::uint64_t values[kNumCounts] = {counts.up, counts.up_copied, counts.down, counts.down_copied,
                                            static_cast<std::uint64_t>(counts.age.count())};
  for (std::size_t i = 0; i < kNumCounts; ++i) PutU64(header.data() + 2 + 8 * i, values[i]);
  ssize_t n;
  while ((n = ::send(sock_.get(), header.data(), header.size(), MSG_NOSIGNAL)) < 0 && errno == EINTR) {
  }
  if (n != static_cast<ssize_t>(header.size())) return SysError(n < 0 ? errno : EPIPE, "sending to the new process");
  if (auto sent = ktls::SendConnection(sock_.get(), client); !sent.ok()) return sent;
  broken_ = false;
  return {};
}

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

ktls::Result<ReceivedRelay> ReceiveRelay(int sock, uid_t peer_uid, bool backend_tls) {
  char next = 0;
  ssize_t n;
  while ((n = ::recv(sock, &next, 1, MSG_PEEK)) < 0 && errno == EINTR) {
  }
  if (n == 0) return ktls::Error{ktls::ErrorCategory::kClosed, 0, "the previous process handed over everything", -1};
  ReceivedRelay relay;
  if (backend_tls) {
    auto backend = ktls::ReceiveConnection(sock, {.peer_uid = peer_uid});
    if (!backend.ok()) return backend.error();
    relay.backend = Endpoint::Tls(std::move(backend).value());
  } else {
    const int fd = tools::ReceiveFd(sock, kBackendTag);
    if (fd < 0) return SysError(errno, "the backend's socket from the previous process");
    relay.backend = Endpoint::Plain(UniqueFd(fd));
  }
  std::array<std::uint8_t, kHeaderLen> header{};
  while ((n = ::recv(sock, header.data(), header.size(), MSG_WAITALL)) < 0 && errno == EINTR) {
  }
  if (n != static_cast<ssize_t>(header.size()) || header[0] != kRelayTag || (header[1] & ~kAllFlags) != 0 ||
      ((header[1] & kBackendTls) != 0) != backend_tls) {
    return SysError(n < 0 ? errno : EPROTO, "a connection's header from the previous process");
  }
  std::uint64_t values[kNumCounts];
  for (std::size_t i = 0; i < kNumCounts; ++i) values[i] = GetU64(header.data() + 2 + 8 * i);
  relay.counts = {values[0],
                  values[1],
                  values[2],
                  values[3],
                  std::chrono::milliseconds(values[4]),
                  (header[1] & kUpEnded) != 0,
                  (header[1] & kUpTruncated) != 0,
                  (header[1] & kDownEnded) != 0,
                  (header[1] & kDownTruncated) != 0};
  auto client = ktls::ReceiveConnection(sock, {.peer_uid = peer_uid});
  if (!client.ok()) return client.error();
  relay.client = std::move(client).value();
  return relay;
}

}  // namespace ktls::proxy
