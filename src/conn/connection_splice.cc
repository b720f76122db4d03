// conn/connection_splice.cc: moving a connection's plaintext to and from a
// pipe. With a direction in the kernel, splice(2) moves it kernel to kernel;
// with it in OpenSSL, the bytes are read and written (counted as copied).
//
// kTLS RX splices application data only (net/tls tls_sw_splice_read): at
// any other record splice fails with EINVAL and leaves the record queued,
// so ktls reads it with recvmsg and handles it exactly as Read does, then
// splices on. A zero-length data record makes splice return 0, as the end
// of the stream does; a recvmsg tells which it was. A pipe is never waited for: ktls passes SPLICE_F_NONBLOCK
// always, and tells a full (or empty) pipe from a socket with nothing to
// give (or no room) by polling the pipe.
//
// A build without kernel TLS (kernel/kernel_tls_build.h) has no splice(2):
// there both calls answer kUnsupported, whichever way the directions run.
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <mutex>
#include <string>

#include "conn/connection_impl.h"
#include "conn/kernel_io.h"
#include "conn/tls_constants.h"
#include "core/errors.h"
#include "kernel/kernel_tls_build.h"
#include "kernel/socket_platform.h"
#include "kernel/syscalls.h"
#include "kernel/tls_uapi.h"

namespace ktls::detail {
namespace {

// The default pipe size (16 slots): room for any record's pages.
constexpr std::size_t kMinSplicePipe = 64 * 1024;

// PipeReady: the pipe is readable (POLLIN) or writable (POLLOUT) now, or
// has an error the next call will report.
bool PipeReady(int pipe_fd, short events) {
  pollfd pfd{pipe_fd, events, 0};
  int rc;
  while ((rc = ::poll(&pfd, 1, 0)) < 0 && errno == EINTR) {
  }
  return rc != 0;
}

bool IsPipe(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode);
}

// WriteToPipe writes as much of data as the pipe takes without waiting.
// Returns the bytes written (0: the pipe is full), or -errno.
ssize_t WriteToPipe(int pipe_fd, std::span<const std::byte> data) {
  const int flags = ::fcntl(pipe_fd, F_GETFL);
  if (flags < 0) return -errno;
  if ((flags & O_NONBLOCK) != 0) {
    const ssize_t n = sys::Write(pipe_fd, data.data(), data.size());
    return n == -EAGAIN ? 0 : n;
  }
  // A blocking pipe: a write of at most PIPE_BUF bytes (one page) fits in
  // the one free slot that POLLOUT promises, so it never waits.
  std::size_t done = 0;
  while (done < data.size() && PipeReady(pipe_fd, POLLOUT)) {
    const ssize_t n = sys::Write(pipe_fd, data.data() + done, std::min<std::size_t>(PIPE_BUF, data.size() - done));
    if (n < 0) return done > 0 ? static_cast<ssize_t>(done) : n;
    done += static_cast<std::size_t>(n);
  }
  return static_cast<ssize_t>(done);
}

// ReadFromPipe reads what the pipe holds now, up to buf.size(), without
// waiting. Returns the bytes read (0: empty, or no writer left), or -errno.
ssize_t ReadFromPipe(int pipe_fd, std::span<std::byte> buf) {
  if (!PipeReady(pipe_fd, POLLIN)) return 0;
  const ssize_t n = sys::Read(pipe_fd, buf.data(), buf.size());
  return n == -EAGAIN ? 0 : n;
}

Error PipeError(int err, const char* what) {
  Error error = SysError(err, what);
  error.category = ErrorCategory::kUsage;  // The caller's pipe, not the connection, failed.
  return error;
}

IoProgress Copied(std::size_t n) {
  IoProgress progress{n, false, false};
  progress.copied = n;
  return progress;
}

}  // namespace

Result<IoProgress> ConnectionImpl::SpliceRead(int pipe_fd, std::size_t len) {
  if constexpr (!kKernelTls) return MakeError(ErrorCategory::kUnsupported, std::string("SpliceRead: ") + kNoKernelTlsReason);
  if (socket.get() < 0) return MakeError(ErrorCategory::kUsage, "splice from a closed connection");
  if (pipe_fd < 0) return MakeError(ErrorCategory::kUsage, "SpliceRead: no pipe");
  if (len == 0) return IoProgress{};
  // Plaintext already in this process goes first: what OpenSSL decrypted
  // before offload, then what an earlier call read but the pipe had no
  // room for.
  if (early_plaintext_offset < early_plaintext.size()) {
    splice_rx_held_.insert(splice_rx_held_.end(),
                           early_plaintext.begin() + static_cast<std::ptrdiff_t>(early_plaintext_offset),
                           early_plaintext.end());
    early_plaintext.clear();
    early_plaintext.shrink_to_fit();
    early_plaintext_offset = 0;
  }
  if (!splice_rx_held_.empty()) return DeliverHeldPlaintext(pipe_fd, len);
  if (peer_closed) return IoProgress{0, false, true};
  if (failed_) return MakeError(ErrorCategory::kClosed, "splice after the connection failed");
  return rx == Offload::kKernel ? SpliceReadKernel(pipe_fd, len) : SpliceReadCopy(pipe_fd, len);
}

Result<IoProgress> ConnectionImpl::DeliverHeldPlaintext(int pipe_fd, std::size_t len) {
  const std::size_t want = std::min(len, splice_rx_held_.size());
  const ssize_t n = WriteToPipe(pipe_fd, std::span(splice_rx_held_).first(want));
  if (n < 0) return PipeError(static_cast<int>(-n), "SpliceRead: write to the pipe");
  if (n == 0) return Blocked(Wait::kPipe);
  splice_rx_held_.erase(splice_rx_held_.begin(), splice_rx_held_.begin() + static_cast<std::ptrdiff_t>(n));
  if (splice_rx_held_.empty()) splice_rx_held_.shrink_to_fit();
  return Copied(static_cast<std::size_t>(n));
}

Result<IoProgress> ConnectionImpl::SpliceReadCopy(int pipe_fd, std::size_t len) {
  // As splice(2) would refuse it on the kernel path.
  if (!IsPipe(pipe_fd)) return MakeError(ErrorCategory::kUsage, "SpliceRead: the fd is not a pipe");
  // Read only when the pipe can take something, so that little waits here.
  if (!PipeReady(pipe_fd, POLLOUT)) return Blocked(Wait::kPipe);
  std::array<std::byte, kMaxRecordPlaintext> buf;
  auto got = ReadUser(std::span(buf).first(std::min(len, buf.size())));
  if (!got.ok() || got->bytes == 0) return got;
  splice_rx_held_.assign(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(got->bytes));
  return DeliverHeldPlaintext(pipe_fd, len);
}

Result<IoProgress> ConnectionImpl::SpliceReadKernel(int pipe_fd, std::size_t len) {
  // net/tls tls_sw_splice_read (6.1, and mainline as far as we know)
  // moves past the whole chunk it asked the pipe to take even when the
  // pipe took only part of it: what did not fit is lost (seen on 6.1 with
  // a one-page pipe). A record's plaintext spans a few pages, so into an
  // empty pipe of 16 slots or more it always fits: splice only there.
  int queued = 0;
  if (::ioctl(pipe_fd, FIONREAD, &queued) != 0) {
    if (errno == EINVAL || errno == ENOTTY) return MakeError(ErrorCategory::kUsage, "SpliceRead: the fd is not a pipe");
    return PipeError(errno, "SpliceRead: FIONREAD on the pipe");
  }
  if (queued > 0) return Blocked(Wait::kPipe);
  if (splice_pipe_checked_ != pipe_fd) {
    const int size = sys::PipeCapacity(pipe_fd);
    if (size < 0) return MakeError(ErrorCategory::kUsage, "SpliceRead: the fd is not a pipe");
    if (static_cast<std::size_t>(size) < kMinSplicePipe) {
      return MakeError(ErrorCategory::kUsage, "SpliceRead: the pipe holds " + std::to_string(size) +
                                                  " bytes; kTLS splice needs at least 64 KiB, or it can drop data");
    }
    splice_pipe_checked_ = pipe_fd;
  }
  for (;;) {
    if (MessageIsPartial()) {
      // Splice would move a data record before ktls saw its type; one
      // there is refused (RefuseDataInsideMessage), so read with recvmsg
      // until the message is whole.
      if (auto done = SpliceNextRecord(pipe_fd, len, /*after_einval=*/false)) return std::move(*done);
      if (MessageIsPartial() && !WaitFor(POLLIN)) return Blocked(Wait::kReadable);
      continue;
    }
    const ssize_t n = sys::Splice(socket.get(), pipe_fd, len, sys::kSpliceMove | sys::kSpliceNonblock);
    if (n > 0) {
      warning_alerts_in_a_row_ = 0;
      return IoProgress{static_cast<std::size_t>(n), false, false};
    }
    if (n == 0) {
      // The end of the stream, or a zero-length data record, which splice
      // also returns as 0: recvmsg tells them apart.
      if (auto done = SpliceNextRecord(pipe_fd, len, /*after_einval=*/false)) return std::move(*done);
      continue;
    }
    const int err = static_cast<int>(-n);
    if (WouldBlock(err)) {
      if (!PipeReady(pipe_fd, POLLOUT)) return Blocked(Wait::kPipe);
      if (!WaitFor(POLLIN)) return Blocked(Wait::kReadable);
      continue;
    }
    if (err == EINVAL) {
      // The next record is not application data (or the pipe is no pipe,
      // or the kernel's parser refused a record header).
      if (!IsPipe(pipe_fd)) return MakeError(ErrorCategory::kUsage, "SpliceRead: the fd is not a pipe");
      if (auto done = SpliceNextRecord(pipe_fd, len, /*after_einval=*/true)) return std::move(*done);
      continue;
    }
    if (err == EBADF || err == EPIPE) return PipeError(err, "SpliceRead: splice into the pipe");
    if (auto done = KernelRxFailed(err)) return std::move(*done);
  }
}

std::optional<Result<IoProgress>> ConnectionImpl::SpliceNextRecord(int pipe_fd, std::size_t len, bool after_einval) {
  // Room for any record's plaintext: a control record comes whole.
  std::array<std::byte, kMaxRecordPlaintext + 256> buf;
  const KernelRecv got = RecvKernelRecord(socket.get(), buf, MSG_DONTWAIT);
  const bool nothing = got.n < 0 && WouldBlock(static_cast<int>(-got.n));
  const bool end = got.n == 0 && !got.typed;
  if (after_einval && (nothing || end)) {
    // No record was waiting after all: splice's EINVAL was the record
    // parser's error, which splice reported (and so cleared); the kernel
    // then holds nothing more, or only the end of the stream.
    return KernelRxFailed(EINVAL);
  }
  if (nothing) return std::nullopt;  // splice's 0 was an empty data record.
  if (end) {
    return Fail(EndWithoutCloseNotify(
        MakeError(ErrorCategory::kTruncated, "the peer closed the connection without close_notify")));
  }
  if (got.n < 0) return KernelRxFailed(static_cast<int>(-got.n));
  const std::span<std::byte> bytes = std::span(buf).first(static_cast<std::size_t>(got.n));
  if (got.type == uapi::kRecordApplicationData) {
    if (auto refused = RefuseDataInsideMessage()) return std::move(*refused);
    // Data behind an empty record (or behind a refused record, which the
    // kernel never does): recvmsg has it now, so deliver it by copying.
    if (bytes.empty()) return std::nullopt;
    warning_alerts_in_a_row_ = 0;
    splice_rx_held_.assign(bytes.begin(), bytes.end());
    return DeliverHeldPlaintext(pipe_fd, len);
  }
  return HandleControlRecord(got.type, bytes, got.record_end);
}

Result<IoProgress> ConnectionImpl::SpliceWrite(int pipe_fd, std::size_t len, WriteFlags flags) {
  if constexpr (!kKernelTls) return MakeError(ErrorCategory::kUnsupported, std::string("SpliceWrite: ") + kNoKernelTlsReason);
  if (socket.get() < 0) return MakeError(ErrorCategory::kUsage, "splice into a closed connection");
  if (pipe_fd < 0) return MakeError(ErrorCategory::kUsage, "SpliceWrite: no pipe");
  if (failed_) return MakeError(ErrorCategory::kClosed, "splice after the connection failed");
  if (sent_close_) return MakeError(ErrorCategory::kClosed, "splice after Shutdown");
  if (len == 0) return IoProgress{};
  return tx == Offload::kKernel ? SpliceWriteKernel(pipe_fd, len, flags) : SpliceWriteCopy(pipe_fd, len, flags);
}

Result<IoProgress> ConnectionImpl::SpliceWriteKernel(int pipe_fd, std::size_t len, WriteFlags flags) {
  std::lock_guard lock(tx_mu_);
  if (auto ready = BeforeKernelWrite(&len); !ready) {
    if (IsWouldBlock(ready.error())) return Blocked(Wait::kWritable);
    return Fail(std::move(ready).error());
  }
  const unsigned int splice_flags =
      sys::kSpliceMove | sys::kSpliceNonblock | (flags == WriteFlags::kMore ? sys::kSpliceMore : 0U);
  for (;;) {
    // Like sendfile(2), splice into a socket has no MSG_NOSIGNAL: see
    // Connection::SpliceWrite on SIGPIPE.
    const ssize_t n = sys::Splice(pipe_fd, socket.get(), len, splice_flags);
    if (n > 0) {
      tx_records_bound_ += MaxRecordsFor(static_cast<std::size_t>(n));
      tx_open_record_ = 0;  // Checked below whatever its flags.
      if (auto dead = SendWentNowhere(static_cast<std::size_t>(n))) return Fail(std::move(*dead));
      return IoProgress{static_cast<std::size_t>(n), false, false};
    }
    if (n == 0) return Blocked(Wait::kPipe);  // No writer left, and the pipe is empty.
    const int err = static_cast<int>(-n);
    if (WouldBlock(err)) {
      if (!PipeReady(pipe_fd, POLLIN)) return Blocked(Wait::kPipe);
      return Blocked(Wait::kWritable);  // A blocking socket's SO_SNDTIMEO ran out, or a non-blocking one is full.
    }
    if (err == EBADF || err == EINVAL) return PipeError(err, "SpliceWrite: splice from the pipe");
    return Fail(SysError(err, "splice into the kTLS socket"));
  }
}

Result<IoProgress> ConnectionImpl::SpliceWriteCopy(int pipe_fd, std::size_t len, WriteFlags flags) {
  if (!IsPipe(pipe_fd)) return MakeError(ErrorCategory::kUsage, "SpliceWrite: the fd is not a pipe");
  // Bytes taken from the pipe that OpenSSL could not send yet are held in
  // tx_held_ and lead the next write; past one record's worth, send them
  // before taking more, so that what is held stays bounded.
  if (tx_held_.size() >= kMaxRecordPlaintext) {
    auto flushed = Write({}, WriteFlags::kNone);
    if (!flushed.ok() || flushed->would_block) return flushed;
    if (tx_held_.size() >= kMaxRecordPlaintext) return Blocked(Wait::kWritable);
  }
  std::array<std::byte, kMaxRecordPlaintext> buf;
  const ssize_t got = ReadFromPipe(pipe_fd, std::span(buf).first(std::min(len, buf.size())));
  if (got < 0) return PipeError(static_cast<int>(-got), "SpliceWrite: read from the pipe");
  if (got == 0) return Blocked(Wait::kPipe);
  const std::span<const std::byte> data = std::span(buf).first(static_cast<std::size_t>(got));
  auto wrote = Write(data, flags);
  if (!wrote.ok()) return wrote;
  // Write took wrote->bytes (sent, or held for a kMore record); the rest
  // goes out first with the next write, SpliceWrite or Shutdown.
  tx_held_.insert(tx_held_.end(), data.begin() + static_cast<std::ptrdiff_t>(wrote->bytes), data.end());
  return Copied(data.size());
}

}  // namespace ktls::detail
