// tools/ktls-proxy/proxy_connection.cc: see proxy_connection.h.
#include "ktls-proxy/proxy_connection.h"

#include <poll.h>
#include <sys/epoll.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "common/privsep.h"
#include "ktls-proxy/proxy_protocol.h"
#include "ktls/types.h"

namespace ktls::proxy {
namespace {

// kClosingTime: how long close_notify to a client may wait for room in its
// socket's send buffer before the socket is closed without it.
constexpr std::chrono::milliseconds kClosingTime{2000};

std::uint32_t EventsFor(ktls::Wait wait) {
  switch (wait) {
    case ktls::Wait::kReadable: return EPOLLIN;
    case ktls::Wait::kWritable: return EPOLLOUT;
    default: return 0;
  }
}

// HandshakeEnd: the end word for a failed handshake with party.
std::string HandshakeEnd(Party party, const ktls::Error& error) {
  const std::string prefix = party == Party::kClient ? "" : "backend_";
  if (error.category == ktls::ErrorCategory::kIo && error.sys_errno == ETIMEDOUT) return prefix + "handshake_timeout";
  if (error.category == ktls::ErrorCategory::kAlert && error.tls_alert >= 0) {
    return (party == Party::kClient ? "alert:" : "backend_alert:") + std::string(ktls::AlertName(error.tls_alert));
  }
  if (IsReset(error)) return party == Party::kClient ? "client_reset" : "backend_reset";
  return prefix + "handshake_failed";
}

bool IsPeerGone(const Direction& direction) {
  return direction.state() == Direction::State::kFailed && direction.failed_in_shutdown() &&
         (IsReset(direction.error()) || direction.error().category == ktls::ErrorCategory::kClosed);
}

std::string CloseWord(Party party, bool tls, bool truncated) {
  const std::string who = party == Party::kClient ? "client" : "backend";
  if (truncated) return who + "_truncated";
  return who + (tls ? "_close_notify" : "_eof");
}

}  // namespace

ProxyConnection::ProxyConnection(const ProxyContext& context, UniqueFd client, const sockaddr_storage& client_addr,
                                 const sockaddr_storage& local_addr, Clock::time_point now)
    : context_(context), started_(now), client_addr_(client_addr), local_addr_(local_addr) {
  record_.client = AddressText(client_addr);
  record_.backend = context_.backend->name();
  context_.metrics->Opened();
  auto handshake = context_.tls->StartHandshake(client.release());
  if (!handshake.ok()) {
    SetError("handshake_failed", handshake.error().ToString());
    Finish(now);
    return;
  }
  client_handshake_.emplace(std::move(handshake).value());
}

ProxyConnection::ProxyConnection(const ProxyContext& context, ktls::Connection client, Clock::time_point now)
    : context_(context), phase_(Phase::kStartBackend), started_(now) {
  socklen_t len = sizeof(client_addr_);
  (void)::getpeername(client.fd(), reinterpret_cast<sockaddr*>(&client_addr_), &len);
  len = sizeof(local_addr_);
  (void)::getsockname(client.fd(), reinterpret_cast<sockaddr*>(&local_addr_), &len);
  record_.client = AddressText(client_addr_);
  record_.backend = context_.backend->name();
  record_.tx = ktls::OffloadName(client.tx());
  record_.rx = ktls::OffloadName(client.rx());
  context_.metrics->Opened();  // Its handshake was counted where it was made, by the key holder.
  client_ = Endpoint::Tls(std::move(client));
}

ProxyConnection::ProxyConnection(const ProxyContext& context, ktls::Connection client, Endpoint backend,
                                 const RelayCounts& counts, Clock::time_point now)
    : context_(context), phase_(Phase::kRelay), started_(now - counts.age) {
  socklen_t len = sizeof(client_addr_);
  (void)::getpeername(client.fd(), reinterpret_cast<sockaddr*>(&client_addr_), &len);
  record_.client = AddressText(client_addr_);
  record_.backend = context_.backend->name();
  record_.tx = ktls::OffloadName(client.tx());
  record_.rx = ktls::OffloadName(client.rx());
  if (backend.tls()) {
    record_.backend_tx = ktls::OffloadName(backend.connection().tx());
    record_.backend_rx = ktls::OffloadName(backend.connection().rx());
  }
  context_.metrics->Opened();  // Open here; handshaken (and counted so) in the other process.
  client_ = Endpoint::Tls(std::move(client));
  backend_ = std::move(backend);
  StartRelay(now);
  if (phase_ == Phase::kRelay) {
    up_->Carry(counts.up, counts.up_copied);
    down_->Carry(counts.down, counts.down_copied);
    if (counts.up_ended) up_->Ended(counts.up_truncated);
    if (counts.down_ended) down_->Ended(counts.down_truncated);
  }
}

bool ProxyConnection::more() const noexcept {
  return phase_ == Phase::kRelay && ((up_ && up_->more()) || (down_ && down_->more()));
}

ProxyConnection::Interest ProxyConnection::client_interest() const noexcept {
  switch (phase_) {
    case Phase::kClientHandshake: return {client_handshake_->fd(), EventsFor(client_wait_)};
    case Phase::kHandOff: return {};  // Out of the epoll before it goes.
    case Phase::kStartBackend:
    case Phase::kConnecting:
    case Phase::kProxyHeader:
    case Phase::kBackendHandshake: return {client_.fd(), 0};
    case Phase::kRelay: return {client_.fd(), up_->source_events() | down_->sink_events()};
    case Phase::kClosingClient:
    case Phase::kLinger: return {client_.fd(), EventsFor(client_wait_)};
    case Phase::kDone: break;
  }
  return {};
}

ProxyConnection::Interest ProxyConnection::backend_interest() const noexcept {
  switch (phase_) {
    case Phase::kConnecting:
    case Phase::kProxyHeader: return {backend_socket_.get(), EventsFor(backend_wait_)};
    case Phase::kBackendHandshake: return {backend_handshake_->fd(), EventsFor(backend_wait_)};
    case Phase::kRelay: return {backend_.fd(), up_->sink_events() | down_->source_events()};
    default: break;
  }
  return {};
}

ProxyConnection::Clock::time_point ProxyConnection::deadline() const noexcept {
  switch (phase_) {
    case Phase::kClientHandshake: return client_handshake_->deadline();
    case Phase::kBackendHandshake: return backend_handshake_->deadline();
    case Phase::kRelay: return last_activity_ + context_.options->limits.idle_timeout;
    case Phase::kDone: return Clock::time_point::max();
    default: return phase_deadline_;
  }
}

void ProxyConnection::SetEnd(std::string reason, std::string detail) {
  if (clean_end_.empty()) clean_end_ = std::move(reason);
  if (error_detail_.empty()) error_detail_ = std::move(detail);
}

void ProxyConnection::SetError(std::string reason, std::string detail) {
  if (!error_end_.empty()) return;  // The first error is the cause.
  error_end_ = std::move(reason);
  error_detail_ = std::move(detail);
}

void ProxyConnection::Run(Clock::time_point now) {
  for (;;) {
    const Phase before = phase_;
    RunPhase(now);
    if (phase_ == before || phase_ == Phase::kDone) break;
  }
}

void ProxyConnection::RunPhase(Clock::time_point now) {
  switch (phase_) {
    case Phase::kClientHandshake: return RunClientHandshake(now);
    case Phase::kHandOff: return;  // The event loop calls HandOff.
    case Phase::kStartBackend: return StartBackend(now);
    case Phase::kConnecting: return RunConnecting(now);
    case Phase::kProxyHeader: return RunProxyHeader(now);
    case Phase::kBackendHandshake: return RunBackendHandshake(now);
    case Phase::kRelay: return RunRelay(now);
    case Phase::kClosingClient: return RunClosingClient(now);
    case Phase::kLinger: return RunLinger(now);
    case Phase::kDone: return;
  }
}

void ProxyConnection::RunClientHandshake(Clock::time_point now) {
  auto wait = client_handshake_->Step();  // Fails with ETIMEDOUT past its deadline.
  if (!wait.ok()) {
    SetError(HandshakeEnd(Party::kClient, wait.error()), wait.error().ToString());
    client_handshake_.reset();  // Closes the socket (after reading what the client still sent).
    return Finish(now);
  }
  if (*wait != ktls::Wait::kNone) {
    client_wait_ = *wait;
    return;
  }
  auto conn = client_handshake_->Finish();
  client_handshake_.reset();
  if (!conn.ok()) {
    SetError("handshake_failed", conn.error().ToString());
    return Finish(now);
  }
  record_.tx = ktls::OffloadName(conn->tx());
  record_.rx = ktls::OffloadName(conn->rx());
  context_.metrics->Handshaken(conn->tx(), conn->rx());
  client_ = Endpoint::Tls(std::move(conn).value());
  if (!context_.hand_off) return StartBackend(now);
  // --privsep: the key holder proxies nothing itself. What cannot move
  // ends here, politely, and the line says why.
  if (std::string why = tools::WhyNotMovable(client_.connection()); !why.empty()) {
    SetError("cannot_move", std::move(why));
    return CloseClient(now);
  }
  phase_ = Phase::kHandOff;
}

void ProxyConnection::HandOff(Clock::time_point now) {
  auto sent = context_.hand_off(client_.connection());
  if (sent.ok()) {
    // The worker logs and counts it from here on; nothing of it is left.
    context_.metrics->Moved();
    phase_ = Phase::kDone;
    return;
  }
  SetError("not_moved", sent.error().ToString());
  if (!client_.open()) return Finish(now);  // Lost on the way (SendConnection says so).
  CloseClient(now);
}

std::string ProxyConnection::PrepareMove() {
  switch (phase_) {
    case Phase::kClientHandshake:
    case Phase::kStartBackend:
    case Phase::kConnecting:
    case Phase::kProxyHeader:
    case Phase::kBackendHandshake: return "";  // Ready to move (or ended) after it.
    case Phase::kRelay: break;
    default: return "it is closing";
  }
  if (quiescing_) return "";
  if (std::string why = tools::WhyNotMovable(client_.connection()); !why.empty()) return "client: " + why;
  if (backend_.tls()) {
    if (std::string why = tools::WhyNotMovable(backend_.connection()); !why.empty()) return "backend: " + why;
  }
  if (up_->state() == Direction::State::kFailed || down_->state() == Direction::State::kFailed) {
    return "it is closing";
  }
  // The client's connection goes after the backend's: nothing may make its
  // Export fail then (a truncation might).
  if (up_->source_ended() && up_->truncated()) return "the client closed without close_notify";
  quiescing_ = true;
  up_->Quiesce(true);
  down_->Quiesce(true);
  return "";
}

bool ProxyConnection::movable() const noexcept {
  return phase_ == Phase::kRelay && quiescing_ && up_->quiet() && down_->quiet();
}

ktls::Result<void> ProxyConnection::MoveOut(const MoveFn& send, Clock::time_point now) {
  const RelayCounts counts{up_->bytes(),
                           up_->copied(),
                           down_->bytes(),
                           down_->copied(),
                           std::chrono::duration_cast<std::chrono::milliseconds>(now - started_),
                           up_->state() == Direction::State::kDone,
                           up_->truncated(),
                           down_->state() == Direction::State::kDone,
                           down_->truncated()};
  auto sent = send(counts, client_.connection(), backend_);
  if (sent.ok()) {
    // The other process relays, counts and logs it from here on.
    up_.reset();
    down_.reset();
    backend_.Close();
    phase_ = Phase::kDone;
    return sent;
  }
  quiescing_ = false;
  up_->Quiesce(false);
  down_->Quiesce(false);
  if (!client_.open() || !backend_.open()) {
    SetError("not_moved", sent.error().ToString());
    backend_.Close();
    if (!client_.open()) {
      Finish(now);
    } else {
      CloseClient(now);
    }
  }
  return sent;
}

void ProxyConnection::StartBackend(Clock::time_point now) {
  Backend::Connecting connecting = context_.backend->StartConnect();
  if (connecting.error != 0) {
    return BackendFailed(connecting.error == ECONNREFUSED ? "backend_refused" : "backend_unreachable",
                         std::strerror(connecting.error), now);
  }
  backend_socket_ = std::move(connecting.fd);
  if (connecting.connected) return AfterConnect(now);
  phase_ = Phase::kConnecting;
  backend_wait_ = ktls::Wait::kWritable;
  phase_deadline_ = now + context_.options->connect_timeout;
}

void ProxyConnection::RunConnecting(Clock::time_point now) {
  pollfd pfd{backend_socket_.get(), POLLOUT, 0};
  if (::poll(&pfd, 1, 0) <= 0) {
    if (now >= phase_deadline_) BackendFailed("backend_connect_timeout", "", now);
    return;
  }
  const int err = Backend::ConnectError(backend_socket_.get());
  if (err != 0) {
    return BackendFailed(err == ECONNREFUSED ? "backend_refused" : "backend_unreachable", std::strerror(err), now);
  }
  AfterConnect(now);
}

void ProxyConnection::AfterConnect(Clock::time_point now) {
  if (!context_.options->proxy_protocol) return AfterProxyHeader(now);
  proxy_header_ = BuildProxyV2Header(client_addr_, local_addr_);
  proxy_header_sent_ = 0;
  phase_ = Phase::kProxyHeader;
  backend_wait_ = ktls::Wait::kWritable;
  phase_deadline_ = now + context_.options->connect_timeout;
}

void ProxyConnection::RunProxyHeader(Clock::time_point now) {
  while (proxy_header_sent_ < proxy_header_.size()) {
    const ssize_t n = ::send(backend_socket_.get(), proxy_header_.data() + proxy_header_sent_,
                             proxy_header_.size() - proxy_header_sent_, MSG_NOSIGNAL);
    if (n > 0) {
      proxy_header_sent_ += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (now >= phase_deadline_) BackendFailed("backend_timeout", "sending the PROXY header", now);
      return;
    }
    const ktls::Error error{ktls::ErrorCategory::kIo, errno, "sending the PROXY header", -1};
    return BackendFailed(EndReason(Party::kBackend, error), error.ToString(), now);
  }
  AfterProxyHeader(now);
}

void ProxyConnection::AfterProxyHeader(Clock::time_point now) {
  if (!context_.backend->tls()) {
    backend_ = Endpoint::Plain(std::move(backend_socket_));
    return StartRelay(now);
  }
  auto handshake = context_.backend->StartTls(std::move(backend_socket_));
  if (!handshake.ok()) return BackendFailed("backend_handshake_failed", handshake.error().ToString(), now);
  backend_handshake_.emplace(std::move(handshake).value());
  backend_wait_ = ktls::Wait::kNone;
  phase_ = Phase::kBackendHandshake;
}

void ProxyConnection::RunBackendHandshake(Clock::time_point now) {
  auto wait = backend_handshake_->Step();
  if (!wait.ok()) {
    const ktls::Error error = wait.error();
    backend_handshake_.reset();
    return BackendFailed(HandshakeEnd(Party::kBackend, error), error.ToString(), now);
  }
  if (*wait != ktls::Wait::kNone) {
    backend_wait_ = *wait;
    return;
  }
  auto conn = backend_handshake_->Finish();
  backend_handshake_.reset();
  if (!conn.ok()) return BackendFailed("backend_handshake_failed", conn.error().ToString(), now);
  record_.backend_tx = ktls::OffloadName(conn->tx());
  record_.backend_rx = ktls::OffloadName(conn->rx());
  backend_ = Endpoint::Tls(std::move(conn).value());
  StartRelay(now);
}

void ProxyConnection::StartRelay(Clock::time_point now) {
  std::string error;
  auto up = Channel::Create(context_.options->copy, error);
  auto down = up ? Channel::Create(context_.options->copy, error) : std::nullopt;
  if (!up || !down) {
    backend_.Close();
    SetError("proxy_error", error);
    return CloseClient(now);
  }
  up_.emplace(client_, backend_, std::move(*up));
  down_.emplace(backend_, client_, std::move(*down));
  phase_ = Phase::kRelay;
  last_activity_ = now;
}

void ProxyConnection::RunRelay(Clock::time_point now) {
  const std::uint64_t before = up_->bytes() + down_->bytes();
  up_->Step();
  if (up_->state() != Direction::State::kFailed) down_->Step();
  const std::uint64_t after = up_->bytes() + down_->bytes();
  if (after != before) last_activity_ = now;
  // The first side to close is how the connection ended, unless an error
  // comes after.
  if (up_->source_ended()) SetEnd(CloseWord(Party::kClient, true, up_->truncated()));
  if (down_->source_ended()) SetEnd(CloseWord(Party::kBackend, backend_.tls(), down_->truncated()));
  // Our close_notify or FIN meeting a peer that has closed (and maybe reset)
  // already ends nothing early: every byte went through.
  if (down_->source_ended() && IsPeerGone(*up_)) up_->SinkClosedFirst();
  if (up_->source_ended() && IsPeerGone(*down_)) down_->SinkClosedFirst();
  if (up_->state() == Direction::State::kFailed) return RelayFailed(*up_, Party::kClient, Party::kBackend);
  if (down_->state() == Direction::State::kFailed) return RelayFailed(*down_, Party::kBackend, Party::kClient);
  if (up_->state() == Direction::State::kDone && down_->state() == Direction::State::kDone) {
    // Both sides closed and every byte went through: nothing left unread
    // (no reset), nothing owed (no linger).
    backend_.Close();
    client_.Close();
    return Finish(now);
  }
  if (now >= last_activity_ + context_.options->limits.idle_timeout) {
    // Quiet both ways with nothing in flight: close_notify, as a server
    // ends an idle connection. Bytes a sink has not taken: cut.
    if (up_->in_flight() || down_->in_flight()) return Cut("idle_timeout_cut", now);
    SetError("idle_timeout", "");
    if (backend_.tls()) (void)backend_.ShutdownWrite(true);  // close_notify if it fits now.
    backend_.Close();
    return CloseClient(now);
  }
}

void ProxyConnection::RelayFailed(const Direction& direction, Party source, Party sink) {
  const Party party = direction.failed_side() == Direction::Side::kSource ? source : sink;
  SetError(EndReason(party, direction.error()), direction.error().ToString());
  const auto now = Clock::now();
  if (party == Party::kClient) {
    // A reset, an alert or bad records from the client: the backend sees
    // the connection abort (a reset), never a clean end.
    backend_.Reset();
    if (IsReset(direction.error())) {
      client_.Close();
      return Finish(now);
    }
    // ktls answered bad input with an alert: let the client read it.
    phase_ = Phase::kLinger;
    return RunLinger(now);
  }
  // The backend reset (or failed): so does the client's connection.
  backend_.Close();
  client_.Reset();
  Finish(now);
}

void ProxyConnection::Cut(std::string reason, Clock::time_point now) {
  SetError(std::move(reason), "");
  // A stream that has not ended must not look complete at either end:
  // no close_notify to the client, no FIN to the backend; a reset to both,
  // as when one side resets.
  backend_.Reset();
  client_.Reset();
  Finish(now);
}

void ProxyConnection::BackendFailed(std::string reason, std::string detail, Clock::time_point now) {
  backend_socket_.reset();
  backend_handshake_.reset();
  backend_.Close();
  SetError(std::move(reason), std::move(detail));
  CloseClient(now);
}

void ProxyConnection::CloseClient(Clock::time_point now) {
  phase_ = Phase::kClosingClient;
  phase_deadline_ = now + kClosingTime;
  client_wait_ = ktls::Wait::kNone;
  RunClosingClient(now);
}

void ProxyConnection::RunClosingClient(Clock::time_point now) {
  Transfer t = client_.ShutdownWrite(true);
  if (t.would_block && !t.error) {
    if (now < phase_deadline_) {
      client_wait_ = t.wait;
      return;
    }
    client_.Close();  // No room for close_notify in all that time.
    return Finish(now);
  }
  phase_ = Phase::kLinger;
  client_wait_ = ktls::Wait::kNone;
  RunLinger(now);
}

void ProxyConnection::RunLinger(Clock::time_point now) {
  auto step = client_.connection().Linger();
  if (step.ok() && step->would_block && now < client_.connection().linger_deadline()) {
    client_wait_ = step->wait;
    phase_deadline_ = client_.connection().linger_deadline();
    return;
  }
  client_.Close();
  Finish(now);
}

void ProxyConnection::Abort(const std::string& reason, const std::string& cut_reason, Clock::time_point now) {
  if (phase_ == Phase::kDone) return;
  // A relay has a direction running (both done, or one failed, ended it
  // already): its stream is cut short.
  if (phase_ == Phase::kRelay) return Cut(cut_reason, now);
  SetError(reason, "");
  client_handshake_.reset();
  backend_handshake_.reset();
  backend_socket_.reset();
  if (client_.open() && phase_ != Phase::kLinger) (void)client_.ShutdownWrite(true);
  if (backend_.open() && backend_.tls()) (void)backend_.ShutdownWrite(true);
  client_.Close();
  backend_.Close();
  Finish(now);
}

void ProxyConnection::Finish(Clock::time_point now) {
  phase_ = Phase::kDone;
  if (up_ && down_) {
    record_.up = up_->bytes();
    record_.up_copied = up_->copied();
    record_.down = down_->bytes();
    record_.down_copied = down_->copied();
  }
  up_.reset();  // Their channels' pipes close.
  down_.reset();
  record_.end = !error_end_.empty() ? error_end_ : !clean_end_.empty() ? clean_end_ : "closed";
  record_.detail = error_detail_;
  record_.duration = std::chrono::duration_cast<std::chrono::milliseconds>(now - started_);
  context_.metrics->Closed(record_.end, record_.up, record_.up_copied, record_.down, record_.down_copied);
  context_.log(FormatLine(record_));
}

}  // namespace ktls::proxy
