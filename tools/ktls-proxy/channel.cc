// tools/ktls-proxy/channel.cc: see channel.h.
#include "ktls-proxy/channel.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <span>

namespace ktls::proxy {
namespace {

// kCopyBufferLen: --copy's buffer per direction, four full TLS records.
constexpr std::size_t kCopyBufferLen = 64 * 1024;
// kMinPipeLen: the smallest pipe Connection::SpliceRead takes (the default
// size).
constexpr std::size_t kMinPipeLen = 64 * 1024;

}  // namespace

std::optional<Channel> Channel::Create(bool copy, std::string& error) {
  Channel channel;
  if (copy) {
    channel.buffer_ = std::make_unique<std::byte[]>(kCopyBufferLen);
    channel.capacity_ = kCopyBufferLen;
    return channel;
  }
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    error = std::string("pipe2: ") + std::strerror(errno);
    return std::nullopt;
  }
  channel.pipe_read_.reset(fds[0]);
  channel.pipe_write_.reset(fds[1]);
  // The pipe's size: 64 KiB by default, less for a user over
  // fs.pipe-user-pages-soft. A kTLS splice needs 64 KiB (it could drop the
  // part of a record a smaller pipe has no room for): where the pipe cannot
  // have that, this direction copies instead. Splices fill a pipe by pages,
  // not bytes, so it can be full before this many bytes are in it: the
  // endpoints then say Wait::kPipe, and the direction drains first.
  int size = ::fcntl(fds[0], F_GETPIPE_SZ);
  if (size < static_cast<int>(kMinPipeLen)) size = ::fcntl(fds[0], F_SETPIPE_SZ, static_cast<int>(kMinPipeLen));
  if (size < static_cast<int>(kMinPipeLen)) return Create(true, error);
  channel.capacity_ = static_cast<std::size_t>(size);
  return channel;
}

Transfer Channel::Fill(Endpoint& src) {
  Transfer t;
  if (spliced()) {
    t = src.SpliceRead(pipe_write_.get(), room());
  } else {
    const std::size_t end = buffer_start_ + pending_;
    t = src.Read(std::span(buffer_.get() + end, capacity_ - end));
    t.copied = t.bytes;
  }
  pending_ += t.bytes;
  return t;
}

Transfer Channel::Drain(Endpoint& dst) {
  Transfer t;
  if (spliced()) {
    t = dst.SpliceWrite(pipe_read_.get(), pending_);
  } else {
    t = dst.Write(std::span<const std::byte>(buffer_.get() + buffer_start_, pending_));
    t.copied = 0;  // Fill counted these bytes already.
    buffer_start_ += t.bytes;
  }
  pending_ -= std::min(t.bytes, pending_);
  if (pending_ == 0) buffer_start_ = 0;  // All room again.
  return t;
}

}  // namespace ktls::proxy
