// ktls-echo: a TLS echo server (or client) on kernel TLS.
//
//   ktls-echo [--listen ADDR:PORT] [--cert FILE --key FILE] [--rx|--no-rx]
//             [--rx-no-pad]
//             [--client-ca FILE] [--tickets N] [--handshake-timeout-ms MS]
//             [--idle-timeout MS] [--max-connections N] [--splice]
//   ktls-echo --connect HOST:PORT [--ca FILE] [--insecure] [--cert F --key F]
//             [--session-file FILE]
//
// Server: echoes every byte back on each connection (one thread each) until
// the client sends close_notify, then answers with its own. At most
// --max-connections are served at once (more wait in the listen queue); one
// that makes no progress for --idle-timeout gets close_notify and is
// dropped (end=idle_timeout). With --splice the echo goes through a pipe by
// SpliceRead and SpliceWrite, and the line adds copied_in=N copied_out=N
// (bytes that passed through this process) after end=. Client: copies
// stdin to the connection and the connection to stdout until both are done.
// With --session-file it resumes the session saved in FILE (PEM, as
// `openssl s_client -sess_out` writes it) if there is one, and saves the
// newest session the server gave (a TLS 1.3 ticket, even one that arrived
// with RX in the kernel) there after a clean end.
// With --rx-no-pad (server) a line says whether the kernel can do it, and
// each connection's line adds rx_no_pad=yes|no after end=.
// Either way, one line per connection on stderr:
//   peer=... version=... cipher=... resumed=yes|no tx=kernel|user rx=kernel|user
//   bytes_in=N bytes_out=N key_updates_tx=N key_updates_rx=N
//   end=close_notify|eof|truncated|idle_timeout|error:<reason>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <mutex>
#include <semaphore>
#include <string>
#include <thread>

#include <cxxopts.hpp>

#include "common/connection_limits.h"
#include "common/self_signed.h"
#include "ktls/client.h"
#include "ktls/probe.h"
#include "ktls/server.h"

namespace {

std::mutex log_mu;

void Log(const std::string& line) {
  std::lock_guard lock(log_mu);
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

std::string PeerName(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "unknown";
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (addr.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
    return std::string(host) + ":" + std::to_string(port);
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
  inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
  port = ntohs(in6->sin6_port);
  return "[" + std::string(host) + "]:" + std::to_string(port);
}

// EndWord renders how a connection ended, for the log line.
std::string EndWord(const ktls::Error& error) {
  switch (error.category) {
    case ktls::ErrorCategory::kTruncated: return "truncated";
    case ktls::ErrorCategory::kAlert:
      return "error:alert_" + std::string(ktls::AlertName(error.tls_alert));
    default: {
      // One word: "protocol:TLS_handshake:...". ": " separators become ":".
      std::string reason;
      const std::string text = error.ToString();
      for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == ' ' && i > 0 && text[i - 1] == ':') continue;
        reason += text[i] == ' ' ? '_' : text[i];
      }
      return "error:" + reason;
    }
  }
}

std::string ConnectionLine(const std::string& peer, const ktls::Connection& conn, std::uint64_t bytes_in,
                           std::uint64_t bytes_out, const std::string& end) {
  const ktls::SessionInfo& s = conn.session();
  return "peer=" + peer + " version=" + s.protocol + " cipher=" + s.cipher_suite +
         " resumed=" + (s.resumed ? "yes" : "no") + " tx=" + ktls::OffloadName(conn.tx()) +
         " rx=" + ktls::OffloadName(conn.rx()) +
         " bytes_in=" + std::to_string(bytes_in) + " bytes_out=" + std::to_string(bytes_out) +
         " key_updates_tx=" + std::to_string(conn.tx_key_updates()) +
         " key_updates_rx=" + std::to_string(conn.rx_key_updates()) + " end=" + end;
}

ktls::RxOffload RxPolicy(const cxxopts::ParseResult& args) {
  if (args.count("rx")) return ktls::RxOffload::kOn;
  if (args.count("no-rx")) return ktls::RxOffload::kOff;
  return ktls::RxOffload::kAuto;
}

ktls::TlsVersion MaxVersion(const cxxopts::ParseResult& args) {
  return args["tls-max"].as<std::string>() == "1.2" ? ktls::TlsVersion::kTls12 : ktls::TlsVersion::kTls13;
}

void LogFallback(const ktls::OffloadReport& report) {
  Log(std::string("offload: tx=") + ktls::OffloadName(report.tx) + " rx=" + ktls::OffloadName(report.rx) +
      " reason=\"" + report.reason + "\"");
}

// SetIdleTimeout makes every blocking read and write on the socket give up
// after `timeout` without progress: Read and Write then return would_block
// (kTLS and OpenSSL's socket BIO both see EAGAIN).
bool SetIdleTimeout(int fd, std::chrono::milliseconds timeout) {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(timeout).count();
  const timeval tv{static_cast<time_t>(us / 1'000'000), static_cast<suseconds_t>(us % 1'000'000)};
  return ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0 &&
         ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == 0;
}

// Traffic: what one echo connection moved, and how it ended.
struct Traffic {
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  std::uint64_t copied_in = 0;  // --splice: bytes that passed through this process.
  std::uint64_t copied_out = 0;
  std::string end;
};

// EchoByCopy echoes with Read and Write.
void EchoByCopy(ktls::Connection& conn, Traffic& t) {
  std::array<std::byte, 64 * 1024> buf;
  for (;;) {
    auto got = conn.Read(buf);
    if (!got.ok()) {
      t.end = EndWord(got.error());
      return;
    }
    if (got->end_of_stream) {
      t.end = "close_notify";
      (void)conn.Shutdown();  // Answer with our close_notify.
      return;
    }
    if (got->would_block) {
      // Nothing came for the idle timeout: end politely, as ktls-serve does.
      // The send timeout bounds the close_notify too.
      t.end = "idle_timeout";
      (void)conn.Shutdown();
      return;
    }
    t.bytes_in += got->bytes;
    // Write, not WriteAll, so bytes_out counts what went out before an error.
    for (std::size_t off = 0; off < got->bytes;) {
      auto put = conn.Write(std::span(buf.data() + off, got->bytes - off));
      if (!put.ok()) {
        t.end = EndWord(put.error());
        return;
      }
      if (put->would_block && put->bytes == 0) {
        t.end = "idle_timeout";  // The client has not read its echo for that long.
        return;
      }
      off += put->bytes;
      t.bytes_out += put->bytes;
    }
  }
}

// EchoBySplice echoes through a pipe with SpliceRead and SpliceWrite: with
// both directions in the kernel, the bytes never enter this process.
void EchoBySplice(ktls::Connection& conn, Traffic& t) {
  int fds[2];
  // pipe, not Linux's pipe2: ktls-echo is built without kernel TLS too, and
  // it never execs, so close-on-exec can follow.
  if (::pipe(fds) != 0) {
    t.end = "error:pipe:" + std::to_string(errno);
    return;
  }
  (void)::fcntl(fds[0], F_SETFD, FD_CLOEXEC);
  (void)::fcntl(fds[1], F_SETFD, FD_CLOEXEC);
  struct Pipe {
    int fds[2];
    ~Pipe() { ::close(fds[0]), ::close(fds[1]); }
  } pipe{{fds[0], fds[1]}};
  for (;;) {
    auto got = conn.SpliceRead(pipe.fds[1], 64 * 1024);
    if (!got.ok()) {
      t.end = EndWord(got.error());
      return;
    }
    if (got->end_of_stream) {
      t.end = "close_notify";
      (void)conn.Shutdown();
      return;
    }
    if (got->would_block && got->bytes == 0) {
      t.end = "idle_timeout";  // The pipe is emptied below every time, so this is the socket.
      (void)conn.Shutdown();
      return;
    }
    t.bytes_in += got->bytes;
    t.copied_in += got->copied;
    for (std::size_t left = got->bytes; left > 0;) {
      auto put = conn.SpliceWrite(pipe.fds[0], left);
      if (!put.ok()) {
        t.end = EndWord(put.error());
        return;
      }
      if (put->would_block && put->bytes == 0) {
        t.end = "idle_timeout";
        return;
      }
      left -= put->bytes;
      t.bytes_out += put->bytes;
      t.copied_out += put->copied;
    }
  }
}

void ServeOne(ktls::Listener& listener, int socket, std::chrono::milliseconds idle_timeout, bool splice,
              bool rx_no_pad) {
  const std::string peer = PeerName(socket);
  auto conn = listener.Handshake(socket);
  if (!conn.ok()) {
    const ktls::Error& e = conn.error();
    const bool eof = e.category == ktls::ErrorCategory::kTruncated;
    Log("peer=" + peer + " version=- cipher=- resumed=no tx=user rx=user bytes_in=0 bytes_out=0 end=" +
        (eof ? std::string("eof") : EndWord(e)));
    return;
  }
  if (!SetIdleTimeout(conn->fd(), idle_timeout)) {
    Log(ConnectionLine(peer, *conn, 0, 0, "error:setsockopt(SO_RCVTIMEO):" + std::to_string(errno)));
    return;
  }
  Traffic t;
  // --rx-no-pad: whether the connection got it, asked before the echo ends.
  const std::string no_pad = rx_no_pad ? std::string(" rx_no_pad=") + (conn->kernel_state().rx_no_pad ? "yes" : "no")
                                       : std::string();
  if (splice) {
    EchoBySplice(*conn, t);
    Log(ConnectionLine(peer, *conn, t.bytes_in, t.bytes_out,
                       t.end + " copied_in=" + std::to_string(t.copied_in) +
                           " copied_out=" + std::to_string(t.copied_out) + no_pad));
  } else {
    EchoByCopy(*conn, t);
    Log(ConnectionLine(peer, *conn, t.bytes_in, t.bytes_out, t.end + no_pad));
  }
  // Linger (bounded) before the close, so that a peer still sending reads
  // our alert or close_notify instead of a reset.
  conn->Close();
}

int RunServer(const cxxopts::ParseResult& args) {
  ktls::ServerConfig config;
  config.offload.rx = RxPolicy(args);
  config.offload.rx_expect_no_pad = args.count("rx-no-pad") > 0;
  config.client_ca_file = args["client-ca"].as<std::string>();
  config.num_tickets = args["tickets"].as<int>();
  config.ciphersuites = args["ciphersuites"].as<std::string>();
  config.cipher_list = args["cipher-list"].as<std::string>();
  config.max_version = MaxVersion(args);
  config.offload.on_fallback = LogFallback;
  config.offload.key_update_after_records = args["key-update-after"].as<std::uint64_t>();
  config.handshake_timeout = std::chrono::milliseconds(args["handshake-timeout-ms"].as<std::uint64_t>());
  ktls::tools::ConnectionLimits limits;
  if (std::string error; !ktls::tools::ReadConnectionLimits(args, limits, error)) {
    std::fprintf(stderr, "ktls-echo: %s\n", error.c_str());
    return 2;
  }
  if (args.count("cert")) {
    config.cert_file = args["cert"].as<std::string>();
    config.key_file = args["key"].as<std::string>();
  } else {
    ktls::tools::SelfSigned self;
    std::string error;
    if (!ktls::tools::MakeSelfSigned(self, error)) {
      std::fprintf(stderr, "ktls-echo: %s\n", error.c_str());
      return 1;
    }
    config.cert_file = self.cert_file;
    config.key_file = self.key_file;
    Log("certificate: self-signed, " + self.cert_file + " sha256=" + self.fingerprint);
  }
  auto listener = ktls::Listener::Listen(args["listen"].as<std::string>(), config);
  if (!args.count("cert")) {
    // The listener has loaded the generated certificate; leave no files behind.
    const std::string dir = config.cert_file.substr(0, config.cert_file.rfind('/'));
    std::remove(config.cert_file.c_str());
    std::remove(config.key_file.c_str());
    ::rmdir(dir.c_str());
  }
  if (!listener.ok()) {
    std::fprintf(stderr, "ktls-echo: %s\n", listener.error().ToString().c_str());
    return 1;
  }
  const ktls::Capabilities& caps = ktls::CachedCapabilities();
  Log(std::string("ktls: ") + (caps.available ? "available" : "unavailable: " + caps.reason) +
      " kernel=" + caps.kernel + " rekey=" + (caps.rekey ? "yes" : "no"));
  if (config.offload.rx_expect_no_pad) {
    Log(std::string("rx-no-pad: ") + (caps.rx_no_pad ? "yes" : "no (" + caps.rx_no_pad_reason + ")"));
  }
  Log("listening port=" + std::to_string(listener->port()));
  // One slot per connection being served. Shared with the detached threads,
  // which may outlive this function when it returns on an accept error.
  auto slots = std::make_shared<std::counting_semaphore<>>(static_cast<std::ptrdiff_t>(limits.max_connections));
  const bool splice = args.count("splice") > 0;
  const bool rx_no_pad = config.offload.rx_expect_no_pad;
  for (;;) {
    // Full: new clients wait in the listen queue until a connection ends.
    slots->acquire();
    auto socket = listener->AcceptSocket();
    if (!socket.ok()) {
      slots->release();
      Log("accept: " + socket.error().ToString());
      if (socket.error().sys_errno == EMFILE || socket.error().sys_errno == ENFILE) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));  // Let connections finish.
        continue;
      }
      return 1;
    }
    std::thread([&listener = *listener, fd = *socket, slots, idle = limits.idle_timeout, splice, rx_no_pad] {
      ServeOne(listener, fd, idle, splice, rx_no_pad);
      slots->release();  // After the connection is closed.
    }).detach();
  }
}

// LoadSession puts the session saved in path, if the file exists, into
// cache for host:port. False (with a message) for a file that exists but
// holds no session.
bool LoadSession(const std::string& path, const std::string& host, std::uint16_t port, ktls::SessionCache& cache) {
  std::FILE* file = std::fopen(path.c_str(), "r");
  if (file == nullptr) {
    if (errno == ENOENT) return true;  // The first connection: nothing saved yet.
    std::fprintf(stderr, "ktls-echo: --session-file %s: %s\n", path.c_str(), std::strerror(errno));
    return false;
  }
  SSL_SESSION* session = PEM_read_SSL_SESSION(file, nullptr, nullptr, nullptr);
  std::fclose(file);
  if (session == nullptr) {
    ERR_clear_error();
    std::fprintf(stderr, "ktls-echo: --session-file %s: no PEM SSL session in it\n", path.c_str());
    return false;
  }
  cache.Put(host, port, session);
  SSL_SESSION_free(session);
  return true;
}

// SaveSession writes the newest session cache holds for host:port to path
// (through a temporary file, so a reader never sees half of one). Returns
// what went wrong, or an empty string; "none" when there is no session.
std::string SaveSession(const std::string& path, const std::string& host, std::uint16_t port,
                        ktls::SessionCache& cache) {
  SSL_SESSION* session = cache.Take(host, port);
  if (session == nullptr) return "none";
  const std::string tmp = path + ".tmp";
  std::FILE* file = std::fopen(tmp.c_str(), "w");
  std::string error;
  if (file == nullptr) {
    error = std::strerror(errno);
  } else {
    if (PEM_write_SSL_SESSION(file, session) != 1) error = "PEM_write_SSL_SESSION failed";
    if (std::fclose(file) != 0 && error.empty()) error = std::strerror(errno);
    if (error.empty() && std::rename(tmp.c_str(), path.c_str()) != 0) error = std::strerror(errno);
  }
  SSL_SESSION_free(session);
  return error;
}

int RunClient(const cxxopts::ParseResult& args) {
  const std::string target = args["connect"].as<std::string>();
  const std::size_t colon = target.rfind(':');
  if (colon == std::string::npos) {
    std::fprintf(stderr, "ktls-echo: --connect wants HOST:PORT\n");
    return 2;
  }
  std::string host = target.substr(0, colon);
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  const std::string port_text = target.substr(colon + 1);
  int port = 0;
  const auto [parsed_end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || parsed_end != port_text.data() + port_text.size() || port < 1 || port > 65535) {
    std::fprintf(stderr, "ktls-echo: --connect wants HOST:PORT with a port from 1 to 65535, got \"%s\"\n",
                 target.c_str());
    return 2;
  }
  ktls::ClientConfig config;
  config.ca_file = args["ca"].as<std::string>();
  config.verify = !args.count("insecure");
  config.offload.rx = RxPolicy(args);
  config.offload.rx_expect_no_pad = args.count("rx-no-pad") > 0;
  config.ciphersuites = args["ciphersuites"].as<std::string>();
  config.cipher_list = args["cipher-list"].as<std::string>();
  config.max_version = MaxVersion(args);
  config.offload.on_fallback = LogFallback;
  config.offload.key_update_after_records = args["key-update-after"].as<std::uint64_t>();
  if (args.count("cert")) {
    config.cert_file = args["cert"].as<std::string>();
    config.key_file = args["key"].as<std::string>();
  }
  const std::string session_file = args.count("session-file") ? args["session-file"].as<std::string>() : "";
  if (!session_file.empty() &&
      !LoadSession(session_file, host, static_cast<std::uint16_t>(port), *config.session_cache)) {
    return 2;
  }
  // Probe before connecting, so offload follows the handshake at once.
  (void)ktls::CachedCapabilities();
  auto conn = ktls::Connect(host, static_cast<std::uint16_t>(port), config);
  if (!conn.ok()) {
    Log("peer=" + target + " version=- cipher=- resumed=no tx=user rx=user bytes_in=0 bytes_out=0 end=" +
        EndWord(conn.error()));
    return 1;
  }
  std::atomic<std::uint64_t> bytes_out{0};
  // The sender is done, or idle waiting for stdin: bytes_out is final.
  std::atomic<bool> sender_settled{false};
  std::string send_error;
  // stdin -> connection, then close_notify.
  std::thread sender([&] {
    std::array<std::byte, 64 * 1024> buf;
    for (;;) {
      sender_settled = true;
      const ssize_t n = ::read(STDIN_FILENO, buf.data(), buf.size());
      sender_settled = false;
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      auto put = conn->WriteAll(std::span(buf.data(), static_cast<std::size_t>(n)));
      if (!put.ok()) {
        send_error = EndWord(put.error());
        return;
      }
      bytes_out += put->bytes;
    }
    if (auto shut = conn->Shutdown(); !shut.ok()) send_error = EndWord(shut.error());
    sender_settled = true;
  });
  std::uint64_t bytes_in = 0;
  std::string end;
  std::array<std::byte, 64 * 1024> buf;
  for (;;) {
    auto got = conn->Read(buf);
    if (!got.ok()) {
      end = EndWord(got.error());
      break;
    }
    if (got->end_of_stream) {
      end = "close_notify";
      break;
    }
    std::size_t off = 0;
    while (off < got->bytes) {
      const ssize_t n = ::write(STDOUT_FILENO, buf.data() + off, got->bytes - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        end = "error:stdout";
        break;
      }
      off += static_cast<std::size_t>(n);
    }
    bytes_in += got->bytes;
    if (!end.empty()) break;
  }
  if (end != "close_notify") {
    // The connection is over; the sender may be blocked reading stdin
    // forever. Let it finish the write in progress (bounded), report, and
    // leave without waiting for stdin.
    for (int i = 0; i < 100 && !sender_settled; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    Log(ConnectionLine(target, *conn, bytes_in, bytes_out.load(), end));
    std::fflush(stdout);
    std::_Exit(1);
  }
  sender.join();
  if (!send_error.empty()) end = send_error;
  std::string session_saved;
  if (!session_file.empty() && end == "close_notify") {
    const std::string error = SaveSession(session_file, host, static_cast<std::uint16_t>(port), *config.session_cache);
    session_saved = error.empty() ? " session_saved=yes" : error == "none" ? " session_saved=no" : "";
    if (!error.empty() && error != "none") {
      std::fprintf(stderr, "ktls-echo: --session-file %s: %s\n", session_file.c_str(), error.c_str());
      end = "error:session_file";
    }
  }
  Log(ConnectionLine(target, *conn, bytes_in, bytes_out.load(), end) + session_saved);
  return end == "close_notify" ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  // OpenSSL writes to sockets with write(2): a peer that vanished must not
  // kill the process.
  ::signal(SIGPIPE, SIG_IGN);
  cxxopts::Options options("ktls-echo", "TLS echo server and client on kernel TLS (kTLS).");
  options.add_options()
      ("listen", "Server: listen on ADDR:PORT", cxxopts::value<std::string>()->default_value("127.0.0.1:8443"))
      ("cert", "Certificate chain (PEM); without it, a fresh self-signed one", cxxopts::value<std::string>())
      ("key", "Private key (PEM), with --cert", cxxopts::value<std::string>())
      ("rx", "Offload RX even where the kernel cannot rekey (default: only where it can)")
      ("no-rx", "Keep RX in OpenSSL; offload TX only")
      ("rx-no-pad", "With TLS 1.3 RX in the kernel, expect the peer not to pad records (TLS_RX_EXPECT_NO_PAD, "
       "where the kernel does it right: 6.1 does not); the log line adds rx_no_pad=yes|no")
      ("client-ca", "Server: require client certificates signed by these CAs", cxxopts::value<std::string>()->default_value(""))
      ("tickets", "Server: TLS 1.3 session tickets per handshake", cxxopts::value<int>()->default_value("2"))
      ("handshake-timeout-ms", "Server: drop a client whose handshake is not done after this long (0: never)",
       cxxopts::value<std::uint64_t>()->default_value(
           std::to_string(ktls::ServerConfig{}.handshake_timeout.count())))
      ("ciphersuites", "TLS 1.3 cipher suites, OpenSSL syntax (default: OpenSSL's, without AES-128-CCM)",
       cxxopts::value<std::string>()->default_value(""))
      ("tls-max", "Highest TLS version: 1.2 or 1.3", cxxopts::value<std::string>()->default_value("1.3"))
      ("cipher-list", "TLS 1.2 cipher suites, OpenSSL syntax (default: OpenSSL's)",
       cxxopts::value<std::string>()->default_value(""))
      ("splice", "Server: echo through a pipe with splice(2) (SpliceRead/SpliceWrite) instead of Read/Write")
      ("key-update-after", "Send a KeyUpdate every N TX records (0: at the cipher's AEAD limit)",
       cxxopts::value<std::uint64_t>()->default_value("0"))
      ("connect", "Client: connect to HOST:PORT", cxxopts::value<std::string>())
      ("ca", "Client: trust these CAs (PEM) instead of the system store", cxxopts::value<std::string>()->default_value(""))
      ("insecure", "Client: do not verify the server's certificate")
      ("session-file", "Client: resume the session saved in FILE (PEM) and save the newest one there",
       cxxopts::value<std::string>())
      ("h,help", "Show this help");
  ktls::tools::AddConnectionLimitOptions(options);
  cxxopts::ParseResult args;
  try {
    args = options.parse(argc, argv);
    if (!args.unmatched().empty()) {
      throw cxxopts::exceptions::exception("unexpected argument: " + args.unmatched().front());
    }
    if (args.count("cert") != args.count("key")) throw cxxopts::exceptions::exception("--cert and --key go together");
    if (args.count("rx") && args.count("no-rx")) throw cxxopts::exceptions::exception("--rx or --no-rx, not both");
    if (const auto v = args["tls-max"].as<std::string>(); v != "1.2" && v != "1.3") {
      throw cxxopts::exceptions::exception("--tls-max takes 1.2 or 1.3");
    }
  } catch (const cxxopts::exceptions::exception& e) {
    std::cerr << "ktls-echo: " << e.what() << "\n" << options.help();
    return 2;
  }
  if (args.count("help")) {
    std::cout << options.help();
    return 0;
  }
  return args.count("connect") ? RunClient(args) : RunServer(args);
}
