// tools/ktls-proxy/proxy_connection.h: one proxied connection, from the
// client's TCP accept to its log line: the client's TLS handshake, the
// backend's connect (non-blocking, with a timeout), the PROXY header, the
// backend's TLS handshake (--backend-tls), the relay both ways with
// half-close passed through, and how it ends (close_notify, reset, idle
// timeout). It never blocks and owns no thread: its event loop calls Run
// when one of its sockets is ready or its deadline passed, and asks which
// events to wait for next.
#ifndef KTLS_TOOLS_KTLS_PROXY_PROXY_CONNECTION_H_
#define KTLS_TOOLS_KTLS_PROXY_PROXY_CONNECTION_H_

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "ktls-proxy/backend.h"
#include "ktls-proxy/connection_log.h"
#include "ktls-proxy/direction.h"
#include "ktls-proxy/endpoint.h"
#include "ktls-proxy/metrics.h"
#include "ktls-proxy/options.h"
#include "ktls-proxy/unique_fd.h"
#include "ktls/handshake.h"
#include "ktls/server.h"

namespace ktls::proxy {

// ProxyContext: what every connection of the process shares (read-only).
struct ProxyContext {
  const ProxyOptions* options = nullptr;
  const ktls::ServerContext* tls = nullptr;
  const Backend* backend = nullptr;
  std::function<void(const std::string&)> log;  // One connection line.
  ProxyMetrics* metrics = nullptr;
  // hand_off (--privsep, the key holder): where a handshaken client
  // connection goes (a worker process) instead of to the backend. Empty:
  // proxied here. On failure the connection is still this process's if
  // it is open (ktls::SendConnection).
  std::function<ktls::Result<void>(ktls::Connection&)> hand_off;
};

// RelayCounts: what a relaying connection carries to the process that
// takes over on SIGUSR2 (upgrade.h), besides its sockets: its bytes so far
// and its age, for the one line the process that ends it writes.
struct RelayCounts {
  std::uint64_t up = 0, up_copied = 0;
  std::uint64_t down = 0, down_copied = 0;
  std::chrono::milliseconds age{0};
  // A direction that was done already (half-closed), and whether its
  // source ended without close_notify.
  bool up_ended = false, up_truncated = false;
  bool down_ended = false, down_truncated = false;
};

class ProxyConnection {
 public:
  using Clock = std::chrono::steady_clock;

  // Interest: a socket of this connection and the epoll events it waits
  // for (fd -1: none; events 0: the socket is open but not waited on).
  struct Interest {
    int fd = -1;
    std::uint32_t events = 0;
  };

  // The client's socket, accepted (non-blocking); the addresses of both
  // ends of it.
  ProxyConnection(const ProxyContext& context, UniqueFd client, const sockaddr_storage& client_addr,
                  const sockaddr_storage& local_addr, Clock::time_point now);
  // A client connection another process handshook (a --privsep worker
  // received it): the backend's connect starts at the first Run.
  ProxyConnection(const ProxyContext& context, ktls::Connection client, Clock::time_point now);
  // A relaying connection the previous process handed over on SIGUSR2
  // (upgrade.h): it relays on from where it stopped there.
  ProxyConnection(const ProxyContext& context, ktls::Connection client, Endpoint backend, const RelayCounts& counts,
                  Clock::time_point now);
  ProxyConnection(const ProxyConnection&) = delete;
  ProxyConnection& operator=(const ProxyConnection&) = delete;

  // Run does what can be done now: called when a socket is ready, when the
  // deadline passed, or at once when more() said so.
  void Run(Clock::time_point now);
  // Abort ends the connection now (the drain timeout ran out, or a relay
  // that could not move). A relay (a direction still running) is cut: both
  // sides reset, end=cut_reason. Otherwise (a handshake, a connect, a
  // close under way) close_notify to the client where it can go without
  // waiting, then both sockets closed, end=reason.
  void Abort(const std::string& reason, const std::string& cut_reason, Clock::time_point now);

  bool finished() const noexcept { return phase_ == Phase::kDone; }
  // client: "ADDR:PORT", as the line says.
  const std::string& client() const noexcept { return record_.client; }
  // handing_off: the client's connection is ready to go to another process
  // (ProxyContext::hand_off). The event loop takes it out of its epoll
  // first (a registration lives as long as any process holds the socket),
  // then calls HandOff: the connection is finished (moved: the worker logs
  // it), or ends here with close_notify when it could not go.
  bool handing_off() const noexcept { return phase_ == Phase::kHandOff; }
  void HandOff(Clock::time_point now);
  bool more() const noexcept;

  // PrepareMove (SIGUSR2: this process hands its connections over): why
  // the connection can never move (a direction in OpenSSL on either leg,
  // closing already), or "" when it may: a handshake or connect in flight
  // finishes first; a relay stops reading (quiescing) and gives what its
  // pipes hold (a half-close passed on first), then movable() says so.
  std::string PrepareMove();
  bool quiescing() const noexcept { return quiescing_; }
  // movable: quiet, no byte in flight: MoveOut may send it now.
  bool movable() const noexcept;
  // MoveOut sends the connection with send (Successor::Send), once the
  // event loop took it out of its epoll: finished then, without a line (the
  // other process writes it). If it did not go, it relays on here, or,
  // lost on the way, ends here with end=not_moved.
  using MoveFn = std::function<ktls::Result<void>(const RelayCounts&, ktls::Connection&, Endpoint&)>;
  ktls::Result<void> MoveOut(const MoveFn& send, Clock::time_point now);
  Interest client_interest() const noexcept;
  Interest backend_interest() const noexcept;
  // deadline: when Run must be called even without readiness.
  Clock::time_point deadline() const noexcept;

 private:
  enum class Phase {
    kClientHandshake,
    kHandOff,       // --privsep, the key holder: to a worker.
    kStartBackend,  // --privsep, a worker: the handshake was done elsewhere.
    kConnecting,
    kProxyHeader,
    kBackendHandshake,
    kRelay,
    kClosingClient,  // close_notify to the client, then kLinger.
    kLinger,         // The client's lingering close.
    kDone,
  };

  void RunPhase(Clock::time_point now);
  void RunClientHandshake(Clock::time_point now);
  void StartBackend(Clock::time_point now);
  void RunConnecting(Clock::time_point now);
  void AfterConnect(Clock::time_point now);
  void RunProxyHeader(Clock::time_point now);
  void AfterProxyHeader(Clock::time_point now);
  void RunBackendHandshake(Clock::time_point now);
  void StartRelay(Clock::time_point now);
  void RunRelay(Clock::time_point now);
  void RelayFailed(const Direction& direction, Party source, Party sink);
  // Cut: a stream ends before its source did (the drain or idle timeout):
  // both sides reset, so neither can take it for a complete one.
  void Cut(std::string reason, Clock::time_point now);
  void RunClosingClient(Clock::time_point now);
  void RunLinger(Clock::time_point now);
  // BackendFailed: no backend connection came of it: close_notify to the
  // client, and the log says why.
  void BackendFailed(std::string reason, std::string detail, Clock::time_point now);
  void CloseClient(Clock::time_point now);
  void Finish(Clock::time_point now);
  void SetEnd(std::string reason, std::string detail = {});
  void SetError(std::string reason, std::string detail);

  const ProxyContext& context_;
  Phase phase_ = Phase::kClientHandshake;
  Clock::time_point started_;
  ConnectionRecord record_;
  sockaddr_storage client_addr_{};
  sockaddr_storage local_addr_{};
  // How it ended: the first clean end (a side's close), overridden by an
  // error (a reset, an alert, a timeout).
  std::string clean_end_;
  std::string error_end_;
  std::string error_detail_;

  std::optional<ktls::PendingHandshake> client_handshake_;
  std::optional<ktls::PendingHandshake> backend_handshake_;
  ktls::Wait client_wait_ = ktls::Wait::kNone;
  ktls::Wait backend_wait_ = ktls::Wait::kNone;
  UniqueFd backend_socket_;  // Connecting, or sending the PROXY header.
  std::vector<std::uint8_t> proxy_header_;
  std::size_t proxy_header_sent_ = 0;
  Clock::time_point phase_deadline_ = Clock::time_point::max();

  Endpoint client_;
  Endpoint backend_;
  std::optional<Direction> up_;    // Client to backend.
  std::optional<Direction> down_;  // Backend to client.
  Clock::time_point last_activity_;
  bool quiescing_ = false;
};

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_PROXY_CONNECTION_H_
