// conn/offload_internal.h: the offload step shared by the server, the
// client and OffloadSsl.
#ifndef KTLS_SRC_CONN_OFFLOAD_INTERNAL_H_
#define KTLS_SRC_CONN_OFFLOAD_INTERNAL_H_

#include "core/openssl_ptr.h"
#include "core/unique_fd.h"
#include "ktls/connection.h"
#include "ktls/offload.h"

namespace ktls::detail {

// OffloadHandshaken takes a prepared SSL whose handshake completed on
// socket, and returns the Connection with each direction in the kernel where
// possible. Fails only for usage errors (not prepared, handshake unfinished).
Result<Connection> OffloadHandshaken(UniqueFd socket, UniqueSsl ssl, bool is_server, const OffloadOptions& options);

}  // namespace ktls::detail

#endif  // KTLS_SRC_CONN_OFFLOAD_INTERNAL_H_
