// tools/ktls-proxy/upgrade.h: ktls-proxy's binary upgrade on SIGUSR2. The
// running process (the predecessor) starts the binary on disk with its own
// arguments and --upgrade-from (common/privsep.h: StartSelf), its fd 3 one
// end of an AF_UNIX socket pair; gives it the listeners; once it says it
// serves, hands it every relaying connection at a quiet point (both pipes
// empty: ProxyConnection::PrepareMove), with its counts so far, and exits
// when it holds none. The wire, in order on the socket:
//
//   'L' + a listener (SCM_RIGHTS), one per event loop   predecessor to successor
//   'R'                                                 successor: it serves
//   per connection: the backend's socket ('B', SCM_RIGHTS) or connection
//   (ktls::SendConnection), a header (counts, the backend's kind), the
//   client's connection                                 predecessor to successor
//   or 'H' and the client's connection (a --privsep handshake finished
//   after the workers were recalled)                    predecessor to successor
//   end of stream: everything that could go went
#ifndef KTLS_TOOLS_KTLS_PROXY_UPGRADE_H_
#define KTLS_TOOLS_KTLS_PROXY_UPGRADE_H_

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "ktls-proxy/endpoint.h"
#include "ktls-proxy/proxy_connection.h"
#include "ktls-proxy/unique_fd.h"
#include "ktls/connection.h"
#include "ktls/result.h"

namespace ktls::proxy {

// Successor: the predecessor's side, from SIGUSR2 until it exits.
class Successor {
 public:
  // Start starts path (the binary on disk) with args and --upgrade-from,
  // gives it listeners, and waits up to timeout for it to say it serves.
  // false and `error` (why; the child is killed and reaped) otherwise:
  // this process goes on as before.
  bool Start(const std::string& path, const std::vector<std::string>& args, const std::vector<int>& listeners,
             std::chrono::milliseconds timeout, std::string& error);
  pid_t pid() const noexcept { return pid_; }
  // Send moves one quiet relay to the successor (from any event loop
  // thread, one at a time; a send blocked for Start's timeout fails). On
  // failure the connection is still this process's where both endpoints
  // are still open (the backend's Export refused, say); otherwise it is
  // lost. After a socket error nothing more is sent.
  ktls::Result<void> Send(const RelayCounts& counts, ktls::Connection& client, Endpoint& backend);
  // SendHandshaken (--privsep, the old key holder): a client connection
  // handshaken after the workers were recalled (no backend yet), which
  // must be movable (tools::WhyNotMovable). On failure it is lost if the
  // client's connection is closed, and nothing more is sent.
  ktls::Result<void> SendHandshaken(ktls::Connection& client);
  // Close ends the stream: the successor stops waiting for connections.
  void Close();

 private:
  UniqueFd sock_;
  pid_t pid_ = -1;
  std::mutex mu_;
  bool broken_ = false;
};

// AcceptPredecessor (the successor, first): the process at the other end
// of sock must be this process's parent, running as this user.
bool AcceptPredecessor(int sock, std::string& error);
// ReceiveListener: one listener from the predecessor (-1 and errno).
int ReceiveListener(int sock);
// SayServing: 'R', once every listener is in an event loop.
bool SayServing(int sock);

// ReceivedRelay: one connection the predecessor sent (a client connection
// only, backend not open, when it was sent with SendHandshaken).
struct ReceivedRelay {
  RelayCounts counts;
  ktls::Connection client;
  Endpoint backend;
  // wire_bytes: what it took on the socket it came over (its states, their
  // lengths, the header): what it takes again on the way on.
  std::size_t wire_bytes = 0;
};
// ReceiveRelay receives the next connection (its backend a TLS connection
// with backend_tls, else a socket); ErrorCategory::kClosed at the end of
// the stream. Both connections must come from peer_uid.
// A refused part (a malformed state) fails only this connection, with the
// stream in step; a kIo error means the stream is out of step or broken.
// from_predecessor: the stream from the predecessor, where SendHandshaken's
// connections may come too (elsewhere the tag is an error: out of step).
ktls::Result<ReceivedRelay> ReceiveRelay(int sock, uid_t peer_uid, bool backend_tls, bool from_predecessor = false);

// kMaxRelayAge: the oldest a relay's age from the other process is taken
// to be (ten years): beyond it (a worker's nonsense) it is clamped, so that
// no time computed from it overflows.
inline constexpr std::chrono::milliseconds kMaxRelayAge{10LL * 366 * 24 * 60 * 60 * 1000};
// RelayAge: an age as the wire carries it (ms), clamped to kMaxRelayAge.
std::chrono::milliseconds RelayAge(std::uint64_t wire_ms);

// SendRelay: one quiet relay over sock, as Successor::Send (the same
// wire): from a --privsep worker back to its key holder, on kRecall. On
// failure `broken` says whether the stream is out of step.
ktls::Result<void> SendRelay(int sock, const RelayCounts& counts, ktls::Connection& client, Endpoint& backend,
                             bool& broken);

// --privsep, the key holder that took over: each relay from the previous
// one goes to a worker (WorkerPool::HandWith) as the tag 'M' and the
// relay, all of it or nothing: only when the worker's socket has room for
// the whole unit (tools::HasRoom), else EAGAIN and the next worker. A
// worker's socket also brings handshaken connections (first byte 0) and
// kRecall ('U'): the tag tells them apart.
// HandRelayToWorker: on failure with nothing sent (EAGAIN, EPIPE) the
// relay is still whole; otherwise it is lost (both closed).
ktls::Result<void> HandRelayToWorker(int sock, ReceivedRelay& relay);
// TakeMovedTag (a worker, its socket readable): whether a relay comes
// next; if so, the tag is read (ReceiveRelay reads the rest).
bool TakeMovedTag(int sock);

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_UPGRADE_H_
