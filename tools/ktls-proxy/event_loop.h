// tools/ktls-proxy/event_loop.h: one event loop thread of ktls-proxy: its
// own epoll (level-triggered), its own SO_REUSEPORT listener (the kernel
// spreads new clients over the loops), and the connections it accepted,
// each run when one of its sockets is ready or its deadline passes. Never
// blocks but in epoll_wait; no thread per connection.
#ifndef KTLS_TOOLS_KTLS_PROXY_EVENT_LOOP_H_
#define KTLS_TOOLS_KTLS_PROXY_EVENT_LOOP_H_

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <unordered_map>
#include <vector>

#include "ktls-proxy/proxy_connection.h"
#include "ktls-proxy/unique_fd.h"

namespace ktls::proxy {

class EventLoop {
 public:
  using Clock = std::chrono::steady_clock;

  // active counts the connections of every loop, against
  // --max-connections: a full proxy leaves new clients in the listen queue.
  EventLoop(const ProxyContext& context, std::atomic<std::size_t>& active);
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Listen opens this loop's listener (SO_REUSEPORT) on host:port; port 0
  // picks a free one, which port() then says, for the other loops.
  bool Listen(const std::string& host, std::uint16_t port, std::string& error);
  std::uint16_t port() const noexcept { return port_; }
  // ListenOn (after an upgrade, instead of Listen): the listener the
  // previous process gave (upgrade.h), taken over as it is.
  bool ListenOn(UniqueFd listener, std::string& error);
  // listener: this loop's listening socket (-1 once draining), for an
  // upgrade to hand on. Before Run, or from the signal thread while this
  // loop has not been told to drain.
  int listener() const noexcept { return listener_.get(); }
  // ReceiveFrom (a --privsep worker, instead of Listen): the connections
  // come handshaken over unix_socket (ktls::ReceiveConnection), from a
  // process running as peer_uid, or relaying already (upgrade.h:
  // TakeMovedTag). The loop owns the socket; when the other end closes it
  // (the handshake process is gone), the loop drains. On kRecall (the
  // handshake process upgrades) it hands every connection back over it as
  // BeginHandOver would, and ends once it holds none.
  bool ReceiveFrom(UniqueFd unix_socket, uid_t peer_uid, std::string& error);

  // Run serves until BeginDrain was called and its connections are over
  // (or the drain timeout closed them).
  void Run();
  // BeginDrain: stop accepting, let the connections finish for at most
  // --drain-timeout. Safe from any thread (a signal thread).
  void BeginDrain();
  // BeginHandOver (SIGUSR2, once the new process serves): drain, and move
  // every connection that can with move (ProxyConnection::MoveOut) as soon
  // as it is quiet; the rest end here. Safe from any thread.
  void BeginHandOver(ProxyConnection::MoveFn move);
  // ExpectRecall (a --privsep worker, on kRecallSignal): kRecall is on
  // its way, behind what is queued on the socket: read it all, even at
  // --max-connections (what comes before kRecall is handed back with the
  // rest). Safe from any thread.
  void ExpectRecall();
  // Adopt runs a connection the previous process handed over. Safe from
  // any thread; not after the drain began.
  void Adopt(std::unique_ptr<ProxyConnection> conn);

 private:
  struct Slot {
    int fd = -1;
    std::uint32_t events = 0;
  };
  struct Entry {
    std::unique_ptr<ProxyConnection> conn;
    Slot slots[2];  // The client's socket, the backend's.
    Clock::time_point scheduled = Clock::time_point::max();
    bool stays = false;  // Handing over: it cannot move; it ends here.
  };
  struct Timer {
    Clock::time_point when;
    std::uint64_t id;
    bool operator>(const Timer& other) const { return when > other.when; }
  };

  // WatchListener: listener (or the socket connections come on) into the
  // epoll.
  bool WatchListener(UniqueFd listener, std::string& error);
  void Accept(Clock::time_point now);
  void Receive(Clock::time_point now);
  // Add runs a new connection for the first time.
  void Add(std::unique_ptr<ProxyConnection> conn, Clock::time_point now);
  void PauseListener(Clock::time_point until);
  void ResumeListenerIfRoom(Clock::time_point now);
  void StartDrain(Clock::time_point now);
  // HandOverAll: drain, and move what can (move_) as soon as it is quiet.
  void HandOverAll(Clock::time_point now);
  // HandBack (a --privsep worker, on kRecall): HandOverAll back over the
  // socket the connections came on, to the key holder that upgrades.
  void HandBack(Clock::time_point now);
  // Woken: adopt what came, start draining or handing over as asked.
  void OnWake(Clock::time_point now);
  // TryMove (handing over): moves the connection if it is quiet, or gets
  // it there; logs once why one never can.
  void TryMove(std::uint64_t id, Entry& entry);
  // RunConnection runs one connection, then brings its epoll registrations
  // and its timer up to date, and drops it once it finished.
  void RunConnection(std::uint64_t id, Clock::time_point now);
  void AfterRun(std::uint64_t id, Entry& entry);
  void UpdateSlot(std::uint64_t id, int side, Slot& have, ProxyConnection::Interest want);
  void RunTimers(Clock::time_point now);
  int WaitTimeout(Clock::time_point now) const;

  const ProxyContext& context_;
  std::atomic<std::size_t>& active_;
  UniqueFd epoll_;
  UniqueFd wake_;  // eventfd: BeginDrain, BeginHandOver, Adopt.
  UniqueFd listener_;  // Or, with ReceiveFrom, the socket connections come on.
  bool receiving_ = false;
  uid_t peer_uid_ = 0;
  std::uint16_t port_ = 0;
  bool listener_registered_ = false;
  Clock::time_point paused_until_ = Clock::time_point::min();
  bool draining_ = false;
  Clock::time_point drain_deadline_ = Clock::time_point::max();
  std::uint64_t next_id_ = 1;
  std::unordered_map<std::uint64_t, Entry> connections_;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<>> timers_;
  std::vector<std::uint64_t> ready_;  // To run again without waiting.
  // Handed to this loop from other threads (under mu_), until the wake.
  std::mutex mu_;
  bool drain_asked_ = false;
  bool recall_asked_ = false;
  ProxyConnection::MoveFn move_asked_;
  std::vector<std::unique_ptr<ProxyConnection>> adopted_;
  // ExpectRecall was called: the socket is read whatever this loop holds.
  bool recall_expected_ = false;
  // Handing over: where movable connections go.
  ProxyConnection::MoveFn move_;
};

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_EVENT_LOOP_H_
