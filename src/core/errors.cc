// core/errors.cc: Error construction and rendering.
#include "core/errors.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "ktls/types.h"

namespace ktls {

std::string_view ErrorCategoryName(ErrorCategory category) noexcept {
  switch (category) {
    case ErrorCategory::kIo: return "io";
    case ErrorCategory::kClosed: return "closed";
    case ErrorCategory::kTruncated: return "truncated";
    case ErrorCategory::kAlert: return "alert";
    case ErrorCategory::kProtocol: return "protocol";
    case ErrorCategory::kUnsupported: return "unsupported";
    case ErrorCategory::kUsage: return "usage";
    case ErrorCategory::kInternal: return "internal";
  }
  return "unknown";
}

std::string Error::ToString() const {
  std::string text(ErrorCategoryName(category));
  text += ": ";
  text += detail;
  if (sys_errno != 0) {
    text += " (";
    text += std::strerror(sys_errno);
    text += ")";
  }
  return text;
}

namespace detail {

Error MakeError(ErrorCategory category, std::string detail) {
  return Error{category, 0, std::move(detail), -1};
}

Error SysError(int err, std::string detail) {
  return Error{ErrorCategory::kIo, err, std::move(detail), -1};
}

Error OpenSslError(ErrorCategory category, std::string detail) {
  unsigned long code;
  char buf[256];
  while ((code = ERR_get_error()) != 0) {
    ERR_error_string_n(code, buf, sizeof(buf));
    detail += ": ";
    detail += buf;
  }
  return Error{category, 0, std::move(detail), -1};
}

Error AlertError(ErrorCategory category, int alert, std::string detail) {
  Error error{category, 0, std::move(detail), alert};
  error.detail += " (";
  error.detail += AlertName(alert);
  error.detail += ")";
  return error;
}

Error SslCallError(SSL* ssl, int ret, const char* what) {
  const int saved_errno = errno;
  const int code = SSL_get_error(ssl, ret);
  if (code == SSL_ERROR_SSL) {
    const int reason = ERR_GET_REASON(ERR_peek_last_error());
    if (reason == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
      ERR_clear_error();
      return MakeError(ErrorCategory::kTruncated,
                       std::string(what) + ": the peer closed the connection without close_notify");
    }
    if (reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) {
      ERR_clear_error();
      return AlertError(ErrorCategory::kAlert, reason - SSL_AD_REASON_OFFSET,
                        std::string(what) + ": the peer sent a fatal alert");
    }
    return OpenSslError(ErrorCategory::kProtocol, what);
  }
  if (code == SSL_ERROR_SYSCALL) {
    ERR_clear_error();
    if (saved_errno == 0) {
      return MakeError(ErrorCategory::kTruncated,
                       std::string(what) + ": the peer closed the connection without close_notify");
    }
    return SysError(saved_errno, what);
  }
  return OpenSslError(ErrorCategory::kInternal, std::string(what) + ": SSL_get_error " + std::to_string(code));
}

}  // namespace detail
}  // namespace ktls
