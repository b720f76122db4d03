// net/handshake_bio.cc
#include "net/handshake_bio.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "kernel/socket_platform.h"
#include "kernel/syscalls.h"

namespace ktls::detail {
namespace {

using Clock = std::chrono::steady_clock;

// kInCapacity: the most one read takes: a record of the largest size TLS
// allows (5-byte header, 2^14 bytes and 256 of expansion), and a little more.
constexpr std::size_t kInCapacity = 17 * 1024;
// kOutSendAt: buffered output is sent at once past this much.
constexpr std::size_t kOutSendAt = 64 * 1024;

struct State {
  int fd = -1;
  bool blocking = false;
  // Blocking: the handshake's timeout (zero: none), counted from the first
  // wait, when the deadline is set: reading the clock before would cost a
  // system call where there is no vDSO, and until then nothing waited.
  std::chrono::milliseconds timeout{0};
  Clock::time_point deadline = Clock::time_point::max();
  // Read from (or peeked at) the socket, not yet all handed to OpenSSL.
  // Allocated for each read; freed while the handshake waits for the peer.
  std::unique_ptr<unsigned char[]> in;
  std::size_t in_begin = 0;  // Handed to OpenSSL: [0, in_begin).
  std::size_t in_end = 0;
  bool in_peeked = false;  // in[0, in_end) is still in the socket's queue.
  std::vector<unsigned char> out;  // Written by OpenSSL, not yet sent.
  std::size_t out_begin = 0;
  bool sent = false;  // Anything sent yet; from then on the socket is only peeked.
  // drained: the last read or peek found the socket's queue empty after it
  // (short, or would block), so whatever came since made it readable anew.
  bool drained = false;
  bool eof = false;   // The peer closed its side (BIO_eof, as OpenSSL's socket BIO).
};

State* Get(BIO* bio) { return static_cast<State*>(BIO_get_data(bio)); }

bool WouldBlock(ssize_t n) { return n == -EAGAIN || n == -EWOULDBLOCK; }

// WaitFor (blocking mode): until fd has events, or the deadline. Returns 0,
// or -errno (-ETIMEDOUT past the deadline).
int WaitFor(State& s, short events) {
  for (;;) {
    int ms = -1;
    if (s.timeout.count() > 0) {
      const auto now = Clock::now();
      if (s.deadline == Clock::time_point::max()) s.deadline = now + s.timeout;
      if (now >= s.deadline) return -ETIMEDOUT;
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(s.deadline - now).count();
      ms = static_cast<int>(std::min<long long>(left, INT_MAX));
    }
    pollfd pfd{s.fd, events, 0};
    const int rc = ::poll(&pfd, 1, ms);
    if (rc > 0) return 0;
    if (rc < 0 && errno != EINTR) return -errno;
  }
}

// Send sends what is buffered (waiting for room if wait). Returns 0 once
// all of it is sent, -EAGAIN, or -errno.
int Send(State& s, bool wait) {
  while (s.out_begin < s.out.size()) {
    iovec iov{s.out.data() + s.out_begin, s.out.size() - s.out_begin};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n = sys::SendMsg(s.fd, &msg, MSG_DONTWAIT | sys::kSendNoSignal);
    if (n > 0) {
      s.out_begin += static_cast<std::size_t>(n);
      s.sent = true;
    } else if (WouldBlock(n) && wait) {
      if (const int waited = WaitFor(s, POLLOUT); waited < 0) return waited;
    } else if (n != -EINTR) {
      return n == 0 ? -EIO : static_cast<int>(n);
    }
  }
  std::vector<unsigned char>().swap(s.out);
  s.out_begin = 0;
  return 0;
}

// Take reads the first n bytes of the socket's queue for good: bytes
// peeked before and handed to OpenSSL. They are there, so this never waits.
int Take(State& s, std::size_t n) {
  while (n > 0) {
    iovec iov{s.in.get(), n};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t got = sys::RecvMsg(s.fd, &msg, MSG_DONTWAIT);
    if (got > 0) {
      n -= static_cast<std::size_t>(got);
    } else if (got != -EINTR) {
      // Only someone else reading the socket could have taken them.
      return got == 0 || WouldBlock(got) ? -EPROTO : static_cast<int>(got);
    }
  }
  return 0;
}

// Fill: OpenSSL wants bytes and none are buffered. Sends what OpenSSL
// wrote first (the peer answers only what it got), then reads (before our
// first send) or peeks. Returns the bytes buffered, 0 at EOF, -EAGAIN
// (*want_write: for a send), or -errno.
ssize_t Fill(State& s, bool* want_write) {
  // OpenSSL has had every byte buffered: those still in the socket go first.
  if (s.in_peeked && s.in_end > 0) {
    if (const int taken = Take(s, s.in_end); taken < 0) return taken;
  }
  s.in_begin = s.in_end = 0;
  s.in_peeked = false;
  bool just_sent = false;
  if (s.out_begin < s.out.size()) {
    const int sent = Send(s, s.blocking);
    if (sent == -EAGAIN) {
      *want_write = true;
      s.in.reset();  // Nothing held while the handshake waits.
      // The loop waits for room now, and may take a readable edge with it:
      // after this flight, read before asking to wait again.
      s.drained = false;
    }
    if (sent < 0) return sent;
    just_sent = true;
  }
  // Having just sent a flight, the answer cannot be there yet: wait first
  // rather than try a read that would fail. An event loop is told to wait
  // for readability: anything that came after the last read (which left
  // the queue empty) makes the socket readable, edge-triggered or not.
  if (just_sent && !s.blocking && s.drained) {
    s.in.reset();  // Nothing held while the handshake waits.
    return -EAGAIN;
  }
  if (!s.in) {
    s.in.reset(new (std::nothrow) unsigned char[kInCapacity]);
    if (!s.in) return -ENOMEM;
  }
  if (s.blocking && just_sent) {
    if (const int waited = WaitFor(s, POLLIN); waited < 0) return waited;
  }
  for (;;) {
    const bool peek = s.sent;
    iovec iov{s.in.get(), kInCapacity};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n = sys::RecvMsg(s.fd, &msg, MSG_DONTWAIT | (peek ? MSG_PEEK : 0));
    if (n > 0) {
      s.in_end = static_cast<std::size_t>(n);
      s.in_peeked = peek;
      s.drained = s.in_end < kInCapacity;
      return n;
    }
    if (n == 0) {
      s.eof = true;
      return 0;
    }
    if (n == -EINTR) continue;
    if (!WouldBlock(n)) return n;
    s.drained = true;
    if (!s.blocking) {
      s.in.reset();  // Nothing held while the handshake waits.
      return -EAGAIN;
    }
    if (const int waited = WaitFor(s, POLLIN); waited < 0) return waited;
  }
}

int Read(BIO* bio, char* buf, int len) {
  BIO_clear_retry_flags(bio);
  State& s = *Get(bio);
  if (len <= 0) return 0;
  if (s.in_begin == s.in_end) {
    bool want_write = false;
    const ssize_t filled = Fill(s, &want_write);
    if (filled == 0) {
      // No errno left from a read that would have blocked before: OpenSSL
      // reads it after a failed call, and a blocking handshake is one call.
      errno = 0;
      return 0;
    }
    if (filled < 0) {
      if (filled == -EAGAIN) {
        if (want_write) {
          BIO_set_retry_write(bio);  // SSL_get_error: SSL_ERROR_WANT_WRITE.
        } else {
          BIO_set_retry_read(bio);
        }
      }
      errno = static_cast<int>(-filled);  // SSL_ERROR_SYSCALL callers read errno.
      return -1;
    }
  }
  const std::size_t n = std::min(static_cast<std::size_t>(len), s.in_end - s.in_begin);
  std::memcpy(buf, s.in.get() + s.in_begin, n);
  s.in_begin += n;
  return static_cast<int>(n);
}

int Write(BIO* bio, const char* buf, int len) {
  BIO_clear_retry_flags(bio);
  State& s = *Get(bio);
  if (len <= 0) return 0;
  try {
    s.out.insert(s.out.end(), buf, buf + len);
  } catch (const std::bad_alloc&) {
    errno = ENOMEM;
    return -1;
  }
  if (s.out.size() - s.out_begin >= kOutSendAt) {
    const int sent = Send(s, s.blocking);
    if (sent < 0 && sent != -EAGAIN) {
      errno = -sent;
      return -1;
    }
  }
  return len;
}

long Ctrl(BIO* bio, int cmd, long /*num*/, void* ptr) {
  const State& s = *Get(bio);
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;  // Sent when the peer's answer is needed, or at the end.
    case BIO_CTRL_EOF:
      return s.eof ? 1 : 0;
    case BIO_CTRL_PENDING:
      return static_cast<long>(s.in_end - s.in_begin);
    case BIO_CTRL_WPENDING:
      return static_cast<long>(s.out.size() - s.out_begin);
    case BIO_C_GET_FD:
      if (ptr != nullptr) *static_cast<int*>(ptr) = s.fd;
      return s.fd;
    case BIO_CTRL_GET_CLOSE:
      return BIO_NOCLOSE;
    case BIO_CTRL_SET_CLOSE:
      return 1;  // Never owns the socket, whatever is asked.
    default:
      return 0;
  }
}

int Create(BIO* bio) {
  BIO_set_data(bio, nullptr);
  BIO_set_init(bio, 0);
  return 1;
}

int Destroy(BIO* bio) {
  delete Get(bio);
  BIO_set_data(bio, nullptr);
  return 1;
}

int Type() {
  static const int type = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR;
  return type;
}

const BIO_METHOD* Method() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(Type(), "ktls handshake");
    if (m != nullptr) {
      BIO_meth_set_read(m, Read);
      BIO_meth_set_write(m, Write);
      BIO_meth_set_ctrl(m, Ctrl);
      BIO_meth_set_create(m, Create);
      BIO_meth_set_destroy(m, Destroy);
    }
    return m;
  }();
  return method;
}

State* Ours(BIO* bio) {
  return bio != nullptr && BIO_method_type(bio) == Type() ? Get(bio) : nullptr;
}

}  // namespace

BIO* NewHandshakeBio(int fd, bool blocking, std::chrono::milliseconds timeout) {
  const BIO_METHOD* method = Method();
  if (method == nullptr) return nullptr;
  auto state = std::unique_ptr<State>(new (std::nothrow) State);
  if (!state) return nullptr;
  state->fd = fd;
  state->blocking = blocking;
  state->timeout = timeout;
  BIO* bio = BIO_new(method);
  if (bio == nullptr) return nullptr;
  BIO_set_data(bio, state.release());
  BIO_set_init(bio, 1);
  return bio;
}

int SettleHandshakeBio(BIO* bio, bool only_tickets_left) {
  State* s = Ours(bio);
  if (s == nullptr) return 0;
  if (s->in_begin < s->in_end && !s->in_peeked) return -EPROTO;
  if (s->in_peeked && s->in_begin > 0) {
    // What OpenSSL did not take stays in the socket, for the kernel.
    if (const int taken = Take(*s, s->in_begin); taken < 0) return taken;
  }
  s->in.reset();
  s->in_begin = s->in_end = 0;
  s->in_peeked = false;
  if (const int sent = Send(*s, s->blocking); sent < 0) {
    // OpenSSL 3.0 ignores a TLS 1.3 server's ticket that a closed
    // connection refuses, so that what the client sent before it closed can
    // still be read; so do we.
    if (!(only_tickets_left && (sent == -EPIPE || sent == -ECONNRESET))) return sent;
    std::vector<unsigned char>().swap(s->out);
    s->out_begin = 0;
  }
  return 0;
}

void FlushHandshakeBio(BIO* bio) {
  // Blocking, it waits for room as a blocking socket's send would (never
  // past the handshake's deadline).
  if (State* s = Ours(bio)) (void)Send(*s, /*wait=*/s->blocking);
}

}  // namespace ktls::detail
