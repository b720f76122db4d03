// handshake/context.h: building the SSL_CTX for ktls's own server and
// client from their configs.
#ifndef KTLS_SRC_HANDSHAKE_CONTEXT_H_
#define KTLS_SRC_HANDSHAKE_CONTEXT_H_

#include <string>
#include <vector>

#include "core/openssl_ptr.h"
#include "ktls/client.h"
#include "ktls/result.h"
#include "ktls/server.h"

namespace ktls::detail {

// AlpnWire encodes protocol names in the ALPN wire format (length-prefixed).
Result<std::vector<unsigned char>> AlpnWire(const std::vector<std::string>& protocols);

// NewServerContext returns the context for a listener. alpn_wire must
// outlive the context (the ALPN selection callback reads it).
Result<UniqueSslCtx> NewServerContext(const ServerConfig& config, const std::vector<unsigned char>* alpn_wire);

// NewClientContext returns the context for Connect.
Result<UniqueSslCtx> NewClientContext(const ClientConfig& config);

}  // namespace ktls::detail

#endif  // KTLS_SRC_HANDSHAKE_CONTEXT_H_
