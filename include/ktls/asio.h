// ktls/asio.h: ktls for Boost.Asio (CMake target ktls::asio; header-only,
// needs Boost 1.74 or later).
//
// ktls::asio::stream models Asio's AsyncReadStream and AsyncWriteStream, so
// asio::async_read, asio::async_write and Boost.Beast work on it; it adds
// async_sendfile, async_shutdown (close_notify) and async_close (a
// lingering close that never blocks the io_context). Every operation takes
// the usual completion tokens (callbacks, use_future, use_awaitable, ...).
//
//   ktls::asio::async_accept(acceptor, server_context,
//       [](boost::system::error_code ec, ktls::asio::stream s) {
//         // s is handshaken and offloaded; s.connection().tx() says where.
//       });
//
// One read and one write may be outstanding at once, as with Asio's own
// sockets; the stream is not thread-safe otherwise (use a strand when
// several threads run its io_context).
//
// Errors: a failed operation completes with an error_code, and the full
// ktls::Error (with its detail text and TLS alert) stays in last_error().
// The peer's close_notify is asio::error::eof; a close without it is
// ktls::asio::error::truncated; the handshake deadline is
// std::errc::timed_out; cancel() gives asio::error::operation_aborted.
#ifndef KTLS_ASIO_H_
#define KTLS_ASIO_H_

#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

// Boost after the standard headers: some 1.74 headers use std::exchange
// without including <utility>.
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/system/error_code.hpp>

#include "ktls/client.h"
#include "ktls/connection.h"
#include "ktls/handshake.h"
#include "ktls/result.h"
#include "ktls/server.h"

namespace ktls::asio {

namespace net = boost::asio;
using boost::system::error_code;

// --- Errors ------------------------------------------------------------------

// error: ktls's own error codes, one per ktls::ErrorCategory that has no
// errno. An Error with an errno (ErrorCategory::kIo) becomes that errno in
// the system category instead.
enum class error {
  closed = 1,   // ErrorCategory::kClosed: the connection already ended.
  truncated,    // kTruncated: the peer closed TCP without close_notify.
  alert,        // kAlert: the peer sent a fatal alert (last_error() names it).
  protocol,     // kProtocol: the peer broke the protocol (we sent an alert).
  unsupported,  // kUnsupported: e.g. a KeyUpdate this kernel cannot follow.
  usage,        // kUsage: called wrongly.
  internal,     // kInternal.
  io,           // kIo without an errno.
  file_ended,   // async_sendfile: the file ended before count bytes.
  pipe_not_ready,  // async_splice_*: the pipe is full (read) or empty (write); drain or fill it.
};

namespace detail {

// Boost 1.74's error_category has a non-virtual destructor (protected);
// deriving from it is how categories are made.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"
class ErrorCategory final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "ktls"; }
  std::string message(int value) const override {
    switch (static_cast<error>(value)) {
      case error::closed: return "the TLS connection already ended";
      case error::truncated: return "the peer closed the connection without close_notify";
      case error::alert: return "the peer sent a fatal TLS alert";
      case error::protocol: return "TLS protocol error";
      case error::unsupported: return "not supported by this kernel or session";
      case error::usage: return "ktls called wrongly";
      case error::internal: return "ktls internal error";
      case error::io: return "I/O error";
      case error::file_ended: return "the file ended before everything was sent";
      case error::pipe_not_ready: return "the pipe is full (splice read) or empty (splice write)";
    }
    return "unknown ktls error";
  }
};
#pragma GCC diagnostic pop

}  // namespace detail

// category: the error_category of ktls::asio::error.
inline const boost::system::error_category& category() noexcept {
  static const detail::ErrorCategory instance;
  return instance;
}

inline error_code make_error_code(error e) noexcept { return {static_cast<int>(e), category()}; }

// ToErrorCode maps a ktls::Error to the error_code an operation completes
// with.
inline error_code ToErrorCode(const ktls::Error& e) {
  switch (e.category) {
    case ErrorCategory::kIo:
      if (e.sys_errno != 0) return {e.sys_errno, boost::system::system_category()};
      return make_error_code(error::io);
    case ErrorCategory::kClosed: return make_error_code(error::closed);
    case ErrorCategory::kTruncated: return make_error_code(error::truncated);
    case ErrorCategory::kAlert: return make_error_code(error::alert);
    case ErrorCategory::kProtocol: return make_error_code(error::protocol);
    case ErrorCategory::kUnsupported: return make_error_code(error::unsupported);
    case ErrorCategory::kUsage: return make_error_code(error::usage);
    case ErrorCategory::kInternal: return make_error_code(error::internal);
  }
  return make_error_code(error::internal);
}

}  // namespace ktls::asio

template <>
struct boost::system::is_error_code_enum<ktls::asio::error> : std::true_type {};

namespace ktls::asio {

// --- The stream ----------------------------------------------------------------

// stream: a TLS connection on an Asio executor. Before the handshake it
// holds a connected TCP socket; async_handshake runs the handshake without
// blocking and offloads; then reads, writes and sendfile go through
// ktls::Connection (the kernel, where offloaded).
//
// Ownership: the stream owns the socket. The Asio socket inside is used only
// to wait for readiness, and stays registered with the reactor from the
// start to the end (one epoll registration a connection): before the
// handshake it holds the socket (and closes it if the handshake never
// starts); from then on ktls owns the descriptor (PendingHandshake, then
// Connection), and the Asio socket releases it before ktls closes it.
// Destroying the stream, or close(), closes the socket at once, without
// close_notify (async_shutdown sends it) and without lingering (async_close
// lingers). Moving a stream with operations outstanding is
// not allowed.
class stream {
 public:
  using executor_type = net::any_io_executor;
  using lowest_layer_type = net::ip::tcp::socket;

  // stream takes a connected TCP socket, to handshake with async_handshake.
  explicit stream(net::ip::tcp::socket socket) : waiter_(std::move(socket)), timer_(waiter_.get_executor()) {
    if (waiter_.is_open()) unowned_fd_ = waiter_.native_handle();
  }

  // stream adopts a Connection that is already offloaded (from
  // Listener::Accept, OffloadSsl, ...). Its socket is made non-blocking.
  stream(const executor_type& executor, ktls::Connection conn)
      : waiter_(executor), timer_(executor), conn_(std::move(conn)) {
    if (conn_.fd() >= 0) {
      error_code ec;
      waiter_.assign(ProtocolOf(conn_.fd()), conn_.fd(), ec);
      if (!ec) waiter_.non_blocking(true, ec);
    }
  }

  stream(stream&& other) noexcept
      : waiter_(std::move(other.waiter_)),
        timer_(std::move(other.timer_)),
        unowned_fd_(std::exchange(other.unowned_fd_, -1)),
        handshake_(std::move(other.handshake_)),
        conn_(std::move(other.conn_)),
        last_error_(std::move(other.last_error_)),
        write_scratch_(std::move(other.write_scratch_)) {}
  stream& operator=(stream&&) = delete;
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;

  ~stream() { close(); }

  executor_type get_executor() noexcept { return waiter_.get_executor(); }

  // connection: the offloaded connection (after async_handshake): where
  // each direction is (tx(), rx()), session(), UpdateKeys, ...
  ktls::Connection& connection() noexcept { return conn_; }
  const ktls::Connection& connection() const noexcept { return conn_; }

  // last_error: the full ktls::Error of the last operation that failed.
  const ktls::Error& last_error() const noexcept { return last_error_; }

  bool is_open() const noexcept { return unowned_fd_ >= 0 || handshake_.has_value() || conn_.fd() >= 0; }

  // cancel: every outstanding operation completes with
  // asio::error::operation_aborted. A cancelled handshake closes the socket
  // (nothing was offloaded: offload happens at once when the handshake is
  // done); a cancelled read or write leaves the connection usable.
  void cancel() {
    error_code ignored;
    if (waiter_.is_open()) waiter_.cancel(ignored);
    timer_.cancel();
  }

  // release_connection hands the Connection over, to move it to another
  // process (ktls/move.h: SendConnection) or drive it elsewhere. No
  // operation may be outstanding. The stream owns nothing afterwards
  // (is_open() is false); the Connection is empty if the handshake has not
  // completed (a socket not yet handshaken is closed).
  ktls::Connection release_connection() {
    StopWatching();  // The Connection keeps the fd.
    timer_.cancel();
    return std::move(conn_);
  }

  // close: cancels everything and closes the socket, without close_notify.
  void close() {
    StopWatching();  // Cancels; ktls closes the fd below.
    timer_.cancel();
    handshake_.reset();
    conn_.Close();
  }

  // async_handshake (server side): the handshake with context's
  // configuration, then offload. Completes with (error_code). The
  // context's handshake_timeout bounds it (std::errc::timed_out).
  template <typename Token>
  auto async_handshake(const ServerContext& context, Token&& token) {
    const auto start = [context](int fd) { return ktls::detail::StartServerHandshakeKeepingSocket(context, fd); };
    return net::async_compose<Token, void(error_code)>(HandshakeOp{this, start}, token, waiter_);
  }

  // async_handshake (client side): as Connect does, with host as the name
  // to send and verify.
  template <typename Token>
  auto async_handshake(const std::string& host, const ClientConfig& config, Token&& token) {
    const auto start = [host, config](int fd) {
      return ktls::detail::StartClientHandshakeKeepingSocket(fd, host, config);
    };
    return net::async_compose<Token, void(error_code)>(HandshakeOp{this, start}, token, waiter_);
  }

  // async_read_some reads some plaintext into the first non-empty buffer.
  // Completes with (error_code, bytes); asio::error::eof after the peer's
  // close_notify.
  template <typename MutableBufferSequence, typename Token>
  auto async_read_some(const MutableBufferSequence& buffers, Token&& token) {
    return net::async_compose<Token, void(error_code, std::size_t)>(IoOp{this, ReadAction{FirstBuffer(buffers)}},
                                                                   token, waiter_);
  }

  // async_write_some writes some of buffers. Several small buffers (an HTTP
  // header in pieces) are gathered into one record first.
  template <typename ConstBufferSequence, typename Token>
  auto async_write_some(const ConstBufferSequence& buffers, Token&& token) {
    return net::async_compose<Token, void(error_code, std::size_t)>(IoOp{this, WriteAction{Gather(buffers)}}, token,
                                                                   waiter_);
  }

  // async_write_some with flags: WriteFlags::kMore lets these bytes share a
  // record with the next write or sendfile (ktls::WriteFlags), as an HTTP
  // header before its file body. Follow with a write, sendfile or shutdown.
  template <typename ConstBufferSequence, typename Token>
  auto async_write_some(const ConstBufferSequence& buffers, WriteFlags flags, Token&& token) {
    return net::async_compose<Token, void(error_code, std::size_t)>(IoOp{this, WriteAction{Gather(buffers), flags}},
                                                                   token, waiter_);
  }

  // async_sendfile sends count bytes of file_fd from offset; with TX in the
  // kernel by sendfile(2), no copy through this process. Completes with
  // (error_code, bytes sent) once all count bytes went, or on error
  // (error::file_ended if the file is shorter).
  template <typename Token>
  auto async_sendfile(int file_fd, off_t offset, std::size_t count, Token&& token) {
    return net::async_compose<Token, void(error_code, std::size_t)>(
        IoOp{this, SendFileAction{file_fd, offset, count, 0}}, token, waiter_);
  }

  // async_splice_read moves up to len bytes of plaintext from the
  // connection into a pipe (pipe_fd, its write end): Connection::SpliceRead,
  // waiting for the socket as needed. Completes with (error_code, bytes);
  // asio::error::eof after close_notify; error::pipe_not_ready when the
  // pipe is full (or, with RX in the kernel, not empty): drain it first.
  template <typename Token>
  auto async_splice_read(int pipe_fd, std::size_t len, Token&& token) {
    return net::async_compose<Token, void(error_code, std::size_t)>(IoOp{this, SpliceReadAction{pipe_fd, len}},
                                                                   token, waiter_);
  }

  // async_splice_write moves up to len bytes from a pipe (pipe_fd, its read
  // end) into the connection: Connection::SpliceWrite. Completes with
  // (error_code, bytes); error::pipe_not_ready when the pipe is empty.
  template <typename Token>
  auto async_splice_write(int pipe_fd, std::size_t len, WriteFlags flags, Token&& token) {
    return net::async_compose<Token, void(error_code, std::size_t)>(
        IoOp{this, SpliceWriteAction{pipe_fd, len, flags}}, token, waiter_);
  }

  // async_wait waits until the socket is ready for what a call on
  // connection() that returned would_block asked for (IoProgress::wait):
  // for event loops that call Read or Write themselves, e.g. to hold no
  // read buffer while a keep-alive connection is idle. Only after such a
  // call: readiness is reported when it changes, so what arrived before the
  // call that returned would_block is not waited for. Wait::kPipe is
  // never waited for (asio::error::invalid_argument). Completes with
  // (error_code); operation_aborted after cancel().
  template <typename Token>
  auto async_wait(ktls::Wait wait, Token&& token) {
    return net::async_initiate<Token, void(error_code)>(
        [this](auto handler, ktls::Wait w) {
          if (w == ktls::Wait::kPipe) {
            const auto executor = net::get_associated_executor(handler, waiter_.get_executor());
            return net::post(executor, [h = std::move(handler)]() mutable { std::move(h)(error_code(net::error::invalid_argument)); });
          }
          waiter_.async_wait(w == ktls::Wait::kWritable ? net::socket_base::wait_write : net::socket_base::wait_read,
                             std::move(handler));
        },
        token, wait);
  }

  // async_shutdown sends close_notify and shuts the socket's write side;
  // reading still works (to read the peer's close_notify: error::eof).
  // With ShutdownFlags::kCloseNotifyOnly the write side stays open and
  // async_close sends the FIN (Connection::Shutdown): one system call fewer
  // for a caller that closes next.
  template <typename Token>
  auto async_shutdown(Token&& token) {
    return async_shutdown(ShutdownFlags::kNone, std::forward<Token>(token));
  }
  template <typename Token>
  auto async_shutdown(ShutdownFlags flags, Token&& token) {
    return net::async_compose<Token, void(error_code)>(ShutdownOp{this, flags}, token, waiter_);
  }

  // async_close closes the socket, lingering first without blocking the
  // io_context where ktls ended the connection (async_shutdown's
  // close_notify, or a fatal alert after an error) and the peer may still
  // be sending: what the peer sends is read and dropped until it closes, or
  // for at most OffloadOptions::linger (see Connection::Close for why).
  // Completes with (error_code), success unless cancelled; the socket is
  // closed either way.
  template <typename Token>
  auto async_close(Token&& token) {
    return net::async_compose<Token, void(error_code)>(CloseOp{this}, token, waiter_);
  }

 private:
  // --- helpers ---
  static net::ip::tcp ProtocolOf(int fd) {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0 && addr.ss_family == AF_INET6) {
      return net::ip::tcp::v6();
    }
    return net::ip::tcp::v4();
  }

  template <typename MutableBufferSequence>
  static std::span<std::byte> FirstBuffer(const MutableBufferSequence& buffers) {
    for (auto it = net::buffer_sequence_begin(buffers); it != net::buffer_sequence_end(buffers); ++it) {
      net::mutable_buffer b(*it);
      if (b.size() > 0) return {static_cast<std::byte*>(b.data()), b.size()};
    }
    return {};
  }

  // Gather returns the bytes to write: the first buffer as it is when it is
  // big or alone; else up to 16 KiB of the sequence copied into one piece.
  template <typename ConstBufferSequence>
  std::span<const std::byte> Gather(const ConstBufferSequence& buffers) {
    constexpr std::size_t kGatherLimit = 16 * 1024;
    auto it = net::buffer_sequence_begin(buffers);
    const auto end = net::buffer_sequence_end(buffers);
    while (it != end && net::const_buffer(*it).size() == 0) ++it;
    if (it == end) return {};
    net::const_buffer first(*it);
    auto next = it;
    ++next;
    while (next != end && net::const_buffer(*next).size() == 0) ++next;
    if (next == end || first.size() >= kGatherLimit) return {static_cast<const std::byte*>(first.data()), first.size()};
    write_scratch_.clear();
    for (; it != end && write_scratch_.size() < kGatherLimit; ++it) {
      net::const_buffer b(*it);
      const std::size_t n = std::min(b.size(), kGatherLimit - write_scratch_.size());
      const auto* p = static_cast<const std::byte*>(b.data());
      write_scratch_.insert(write_scratch_.end(), p, p + n);
    }
    return write_scratch_;
  }

  error_code Fail(const ktls::Error& e) {
    last_error_ = e;
    return ToErrorCode(e);
  }

  void Wait(ktls::Wait wait, auto&& self) {
    waiter_.async_wait(wait == ktls::Wait::kWritable ? net::socket_base::wait_write : net::socket_base::wait_read,
                       std::move(self));
  }

  // --- operations ---
  struct ReadAction {
    std::span<std::byte> buf;
    Result<IoProgress> operator()(stream& s) { return s.conn_.Read(buf); }
  };
  struct WriteAction {
    std::span<const std::byte> data;
    WriteFlags flags = WriteFlags::kNone;
    Result<IoProgress> operator()(stream& s) { return s.conn_.Write(data, flags); }
  };
  struct SpliceReadAction {
    int pipe_fd;
    std::size_t len;
    Result<IoProgress> operator()(stream& s) { return s.conn_.SpliceRead(pipe_fd, len); }
  };
  struct SpliceWriteAction {
    int pipe_fd;
    std::size_t len;
    WriteFlags flags = WriteFlags::kNone;
    Result<IoProgress> operator()(stream& s) { return s.conn_.SpliceWrite(pipe_fd, len, flags); }
  };
  struct SendFileAction {
    int file_fd;
    off_t offset;
    std::size_t count;
    std::size_t sent;
    Result<IoProgress> operator()(stream& s) {
      return s.conn_.SendFile(file_fd, offset + static_cast<off_t>(sent), count - sent);
    }
  };

  // IoOp runs one Read, Write, SpliceRead, SpliceWrite or SendFile until it
  // makes progress (or, for sendfile, until all is sent), waiting for the
  // socket's readiness in between.
  template <typename Action>
  struct IoOp {
    IoOp(stream* owner, Action a) : s(owner), action(std::move(a)) {}
    stream* s;
    Action action;
    bool started = false;
    std::optional<std::pair<error_code, std::size_t>> result;  // Ready before the first wait.

    template <typename Self>
    void operator()(Self& self, error_code ec = {}) {
      if (result) return self.complete(result->first, result->second);  // Posted back to us.
      const bool first_call = !started;
      started = true;
      if (ec) return self.complete(ec, Progress());
      for (;;) {
        if (Done()) return Finish(self, first_call, {}, Progress());
        auto r = action(*s);
        if (!r.ok()) return Finish(self, first_call, s->Fail(r.error()), Progress());
        if (r->end_of_stream) return Finish(self, first_call, net::error::eof, 0);
        if (r->would_block && r->wait == ktls::Wait::kPipe) {  // The caller's pipe: not ours to wait for.
          return Finish(self, first_call, make_error_code(error::pipe_not_ready), Progress());
        }
        if (r->would_block) return s->Wait(r->wait, std::move(self));
        if constexpr (std::is_same_v<Action, SendFileAction>) {
          if (r->bytes == 0) {  // The file ended early.
            s->last_error_ = ktls::Error{ErrorCategory::kUsage, 0,
                                         "the file ended after " + std::to_string(action.sent) + " of " +
                                             std::to_string(action.count) + " bytes",
                                         -1};
            return Finish(self, first_call, make_error_code(error::file_ended), action.sent);
          }
          action.sent += r->bytes;
          continue;
        } else {
          return Finish(self, first_call, {}, r->bytes);
        }
      }
    }

    bool Done() const {
      if constexpr (std::is_same_v<Action, SendFileAction>) return action.sent == action.count;
      if constexpr (std::is_same_v<Action, ReadAction>) return action.buf.empty();
      if constexpr (std::is_same_v<Action, WriteAction>) return action.data.empty();
      if constexpr (std::is_same_v<Action, SpliceReadAction> || std::is_same_v<Action, SpliceWriteAction>) {
        return action.len == 0;
      }
      return false;
    }
    std::size_t Progress() const {
      if constexpr (std::is_same_v<Action, SendFileAction>) return action.sent;
      return 0;
    }
    // Finish completes, but never from inside the initiating call: a result
    // ready at once is posted, as Asio's own operations do.
    template <typename Self>
    void Finish(Self& self, bool first_call, error_code ec, std::size_t n) {
      // A gathered write's copy is not kept: an idle connection should not
      // hold a buffer of up to 16 KiB for its next response.
      if constexpr (std::is_same_v<Action, WriteAction>) std::vector<std::byte>().swap(s->write_scratch_);
      if (!first_call) return self.complete(ec, n);
      result.emplace(ec, n);
      net::post(s->waiter_.get_executor(), std::move(self));
    }
  };

  struct ShutdownOp {
    ShutdownOp(stream* owner, ShutdownFlags shutdown_flags) : s(owner), flags(shutdown_flags) {}
    stream* s;
    ShutdownFlags flags;
    bool started = false;
    std::optional<error_code> result;

    template <typename Self>
    void operator()(Self& self, error_code ec = {}) {
      if (result) return self.complete(*result);
      const bool first_call = !started;
      started = true;
      if (ec) return self.complete(ec);
      auto r = s->conn_.Shutdown(flags);
      if (r.ok() && r->would_block) return s->Wait(r->wait, std::move(self));
      error_code out = r.ok() ? error_code{} : s->Fail(r.error());
      if (!first_call) return self.complete(out);
      result = out;
      net::post(s->waiter_.get_executor(), std::move(self));
    }
  };

  struct CloseOp {
    explicit CloseOp(stream* owner) : s(owner) {}
    stream* s;
    bool started = false;
    bool timed = false;
    std::optional<error_code> result;

    template <typename Self>
    void operator()(Self& self, error_code ec = {}) {
      if (result) return self.complete(*result);
      const bool first_call = !started;
      started = true;
      if (!ec && s->conn_.fd() >= 0) {
        auto r = s->conn_.Linger();
        if (r.ok() && r->would_block) {
          if (!timed) {
            // At the deadline, the wait for the peer ends (aborted).
            timed = true;
            s->timer_.expires_at(s->conn_.linger_deadline());
            s->timer_.async_wait([owner = s](error_code timer_ec) {
              if (timer_ec) return;  // Cancelled: the close is done.
              error_code ignored;
              owner->waiter_.cancel(ignored);
            });
          }
          return s->Wait(ktls::Wait::kReadable, std::move(self));
        }
      }
      // The peer closed, the budget ran out (the timer aborted the wait),
      // or nothing was owed: close now.
      s->close();
      if (!first_call) return self.complete({});
      result = error_code{};
      net::post(s->waiter_.get_executor(), std::move(self));
    }
  };

  template <typename Start>
  struct HandshakeOp {
    HandshakeOp(stream* owner, Start start_handshake) : s(owner), start(std::move(start_handshake)) {}
    stream* s;
    Start start;
    bool started = false;
    std::optional<error_code> result;

    template <typename Self>
    void operator()(Self& self, error_code ec = {}) {
      if (result) return self.complete(*result);
      if (!started) {
        started = true;
        if (s->unowned_fd_ < 0) return Post(self, make_error_code(error::usage));
        // The waiter keeps watching the fd, which ktls owns from here; a
        // handshake that cannot start leaves it with the waiter, to close.
        // Non-blocking through Asio, which then knows (no second ioctl at
        // its first wait; none at all after its async_connect).
        // (unowned_fd_ is cleared only once ktls has the fd: should start
        // throw, the stream still closes it through the waiter.)
        if (!s->waiter_.native_non_blocking()) s->waiter_.native_non_blocking(true, ec);
        if (ec) {
          s->StopWatching();
          return Post(self, ec);
        }
        auto hs = start(s->unowned_fd_);
        if (!hs.ok()) {
          s->StopWatching();
          return Post(self, s->Fail(hs.error()));
        }
        s->unowned_fd_ = -1;
        s->handshake_.emplace(std::move(hs).value());
        s->timed_out_ = std::make_shared<bool>(false);
        if (s->handshake_->deadline() != std::chrono::steady_clock::time_point::max()) {
          s->timer_.expires_at(s->handshake_->deadline());
          s->timer_.async_wait([flag = std::weak_ptr<bool>(s->timed_out_), this_stream = s](error_code timer_ec) {
            auto timed_out = flag.lock();
            if (timer_ec || !timed_out) return;  // Cancelled, or the handshake is over.
            *timed_out = true;
            error_code ignored;
            this_stream->waiter_.cancel(ignored);
          });
        }
      } else if (ec) {
        // A wait ended early: the deadline (the timer cancelled it) or cancel().
        if (ec == net::error::operation_aborted && s->timed_out_ && *s->timed_out_) {
          ktls::Error timeout{ErrorCategory::kIo, ETIMEDOUT, "TLS handshake timed out", -1};
          s->last_error_ = timeout;
          return self.complete(Abandon(boost::system::errc::make_error_code(boost::system::errc::timed_out)));
        }
        return self.complete(Abandon(ec));
      }
      auto step = s->handshake_->Step();
      if (!step.ok()) return Complete(self, Abandon(s->Fail(step.error())));
      if (*step != ktls::Wait::kNone) return s->Wait(*step, std::move(self));
      // Done: ktls takes the fd from the PendingHandshake to the Connection,
      // and the waiter goes on watching it. A Finish that fails leaves the
      // fd with the PendingHandshake (closed by Abandon, after the waiter
      // has let go).
      auto conn = s->handshake_->Finish();
      if (!conn.ok()) return Complete(self, Abandon(s->Fail(conn.error())));
      s->handshake_.reset();
      s->timed_out_.reset();
      s->timer_.cancel();
      s->conn_ = std::move(conn).value();
      Complete(self, {});
    }

    // Abandon ends a failed or cancelled handshake: nothing was offloaded,
    // and the socket is closed (released from the Asio socket first).
    error_code Abandon(error_code ec) {
      s->StopWatching();
      s->handshake_.reset();
      s->timed_out_.reset();
      s->timer_.cancel();
      return ec;
    }
    template <typename Self>
    void Post(Self& self, error_code ec) {
      result = ec;
      net::post(s->waiter_.get_executor(), std::move(self));
    }
    template <typename Self>
    void Complete(Self& self, error_code ec) {
      self.complete(ec);
    }
  };

  // StopWatching ends the waiter's watch: a socket ktls does not have yet
  // (no handshake started, or it could not start) is closed with it;
  // otherwise Asio lets go of the fd, which ktls keeps (and closes).
  void StopWatching() {
    error_code ignored;
    if (std::exchange(unowned_fd_, -1) >= 0) {
      waiter_.close(ignored);
    } else if (waiter_.is_open()) {
      waiter_.release(ignored);
    }
  }

  // Readiness only: never reads or writes; closes the socket only before
  // ktls has it (no handshake started, or it could not start).
  net::ip::tcp::socket waiter_;
  net::steady_timer timer_;      // The handshake deadline.
  int unowned_fd_ = -1;  // The TCP socket (held by waiter_) before the handshake takes it.
  std::optional<PendingHandshake> handshake_;
  std::shared_ptr<bool> timed_out_;  // Set by the deadline timer while a handshake runs.
  ktls::Connection conn_;
  ktls::Error last_error_;
  std::vector<std::byte> write_scratch_;
};

// --- Accept ------------------------------------------------------------------

namespace detail {

struct AcceptOp {
  AcceptOp(net::ip::tcp::acceptor* a, net::any_io_executor ex, ServerContext ctx)
      : acceptor(a), executor(std::move(ex)), context(std::move(ctx)) {}
  net::ip::tcp::acceptor* acceptor;
  net::any_io_executor executor;  // Where the accepted connection's stream runs.
  ServerContext context;
  std::unique_ptr<stream> accepted;  // A stable address while its handshake runs.

  template <typename Self>
  void operator()(Self& self) {
    acceptor->async_accept(executor, std::move(self));
  }
  template <typename Self>
  void operator()(Self& self, error_code ec, net::ip::tcp::socket socket) {
    if (ec) return self.complete(ec, stream(net::ip::tcp::socket(executor)));
    error_code ignored;
    socket.set_option(net::ip::tcp::no_delay(true), ignored);
    accepted = std::make_unique<stream>(std::move(socket));
    accepted->async_handshake(context, std::move(self));
  }
  template <typename Self>
  void operator()(Self& self, error_code ec) {
    self.complete(ec, std::move(*accepted));
  }
};

}  // namespace detail

// async_accept accepts the next client on acceptor, runs the handshake with
// context and offloads. Completes with (error_code, stream); the stream runs
// on executor (another io_context's, to spread connections over threads).
// A client whose handshake fails completes the operation with that error
// (the stream is then empty and closed); the acceptor stays usable, so call
// async_accept again either way.
template <typename Token>
auto async_accept(net::ip::tcp::acceptor& acceptor, const net::any_io_executor& executor,
                  const ServerContext& context, Token&& token) {
  return net::async_compose<Token, void(error_code, stream)>(detail::AcceptOp(&acceptor, executor, context),
                                                             token, acceptor);
}

// async_accept, with the stream on the acceptor's executor.
template <typename Token>
auto async_accept(net::ip::tcp::acceptor& acceptor, const ServerContext& context, Token&& token) {
  return async_accept(acceptor, acceptor.get_executor(), context, std::forward<Token>(token));
}

}  // namespace ktls::asio

#endif  // KTLS_ASIO_H_
