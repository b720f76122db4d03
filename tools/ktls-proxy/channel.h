// tools/ktls-proxy/channel.h: the bytes of one direction in flight between
// its two endpoints: a pipe the bytes are spliced into and out of (they stay
// in the kernel), or, with --copy, a buffer in this process. The one place
// that chooses between splice and copy.
#ifndef KTLS_TOOLS_KTLS_PROXY_CHANNEL_H_
#define KTLS_TOOLS_KTLS_PROXY_CHANNEL_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "ktls-proxy/endpoint.h"
#include "ktls-proxy/unique_fd.h"

namespace ktls::proxy {

class Channel {
 public:
  // Create makes a pipe (pipe2 with O_NONBLOCK | O_CLOEXEC), or with copy a
  // buffer (also when the pipe cannot be 64 KiB: a user over
  // fs.pipe-user-pages-soft). nullopt and `error` when the pipe cannot be
  // made (out of fds).
  static std::optional<Channel> Create(bool copy, std::string& error);

  // pending: bytes taken from the source and not yet given to the sink.
  std::size_t pending() const noexcept { return pending_; }
  // room: how many more bytes a Fill may take (--copy: behind the pending
  // ones, until the buffer is empty again).
  std::size_t room() const noexcept { return capacity_ - pending_ - buffer_start_; }
  bool spliced() const noexcept { return pipe_read_.get() >= 0; }
  // FillsOnlyWhenEmpty: a TLS source splices only into an empty pipe (a
  // kTLS record must fit whole), so fill it once, then drain it.
  bool FillsOnlyWhenEmpty(const Endpoint& src) const noexcept { return spliced() && src.tls(); }

  // Fill takes bytes from src (one call); Drain gives pending bytes to dst
  // (one call).
  Transfer Fill(Endpoint& src);
  Transfer Drain(Endpoint& dst);

 private:
  Channel() = default;
  UniqueFd pipe_read_;
  UniqueFd pipe_write_;
  std::unique_ptr<std::byte[]> buffer_;  // --copy.
  std::size_t buffer_start_ = 0;         // First pending byte in buffer_.
  std::size_t capacity_ = 0;
  std::size_t pending_ = 0;
};

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_CHANNEL_H_
