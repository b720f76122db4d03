// conn/offload_internal.h: the offload step shared by the server, the
// client and OffloadSsl.
#ifndef KTLS_SRC_CONN_OFFLOAD_INTERNAL_H_
#define KTLS_SRC_CONN_OFFLOAD_INTERNAL_H_

#include <chrono>

#include "core/openssl_ptr.h"
#include "core/unique_fd.h"
#include "ktls/connection.h"
#include "ktls/offload.h"

namespace ktls::detail {

// ValidateOffloadOptions refuses (kUsage) options that cannot work: enum
// values out of range, a key-update threshold of 1 (no data record would
// fit under a key), a negative linger time.
Result<void> ValidateOffloadOptions(const OffloadOptions& options);
// ValidateConfig: the checks every ServerConfig and ClientConfig passes
// before anything is built from it (the offload options, then a handshake
// timeout that is not negative, a TlsVersion in range).
Result<void> ValidateConfig(const OffloadOptions& offload, std::chrono::milliseconds handshake_timeout,
                            TlsVersion max_version);

// OffloadHandshaken takes a prepared SSL whose handshake completed on
// socket, and returns the Connection with each direction in the kernel where
// possible; it owns socket and ssl then. Fails only for usage errors (not
// prepared, handshake unfinished) and when out of memory, before anything
// was offloaded, and then leaves socket and ssl with the caller.
Result<Connection> OffloadHandshaken(UniqueFd&& socket, UniqueSsl&& ssl, bool is_server,
                                     const OffloadOptions& options);

}  // namespace ktls::detail

#endif  // KTLS_SRC_CONN_OFFLOAD_INTERNAL_H_
