// bench/peers.h: both ends of the benchmarked TLS connections over
// loopback TCP.
//
// In every case the end under test is the server (ServerEnd): ktls, plain
// OpenSSL, or OpenSSL with its own kTLS. The other end is always the same
// plain OpenSSL client in userspace, so the cases of one comparison differ
// only in the server.
#ifndef KTLS_BENCH_PEERS_H_
#define KTLS_BENCH_PEERS_H_

#include <openssl/ssl.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/openssl_ptr.h"
#include "core/unique_fd.h"
#include "ktls/connection.h"
#include "ktls/offload.h"
#include "ktls/server.h"
#include "ktls/types.h"

namespace ktls::bench {

using detail::UniqueFd;
using detail::UniqueSession;
using detail::UniqueSsl;
using detail::UniqueSslCtx;

// Suite: a TLS 1.3 cipher suite and the kernel cipher it maps to.
struct Suite {
  Cipher cipher;
  std::string_view name;  // IANA name, which is also OpenSSL's TLS 1.3 name.
};
// Tls13Suites: the four suites the kernel can carry.
const std::vector<Suite>& Tls13Suites();

// ServerTls: who protects the server's records.
enum class ServerTls : std::uint8_t {
  kOpenSsl,      // OpenSSL in userspace.
  kOpenSslKtls,  // OpenSSL with SSL_OP_ENABLE_KTLS (its own kTLS).
  kKtls,         // This library: OpenSSL handshake, then OffloadSsl.
};

// NewServerContext: TLS 1.3 only, the benchmark's certificate (ECDSA P-256),
// OpenSSL's defaults otherwise (two session tickets, X25519). suites empty:
// OpenSSL's default suites. kKtls gets ktls::PrepareContext, kOpenSslKtls
// SSL_OP_ENABLE_KTLS.
UniqueSslCtx NewServerContext(const std::string& suites, ServerTls kind);
// NewClientContext: TLS 1.3 only, no certificate verification (the server's
// CertificateVerify signature is still checked). read_ahead: OpenSSL reads
// as much as its 64 KiB buffer holds per read(2), not one record header and
// then its body. with_certificate: the client presents the benchmark's
// certificate when asked.
UniqueSslCtx NewClientContext(const std::string& suites, bool read_ahead, bool with_certificate = false);
// NewResumingClientContext: a PrepareContext'ed client context (as
// NewClientContext without read-ahead) whose new-session callback keeps the
// newest session in the SSL's app data, a UniqueSession*: where a ktls
// client's tickets land (KtlsClientHandshake's app_data).
UniqueSslCtx NewResumingClientContext();
// RequireClientCertificate makes a server context ask for and check a
// client certificate (mutual TLS): the benchmark's own, trusted as its CA.
void RequireClientCertificate(SSL_CTX* ctx);

// LoopbackListener: a TCP listener on 127.0.0.1, a free port.
class LoopbackListener {
 public:
  LoopbackListener();
  std::uint16_t port() const { return port_; }
  int fd() const { return fd_.get(); }
  UniqueFd Accept();

 private:
  UniqueFd fd_;
  std::uint16_t port_ = 0;
};

UniqueFd ConnectLoopback(std::uint16_t port);

// ClientThread: the plain OpenSSL client side, on its own thread. Join
// waits and rethrows what the body threw. Without Join (the server side
// failed), the destructor shuts a socket down, which ends whatever the
// client waits for, and joins.
class ClientThread {
 public:
  // One connection: connects now (so the server can accept at once), then
  // runs body(fd) on the thread. The destructor shuts that socket down.
  ClientThread(std::uint16_t port, std::function<void(int fd)> body);
  // Many connections: body makes them to listener. The destructor shuts the
  // listener down, which resets the connections it has not accepted and
  // refuses new ones.
  ClientThread(const LoopbackListener& listener, std::function<void()> body);
  ~ClientThread();
  ClientThread(const ClientThread&) = delete;
  ClientThread& operator=(const ClientThread&) = delete;
  void Join();

 private:
  void Start(std::function<void()> body);

  UniqueFd fd_;
  int wake_fd_ = -1;
  std::exception_ptr error_;
  std::thread thread_;
};

// Plain OpenSSL client helpers; every failure throws BenchError.
UniqueSsl ClientHandshake(SSL_CTX* ctx, int fd, SSL_SESSION* resume = nullptr);
// KtlsClientHandshake: a ktls client on fd (a PrepareContext'ed ctx): the
// handshake on a PrepareSsl'ed SSL (resuming, with app_data as the SSL's
// app data for the context's callbacks), then OffloadSsl with options; both
// directions must reach the kernel. The Connection owns fd. Throws
// BenchError.
Connection KtlsClientHandshake(SSL_CTX* ctx, UniqueFd fd, SSL_SESSION* resume, void* app_data,
                               OffloadOptions options);
void SslWriteAll(SSL* ssl, std::span<const std::byte> data);
// SslRead returns the bytes read; 0 at the peer's close_notify.
std::size_t SslRead(SSL* ssl, std::span<std::byte> buf);

// ServerEnd: the end under test, after its handshake (and offload).
class ServerEnd {
 public:
  // Handshake takes fd, runs the server handshake and, for kKtls, offloads
  // with options (by default both directions, RxOffload::kOn).
  static ServerEnd Handshake(SSL_CTX* ctx, UniqueFd fd, ServerTls kind, const OffloadOptions& options = BothWays());
  // Handshake (ktls runs it): ServerContext::Handshake on fd, blocking, then
  // the context's offload; a kKtls end.
  static ServerEnd Handshake(const ServerContext& context, UniqueFd fd);
  // KtlsServerContext: a ServerContext on ctx (a kKtls context) that
  // offloads both directions.
  static ServerContext KtlsServerContext(SSL_CTX* ctx);
  static OffloadOptions BothWays();

  void WriteAll(std::span<const std::byte> data);
  // SendFileAll: ktls SendFile, or OpenSSL's SSL_sendfile (kOpenSslKtls).
  void SendFileAll(int file_fd, off_t offset, std::size_t len);
  // Read returns the bytes read; 0 at the peer's close_notify.
  std::size_t Read(std::span<std::byte> buf);
  // Shutdown sends close_notify, and only that (ktls: kCloseNotifyOnly, as
  // OpenSSL's SSL_shutdown): the FIN goes with the close.
  void Shutdown();

  // Where each direction's records are protected now.
  bool tx_in_kernel() const;
  bool rx_in_kernel() const;
  std::string Where() const;  // "tx=kernel rx=user"
  // TakeConnection hands over a kKtls end's Connection (BenchError for
  // the others); this ServerEnd is empty afterwards.
  Connection TakeConnection();
  // kernel_state: Connection::kernel_state() (kKtls; empty otherwise).
  KernelState kernel_state() const { return conn_ ? conn_->kernel_state() : KernelState{}; }
  // offload_seconds: how long OffloadSsl took (kKtls; 0 otherwise).
  double offload_seconds() const { return offload_seconds_; }

 private:
  ServerTls kind_ = ServerTls::kOpenSsl;
  double offload_seconds_ = 0;
  std::optional<Connection> conn_;  // kKtls.
  UniqueFd fd_;                     // The others: ssl_ goes first, then fd_.
  UniqueSsl ssl_;
};

// TlsStat reads /proc/net/tls_stat (empty where the kernel has no kTLS).
std::map<std::string, long long> TlsStat();
// TlsStatDelta: after[key] - before[key] (0 for a missing counter).
long long TlsStatDelta(const std::map<std::string, long long>& before, const std::map<std::string, long long>& after,
                       const std::string& key);

// NowSeconds: a monotonic clock, for intervals.
double NowSeconds();
// RandomBytes: len bytes from OpenSSL's generator.
std::vector<std::byte> RandomBytes(std::size_t len);
// OpenSslErrors drains OpenSSL's error queue into text.
std::string OpenSslErrors();

}  // namespace ktls::bench

#endif  // KTLS_BENCH_PEERS_H_
