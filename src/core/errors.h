// core/errors.h: building Errors from errno values and OpenSSL's error queue.
#ifndef KTLS_SRC_CORE_ERRORS_H_
#define KTLS_SRC_CORE_ERRORS_H_

#include <openssl/ssl.h>

#include <string>

#include "ktls/result.h"

namespace ktls::detail {

// MakeError builds an Error of the given category with no errno.
Error MakeError(ErrorCategory category, std::string detail);

// SysError builds a kIo Error for a failed system call; err is a positive
// errno value (negate the seam's -errno return).
Error SysError(int err, std::string detail);

// OpenSslError builds an Error from OpenSSL's thread-local error queue,
// appending every queued error's text to detail and clearing the queue.
Error OpenSslError(ErrorCategory category, std::string detail);

// AlertError builds an Error carrying a TLS alert; the alert's name is
// appended to detail.
Error AlertError(ErrorCategory category, int alert, std::string detail);

// SslCallError turns a failed OpenSSL I/O or handshake call (ret is its
// return value) into an Error: the peer's alert when that is what ended it,
// kTruncated for an EOF without close_notify, the errno for a failed system
// call, or OpenSSL's error text. Clears OpenSSL's error queue.
Error SslCallError(SSL* ssl, int ret, const char* what);

}  // namespace ktls::detail

#endif  // KTLS_SRC_CORE_ERRORS_H_
