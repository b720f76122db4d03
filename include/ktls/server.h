// ktls/server.h: a TLS listener whose connections come out offloaded.
//
//   ktls::ServerConfig config;
//   config.cert_file = "cert.pem";
//   config.key_file = "key.pem";
//   auto listener = ktls::Listener::Listen("127.0.0.1:8443", config);
//   for (;;) {
//     auto conn = listener->Accept();   // TCP accept + handshake + offload
//     ...
//   }
#ifndef KTLS_SERVER_H_
#define KTLS_SERVER_H_

#include <openssl/ssl.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "ktls/connection.h"
#include "ktls/export.h"
#include "ktls/handshake.h"
#include "ktls/offload.h"
#include "ktls/result.h"
#include "ktls/types.h"

namespace ktls {

// ServerConfig: the TLS side of a listener.
struct KTLS_API ServerConfig {
  // Certificate chain and private key, PEM files. Ignored when ssl_ctx is set.
  std::string cert_file;
  std::string key_file;
  // ssl_ctx: your own context instead of the files (ktls takes a reference;
  // PrepareContext is applied to it).
  SSL_CTX* ssl_ctx = nullptr;
  // client_ca_file: when set, client certificates are required and verified
  // against these CAs (mutual TLS).
  std::string client_ca_file;
  // alpn: protocols the server accepts, in preference order. Empty: no ALPN.
  std::vector<std::string> alpn;
  // num_tickets: TLS 1.3 session tickets sent after each full handshake
  // (OpenSSL's default is 2; 0 turns resumption by ticket off).
  int num_tickets = 2;
  // max_version: the highest protocol version to negotiate (the lowest is
  // TLS 1.2).
  TlsVersion max_version = TlsVersion::kTls13;
  // cipher_list: TLS 1.2 cipher suites, in OpenSSL's cipher-list syntax.
  // Empty: OpenSSL's default.
  std::string cipher_list;
  // ciphersuites: TLS 1.3 suites to allow, in OpenSSL's syntax
  // ("TLS_AES_128_GCM_SHA256:TLS_AES_128_CCM_SHA256"). Empty: OpenSSL's
  // default, which leaves out AES-128-CCM.
  std::string ciphersuites;
  // handshake_timeout: a client that has not completed the handshake by
  // then is dropped (Handshake fails with ETIMEDOUT), however it trickles
  // its bytes in. The blocking Handshake counts it from the first time it
  // waits for the client, StartHandshake from its call. Zero: no limit.
  std::chrono::milliseconds handshake_timeout{10'000};
  // offload: RX on or off, and the fallback callback.
  OffloadOptions offload;
};

// ServerContext: a server's TLS configuration (certificate, ALPN, offload
// options), ready to run handshakes on sockets accepted by anyone: a
// Listener, an Asio acceptor, your own accept loop. Cheap to share: copies
// refer to the same SSL_CTX. Safe to use from several threads at once.
class KTLS_API ServerContext {
 public:
  // Create loads the certificate and key (or takes config.ssl_ctx) and
  // prepares the context for offload.
  static Result<ServerContext> Create(const ServerConfig& config);

  ServerContext(const ServerContext&);
  ServerContext& operator=(const ServerContext&);
  ServerContext(ServerContext&&) noexcept;
  ServerContext& operator=(ServerContext&&) noexcept;
  ~ServerContext();

  // StartHandshake takes ownership of a connected socket (closing it if
  // this fails), makes it non-blocking, and returns the handshake to drive
  // with Step. The deadline is config.handshake_timeout from now.
  Result<PendingHandshake> StartHandshake(int socket) const;
  // Handshake is StartHandshake for a thread that may block: it takes
  // ownership of socket (closing it on failure), runs the handshake, waiting
  // as it needs (never past config.handshake_timeout), and offloads. The
  // socket's blocking mode is left as it was.
  Result<Connection> Handshake(int socket) const;

  // config is the configuration the context was made from.
  const ServerConfig& config() const noexcept;
  // ssl_ctx is the OpenSSL context (owned by this ServerContext).
  SSL_CTX* ssl_ctx() const noexcept;

  struct Impl;

 private:
  explicit ServerContext(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

// Listener: a listening TCP socket plus a TLS configuration. Accept and
// Handshake are safe to call from several threads at once.
class KTLS_API Listener {
 public:
  // Listen binds and listens on "host:port" ("[::1]:443" for IPv6; port 0
  // picks a free one, see port()).
  static Result<Listener> Listen(const std::string& host_port, const ServerConfig& config);
  // Wrap takes ownership of an already listening socket.
  static Result<Listener> Wrap(int listen_fd, const ServerConfig& config);

  Listener(Listener&&) noexcept;
  Listener& operator=(Listener&&) noexcept;
  ~Listener();

  // Accept waits for a client, runs the handshake and offloads. A client
  // whose handshake fails yields an Error; the listener keeps working.
  Result<Connection> Accept();

  // AcceptSocket and Handshake split Accept, so a server can hand each new
  // socket to a worker thread and keep accepting.
  Result<int> AcceptSocket();
  // Handshake takes ownership of socket (closing it on failure), runs the
  // handshake (blocking, bounded by ServerConfig::handshake_timeout) and
  // offloads. The Connection's socket is blocking.
  Result<Connection> Handshake(int socket);
  // StartHandshake is Handshake for event loops: see ServerContext.
  Result<PendingHandshake> StartHandshake(int socket) const;

  int fd() const noexcept;
  // port is the bound port (useful after listening on port 0).
  int port() const noexcept;
  // ssl_ctx is the context handshakes use (owned by the listener).
  SSL_CTX* ssl_ctx() const noexcept;
  // context is the listener's TLS configuration, to run handshakes on
  // sockets accepted elsewhere.
  const ServerContext& context() const noexcept;

  struct Impl;

 private:
  explicit Listener(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ktls

#endif  // KTLS_SERVER_H_
