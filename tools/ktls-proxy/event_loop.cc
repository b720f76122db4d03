// tools/ktls-proxy/event_loop.cc: see event_loop.h.
#include "ktls-proxy/event_loop.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common/privsep.h"
#include "ktls-proxy/listen_socket.h"
#include "ktls-proxy/upgrade.h"
#include "ktls/move.h"

namespace ktls::proxy {
namespace {

// epoll tags: the listener, the wake-up eventfd, and for connections
// id * 2 + side (side 0: the client's socket, 1: the backend's).
constexpr std::uint64_t kListenerTag = 0;
constexpr std::uint64_t kWakeTag = 1;

constexpr int kMaxEvents = 256;
constexpr int kMaxAcceptsPerWake = 64;
// How often a listener paused by --max-connections looks for room again.
constexpr std::chrono::milliseconds kPausedPoll{20};
// After EMFILE/ENFILE: let connections end before accepting again.
constexpr std::chrono::milliseconds kOutOfFdsPause{100};

}  // namespace

EventLoop::EventLoop(const ProxyContext& context, std::atomic<std::size_t>& active)
    : context_(context), active_(active) {
  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeTag;
  (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev);
}

bool EventLoop::Listen(const std::string& host, std::uint16_t port, std::string& error) {
  if (epoll_.get() < 0 || wake_.get() < 0) {
    error = std::string("epoll or eventfd: ") + std::strerror(errno);
    return false;
  }
  UniqueFd listener = OpenListenSocket(host, port, {.reuse_port = true, .non_blocking = true, .backlog = SOMAXCONN},
                                      "--listen", port_, error);
  if (listener.get() < 0) return false;
  return WatchListener(std::move(listener), error);
}

bool EventLoop::ReceiveFrom(UniqueFd unix_socket, uid_t peer_uid, std::string& error) {
  receiving_ = true;
  peer_uid_ = peer_uid;
  return WatchListener(std::move(unix_socket), error);
}

bool EventLoop::WatchListener(UniqueFd listener, std::string& error) {
  listener_ = std::move(listener);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenerTag;
  if (epoll_.get() < 0 || wake_.get() < 0 || ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listener_.get(), &ev) != 0) {
    error = std::string("epoll: ") + std::strerror(errno);
    return false;
  }
  listener_registered_ = true;
  return true;
}

bool EventLoop::ListenOn(UniqueFd listener, std::string& error) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    error = std::string("the listener from the previous process: ") + std::strerror(errno);
    return false;
  }
  port_ = ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6&>(addr).sin6_port
                                           : reinterpret_cast<const sockaddr_in&>(addr).sin_port);
  return WatchListener(std::move(listener), error);
}

void EventLoop::BeginDrain() {
  {
    std::lock_guard lock(mu_);
    drain_asked_ = true;
  }
  const std::uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
}

void EventLoop::BeginHandOver(ProxyConnection::MoveFn move) {
  {
    std::lock_guard lock(mu_);
    move_asked_ = std::move(move);
  }
  const std::uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
}

void EventLoop::ExpectRecall() {
  {
    std::lock_guard lock(mu_);
    recall_asked_ = true;
  }
  const std::uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
}

void EventLoop::Adopt(std::unique_ptr<ProxyConnection> conn) {
  {
    std::lock_guard lock(mu_);
    adopted_.push_back(std::move(conn));
  }
  const std::uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
}

void EventLoop::OnWake(Clock::time_point now) {
  std::uint64_t count;
  (void)!::read(wake_.get(), &count, sizeof(count));
  std::vector<std::unique_ptr<ProxyConnection>> adopted;
  bool drain = false;
  bool recall = false;
  {
    std::lock_guard lock(mu_);
    adopted.swap(adopted_);
    drain = drain_asked_;
    recall = recall_asked_;
    if (move_asked_ && !move_) move_ = std::move(move_asked_);
  }
  if (recall && receiving_ && !recall_expected_) {
    recall_expected_ = true;  // ResumeListenerIfRoom, after this wake, watches the socket again.
    std::fprintf(stderr, "ktls-proxy: worker %d: the handshake process upgrades: reading what it queued\n",
                 static_cast<int>(::getpid()));
  }
  for (auto& conn : adopted) Add(std::move(conn), now);
  if (move_ && !draining_) HandOverAll(now);
  if (drain) StartDrain(now);
}

void EventLoop::HandOverAll(Clock::time_point now) {
  StartDrain(now);
  std::vector<std::uint64_t> ids;
  for (const auto& [id, entry] : connections_) ids.push_back(id);
  for (std::uint64_t id : ids) {
    if (auto it = connections_.find(id); it != connections_.end()) TryMove(id, it->second);
  }
}

void EventLoop::HandBack(Clock::time_point now) {
  // The socket stays open for sending after StartDrain closed the
  // listener_ copy: blocking, as the key holder reads all the time.
  auto sock = std::make_shared<UniqueFd>(::fcntl(listener_.get(), F_DUPFD_CLOEXEC, 0));
  auto broken = std::make_shared<bool>(sock->get() < 0);
  std::fprintf(stderr, "ktls-proxy: worker %d: handing %zu connection(s) back for the new process\n",
               static_cast<int>(::getpid()), connections_.size());
  move_ = [sock, broken](const RelayCounts& counts, ktls::Connection& client, Endpoint& backend) -> ktls::Result<void> {
    if (*broken) return ktls::Error{ktls::ErrorCategory::kIo, EPIPE, "an earlier hand-back failed", -1};
    return SendRelay(sock->get(), counts, client, backend, *broken);
  };
  HandOverAll(now);
}

void EventLoop::TryMove(std::uint64_t id, Entry& entry) {
  ProxyConnection& conn = *entry.conn;
  if (entry.stays || conn.finished()) return;
  if (!conn.movable()) {
    const bool was_quiescing = conn.quiescing();
    if (std::string why = conn.PrepareMove(); !why.empty()) {
      entry.stays = true;
      std::fprintf(stderr, "ktls-proxy: upgrade: %s stays in this process until it ends: %s\n",
                   conn.client().c_str(), why.c_str());
      return;
    }
    // One run to give what the pipes hold, and to wait for the sink only.
    if (!was_quiescing && conn.quiescing()) ready_.push_back(id);
    return;
  }
  // Out of the epoll first: a registration lives as long as any process
  // holds the socket.
  UpdateSlot(id, 0, entry.slots[0], {});
  UpdateSlot(id, 1, entry.slots[1], {});
  const std::string client = conn.client();
  if (auto sent = conn.MoveOut(move_, Clock::now()); !sent.ok()) {
    entry.stays = true;
    std::fprintf(stderr, "ktls-proxy: upgrade: %s not moved: %s\n", client.c_str(), sent.error().ToString().c_str());
    if (!conn.finished()) ready_.push_back(id);  // It relays on here: one run to wait for what it needs.
    return AfterRun(id, entry);
  }
  connections_.erase(id);
  --active_;
}

void EventLoop::Run() {
  epoll_event events[kMaxEvents];
  while (!(draining_ && connections_.empty())) {
    const int n = ::epoll_wait(epoll_.get(), events, kMaxEvents, WaitTimeout(Clock::now()));
    const auto now = Clock::now();
    for (int i = 0; i < n; ++i) {
      const std::uint64_t tag = events[i].data.u64;
      if (tag == kListenerTag) {
        if (receiving_) {
          Receive(now);
        } else {
          Accept(now);
        }
      } else if (tag == kWakeTag) {
        OnWake(now);
      } else if (connections_.count(tag / 2) != 0) {
        RunConnection(tag / 2, now);
      }
    }
    RunTimers(now);
    std::vector<std::uint64_t> again;
    again.swap(ready_);
    for (std::uint64_t id : again) {
      if (connections_.count(id) != 0) RunConnection(id, now);
    }
    ResumeListenerIfRoom(now);
    if (draining_ && now >= drain_deadline_ && !connections_.empty()) {
      for (auto& [id, entry] : connections_) {
        entry.conn->Abort("drain_timeout", "drain_timeout_cut", now);
        for (int side = 0; side < 2; ++side) UpdateSlot(id, side, entry.slots[side], {});
      }
      active_ -= connections_.size();
      connections_.clear();
    }
  }
}

int EventLoop::WaitTimeout(Clock::time_point now) const {
  if (!ready_.empty()) return 0;
  Clock::time_point until = Clock::time_point::max();
  if (!timers_.empty()) until = timers_.top().when;
  if (draining_) until = std::min(until, drain_deadline_);
  if (listener_.get() >= 0 && !listener_registered_) until = std::min(until, now + kPausedPoll);
  if (until == Clock::time_point::max()) return -1;
  if (until <= now) return 0;
  // Round up: a wake-up a little early would find nothing due, and spin.
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count() + 1;
  return static_cast<int>(std::min<long long>(ms, 60'000));
}

void EventLoop::Accept(Clock::time_point now) {
  for (int i = 0; i < kMaxAcceptsPerWake && listener_.get() >= 0; ++i) {
    if (active_.load() >= context_.options->limits.max_connections) {
      PauseListener(now);  // Full: new clients wait in the listen queue.
      return;
    }
    sockaddr_storage client_addr{};
    socklen_t client_len = sizeof(client_addr);
    const int fd = ::accept4(listener_.get(), reinterpret_cast<sockaddr*>(&client_addr), &client_len,
                             SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        PauseListener(now + kOutOfFdsPause);
      }
      return;  // EAGAIN: nobody else waiting.
    }
    sockaddr_storage local_addr{};
    socklen_t local_len = sizeof(local_addr);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&local_addr), &local_len);
    // A relay's small writes must not wait for the client's delayed ACK.
    const int one = 1;
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    Add(std::make_unique<ProxyConnection>(context_, UniqueFd(fd), client_addr, local_addr, now), now);
  }
}

void EventLoop::Receive(Clock::time_point now) {
  // The key holder upgrades: every connection goes back to it, and
  // nothing more comes (WorkerPool::RecallWith).
  if (tools::TakeRecall(listener_.get())) return HandBack(now);
  if (active_.load() >= context_.options->limits.max_connections && !recall_expected_) {
    // Full: what the handshake process hands this worker queues until its
    // queue is full; then it is passed over (WorkerPool::Hand). Until the
    // recall: kRecall is behind that queue (ExpectRecall).
    PauseListener(now);
    return;
  }
  if (TakeMovedTag(listener_.get())) {
    // A relaying connection the previous key holder's worker handed back.
    auto relay = ReceiveRelay(listener_.get(), peer_uid_, context_.backend->tls());
    if (relay.ok()) {
      return Add(std::make_unique<ProxyConnection>(context_, std::move(relay->client), std::move(relay->backend),
                                                   relay->counts, now),
                 now);
    }
    std::fprintf(stderr, "ktls-proxy: worker %d: a moved connection: %s\n", static_cast<int>(::getpid()),
                 relay.error().ToString().c_str());
    if (relay.error().category != ktls::ErrorCategory::kIo) return;  // Only that one is lost.
    // Out of step: nothing more can be read from the handshake process.
    std::fprintf(stderr, "ktls-proxy: worker %d: draining\n", static_cast<int>(::getpid()));
    return StartDrain(now);
  }
  auto conn = ktls::ReceiveConnection(listener_.get(), {.peer_uid = peer_uid_});
  if (conn.ok()) return Add(std::make_unique<ProxyConnection>(context_, std::move(conn).value(), now), now);
  if (conn.error().category == ktls::ErrorCategory::kClosed) {
    std::fprintf(stderr, "ktls-proxy: worker %d: the handshake process is gone: draining\n",
                 static_cast<int>(::getpid()));
    return StartDrain(now);
  }
  std::fprintf(stderr, "ktls-proxy: worker %d: %s\n", static_cast<int>(::getpid()), conn.error().ToString().c_str());
}

void EventLoop::Add(std::unique_ptr<ProxyConnection> conn, Clock::time_point now) {
  ++active_;
  const std::uint64_t id = next_id_++;
  connections_[id].conn = std::move(conn);
  RunConnection(id, now);
}

void EventLoop::PauseListener(Clock::time_point until) {
  paused_until_ = until;
  if (listener_registered_) {
    (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, listener_.get(), nullptr);
    listener_registered_ = false;
  }
}

void EventLoop::ResumeListenerIfRoom(Clock::time_point now) {
  if (listener_registered_ || listener_.get() < 0 || draining_ || now < paused_until_ ||
      (active_.load() >= context_.options->limits.max_connections && !recall_expected_)) {
    return;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenerTag;
  listener_registered_ = ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listener_.get(), &ev) == 0;
}

void EventLoop::StartDrain(Clock::time_point now) {
  if (draining_) return;
  draining_ = true;
  drain_deadline_ = now + context_.options->drain_timeout;
  PauseListener(Clock::time_point::max());
  listener_.reset();  // Stop accepting; the other loops' listeners take new clients until they stop too.
}

void EventLoop::RunConnection(std::uint64_t id, Clock::time_point now) {
  Entry& entry = connections_.at(id);
  entry.conn->Run(now);
  AfterRun(id, entry);
}

void EventLoop::AfterRun(std::uint64_t id, Entry& entry) {
  ProxyConnection& conn = *entry.conn;
  // Right after the run that changed them, before any other connection
  // runs: a socket the run closed cannot have been reused yet.
  UpdateSlot(id, 0, entry.slots[0], conn.finished() ? ProxyConnection::Interest{} : conn.client_interest());
  UpdateSlot(id, 1, entry.slots[1], conn.finished() ? ProxyConnection::Interest{} : conn.backend_interest());
  if (conn.handing_off()) {
    conn.HandOff(Clock::now());  // Out of the epoll now (handing_off's interest is none).
    return AfterRun(id, entry);
  }
  if (conn.finished()) {
    connections_.erase(id);
    --active_;
    return;
  }
  const auto deadline = conn.deadline();
  if (deadline < entry.scheduled) {
    entry.scheduled = deadline;
    timers_.push({deadline, id});
  }
  if (conn.more()) ready_.push_back(id);
  if (move_) TryMove(id, entry);
}

void EventLoop::UpdateSlot(std::uint64_t id, int side, Slot& have, ProxyConnection::Interest want) {
  if (want.events == 0) want.fd = -1;
  if (have.fd >= 0 && have.fd != want.fd) {
    // ENOENT or EBADF when the socket is closed already (closing removed it).
    (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, have.fd, nullptr);
    have = {};
  }
  if (want.fd < 0 || (have.fd == want.fd && have.events == want.events)) return;
  epoll_event ev{};
  ev.events = want.events;
  ev.data.u64 = id * 2 + static_cast<std::uint64_t>(side);
  const int op = have.fd == want.fd ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
  if (::epoll_ctl(epoll_.get(), op, want.fd, &ev) == 0) {
    have = {want.fd, want.events};
  } else {
    have = {};
  }
}

void EventLoop::RunTimers(Clock::time_point now) {
  while (!timers_.empty() && timers_.top().when <= now) {
    const Timer timer = timers_.top();
    timers_.pop();
    auto it = connections_.find(timer.id);
    if (it == connections_.end() || it->second.scheduled != timer.when) continue;  // Superseded.
    Entry& entry = it->second;
    entry.scheduled = Clock::time_point::max();
    if (entry.conn->deadline() <= now) {
      RunConnection(timer.id, now);
    } else {
      AfterRun(timer.id, entry);  // Not due yet (the idle deadline moved): schedule it again.
    }
  }
}

}  // namespace ktls::proxy
