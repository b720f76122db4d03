// conn/socket_bio.h: the BIO OpenSSL reads and writes the socket through
// after offload, for each direction still in userspace.
//
// It never blocks (MSG_DONTWAIT) and never raises SIGPIPE (MSG_NOSIGNAL), and
// goes through the syscall seam. Never blocking is what lets a Connection
// take its lock only around each OpenSSL call and wait for the socket outside
// it, so one thread can read while another writes even with both directions
// in OpenSSL (OpenSSL forbids concurrent calls on one SSL).
#ifndef KTLS_SRC_CONN_SOCKET_BIO_H_
#define KTLS_SRC_CONN_SOCKET_BIO_H_

#include <openssl/bio.h>

namespace ktls::detail {

// NewSocketBio returns a BIO over fd (not owned: freeing the BIO does not
// close fd), or nullptr if OpenSSL is out of memory.
BIO* NewSocketBio(int fd);

}  // namespace ktls::detail

#endif  // KTLS_SRC_CONN_SOCKET_BIO_H_
