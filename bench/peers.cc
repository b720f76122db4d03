// bench/peers.cc
#include "peers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "common/self_signed.h"
#include "report.h"

namespace ktls::bench {
namespace {

// A blocked socket call gives up after this long, so a broken case fails
// instead of hanging the guest.
constexpr int kIoTimeoutSeconds = 120;

[[noreturn]] void Fail(const std::string& what) { throw BenchError(what); }

[[noreturn]] void SslFail(SSL* ssl, int ret, const std::string& what) {
  const int code = SSL_get_error(ssl, ret);
  const int err = errno;
  std::string text = what + " failed: SSL_get_error " + std::to_string(code);
  if (code == SSL_ERROR_SYSCALL) text += std::string(", ") + (err != 0 ? std::strerror(err) : "unexpected EOF");
  const std::string queue = OpenSslErrors();
  if (!queue.empty()) text += ": " + queue;
  Fail(text);
}

void SetTimeouts(int fd) {
  const timeval tv{kIoTimeoutSeconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// The certificate: made once per process, its files removed at exit.
struct BenchCert : tools::SelfSigned {
  BenchCert() {
    std::string error;
    if (!tools::MakeSelfSigned(*this, error)) Fail("cannot make a certificate: " + error);
  }
  ~BenchCert() {
    ::unlink(cert_file.c_str());
    ::unlink(key_file.c_str());
    ::rmdir(cert_file.substr(0, cert_file.rfind('/')).c_str());
  }
};

const BenchCert& Cert() {
  static const BenchCert cert;
  return cert;
}

// KeepLatestSession: the client context's new-session callback keeps the
// newest session in the SSL's app data (a UniqueSession).
int KeepLatestSession(SSL* ssl, SSL_SESSION* session) {
  if (auto* latest = static_cast<UniqueSession*>(SSL_get_app_data(ssl))) {
    latest->reset(session);
    return 1;  // The reference is ours.
  }
  return 0;
}

}  // namespace

std::string OpenSslErrors() {
  std::string text;
  while (const unsigned long code = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    if (!text.empty()) text += "; ";
    text += buf;
  }
  return text;
}

const std::vector<Suite>& Tls13Suites() {
  static const std::vector<Suite> suites = {
      {Cipher::kAes128Gcm, "TLS_AES_128_GCM_SHA256"},
      {Cipher::kAes256Gcm, "TLS_AES_256_GCM_SHA384"},
      {Cipher::kChaCha20Poly1305, "TLS_CHACHA20_POLY1305_SHA256"},
      {Cipher::kAes128Ccm, "TLS_AES_128_CCM_SHA256"},
  };
  return suites;
}

UniqueSslCtx NewServerContext(const std::string& suites, ServerTls kind) {
  UniqueSslCtx ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx || SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION) != 1) {
    Fail("server SSL_CTX: " + OpenSslErrors());
  }
  if (!suites.empty() && SSL_CTX_set_ciphersuites(ctx.get(), suites.c_str()) != 1) {
    Fail("server suites " + suites + ": " + OpenSslErrors());
  }
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), Cert().cert_file.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx.get(), Cert().key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    Fail("server certificate: " + OpenSslErrors());
  }
  switch (kind) {
    case ServerTls::kOpenSsl:
      break;
    case ServerTls::kOpenSslKtls:
      SSL_CTX_set_options(ctx.get(), SSL_OP_ENABLE_KTLS);
      break;
    case ServerTls::kKtls:
      if (auto prepared = PrepareContext(ctx.get()); !prepared) {
        Fail("PrepareContext: " + prepared.error().ToString());
      }
      break;
  }
  return ctx;
}

UniqueSslCtx NewClientContext(const std::string& suites, bool read_ahead, bool with_certificate) {
  UniqueSslCtx ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx || SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION) != 1) {
    Fail("client SSL_CTX: " + OpenSslErrors());
  }
  if (!suites.empty() && SSL_CTX_set_ciphersuites(ctx.get(), suites.c_str()) != 1) {
    Fail("client suites " + suites + ": " + OpenSslErrors());
  }
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  if (with_certificate && (SSL_CTX_use_certificate_chain_file(ctx.get(), Cert().cert_file.c_str()) != 1 ||
                           SSL_CTX_use_PrivateKey_file(ctx.get(), Cert().key_file.c_str(), SSL_FILETYPE_PEM) != 1)) {
    Fail("client certificate: " + OpenSslErrors());
  }
  if (read_ahead) {
    SSL_CTX_set_read_ahead(ctx.get(), 1);
    SSL_CTX_set_default_read_buffer_len(ctx.get(), 64 * 1024);
  }
  return ctx;
}

void RequireClientCertificate(SSL_CTX* ctx) {
  if (SSL_CTX_load_verify_locations(ctx, Cert().cert_file.c_str(), nullptr) != 1) {
    Fail("client CA: " + OpenSslErrors());
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
}

LoopbackListener::LoopbackListener() : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
  if (!fd_) Fail(std::string("socket: ") + std::strerror(errno));
  const int one = 1;
  ::setsockopt(fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(fd_.get(), 1024) != 0 ||
      ::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    Fail(std::string("listen on 127.0.0.1: ") + std::strerror(errno));
  }
  port_ = ntohs(addr.sin_port);
}

UniqueFd LoopbackListener::Accept() {
  for (;;) {
    UniqueFd fd(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (fd) {
      SetTimeouts(fd.get());
      return fd;
    }
    if (errno != EINTR && errno != ECONNABORTED) Fail(std::string("accept: ") + std::strerror(errno));
  }
}

UniqueFd ConnectLoopback(std::uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) Fail(std::string("socket: ") + std::strerror(errno));
  SetTimeouts(fd.get());
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    Fail(std::string("connect to 127.0.0.1: ") + std::strerror(errno));
  }
  return fd;
}

ClientThread::ClientThread(std::uint16_t port, std::function<void(int fd)> body) : fd_(ConnectLoopback(port)) {
  wake_fd_ = fd_.get();
  Start([this, body = std::move(body)] { body(fd_.get()); });
}

ClientThread::ClientThread(const LoopbackListener& listener, std::function<void()> body) : wake_fd_(listener.fd()) {
  Start(std::move(body));
}

void ClientThread::Start(std::function<void()> body) {
  thread_ = std::thread([this, body = std::move(body)] {
    try {
      body();
    } catch (...) {
      error_ = std::current_exception();
    }
  });
}

ClientThread::~ClientThread() {
  if (thread_.joinable()) {
    ::shutdown(wake_fd_, SHUT_RDWR);
    thread_.join();
  }
}

void ClientThread::Join() {
  thread_.join();
  if (error_) std::rethrow_exception(error_);
}

UniqueSslCtx NewResumingClientContext() {
  UniqueSslCtx ctx = NewClientContext("", /*read_ahead=*/false);
  if (!PrepareContext(ctx.get()).ok()) Fail("PrepareContext: " + OpenSslErrors());
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx.get(), KeepLatestSession);
  return ctx;
}

UniqueSsl ClientHandshake(SSL_CTX* ctx, int fd, SSL_SESSION* resume) {
  UniqueSsl ssl(SSL_new(ctx));
  if (!ssl || SSL_set_fd(ssl.get(), fd) != 1) Fail("client SSL_new: " + OpenSslErrors());
  if (resume != nullptr && SSL_set_session(ssl.get(), resume) != 1) Fail("SSL_set_session: " + OpenSslErrors());
  ERR_clear_error();
  errno = 0;
  const int ret = SSL_connect(ssl.get());
  if (ret != 1) SslFail(ssl.get(), ret, "SSL_connect");
  return ssl;
}

Connection KtlsClientHandshake(SSL_CTX* ctx, UniqueFd fd, SSL_SESSION* resume, void* app_data,
                               OffloadOptions options) {
  UniqueSsl ssl(SSL_new(ctx));
  if (!ssl || !PrepareSsl(ssl.get()).ok() || SSL_set_fd(ssl.get(), fd.get()) != 1 ||
      (resume != nullptr && SSL_set_session(ssl.get(), resume) != 1)) {
    Fail("client SSL: " + OpenSslErrors());
  }
  SSL_set_app_data(ssl.get(), app_data);
  ERR_clear_error();
  errno = 0;
  const int ret = SSL_connect(ssl.get());
  if (ret != 1) SslFail(ssl.get(), ret, "SSL_connect");
  std::string fallback;
  options.on_fallback = [&fallback](const OffloadReport& report) { fallback = report.reason; };
  auto conn = OffloadSsl(ssl.get(), options);
  if (!conn.ok()) Fail("OffloadSsl: " + conn.error().ToString());
  (void)ssl.release();  // The Connection owns the SSL and the socket now.
  (void)fd.release();
  if (conn->tx() != Offload::kKernel || conn->rx() != Offload::kKernel) {
    Fail("the client did not offload both directions: " + fallback);
  }
  return std::move(conn).value();
}

void SslWriteAll(SSL* ssl, std::span<const std::byte> data) {
  while (!data.empty()) {
    std::size_t n = 0;
    ERR_clear_error();
    errno = 0;
    const int ret = SSL_write_ex(ssl, data.data(), data.size(), &n);
    if (ret != 1) SslFail(ssl, ret, "SSL_write");
    data = data.subspan(n);
  }
}

std::size_t SslRead(SSL* ssl, std::span<std::byte> buf) {
  std::size_t n = 0;
  ERR_clear_error();
  errno = 0;
  const int ret = SSL_read_ex(ssl, buf.data(), buf.size(), &n);
  if (ret == 1) return n;
  if (SSL_get_error(ssl, ret) == SSL_ERROR_ZERO_RETURN) return 0;
  SslFail(ssl, ret, "SSL_read");
}

OffloadOptions ServerEnd::BothWays() {
  OffloadOptions options;
  options.rx = RxOffload::kOn;
  return options;
}

ServerContext ServerEnd::KtlsServerContext(SSL_CTX* ctx) {
  ServerConfig config;
  config.ssl_ctx = ctx;
  config.offload = BothWays();
  auto context = ServerContext::Create(config);
  if (!context.ok()) Fail("ServerContext::Create: " + context.error().ToString());
  return std::move(context).value();
}

ServerEnd ServerEnd::Handshake(const ServerContext& context, UniqueFd fd) {
  ServerEnd end;
  end.kind_ = ServerTls::kKtls;
  auto conn = context.Handshake(fd.release());
  if (!conn.ok()) Fail("ServerContext::Handshake: " + conn.error().ToString());
  end.conn_ = std::move(conn).value();
  return end;
}

ServerEnd ServerEnd::Handshake(SSL_CTX* ctx, UniqueFd fd, ServerTls kind, const OffloadOptions& options) {
  ServerEnd end;
  end.kind_ = kind;
  UniqueSsl ssl(SSL_new(ctx));
  if (!ssl || SSL_set_fd(ssl.get(), fd.get()) != 1) Fail("server SSL_new: " + OpenSslErrors());
  if (kind == ServerTls::kKtls) {
    if (auto prepared = PrepareSsl(ssl.get()); !prepared) Fail("PrepareSsl: " + prepared.error().ToString());
  }
  ERR_clear_error();
  errno = 0;
  const int ret = SSL_accept(ssl.get());
  if (ret != 1) SslFail(ssl.get(), ret, "SSL_accept");
  if (kind != ServerTls::kKtls) {
    end.fd_ = std::move(fd);
    end.ssl_ = std::move(ssl);
    return end;
  }
  const double start = NowSeconds();
  auto conn = OffloadSsl(ssl.get(), options);
  end.offload_seconds_ = NowSeconds() - start;
  if (!conn.ok()) Fail("OffloadSsl: " + conn.error().ToString());
  // The Connection owns both now.
  (void)ssl.release();
  (void)fd.release();
  end.conn_ = std::move(conn).value();
  return end;
}

Connection ServerEnd::TakeConnection() {
  if (!conn_) Fail("TakeConnection: not a ktls server end");
  Connection conn = std::move(*conn_);
  conn_.reset();
  return conn;
}

void ServerEnd::WriteAll(std::span<const std::byte> data) {
  if (conn_) {
    auto wrote = conn_->WriteAll(data);
    if (!wrote.ok()) Fail("ktls WriteAll: " + wrote.error().ToString());
    if (wrote->bytes != data.size()) Fail("ktls WriteAll: short write");
    return;
  }
  SslWriteAll(ssl_.get(), data);
}

void ServerEnd::SendFileAll(int file_fd, off_t offset, std::size_t len) {
  while (len > 0) {
    std::size_t sent = 0;
    if (conn_) {
      auto progress = conn_->SendFile(file_fd, offset, len);
      if (!progress.ok()) Fail("ktls SendFile: " + progress.error().ToString());
      sent = progress->bytes;
    } else {
      ERR_clear_error();
      errno = 0;
      const ossl_ssize_t n = SSL_sendfile(ssl_.get(), file_fd, offset, len, 0);
      if (n <= 0) SslFail(ssl_.get(), static_cast<int>(n), "SSL_sendfile");
      sent = static_cast<std::size_t>(n);
    }
    if (sent == 0) Fail("sendfile made no progress");
    offset += static_cast<off_t>(sent);
    len -= sent;
  }
}

std::size_t ServerEnd::Read(std::span<std::byte> buf) {
  if (conn_) {
    auto got = conn_->Read(buf);
    if (!got.ok()) Fail("ktls Read: " + got.error().ToString());
    return got->bytes;
  }
  return SslRead(ssl_.get(), buf);
}

void ServerEnd::Shutdown() {
  if (conn_) {
    // close_notify only, as SSL_shutdown below: the FIN goes with the close.
    if (auto done = conn_->Shutdown(ShutdownFlags::kCloseNotifyOnly); !done.ok()) {
      Fail("ktls Shutdown: " + done.error().ToString());
    }
    return;
  }
  ERR_clear_error();
  if (SSL_shutdown(ssl_.get()) < 0) Fail("SSL_shutdown: " + OpenSslErrors());
}

bool ServerEnd::tx_in_kernel() const {
  if (conn_) return conn_->tx() == Offload::kKernel;
  return BIO_get_ktls_send(SSL_get_wbio(ssl_.get())) != 0;
}

bool ServerEnd::rx_in_kernel() const {
  if (conn_) return conn_->rx() == Offload::kKernel;
  return BIO_get_ktls_recv(SSL_get_rbio(ssl_.get())) != 0;
}

std::string ServerEnd::Where() const {
  return std::string("tx=") + (tx_in_kernel() ? "kernel" : "user") + " rx=" + (rx_in_kernel() ? "kernel" : "user");
}

std::map<std::string, long long> TlsStat() {
  std::map<std::string, long long> counters;
  std::ifstream in("/proc/net/tls_stat");
  std::string name;
  long long value = 0;
  while (in >> name >> value) counters[name] = value;
  return counters;
}

long long TlsStatDelta(const std::map<std::string, long long>& before, const std::map<std::string, long long>& after,
                       const std::string& key) {
  const auto a = after.find(key);
  const auto b = before.find(key);
  return (a == after.end() ? 0 : a->second) - (b == before.end() ? 0 : b->second);
}

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<std::byte> RandomBytes(std::size_t len) {
  std::vector<std::byte> bytes(len);
  if (RAND_bytes(reinterpret_cast<unsigned char*>(bytes.data()), static_cast<int>(len)) != 1) {
    Fail("RAND_bytes: " + OpenSslErrors());
  }
  return bytes;
}

}  // namespace ktls::bench
