// net/pending_handshake.h: the state behind ktls::PendingHandshake, and the
// blocking driver the Listener and Connect run it with.
#ifndef KTLS_SRC_NET_PENDING_HANDSHAKE_H_
#define KTLS_SRC_NET_PENDING_HANDSHAKE_H_

#include <chrono>

#include "core/openssl_ptr.h"
#include "core/unique_fd.h"
#include "ktls/handshake.h"
#include "ktls/offload.h"

namespace ktls::detail {

struct PendingHandshakeImpl {
  enum class State : std::uint8_t { kRunning, kDone, kFailed, kFinished };

  UniqueFd socket;
  UniqueSsl ssl;  // Prepared (PrepareSsl), in accept or connect state.
  bool is_server = false;
  OffloadOptions offload;
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  State state = State::kRunning;

  ~PendingHandshakeImpl();
};

// NewPendingHandshake makes socket non-blocking and wraps it with ssl.
// Closes socket on failure.
Result<PendingHandshake> NewPendingHandshake(UniqueFd socket, UniqueSsl ssl, bool is_server,
                                             const OffloadOptions& offload, std::chrono::milliseconds timeout);

// FinishBlocking drives a handshake to its end, waiting with poll(2) (never
// past its deadline), and returns the offloaded Connection on a blocking
// socket, as the blocking API promises. A server that failed lingers a
// moment so the client reads our alert.
Result<Connection> FinishBlocking(PendingHandshake handshake);

}  // namespace ktls::detail

#endif  // KTLS_SRC_NET_PENDING_HANDSHAKE_H_
