// tools/ktls-proxy/direction.h: one direction of a proxied connection
// (client to backend, or back): take from the source, give to the sink,
// and when the source ends, end the sink's side the same way (close_notify
// for a FIN or close_notify; a bare FIN for a TLS peer's truncation).
#ifndef KTLS_TOOLS_KTLS_PROXY_DIRECTION_H_
#define KTLS_TOOLS_KTLS_PROXY_DIRECTION_H_

#include <cstddef>
#include <cstdint>
#include <optional>

#include "ktls-proxy/channel.h"
#include "ktls-proxy/endpoint.h"

namespace ktls::proxy {

class Direction {
 public:
  enum class State { kRunning, kDone, kFailed };
  enum class Side { kSource, kSink };

  Direction(Endpoint& source, Endpoint& sink, Channel channel);

  // Step moves what can move now, up to a bounded amount; then more() says
  // whether it stopped only because of that bound (run it again soon:
  // OpenSSL may hold bytes no readiness event will announce).
  void Step();
  bool more() const noexcept { return more_; }

  State state() const noexcept { return state_; }
  // failed_side, error: with kFailed, which endpoint failed and how.
  Side failed_side() const noexcept { return failed_side_; }
  const ktls::Error& error() const noexcept { return *error_; }
  // source_ended: the source's end was seen; truncated: without
  // close_notify (TLS).
  bool source_ended() const noexcept { return source_ended_; }
  bool truncated() const noexcept { return truncated_; }
  // failed_in_shutdown: the failure came when ending the sink's side (its
  // close_notify or FIN), after every byte went through.
  bool failed_in_shutdown() const noexcept { return failed_in_shutdown_; }
  // SinkClosedFirst: the sink's peer had already closed (the other
  // direction saw its end) when ending its side failed: the stream is
  // complete all the same, so the direction counts as done.
  void SinkClosedFirst() noexcept {
    if (state_ == State::kFailed && failed_in_shutdown_) state_ = State::kDone;
  }

  // in_flight: bytes taken from the source that the sink has not taken
  // (or, a TLS sink, not sent yet), or the sink's end not sent yet: ending
  // the connection now would lose them.
  bool in_flight() const noexcept {
    return state_ == State::kRunning && (channel_.pending() > 0 || sink_wait_ != ktls::Wait::kNone);
  }

  // The epoll events this direction waits for now on each endpoint.
  std::uint32_t source_events() const noexcept;
  std::uint32_t sink_events() const noexcept;

  // Quiesce (a SIGUSR2 hand-over): take nothing more from the source, give
  // the sink what is pending, then wait for nothing: quiet() once the
  // channel is empty, so the connection can move with no byte in flight.
  // Quiesce(false) goes back to relaying (the move did not happen).
  void Quiesce(bool on) noexcept;
  bool quiet() const noexcept {
    return quiescing_ && (state_ == State::kDone ||
                          (state_ == State::kRunning && !source_ended_ && channel_.pending() == 0 && flushed_));
  }
  // Ended: this direction was done in the process it was moved from (its
  // source ended, the sink's side too; truncated: without close_notify).
  void Ended(bool truncated) noexcept {
    state_ = State::kDone;
    source_ended_ = true;
    truncated_ = truncated;
    source_wait_ = sink_wait_ = ktls::Wait::kNone;
  }
  // Carry adds the counts of the process this direction was moved from.
  void Carry(std::uint64_t bytes, std::uint64_t copied) noexcept {
    bytes_ += bytes;
    copied_ += copied;
  }

  // bytes: bytes given to the sink (its socket, or its TLS connection),
  // not those taken from the source: a connection cut short counts only
  // what went on.
  std::uint64_t bytes() const noexcept { return bytes_; }
  // copied: bytes that passed through this process (at most bytes()).
  std::uint64_t copied() const noexcept { return copied_ < bytes_ ? copied_ : bytes_; }
  std::uint64_t spliced() const noexcept { return bytes_ - copied(); }

 private:
  void Fail(Side side, ktls::Error error);
  bool FillPhase();   // true when bytes moved.
  bool DrainPhase();  // true when bytes moved.
  bool FlushSink();   // false: the sink holds bytes it cannot send yet (or failed).

  Endpoint& source_;
  Endpoint& sink_;
  Channel channel_;
  State state_ = State::kRunning;
  Side failed_side_ = Side::kSource;
  std::optional<ktls::Error> error_;
  bool source_ended_ = false;
  bool truncated_ = false;
  bool failed_in_shutdown_ = false;
  bool more_ = false;
  bool quiescing_ = false;
  bool flushed_ = false;  // Quiescing: a Step drained the channel and flushed the sink.
  // What each endpoint is waited for (kNone: not waited for).
  ktls::Wait source_wait_ = ktls::Wait::kReadable;
  ktls::Wait sink_wait_ = ktls::Wait::kNone;
  std::uint64_t bytes_ = 0;
  std::uint64_t copied_ = 0;
};

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_DIRECTION_H_
