// conn/connection.cc: the public ktls::Connection, forwarding to
// ConnectionImpl, and what every part of ConnectionImpl shares: its
// lifetime, failing, and waiting on a blocking socket. The rest of
// ConnectionImpl is split by job: connection_read.cc, control_records.cc,
// connection_write.cc, key_update.cc, linger.cc; the kTLS socket calls are
// in kernel_io.cc.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <climits>

#include "conn/connection_impl.h"
#include "core/errors.h"
#include "handshake/capture.h"
#include "kernel/syscalls.h"
#include "net/socket_util.h"

namespace ktls {
namespace detail {

ConnectionImpl::ConnectionImpl(UniqueFd fd, UniqueSsl ssl_in, bool server)
    : socket(std::move(fd)), ssl(std::move(ssl_in)), is_server(server) {}

ConnectionImpl::~ConnectionImpl() {
  ReleaseSsl();
  if (from_untrusted_sender) CloseSocket();  // Else socket's own destructor, last.
}

void ConnectionImpl::CloseSocket() noexcept {
  if (from_untrusted_sender) {
    CloseOnOwnThread(socket.release());
  } else {
    socket.reset();
  }
}

Result<IoProgress> ConnectionImpl::Fail(Error error) {
  failed_ = true;
  return error;
}

bool ConnectionImpl::WaitFor(short events) {
  if (from_untrusted_sender) return false;  // Non-blocking, whatever O_NONBLOCK says.
  const int flags = ::fcntl(socket.get(), F_GETFL);
  if (flags < 0 || (flags & O_NONBLOCK) != 0) return false;
  // Wait no longer than a blocking recvmsg/sendmsg would: the kernel path
  // honours SO_RCVTIMEO/SO_SNDTIMEO, so the OpenSSL path must too.
  timeval tv{};
  socklen_t len = sizeof(tv);
  int timeout_ms = -1;
  if (sys::GetSockOpt(socket.get(), SOL_SOCKET, events == POLLIN ? SO_RCVTIMEO : SO_SNDTIMEO, &tv, &len) == 0 &&
      (tv.tv_sec != 0 || tv.tv_usec != 0)) {
    timeout_ms = static_cast<int>(std::min<long long>(tv.tv_sec * 1000LL + tv.tv_usec / 1000, INT_MAX));
  }
  pollfd pfd{socket.get(), events, 0};
  int rc;
  while ((rc = ::poll(&pfd, 1, timeout_ms)) < 0 && errno == EINTR) {
  }
  return rc > 0;  // Timed out: the caller reports would_block, as recvmsg would.
}

}  // namespace detail

const char* OffloadName(Offload where) noexcept { return where == Offload::kKernel ? "kernel" : "user"; }

Connection::Connection() = default;
Connection::Connection(std::unique_ptr<detail::ConnectionImpl> impl) : impl_(std::move(impl)) {}
Connection::Connection(Connection&&) noexcept = default;
Connection& Connection::operator=(Connection&&) noexcept = default;
Connection::~Connection() = default;

namespace {
Error EmptyConnection() { return detail::MakeError(ErrorCategory::kUsage, "empty ktls::Connection"); }
const SessionInfo kNoSession{};
}  // namespace

Result<IoProgress> Connection::Read(std::span<std::byte> buf) {
  return impl_ ? impl_->Read(buf) : Result<IoProgress>(EmptyConnection());
}

Result<IoProgress> Connection::Write(std::span<const std::byte> data) {
  return impl_ ? impl_->Write(data) : Result<IoProgress>(EmptyConnection());
}

Result<IoProgress> Connection::Write(std::span<const std::byte> data, WriteFlags flags) {
  return impl_ ? impl_->Write(data, flags) : Result<IoProgress>(EmptyConnection());
}

Result<IoProgress> Connection::WriteAll(std::span<const std::byte> data) {
  std::size_t done = 0;
  while (done < data.size()) {
    auto wrote = Write(data.subspan(done));
    if (!wrote.ok()) return wrote;
    done += wrote->bytes;
    if (wrote->would_block) return IoProgress{done, true, false, wrote->wait};
  }
  return IoProgress{done, false, false};
}

Result<IoProgress> Connection::SendFile(int file_fd, off_t offset, std::size_t count) {
  return impl_ ? impl_->SendFile(file_fd, offset, count) : Result<IoProgress>(EmptyConnection());
}

Result<IoProgress> Connection::SpliceRead(int pipe_fd, std::size_t len) {
  return impl_ ? impl_->SpliceRead(pipe_fd, len) : Result<IoProgress>(EmptyConnection());
}

Result<IoProgress> Connection::SpliceWrite(int pipe_fd, std::size_t len, WriteFlags flags) {
  return impl_ ? impl_->SpliceWrite(pipe_fd, len, flags) : Result<IoProgress>(EmptyConnection());
}

Result<IoProgress> Connection::Shutdown(ShutdownFlags flags) {
  return impl_ ? impl_->Shutdown(flags) : Result<IoProgress>(EmptyConnection());
}

void Connection::Close() {
  if (impl_) impl_->Close();
}

Result<IoProgress> Connection::Linger() {
  return impl_ ? impl_->Linger() : Result<IoProgress>(EmptyConnection());
}

std::chrono::steady_clock::time_point Connection::linger_deadline() const noexcept {
  return impl_ ? impl_->LingerDeadline() : std::chrono::steady_clock::time_point{};
}

Result<void> Connection::UpdateKeys(bool request_peer_update) {
  return impl_ ? impl_->UpdateKeys(request_peer_update) : Result<void>(EmptyConnection());
}

std::uint64_t Connection::tx_key_updates() const noexcept {
  if (!impl_) return 0;
  std::uint64_t n = impl_->tx_key_updates.load();  // Those the kernel sent.
  if (impl_->tx == Offload::kUser && impl_->ssl) {
    if (const detail::CaptureState* state = detail::GetCaptureState(impl_->ssl.get())) n += state->sent_key_updates;
  }
  return n;
}

std::uint64_t Connection::rx_key_updates() const noexcept {
  if (!impl_) return 0;
  std::uint64_t n = impl_->rx_key_updates.load();
  // OpenSSL reads KeyUpdates only while it has RX (RX is never offloaded
  // after one), and the SSL may be freed by the reader once both
  // directions are in the kernel.
  if (impl_->rx == Offload::kUser && impl_->ssl) {
    if (const detail::CaptureState* state = detail::GetCaptureState(impl_->ssl.get())) n += state->read_key_updates;
  }
  return n;
}

Offload Connection::tx() const noexcept { return impl_ ? impl_->tx : Offload::kUser; }
Offload Connection::rx() const noexcept { return impl_ ? impl_->rx : Offload::kUser; }
const SessionInfo& Connection::session() const noexcept { return impl_ ? impl_->session : kNoSession; }
int Connection::fd() const noexcept { return impl_ ? impl_->socket.get() : -1; }
std::uint64_t Connection::tickets_relayed() const noexcept { return impl_ ? impl_->tickets_relayed.load() : 0; }
std::uint64_t Connection::tickets_dropped() const noexcept { return impl_ ? impl_->tickets_dropped.load() : 0; }
const char* Connection::tickets_dropped_reason() const noexcept {
  return impl_ ? impl_->tickets_dropped_reason.load() : nullptr;
}

}  // namespace ktls
