// conn/linger.cc: the lingering close (after ktls ended a connection, read
// and drop what the peer still sends, so our close does not turn into a
// reset that destroys the alert or close_notify we sent), and freeing the
// SSL.
#include <fcntl.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>

#include "conn/connection_impl.h"
#include "conn/kernel_io.h"
#include "kernel/tls_uapi.h"

namespace ktls::detail {

bool ConnectionImpl::LingerOwed() const {
  return socket.get() >= 0 && linger.time.count() > 0 && !linger_done_ && !peer_eof_ && !peer_closed &&
         (sent_close_ || failed_);
}

std::chrono::steady_clock::time_point ConnectionImpl::LingerDeadline() {
  if (!linger_started_) return std::chrono::steady_clock::now() + linger.time;
  return linger_deadline_;
}

Result<IoProgress> ConnectionImpl::Linger() {
  if (socket.get() < 0) return MakeError(ErrorCategory::kUsage, "Linger on a closed connection");
  const IoProgress done{0, false, true};
  if (!LingerOwed()) return done;
  if (rx == Offload::kKernel && rx_kernel_failed_) {
    // Nothing more can be read through the kernel: close now.
    linger_done_ = true;
    SendFin();
    return done;
  }
  bool deadline_just_set = false;
  if (!linger_started_) {
    linger_started_ = true;
    linger_deadline_ = std::chrono::steady_clock::now() + linger.time;
    deadline_just_set = true;
  }
  // Read and drop whatever the peer still sends, never blocking: the
  // caller waits (Close with poll, an event loop, ktls::asio). Our FIN
  // (where Shutdown or an alert did not send it yet) goes before the first
  // wait, once a read shows the peer is still there: a peer that has
  // closed or reset already needs none (Close follows), and that is the
  // usual end of a client's connection.
  std::array<std::byte, 16 * 1024> scratch;
  std::size_t discarded = 0;
  for (;; deadline_just_set = false) {
    // Just set, the deadline needs no clock read to know it has not passed.
    if (linger_discarded_ >= linger.max_bytes ||
        (!deadline_just_set && std::chrono::steady_clock::now() >= linger_deadline_)) {
      linger_done_ = true;
      return done;
    }
    ssize_t n = 0;
    bool typed = false;
    if (rx == Offload::kKernel) {
      const KernelRecv got = RecvKernelRecord(socket.get(), scratch, MSG_DONTWAIT);
      n = got.n;
      typed = got.typed;
      if (kernel_rekey && got.n > 0 && got.type == uapi::kRecordHandshake) {
        // A KeyUpdate must re-key RX here too: the kernel pauses RX after
        // its record (EKEYEXPIRED) and cannot read what follows without
        // the next key, which a close with it unread would reset.
        const auto bytes = std::span(scratch).first(static_cast<std::size_t>(got.n));
        if (HandleControlRecord(got.type, bytes, got.record_end)) {
          linger_done_ = true;  // Refused, or the re-key failed: nothing more can be read.
          return done;
        }
      }
      if (kernel_rekey && got.n == -EKEYEXPIRED) {
        // The pause after a fragment's first byte (see KernelRxFailed):
        // the key is unchanged, so read on.
        if (KernelRxFailed(EKEYEXPIRED)) {
          linger_done_ = true;
          return done;
        }
        continue;
      }
    } else {
      // Records for OpenSSL nobody will read: the raw bytes will do.
      n = ::recv(socket.get(), scratch.data(), scratch.size(), MSG_DONTWAIT);
      if (n < 0) n = -errno;
    }
    if (n > 0 || (n == 0 && typed)) {
      linger_discarded_ += static_cast<std::size_t>(n);
      discarded += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && WouldBlock(static_cast<int>(-n))) {
      SendFin();
      return IoProgress{discarded, true, false, Wait::kReadable};
    }
    if (n < 0 && n == -EINTR) continue;
    // The peer's FIN, a reset, or records the kernel can no longer
    // decrypt: nothing more to wait for.
    if (n == 0) peer_eof_ = true;
    linger_done_ = true;
    return done;
  }
}

void ConnectionImpl::Close() {
  // A blocking socket lingers here, bounded by OffloadOptions::linger; a
  // non-blocking one never waits (its owner drives Linger from its loop).
  // The flags only when there is a linger to do: a connection whose peer
  // closed first (the usual end of a client's) closes with no fcntl.
  // Non-blocking (O_NONBLOCK, or from an untrusted sender whatever it
  // says): what lingering is left is the caller's, with Linger.
  const int flags = LingerOwed() && !from_untrusted_sender ? ::fcntl(socket.get(), F_GETFL) : -1;
  while (flags >= 0 && (flags & O_NONBLOCK) == 0 && LingerOwed()) {
    auto step = Linger();
    if (!step.ok() || !step->would_block) break;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(linger_deadline_ -
                                                                            std::chrono::steady_clock::now());
    pollfd pfd{socket.get(), POLLIN | POLLRDHUP, 0};
    int rc;
    while ((rc = ::poll(&pfd, 1, static_cast<int>(std::max<long long>(left.count(), 0) + 1))) < 0 && errno == EINTR) {
    }
    if (rc <= 0) break;  // The time is up.
  }
  ReleaseSsl();
  CloseSocket();
}
void ConnectionImpl::ReleaseSsl() {
  if (ssl && sent_close_ && !failed_) {
    // close_notify went out through the kernel, where OpenSSL did not see
    // it. Without this, SSL_free takes the connection for a truncated one
    // and marks its session not resumable (ssl_clear_bad_session): a server
    // would drop it from its cache, and a client's newest session, the one
    // in its SessionCache, would never be offered.
    SSL_set_shutdown(ssl.get(), SSL_get_shutdown(ssl.get()) | SSL_SENT_SHUTDOWN);
  }
  ticket_relay.reset();
  ssl.reset();
}

}  // namespace ktls::detail
