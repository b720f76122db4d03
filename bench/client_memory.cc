// bench/client_memory.cc: memory per established, idle client connection,
// and what keeping session tickets with RX in the kernel costs.
//
// This process holds the client connections; a plain OpenSSL server in a
// child process accepts them (two session tickets each, then a one-byte
// answer to a one-byte request) and holds its ends, so nothing of the
// server's is counted here. After a few warm-up connections the heap is
// sampled (glibc mallinfo2: uordblks + hblkhd); then `n` more connections
// are made and kept; the difference divided by n is the cost of one. The
// clients discard the sessions they get (the new-session callback frees
// them), so the figure is the connection's own state.
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "cases.h"
#include "runner.h"

namespace ktls::bench {
namespace {

constexpr std::size_t kWarmupConnections = 16;

double HeapBytes() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<double>(info.uordblks + info.hblkhd);
}

int DropSession(SSL* /*ssl*/, SSL_SESSION* /*session*/) { return 0; }  // OpenSSL frees it.

// ServerProcess: a child serving `count` connections on listener, one after
// another, and holding them until it is destroyed.
class ServerProcess {
 public:
  ServerProcess(LoopbackListener& listener, SSL_CTX* ctx, std::size_t count) {
    int control[2];
    if (::pipe2(control, O_CLOEXEC) != 0) throw BenchError(std::string("pipe: ") + std::strerror(errno));
    std::cout.flush();
    pid_ = ::fork();
    if (pid_ < 0) throw BenchError(std::string("fork: ") + std::strerror(errno));
    if (pid_ == 0) {
      ::close(control[1]);
      int status = 0;
      try {
        std::vector<ServerEnd> ends;
        ends.reserve(count);
        std::byte byte[1];
        for (std::size_t i = 0; i < count; ++i) {
          ServerEnd end = ServerEnd::Handshake(ctx, listener.Accept(), ServerTls::kOpenSsl);
          if (end.Read(byte) != 1) throw BenchError("expected a one-byte request");
          end.WriteAll(byte);
          ends.push_back(std::move(end));
        }
        char c;
        while (::read(control[0], &c, 1) < 0 && errno == EINTR) {
        }
      } catch (const std::exception& e) {
        std::cerr << "client_memory server: " << e.what() << "\n";
        status = 1;
      }
      _exit(status);
    }
    ::close(control[0]);
    control_ = UniqueFd(control[1]);
  }
  ~ServerProcess() {
    control_.reset();  // The child lets go of its connections and exits.
    int status = 0;
    while (pid_ > 0 && ::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

 private:
  pid_t pid_ = -1;
  UniqueFd control_;
};

// ClientVariant: how the client connections are made and held.
struct ClientVariant {
  bool ktls = false;
  bool session_tickets = true;  // ktls: OffloadOptions::session_tickets.
};

RunResult ClientMemoryRun(SSL_CTX* server_ctx, SSL_CTX* client_ctx, const ClientVariant& v, std::size_t n) {
  LoopbackListener listener;
  const std::size_t total = kWarmupConnections + n;
  ServerProcess server(listener, server_ctx, total);
  std::vector<Connection> ktls_conns;
  std::vector<std::pair<UniqueFd, UniqueSsl>> openssl_conns;
  ktls_conns.reserve(total);
  openssl_conns.reserve(total);
  std::uint64_t relayed = 0;
  std::uint64_t dropped = 0;
  const auto connect_one = [&] {
    UniqueFd fd = ConnectLoopback(listener.port());
    std::byte byte[1] = {std::byte{1}};
    if (!v.ktls) {
      UniqueSsl ssl = ClientHandshake(client_ctx, fd.get());
      SslWriteAll(ssl.get(), byte);
      if (SslRead(ssl.get(), byte) != 1) throw BenchError("expected one byte");
      openssl_conns.emplace_back(std::move(fd), std::move(ssl));
      return;
    }
    OffloadOptions options = ServerEnd::BothWays();
    options.session_tickets = v.session_tickets;
    Connection conn = KtlsClientHandshake(client_ctx, std::move(fd), nullptr, nullptr, options);
    auto sent = conn.Write(byte);
    auto got = sent.ok() ? conn.Read(byte) : sent;
    if (!got.ok() || got->bytes != 1) throw BenchError("expected one byte");
    relayed += conn.tickets_relayed();
    dropped += conn.tickets_dropped();
    ktls_conns.push_back(std::move(conn));
  };
  for (std::size_t i = 0; i < kWarmupConnections; ++i) connect_one();
  ::malloc_trim(0);
  const double before = HeapBytes();
  for (std::size_t i = 0; i < n; ++i) connect_one();
  const double after = HeapBytes();
  RunResult result;
  if (v.ktls) {
    const std::uint64_t want = 2 * total;  // OpenSSL's server sends two tickets.
    if ((v.session_tickets ? relayed : dropped) != want) {
      throw BenchError("tickets relayed " + std::to_string(relayed) + ", dropped " + std::to_string(dropped) +
                       " for " + std::to_string(total) + " connections");
    }
    result.notes = std::string("client tx=kernel rx=kernel, tickets ") +
                   (v.session_tickets ? "relayed: " + std::to_string(relayed) : "dropped: " + std::to_string(dropped));
  } else {
    result.notes = "client tx=user rx=user";
  }
  result.values = {(after - before) / static_cast<double>(n)};
  return result;
}

}  // namespace

void AddClientMemory(Report& report, const Options& opts) {
  const std::size_t n = opts.idle_connections;
  UniqueSslCtx server_ctx = NewServerContext("", ServerTls::kOpenSsl);
  UniqueSslCtx client_ctx = NewClientContext("", /*read_ahead=*/false);
  if (!PrepareContext(client_ctx.get()).ok()) throw BenchError("PrepareContext: " + OpenSslErrors());
  // A client that stores sessions (SSL_SESS_CACHE_CLIENT), as a resuming
  // client does; ktls relays tickets only for such a context.
  SSL_CTX_set_session_cache_mode(client_ctx.get(), SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(client_ctx.get(), DropSession);
  const auto count_for = [n](bool warmup) { return warmup ? std::max<std::size_t>(n / 10, 1) : n; };

  Comparison& comparison = report.comparisons.emplace_back();
  comparison.id = "client_memory.heap";
  comparison.group = "client_memory";
  comparison.title = "Userspace heap per connection, " + std::to_string(n) +
                     " idle TLS 1.3 connections, client side, each after two session tickets";
  comparison.metric = "memory";
  comparison.unit = "bytes";
  comparison.higher_is_better = false;
  comparison.reference = "openssl";
  const auto run = [&](ClientVariant v) {
    return [&, v](bool warmup) { return ClientMemoryRun(server_ctx.get(), client_ctx.get(), v, count_for(warmup)); };
  };
  std::vector<Variant> variants;
  variants.push_back({"openssl", "OpenSSL client, records in userspace", run({false, true})});
  variants.push_back({"ktls", "ktls client, TX and RX in the kernel, tickets relayed to OpenSSL", run({true, true})});
  variants.push_back({"ktls_no_tickets", "the same with OffloadOptions::session_tickets = false", run({true, false})});
  RunInterleaved(variants, opts.runs, {&comparison});
  report.PrintComparison(std::cout, comparison);
}

}  // namespace ktls::bench
