// examples/own_ssl_server.cc: your own OpenSSL handshake, then kernel TLS.
//
//   own_ssl_server CERT.pem KEY.pem [PORT]
//
// The "bring your own SSL*" path: the program makes its SSL_CTX and runs
// SSL_accept itself, as existing OpenSSL code does; ktls only needs
// PrepareContext (once), PrepareSsl (before the handshake) and OffloadSsl
// (after it). Serves one client on 127.0.0.1:PORT (default 8443; 0 picks a
// free port): echoes until its close_notify, then exits.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <span>

#include <ktls/connection.h>
#include <ktls/offload.h>

namespace {

int Fail(const char* what) {
  std::fprintf(stderr, "%s failed\n", what);
  ERR_print_errors_fp(stderr);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s CERT.pem KEY.pem [PORT]\n", argv[0]);
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);  // OpenSSL's socket BIO writes without MSG_NOSIGNAL.

  // Your context, as before; PrepareContext adds ktls's key-log capture.
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr || SSL_CTX_use_certificate_chain_file(ctx, argv[1]) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, argv[2], SSL_FILETYPE_PEM) != 1) {
    return Fail("loading the certificate and key");
  }
  if (auto prepared = ktls::PrepareContext(ctx); !prepared.ok()) {
    std::fprintf(stderr, "PrepareContext: %s\n", prepared.error().ToString().c_str());
    return 1;
  }

  const int listen_fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(argc > 3 ? std::atoi(argv[3]) : 8443));
  socklen_t addr_len = sizeof(addr);
  if (listen_fd < 0 || ::bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listen_fd, 16) != 0 || ::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&addr), &addr_len) != 0) {
    std::perror("listen");
    return 1;
  }
  std::printf("listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
  std::fflush(stdout);
  const int fd = ::accept(listen_fd, nullptr, nullptr);
  ::close(listen_fd);
  if (fd < 0) {
    std::perror("accept");
    return 1;
  }

  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return Fail("SSL_new");
  if (auto prepared = ktls::PrepareSsl(ssl); !prepared.ok()) {  // Before the handshake.
    std::fprintf(stderr, "PrepareSsl: %s\n", prepared.error().ToString().c_str());
    return 1;
  }
  SSL_set_fd(ssl, fd);
  if (SSL_accept(ssl) != 1) return Fail("SSL_accept");

  // From here the Connection owns ssl and fd; the kernel does the records
  // of each direction it could take.
  auto conn = ktls::OffloadSsl(ssl, {});
  if (!conn.ok()) {
    std::fprintf(stderr, "OffloadSsl: %s\n", conn.error().ToString().c_str());
    return 1;
  }
  std::printf("connection: tx=%s rx=%s\n", ktls::OffloadName(conn->tx()), ktls::OffloadName(conn->rx()));
  std::fflush(stdout);
  std::byte buf[16384];
  for (;;) {
    auto got = conn->Read(buf);
    if (!got.ok()) {
      std::fprintf(stderr, "read: %s\n", got.error().ToString().c_str());
      return 1;
    }
    if (got->end_of_stream) break;
    if (auto put = conn->WriteAll(std::span(buf, got->bytes)); !put.ok()) {
      std::fprintf(stderr, "write: %s\n", put.error().ToString().c_str());
      return 1;
    }
  }
  (void)conn->Shutdown();
  conn->Close();
  SSL_CTX_free(ctx);  // An SSL still alive keeps its own reference.
  return 0;
}
