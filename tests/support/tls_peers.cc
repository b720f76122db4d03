// tests/support/tls_peers.cc
#include "tests/support/tls_peers.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <stdexcept>
#include <utility>

#include "tests/support/sockets.h"

namespace ktls::testing {
namespace {

using Bytes = std::vector<std::uint8_t>;

constexpr std::size_t kLockstepChunk = 16 * 1024;

// The fallback reason for the connection this thread is handshaking.
thread_local std::string t_fallback_reason;

}  // namespace

TempCert::TempCert() {
  std::string error;
  if (!tools::MakeSelfSigned(*this, error)) throw std::runtime_error("MakeSelfSigned: " + error);
}

TempCert::~TempCert() {
  ::unlink(cert_file.c_str());
  ::unlink(key_file.c_str());
  ::rmdir(cert_file.substr(0, cert_file.rfind('/')).c_str());
}

const TempCert& TestCert() {
  static const TempCert cert;
  return cert;
}

ServerConfig ServerFor() {
  ServerConfig config;
  config.cert_file = TestCert().cert_file;
  config.key_file = TestCert().key_file;
  config.offload.rx = RxOffload::kOn;  // Kernel RX on 6.1 too (kAuto would keep it in OpenSSL).
  return config;
}

ClientConfig ClientFor() {
  ClientConfig config;
  config.ca_file = TestCert().cert_file;
  config.offload.rx = RxOffload::kOn;  // Kernel RX on 6.1 too (kAuto would keep it in OpenSSL).
  return config;
}

detail::UniqueSslCtx NewTestContext(bool server, const char* ciphersuites) {
  detail::UniqueSslCtx ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
  if (!ctx || SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION) != 1) return nullptr;
  if (ciphersuites != nullptr && SSL_CTX_set_ciphersuites(ctx.get(), ciphersuites) != 1) return nullptr;
  if (server) {
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), TestCert().cert_file.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx.get(), TestCert().key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
      return nullptr;
    }
  } else {
    if (SSL_CTX_load_verify_locations(ctx.get(), TestCert().cert_file.c_str(), nullptr) != 1) return nullptr;
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  }
  return ctx;
}

Result<Connection> ConnectTo(std::uint16_t port, const ClientConfig& config) {
  auto conn = Connect("127.0.0.1", port, config);
  if (conn.ok() && !SetIoTimeout(conn->fd(), kIoTimeout)) {
    return Error{ErrorCategory::kIo, errno, "SetIoTimeout on the client socket", -1};
  }
  return conn;
}

// --- Watchdog ------------------------------------------------------------------

Watchdog::Watchdog(std::chrono::seconds deadline) {
  thread_ = std::thread([this, deadline] {
    std::unique_lock lock(mu_);
    if (!wake_.wait_for(lock, deadline, [this] { return stop_; })) FireLocked();
  });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
  for (int dup_fd : dups_) ::close(dup_fd);
}

int Watchdog::Watch(int fd) {
  const int dup_fd = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  std::lock_guard lock(mu_);
  if (dup_fd >= 0) {
    dups_.push_back(dup_fd);
    if (fired_) ::shutdown(dup_fd, SHUT_RDWR);
  }
  return dup_fd;
}

void Watchdog::Forget(int token) {
  std::lock_guard lock(mu_);
  if (std::erase(dups_, token) > 0) ::close(token);
}

void Watchdog::Fire() {
  std::lock_guard lock(mu_);
  FireLocked();
}

bool Watchdog::fired() const {
  std::lock_guard lock(mu_);
  return fired_;
}

void Watchdog::FireLocked() {
  fired_ = true;
  for (int dup_fd : dups_) ::shutdown(dup_fd, SHUT_RDWR);
}

// --- TestServer ----------------------------------------------------------------

TestServer::TestServer(const ServerConfig& config, std::size_t num_connections, Handler handler)
    : dog_(kTestDeadline), handler_(std::move(handler)), ends_(num_connections) {
  ServerConfig recording = config;
  recording.offload.on_fallback = [chained = config.offload.on_fallback](const OffloadReport& report) {
    t_fallback_reason = report.reason;
    if (chained) chained(report);
  };
  auto listener = Listener::Listen("127.0.0.1:0", recording);
  if (!listener.ok()) {
    listen_error_ = listener.error().ToString();
    return;
  }
  listener_.emplace(std::move(listener).value());
  dog_.Watch(listener_->fd());  // Shutting it down wakes accept().
  acceptor_ = std::thread([this] { AcceptLoop(); });
}

TestServer::~TestServer() { Stop(std::chrono::seconds(0)); }

std::uint16_t TestServer::port() const { return static_cast<std::uint16_t>(listener_->port()); }

bool TestServer::WaitHandshaken(std::size_t count) {
  std::unique_lock lock(mu_);
  return done_.wait_for(lock, kTestDeadline, [&] { return num_handshaken_ >= count; });
}

const std::vector<ServerEnd>& TestServer::Join() {
  Stop(kTestDeadline);
  EXPECT_FALSE(dog_.fired()) << "the test ran past its deadline; its sockets were shut down";
  return ends_;
}

void TestServer::AcceptLoop() {
  for (std::size_t i = 0; i < ends_.size(); ++i) {
    auto socket = listener_->AcceptSocket();
    if (!socket.ok()) {
      std::lock_guard lock(mu_);
      for (std::size_t j = i; j < ends_.size(); ++j) ends_[j].error = "never accepted: " + socket.error().ToString();
      num_handshaken_ += ends_.size() - i;
      num_done_ += ends_.size() - i;
      done_.notify_all();
      return;
    }
    workers_.emplace_back([this, i, fd = *socket] { Serve(fd, ends_[i]); });
  }
}

void TestServer::Serve(int fd, ServerEnd& end) {
  t_fallback_reason.clear();
  auto conn = listener_->Handshake(fd);
  end.fallback_reason = t_fallback_reason;
  {
    std::lock_guard lock(mu_);
    ++num_handshaken_;
    done_.notify_all();
  }
  if (!conn.ok()) {
    end.error = "server handshake: " + conn.error().ToString();
  } else {
    end.tx = conn->tx();
    end.rx = conn->rx();
    end.session = conn->session();
    if (!SetIoTimeout(conn->fd(), kIoTimeout)) end.error = "SetIoTimeout failed on the server socket";
    const int token = dog_.Watch(conn->fd());
    if (end.error.empty()) handler_(*conn, end);
    dog_.Forget(token);  // Before the Connection closes the socket.
  }
  std::lock_guard lock(mu_);
  ++num_done_;
  done_.notify_all();
}

void TestServer::Stop(std::chrono::seconds deadline) {
  if (!acceptor_.joinable()) return;
  std::unique_lock lock(mu_);
  if (!done_.wait_for(lock, deadline, [this] { return num_done_ == ends_.size(); })) dog_.Fire();
  lock.unlock();
  acceptor_.join();
  for (std::thread& worker : workers_) worker.join();
}

// --- Connection I/O --------------------------------------------------------------

std::string ReadToEnd(Connection& conn, Bytes& out, std::size_t read_len) {
  std::vector<std::byte> buf(read_len);
  for (;;) {
    auto got = conn.Read(buf);
    if (!got.ok()) return "Read: " + got.error().ToString();
    if (got->end_of_stream) return {};
    if (got->would_block) return "Read timed out before close_notify";
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(buf.data());
    out.insert(out.end(), bytes, bytes + got->bytes);
  }
}

std::string ReadExactly(Connection& conn, std::size_t len, Bytes& out) {
  std::vector<std::byte> buf(len);
  std::size_t have = 0;
  while (have < len) {
    auto got = conn.Read(std::span(buf).subspan(have));
    if (!got.ok()) return "Read: " + got.error().ToString();
    if (got->end_of_stream) return "close_notify after " + std::to_string(have) + " of " + std::to_string(len) + " bytes";
    if (got->would_block) return "Read timed out";
    have += got->bytes;
  }
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(buf.data());
  out.insert(out.end(), bytes, bytes + len);
  return {};
}

std::string WriteAll(Connection& conn, std::span<const std::uint8_t> data) {
  auto wrote = conn.WriteAll(std::as_bytes(data));
  if (!wrote.ok()) return "Write: " + wrote.error().ToString();
  if (wrote->bytes != data.size()) return "Write timed out after " + std::to_string(wrote->bytes) + " bytes";
  return {};
}

std::string ShutdownText(Connection& conn) {
  auto shut = conn.Shutdown();
  return shut.ok() ? std::string() : "Shutdown: " + shut.error().ToString();
}

void Echo(Connection& conn, ServerEnd& end) {
  std::vector<std::byte> buf(256 * 1024);
  for (;;) {
    auto got = conn.Read(buf);
    if (!got.ok()) {
      end.error = "server Read: " + got.error().ToString();
      return;
    }
    if (got->end_of_stream) break;
    if (got->would_block) {
      end.error = "server Read timed out";
      return;
    }
    end.bytes_in += got->bytes;
    auto wrote = conn.WriteAll(std::span(buf).first(got->bytes));
    if (!wrote.ok() || wrote->bytes != got->bytes) {
      end.error = "server Write: " + (wrote.ok() ? std::string("timed out") : wrote.error().ToString());
      return;
    }
    end.bytes_out += wrote->bytes;
  }
  end.error = ShutdownText(conn);
}

void SpliceEcho(Connection& conn, ServerEnd& end) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    end.error = std::string("pipe2: ") + std::strerror(errno);
    return;
  }
  const UniqueFd pipe_read(fds[0]);
  const UniqueFd pipe_write(fds[1]);
  for (;;) {
    auto got = conn.SpliceRead(pipe_write.get(), 256 * 1024);
    if (!got.ok()) {
      end.error = "server SpliceRead: " + got.error().ToString();
      return;
    }
    if (got->end_of_stream) break;
    if (got->would_block) {
      // The pipe is emptied below every time: only the socket can block.
      end.error = got->wait == Wait::kPipe ? "server SpliceRead: an empty pipe is full" : "server SpliceRead timed out";
      return;
    }
    end.bytes_in += got->bytes;
    end.copied_in += got->copied;
    for (std::size_t left = got->bytes; left > 0;) {
      auto put = conn.SpliceWrite(pipe_read.get(), left);
      if (!put.ok()) {
        end.error = "server SpliceWrite: " + put.error().ToString();
        return;
      }
      if (put->would_block) {
        end.error = put->wait == Wait::kPipe ? "server SpliceWrite: the pipe emptied early"
                                             : "server SpliceWrite timed out";
        return;
      }
      left -= put->bytes;
      end.bytes_out += put->bytes;
      end.copied_out += put->copied;
    }
  }
  end.error = ShutdownText(conn);
}

std::string EchoThrough(Connection& conn, std::span<const std::uint8_t> data, Pace pace, Bytes& echoed) {
  if (pace == Pace::kConcurrent) {
    std::string write_error;
    std::thread writer([&] {
      write_error = WriteAll(conn, data);
      if (write_error.empty()) write_error = ShutdownText(conn);
    });
    const std::string read_error = ReadToEnd(conn, echoed);
    writer.join();
    return !write_error.empty() ? write_error : read_error;
  }
  for (std::size_t offset = 0; offset < data.size(); offset += kLockstepChunk) {
    const auto chunk = data.subspan(offset, std::min(kLockstepChunk, data.size() - offset));
    if (std::string error = WriteAll(conn, chunk); !error.empty()) return error;
    if (std::string error = ReadExactly(conn, chunk.size(), echoed); !error.empty()) return error;
  }
  if (std::string error = ShutdownText(conn); !error.empty()) return error;
  return ReadToEnd(conn, echoed);
}

// --- Expectations ----------------------------------------------------------------

std::string ExpectedOffload(Offload tx, Offload rx) {
  return std::string("tx=") + OffloadName(tx) + " rx=" + OffloadName(rx);
}

void ExpectOffloaded(Offload tx, Offload rx, Offload want_tx, Offload want_rx, const std::string& who) {
  EXPECT_EQ(ExpectedOffload(tx, rx), ExpectedOffload(want_tx, want_rx))
      << who << " should have TX in " << OffloadName(want_tx) << " and RX in " << OffloadName(want_rx);
}

void ExpectOffloaded(const ServerEnd& end, Offload want_tx, Offload want_rx, const std::string& who) {
  ExpectOffloaded(end.tx, end.rx, want_tx, want_rx,
                  end.fallback_reason.empty() ? who : who + " (fallback: " + end.fallback_reason + ")");
}

std::function<void(const OffloadReport&)> FallbackLog::Callback() {
  return [this](const OffloadReport& report) {
    std::lock_guard lock(mu_);
    reports_.push_back(report);
  };
}

std::vector<OffloadReport> FallbackLog::reports() {
  std::lock_guard lock(mu_);
  return reports_;
}

// --- Plain OpenSSL peers ------------------------------------------------------

TempFile::TempFile(std::size_t len) : contents_(RandomBytes(len)) {
  const char* dir = std::getenv("TMPDIR");
  std::string path = std::string(dir != nullptr ? dir : "/tmp") + "/ktls-test-file-XXXXXX";
  fd_.reset(::mkstemp(path.data()));
  if (!fd_) return;
  ::unlink(path.c_str());
  if (!WriteAll(fd_.get(), contents_)) fd_.reset();
}

namespace plain_openssl {

std::string OpenSslErrors() {
  std::string text;
  char buf[256];
  while (unsigned long code = ERR_get_error()) {
    ERR_error_string_n(code, buf, sizeof(buf));
    text += text.empty() ? "" : "; ";
    text += buf;
  }
  return text;
}

std::string SslFailure(SSL* ssl, int ret, const char* what) {
  const int saved_errno = errno;
  const int code = SSL_get_error(ssl, ret);
  std::string text = std::string(what) + " failed: SSL_get_error " + std::to_string(code);
  if (code == SSL_ERROR_SYSCALL && saved_errno != 0) text += std::string(" (") + std::strerror(saved_errno) + ")";
  const std::string errors = OpenSslErrors();
  return errors.empty() ? text : text + ": " + errors;
}

std::string SslWriteAll(SSL* ssl, std::span<const std::uint8_t> data) {
  while (!data.empty()) {
    std::size_t n = 0;
    ERR_clear_error();
    const int ret = SSL_write_ex(ssl, data.data(), data.size(), &n);
    if (ret != 1) return SslFailure(ssl, ret, "SSL_write");
    data = data.subspan(n);
  }
  return {};
}

std::string SslReadExactly(SSL* ssl, std::size_t len, std::vector<std::uint8_t>& out) {
  const std::size_t start = out.size();
  out.resize(start + len);
  std::size_t have = 0;
  while (have < len) {
    std::size_t n = 0;
    ERR_clear_error();
    const int ret = SSL_read_ex(ssl, out.data() + start + have, len - have, &n);
    if (ret != 1) return SslFailure(ssl, ret, "SSL_read");
    have += n;
  }
  return {};
}

std::string SslExpectCloseNotify(SSL* ssl) {
  std::uint8_t byte = 0;
  std::size_t n = 0;
  ERR_clear_error();
  const int ret = SSL_read_ex(ssl, &byte, 1, &n);
  if (ret == 1) return "data where close_notify was expected";
  const int code = SSL_get_error(ssl, ret);
  return code == SSL_ERROR_ZERO_RETURN ? std::string() : SslFailure(ssl, ret, "SSL_read expecting close_notify");
}

std::string SslExpectAlert(SSL* ssl, int reason) {
  std::uint8_t byte = 0;
  std::size_t n = 0;
  ERR_clear_error();
  const int ret = SSL_read_ex(ssl, &byte, 1, &n);
  if (ret == 1) return "data where an alert was expected";
  if (SSL_get_error(ssl, ret) == SSL_ERROR_SSL && ERR_GET_REASON(ERR_peek_last_error()) == reason) return "";
  return "expected the alert " + std::string(ERR_reason_error_string(ERR_PACK(ERR_LIB_SSL, 0, reason))) + ": " +
         SslFailure(ssl, ret, "SSL_read");
}

}  // namespace plain_openssl

}  // namespace ktls::testing
