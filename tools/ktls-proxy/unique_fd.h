// tools/ktls-proxy/unique_fd.h: a move-only owner of a file descriptor.
#ifndef KTLS_TOOLS_KTLS_PROXY_UNIQUE_FD_H_
#define KTLS_TOOLS_KTLS_PROXY_UNIQUE_FD_H_

#include <unistd.h>

#include <utility>

#include "ktls/move.h"

namespace ktls::proxy {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  // shared_with_untrusted: another process (a worker) holds the socket
  // too, and may have set it up to make a close here wait: it is closed
  // with ktls::CloseWithoutWaiting (not reset; Endpoint::Reset does that).
  UniqueFd(int fd, bool shared_with_untrusted) : fd_(fd), shared_with_untrusted_(shared_with_untrusted) {}
  UniqueFd(UniqueFd&& other) noexcept
      : fd_(std::exchange(other.fd_, -1)), shared_with_untrusted_(other.shared_with_untrusted_) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
      shared_with_untrusted_ = other.shared_with_untrusted_;
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const noexcept { return fd_; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0 && shared_with_untrusted_) {
      ktls::CloseWithoutWaiting(fd_, /*reset=*/false);
    } else if (fd_ >= 0) {
      ::close(fd_);
    }
    fd_ = fd;
    shared_with_untrusted_ = false;  // A new fd is this process's own.
  }

 private:
  int fd_ = -1;
  bool shared_with_untrusted_ = false;
};

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_UNIQUE_FD_H_
