// tools/ktls-proxy/unique_fd.h: a move-only owner of a file descriptor.
#ifndef KTLS_TOOLS_KTLS_PROXY_UNIQUE_FD_H_
#define KTLS_TOOLS_KTLS_PROXY_UNIQUE_FD_H_

#include <unistd.h>

#include <utility>

namespace ktls::proxy {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const noexcept { return fd_; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_UNIQUE_FD_H_
