// tools/ktls-proxy/direction.cc: see direction.h.
#include "ktls-proxy/direction.h"

#include <sys/epoll.h>

#include <utility>

namespace ktls::proxy {
namespace {

// kMaxRounds: fills and drains per Step, so that one busy connection does
// not hold up the others on its thread.
constexpr int kMaxRounds = 16;

std::uint32_t EventsFor(ktls::Wait wait) {
  switch (wait) {
    case ktls::Wait::kReadable: return EPOLLIN;
    case ktls::Wait::kWritable: return EPOLLOUT;
    default: return 0;
  }
}

}  // namespace

Direction::Direction(Endpoint& source, Endpoint& sink, Channel channel)
    : source_(source), sink_(sink), channel_(std::move(channel)) {}

std::uint32_t Direction::source_events() const noexcept {
  return state_ == State::kRunning ? EventsFor(source_wait_) : 0;
}

std::uint32_t Direction::sink_events() const noexcept {
  return state_ == State::kRunning ? EventsFor(sink_wait_) : 0;
}

void Direction::Quiesce(bool on) noexcept {
  quiescing_ = on;
  flushed_ = false;  // quiet() only after a Step has drained and flushed.
  if (on) source_wait_ = ktls::Wait::kNone;
  if (!on && state_ == State::kRunning && !source_ended_ && channel_.pending() == 0) source_wait_ = ktls::Wait::kReadable;
}

void Direction::Fail(Side side, ktls::Error error) {
  state_ = State::kFailed;
  failed_side_ = side;
  error_ = std::move(error);
}

bool Direction::FillPhase() {
  bool moved = false;
  while (!source_ended_ && channel_.room() > 0 &&
         !(channel_.pending() > 0 && channel_.FillsOnlyWhenEmpty(source_))) {
    Transfer t = channel_.Fill(source_);
    if (t.error) {
      Fail(Side::kSource, std::move(*t.error));
      return moved;
    }
    copied_ += t.copied;
    if (t.bytes > 0) moved = true;
    if (t.eof) {
      source_ended_ = true;
      truncated_ = t.truncated;
      source_wait_ = ktls::Wait::kNone;
      return moved;
    }
    if (t.would_block) {
      // kPipe: the pipe is full by pages before our count of bytes says
      // so; the drain empties it. Otherwise the source has nothing now:
      // wait for it, unless bytes are pending (the sink goes first).
      source_wait_ = t.wait == ktls::Wait::kPipe ? ktls::Wait::kNone : t.wait;
      return moved;
    }
    if (t.bytes == 0) return moved;
  }
  return moved;
}

bool Direction::FlushSink() {
  Transfer t = sink_.Flush();
  if (t.error) {
    Fail(Side::kSink, std::move(*t.error));
    return false;
  }
  if (t.would_block) {
    sink_wait_ = t.wait;
    return false;
  }
  return true;
}

bool Direction::DrainPhase() {
  bool moved = false;
  sink_wait_ = ktls::Wait::kNone;
  while (channel_.pending() > 0) {
    Transfer t = channel_.Drain(sink_);
    if (t.error) {
      Fail(Side::kSink, std::move(*t.error));
      return moved;
    }
    bytes_ += t.bytes;
    copied_ += t.copied;
    if (t.bytes > 0) moved = true;
    if (t.would_block) {
      sink_wait_ = t.wait == ktls::Wait::kPipe ? ktls::Wait::kNone : t.wait;
      return moved;
    }
    if (t.bytes == 0) return moved;
  }
  return moved;
}

void Direction::Step() {
  more_ = false;
  for (int round = 0; round < kMaxRounds; ++round) {
    if (state_ != State::kRunning) return;
    // The source is read only into an empty channel's worth of room and
    // waited for only while nothing is pending: while the sink is slow,
    // the bytes wait in the source's socket buffer (backpressure).
    source_wait_ = ktls::Wait::kNone;
    bool moved = false;
    flushed_ = false;
    if (!quiescing_ && (channel_.pending() == 0 || sink_wait_ == ktls::Wait::kNone)) moved |= FillPhase();
    if (state_ != State::kRunning) return;
    moved |= DrainPhase();
    if (state_ != State::kRunning) return;
    if (channel_.pending() > 0) {
      if (sink_wait_ != ktls::Wait::kNone) {
        source_wait_ = ktls::Wait::kNone;  // Wait for the sink only.
        return;
      }
      if (!moved) {
        // Neither side moved and nothing is waited for: cannot happen with
        // honest endpoints; wait for the sink rather than spin.
        sink_wait_ = ktls::Wait::kWritable;
        return;
      }
      continue;
    }
    // Everything was given to the sink; a TLS sink may still hold some of
    // it (TX in OpenSSL and a full socket): send it before waiting for the
    // source, which may have nothing more to push it out with.
    if (!source_ended_ && !FlushSink()) return;
    if (quiescing_ && !source_ended_) {
      flushed_ = true;  // Quiet: wait for nothing until it moves.
      return;
    }
    if (source_ended_) {
      Transfer t = sink_.ShutdownWrite(!truncated_);
      if (t.error) {
        failed_in_shutdown_ = true;
        Fail(Side::kSink, std::move(*t.error));
      } else if (t.would_block) {
        sink_wait_ = t.wait;
      } else {
        state_ = State::kDone;
      }
      return;
    }
    if (source_wait_ != ktls::Wait::kNone) return;  // The source has nothing now.
    if (!moved) {
      source_wait_ = ktls::Wait::kReadable;
      return;
    }
  }
  more_ = true;
  if (source_wait_ == ktls::Wait::kNone && channel_.pending() == 0 && !source_ended_) {
    source_wait_ = ktls::Wait::kReadable;
  }
}

}  // namespace ktls::proxy
