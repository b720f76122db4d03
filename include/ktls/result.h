// ktls/result.h: the one result type every fallible ktls call returns.
//
// A call either succeeds with a value or fails with an Error that says which
// kind of failure it was (ErrorCategory), the errno behind it if any, and a
// human-readable detail (including OpenSSL's error text where OpenSSL failed).
// No ktls call throws on an I/O path, and no return value is both a count and
// an error.
#ifndef KTLS_RESULT_H_
#define KTLS_RESULT_H_

#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "ktls/export.h"

namespace ktls {

// ErrorCategory: what kind of failure an Error is. Callers branch on this,
// never on the detail text.
enum class ErrorCategory {
  kIo,           // A system call failed; Error::sys_errno says why.
  kClosed,       // The connection was already ended (by us, or by an earlier error).
  kTruncated,    // The peer closed TCP without sending close_notify first.
  kAlert,        // The peer sent a fatal TLS alert; Error::tls_alert says which.
  kProtocol,     // The peer broke the TLS protocol (bad record, bad message).
  kUnsupported,  // This kernel, build or platform cannot do what was asked.
  kUsage,        // The caller broke a documented precondition.
  kInternal,     // A ktls or OpenSSL invariant failed; a bug.
};

// ErrorCategoryName returns a stable lower-case name ("io", "closed", ...).
KTLS_API std::string_view ErrorCategoryName(ErrorCategory category) noexcept;

// Error: one failure. sys_errno is 0 unless a system call failed;
// tls_alert is the TLS AlertDescription (RFC 8446 6) when the failure was an
// alert, received or sent, and -1 otherwise.
struct KTLS_API Error {
  ErrorCategory category = ErrorCategory::kInternal;
  int sys_errno = 0;
  std::string detail;
  int tls_alert = -1;

  // ToString renders "category: detail (strerror)" for logs and messages.
  std::string ToString() const;
};

// Result<T>: a value or an Error. [[nodiscard]] so an ignored failure is a
// compiler warning. Access the value only after checking ok().
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Error error) : state_(std::in_place_index<1>, std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const noexcept { return state_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  T& value() & { return std::get<0>(state_); }
  const T& value() const& { return std::get<0>(state_); }
  T&& value() && { return std::get<0>(std::move(state_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const& { return std::get<1>(state_); }
  Error&& error() && { return std::get<1>(std::move(state_)); }

 private:
  std::variant<T, Error> state_;
};

// Result<void>: success carries no value.
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT(google-explicit-constructor)

  bool ok() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

 private:
  Error error_;
  bool ok_ = true;
};

}  // namespace ktls

#endif  // KTLS_RESULT_H_
