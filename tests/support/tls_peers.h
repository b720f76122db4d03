// tests/support/tls_peers.h: both ends of real TLS connections for kernel
// tests: a certificate, the library's Listener on a thread, the library's
// client, an echo protocol checked by the bytes, and a watchdog so that a test
// that goes wrong fails instead of hanging its guest.
//
// The echo protocol: the client writes its data and then close_notify; the
// server (Echo) writes back everything it reads and answers the
// close_notify with its own; the client reads until that close_notify.
#ifndef KTLS_TESTS_SUPPORT_TLS_PEERS_H_
#define KTLS_TESTS_SUPPORT_TLS_PEERS_H_

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "common/self_signed.h"
#include "core/openssl_ptr.h"
#include "ktls/client.h"
#include "ktls/connection.h"
#include "ktls/offload.h"
#include "ktls/server.h"
#include "tests/support/sockets.h"

namespace ktls::testing {

// A blocked read or write on a test socket fails with EAGAIN after this long.
inline constexpr std::chrono::seconds kIoTimeout{30};
// A test still running after this long has its sockets shut down (Watchdog)
// and fails.
inline constexpr std::chrono::seconds kTestDeadline{60};

// TempCert: a self-signed certificate (CN=localhost, SAN 127.0.0.1; its own
// CA) in a fresh temporary directory, removed with the object. Throws
// std::runtime_error if it cannot be made.
class TempCert : public tools::SelfSigned {
 public:
  TempCert();
  ~TempCert();
  TempCert(const TempCert&) = delete;
  TempCert& operator=(const TempCert&) = delete;
};

// TestCert: the servers' certificate, one per process.
const TempCert& TestCert();

// ServerFor: a Listener config with TestCert. ClientFor: a client config
// that trusts it. Both ask for RX in the kernel (RxOffload::kOn).
ServerConfig ServerFor();
ClientConfig ClientFor();

// NewTestContext: a TLS 1.3-only OpenSSL context; a server context carries
// TestCert, a client context trusts it (and verifies the peer). With
// ciphersuites, exactly those TLS 1.3 suites (CCM is off unless named).
// Null on failure.
detail::UniqueSslCtx NewTestContext(bool server, const char* ciphersuites = nullptr);

// ConnectTo connects the library's client to 127.0.0.1:port and sets
// kIoTimeout on its socket.
Result<Connection> ConnectTo(std::uint16_t port, const ClientConfig& config);

// Watchdog: if the test is still running at the deadline, shuts down every
// socket it watches, so that each blocked read or write on them returns and
// the test fails instead of hanging the guest. (SO_RCVTIMEO is not enough:
// with a direction in OpenSSL, ktls waits in poll() without a timeout.) It
// holds a dup of each socket, so it never touches a descriptor number that
// was closed and reused; Forget closes the dup.
class Watchdog {
 public:
  explicit Watchdog(std::chrono::seconds deadline);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Watch returns the token to Forget fd by (-1 if it could not be dup'ed).
  int Watch(int fd);
  void Forget(int token);
  // Fire shuts everything down now.
  void Fire();
  bool fired() const;

 private:
  void FireLocked();

  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  bool fired_ = false;
  std::vector<int> dups_;
  std::thread thread_;
};

// ServerEnd: what the server saw on one accepted connection.
struct ServerEnd {
  std::string error;  // Empty unless the handshake or the handler failed.
  Offload tx = Offload::kUser;
  Offload rx = Offload::kUser;
  std::string fallback_reason;  // What on_fallback was told, if it was called.
  SessionInfo session;
  std::size_t bytes_in = 0;
  std::size_t bytes_out = 0;
  // SpliceEcho: how many of bytes_in/bytes_out passed through userspace.
  std::size_t copied_in = 0;
  std::size_t copied_out = 0;
};

// Handler: what the server does with one connection, after offload.
using Handler = std::function<void(Connection&, ServerEnd&)>;

// TestServer: a Listener on 127.0.0.1 (a free port) and a thread that
// accepts num_connections clients, each handshaken and handled on its own
// worker thread. ServerEnd i belongs to the i-th accepted client. Its
// sockets are under a Watchdog (kTestDeadline): shutting the server's end
// down also ends whatever the client is waiting for. The config's
// on_fallback is still called; ServerEnd::fallback_reason records it too.
class TestServer {
 public:
  TestServer(const ServerConfig& config, std::size_t num_connections, Handler handler);
  // Without Join, a test that failed early stops the server at once.
  ~TestServer();
  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;

  bool ok() const { return listener_.has_value(); }
  const std::string& listen_error() const { return listen_error_; }
  std::uint16_t port() const;

  // WaitHandshaken waits (at most kTestDeadline) until count connections
  // have been through Handshake, offload included. A client must wait for
  // it before its FIN can reach the server: the kernel attaches the tls ULP
  // only to an ESTABLISHED socket, so after an early FIN (CLOSE_WAIT)
  // setsockopt(TCP_ULP) fails with ENOTCONN and the server rightly stays in
  // OpenSSL.
  bool WaitHandshaken(std::size_t count);

  // Join waits (at most kTestDeadline) for every connection to be handled
  // and returns what the server saw. A client that never came shows up as
  // an error on its ServerEnd, not as a hang.
  const std::vector<ServerEnd>& Join();

 private:
  void AcceptLoop();
  void Serve(int fd, ServerEnd& end);
  void Stop(std::chrono::seconds deadline);

  Watchdog dog_;  // First: outlives the threads that use it.
  std::optional<Listener> listener_;
  std::string listen_error_;
  Handler handler_;
  std::vector<ServerEnd> ends_;  // Sized once: workers hold references.
  std::vector<std::thread> workers_;
  std::thread acceptor_;
  std::mutex mu_;
  std::condition_variable done_;
  std::size_t num_handshaken_ = 0;
  std::size_t num_done_ = 0;
};

// The helpers below return what went wrong, or an empty string, so that a
// test can compare with "" and see the reason in the failure message.

// ReadToEnd reads (read_len bytes at a time) until the peer's close_notify,
// appending to out.
std::string ReadToEnd(Connection& conn, std::vector<std::uint8_t>& out, std::size_t read_len = 256 * 1024);
// ReadExactly reads exactly len bytes, appending to out.
std::string ReadExactly(Connection& conn, std::size_t len, std::vector<std::uint8_t>& out);
// WriteAll writes all of data.
std::string WriteAll(Connection& conn, std::span<const std::uint8_t> data);
// ShutdownText calls Shutdown.
std::string ShutdownText(Connection& conn);

// Echo: the server side of the echo protocol (a Handler).
void Echo(Connection& conn, ServerEnd& end);
// SpliceEcho: the same through a pipe, with SpliceRead and SpliceWrite; it
// counts the bytes that were copied (ServerEnd::copied_in/copied_out).
void SpliceEcho(Connection& conn, ServerEnd& end);

// Pace: how EchoThrough drives a connection.
enum class Pace {
  // A second thread writes while this one reads, as Connection allows in
  // every offload state.
  kConcurrent,
  // Write 16 KiB, read it back, repeat, on one thread: the way a
  // request/response peer uses a connection.
  kLockstep,
};

// EchoThrough: the client side of the echo protocol. echoed gets what came
// back.
std::string EchoThrough(Connection& conn, std::span<const std::uint8_t> data, Pace pace,
                        std::vector<std::uint8_t>& echoed);

// ExpectedOffload renders "tx=kernel rx=user" and so on, for comparisons
// that print both directions.
std::string ExpectedOffload(Offload tx, Offload rx);
// ExpectOffloaded: EXPECT that each direction is where it should be; the
// ServerEnd form adds the fallback reason to the message.
void ExpectOffloaded(Offload tx, Offload rx, Offload want_tx, Offload want_rx, const std::string& who);
void ExpectOffloaded(const ServerEnd& end, Offload want_tx, Offload want_rx, const std::string& who);

// FallbackLog collects OffloadOptions::on_fallback reports from any thread.
class FallbackLog {
 public:
  std::function<void(const OffloadReport&)> Callback();
  std::vector<OffloadReport> reports();

 private:
  std::mutex mu_;
  std::vector<OffloadReport> reports_;
};

// TempFile: an unlinked temporary file holding len random bytes, for
// sendfile tests. ok() is false if it could not be made.
class TempFile {
 public:
  explicit TempFile(std::size_t len);
  bool ok() const { return fd_.valid(); }
  int fd() const { return fd_.get(); }
  const std::vector<std::uint8_t>& contents() const { return contents_; }
  std::span<const std::uint8_t> Slice(std::size_t offset, std::size_t len) const {
    return std::span(contents_).subspan(offset, len);
  }

 private:
  std::vector<std::uint8_t> contents_;
  UniqueFd fd_;
};

// Plain OpenSSL peers (no ktls anywhere, RX and TX in userspace), for tests
// that need control the library's client does not offer. In their own
// namespace, so that they clash with no test file's own helpers of the same
// name: a test file that uses them says `using namespace plain_openssl;`.
namespace plain_openssl {

// OpenSslErrors drains OpenSSL's error queue into "; "-separated text.
std::string OpenSslErrors();
// SslFailure describes a failed SSL call (what) that returned ret: the
// SSL_get_error code, errno for SSL_ERROR_SYSCALL, and the error queue.
std::string SslFailure(SSL* ssl, int ret, const char* what);
// SslWriteAll writes all of data.
std::string SslWriteAll(SSL* ssl, std::span<const std::uint8_t> data);
// SslReadExactly reads exactly len bytes, appending to out.
std::string SslReadExactly(SSL* ssl, std::size_t len, std::vector<std::uint8_t>& out);
// SslExpectCloseNotify: the next SSL_read must report the peer's
// close_notify (SSL_ERROR_ZERO_RETURN) and no more data.
std::string SslExpectCloseNotify(SSL* ssl);
// SslExpectAlert reads once and expects the peer's alert whose OpenSSL
// reason code is `reason` (SSL_R_TLSV1_ALERT_...); "" if so.
std::string SslExpectAlert(SSL* ssl, int reason);

}  // namespace plain_openssl

}  // namespace ktls::testing

#endif  // KTLS_TESTS_SUPPORT_TLS_PEERS_H_
