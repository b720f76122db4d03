// bench/handshake_syscalls.cc: the system calls one connection's handshake
// makes, with ktls's offload after it and without, on the server's side
// and on the client's, full and resumed (issue #18). Counted, not timed.
//
// Each count is two runs of this same program as a worker
// (`ktls-bench --syscall-worker SIDE,KIND,RESUME --handshakes N`) under
// `strace -c` without -f: only the worker's main thread, the end under
// test, is traced. The peer (plain OpenSSL) runs in a forked process,
// which strace does not follow, so none of its calls, and no lock it
// holds, lands in the count. The worker makes N connections one after
// another (a resumed run one full handshake more, for the first ticket);
// the difference between a run of kBaseline and one of kBaseline + k
// connections, divided by k, is one connection: start-up, the capability
// probe, the certificate and the first heap growth cancel.
//
// A connection, on the side under test: TCP accept (or connect), the TLS
// 1.3 handshake, for ktls OffloadSsl of both directions, then the server
// writes one byte and close_notify and closes; the client writes a
// one-byte request, reads the byte and the server's close_notify, sends its
// own and closes. The benchmark's own socket options (SO_RCVTIMEO,
// SO_SNDTIMEO, TCP_NODELAY: three setsockopt on every socket) are in both
// columns alike.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <utility>

#include "cases.h"

namespace ktls::bench {
namespace {

// Connections in the baseline run; the measured run makes this many plus k.
constexpr std::size_t kBaseline = 4;

struct WorkerSpec {
  bool client = false;   // The side under test: the client (else the server).
  bool ktls = false;     // Offload after the handshake (else OpenSSL only).
  bool ktls_handshake = false;  // ktls runs the handshake too (the server only).
  bool resumed = false;  // Every handshake but the first resumes a ticket.
};

WorkerSpec ParseSpec(const std::string& text) {
  WorkerSpec spec;
  std::stringstream in(text);
  std::string side, kind, resume;
  std::getline(in, side, ',');
  std::getline(in, kind, ',');
  std::getline(in, resume, ',');
  if ((side != "server" && side != "client") ||
      (kind != "openssl" && kind != "ktls" && !(kind == "ktls_handshake" && side == "server")) ||
      (resume != "full" && resume != "resumed")) {
    throw BenchError(
        "--syscall-worker wants SIDE,KIND,RESUME (server|client, openssl|ktls|ktls_handshake (server), "
        "full|resumed), not " +
        text);
  }
  spec.client = side == "client";
  spec.ktls = kind != "openssl";
  spec.ktls_handshake = kind == "ktls_handshake";
  spec.resumed = resume == "resumed";
  return spec;
}

// ForkedPeer runs body in a child process (strace without -f does not
// follow it); Join waits and fails if the child did.
class ForkedPeer {
 public:
  explicit ForkedPeer(const std::function<void()>& body) : pid_(::fork()) {
    if (pid_ < 0) throw BenchError("fork failed");
    if (pid_ != 0) return;
    int status = 0;
    try {
      body();
    } catch (const std::exception& e) {
      std::cerr << "ktls-bench: the peer failed: " << e.what() << "\n";
      status = 1;
    }
    std::fflush(nullptr);
    ::_exit(status);
  }
  ~ForkedPeer() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  ForkedPeer(const ForkedPeer&) = delete;
  ForkedPeer& operator=(const ForkedPeer&) = delete;
  void Join() {
    int status = 0;
    const pid_t pid = std::exchange(pid_, -1);
    if (::waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      throw BenchError("the peer process failed");
    }
  }

 private:
  pid_t pid_;
};

void CheckBothWays(const Connection& conn) {
  if (conn.tx() != Offload::kKernel || conn.rx() != Offload::kKernel) {
    throw BenchError("ktls did not offload both directions");
  }
}

// ServerSide: the server under test; a plain OpenSSL client in the peer.
// Returns how many handshakes resumed.
std::size_t ServerSide(const WorkerSpec& spec, std::size_t total) {
  UniqueSslCtx client_ctx = NewClientContext("", /*read_ahead=*/false);
  UniqueSslCtx server_ctx = NewServerContext("", spec.ktls ? ServerTls::kKtls : ServerTls::kOpenSsl);
  LoopbackListener listener;
  ForkedPeer peer([&] {
    UniqueSession session;
    std::byte byte[16];
    for (std::size_t i = 0; i < total; ++i) {
      UniqueFd fd = ConnectLoopback(listener.port());
      UniqueSsl ssl = ClientHandshake(client_ctx.get(), fd.get(), spec.resumed ? session.get() : nullptr);
      if (SslRead(ssl.get(), byte) != 1 || SslRead(ssl.get(), byte) != 0) {
        throw BenchError("expected one byte and close_notify from the server");
      }
      if (spec.resumed) session.reset(SSL_get1_session(ssl.get()));
      SSL_set_shutdown(ssl.get(), SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    }
  });
  const std::optional<ServerContext> context =
      spec.ktls_handshake ? std::optional(ServerEnd::KtlsServerContext(server_ctx.get())) : std::nullopt;
  const std::byte one{1};
  std::size_t num_resumed = 0;
  for (std::size_t i = 0; i < total; ++i) {
    UniqueFd fd = listener.Accept();
    if (context) {
      auto conn = context->Handshake(fd.release());
      if (!conn.ok()) throw BenchError("ServerContext::Handshake: " + conn.error().ToString());
      num_resumed += conn->session().resumed;
      CheckBothWays(*conn);
      if (auto wrote = conn->WriteAll(std::span(&one, 1)); !wrote.ok()) throw BenchError("WriteAll failed");
      if (auto shut = conn->Shutdown(ShutdownFlags::kCloseNotifyOnly); !shut.ok()) throw BenchError("Shutdown failed");
      continue;
    }
    UniqueSsl ssl(SSL_new(server_ctx.get()));
    if (!ssl || SSL_set_fd(ssl.get(), fd.get()) != 1 || (spec.ktls && !PrepareSsl(ssl.get()).ok())) {
      throw BenchError("server SSL: " + OpenSslErrors());
    }
    if (SSL_accept(ssl.get()) != 1) throw BenchError("SSL_accept: " + OpenSslErrors());
    num_resumed += SSL_session_reused(ssl.get()) == 1;
    if (!spec.ktls) {
      SslWriteAll(ssl.get(), std::span(&one, 1));
      if (SSL_shutdown(ssl.get()) < 0) throw BenchError("SSL_shutdown: " + OpenSslErrors());
      continue;
    }
    auto conn = OffloadSsl(ssl.get(), ServerEnd::BothWays());
    if (!conn.ok()) throw BenchError("OffloadSsl: " + conn.error().ToString());
    (void)ssl.release();  // The Connection owns both now.
    (void)fd.release();
    CheckBothWays(*conn);
    if (auto wrote = conn->WriteAll(std::span(&one, 1)); !wrote.ok()) throw BenchError("WriteAll failed");
    // close_notify only, as SSL_shutdown: the FIN goes with the close.
    if (auto shut = conn->Shutdown(ShutdownFlags::kCloseNotifyOnly); !shut.ok()) throw BenchError("Shutdown failed");
  }
  peer.Join();
  return num_resumed;
}

// ClientSide: the client under test; a plain OpenSSL server in the peer.
std::size_t ClientSide(const WorkerSpec& spec, std::size_t total) {
  UniqueSslCtx server_ctx = NewServerContext("", ServerTls::kOpenSsl);
  UniqueSslCtx client_ctx = spec.ktls ? NewResumingClientContext() : NewClientContext("", /*read_ahead=*/false);
  LoopbackListener listener;
  ForkedPeer peer([&] {
    const std::byte one{1};
    for (std::size_t i = 0; i < total; ++i) {
      ServerEnd end = ServerEnd::Handshake(server_ctx.get(), listener.Accept(), ServerTls::kOpenSsl);
      std::byte request[1];
      if (end.Read(request) != 1) throw BenchError("expected a one-byte request");
      end.WriteAll(std::span(&one, 1));
      end.Shutdown();
    }
  });
  UniqueSession session;
  std::size_t num_resumed = 0;
  std::byte byte[16] = {};
  for (std::size_t i = 0; i < total; ++i) {
    UniqueFd fd = ConnectLoopback(listener.port());
    SSL_SESSION* resume = spec.resumed ? session.get() : nullptr;
    if (!spec.ktls) {
      UniqueSsl ssl = ClientHandshake(client_ctx.get(), fd.get(), resume);
      SslWriteAll(ssl.get(), std::span(byte, 1));
      if (SslRead(ssl.get(), byte) != 1 || SslRead(ssl.get(), byte) != 0) {
        throw BenchError("expected one byte and close_notify from the server");
      }
      num_resumed += SSL_session_reused(ssl.get()) == 1;
      if (SSL_shutdown(ssl.get()) != 1) throw BenchError("SSL_shutdown: " + OpenSslErrors());
      session.reset(SSL_get1_session(ssl.get()));
      continue;
    }
    UniqueSession latest;
    Connection conn = KtlsClientHandshake(client_ctx.get(), std::move(fd), resume, &latest, ServerEnd::BothWays());
    CheckBothWays(conn);
    auto sent = conn.Write(std::span(byte, 1));
    auto got = sent.ok() ? conn.Read(byte) : sent;
    auto end = got.ok() && got->bytes == 1 ? conn.Read(byte) : got;
    if (!end.ok() || !end->end_of_stream) throw BenchError("expected one byte and close_notify from the server");
    num_resumed += conn.session().resumed;
    if (auto shut = conn.Shutdown(ShutdownFlags::kCloseNotifyOnly); !shut.ok()) throw BenchError("Shutdown failed");
    conn.Close();
    session = std::move(latest);
  }
  peer.Join();
  return num_resumed;
}

// Trace runs the worker under strace -c: {syscall: calls}.
std::map<std::string, long long> Trace(const std::string& spec, std::size_t count) {
  char dir_template[] = "/tmp/ktls-bench-strace-XXXXXX";
  if (::mkdtemp(dir_template) == nullptr) throw BenchError("mkdtemp failed");
  const std::string dir = dir_template;
  const std::string table = dir + "/strace.txt";
  const std::string log = dir + "/worker.log";
  const std::string command = "strace -c -U calls,name -o " + table + " /proc/" + std::to_string(::getpid()) +
                              "/exe --syscall-worker " + spec + " --handshakes " + std::to_string(count) + " >" +
                              log + " 2>&1";
  const int status = std::system(command.c_str());
  std::ifstream in(table);
  std::map<std::string, long long> calls;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    long long n = 0;
    std::string name;
    if (fields >> n >> name && name != "total") calls[name] = n;
  }
  std::stringstream output;
  output << std::ifstream(log).rdbuf();
  std::remove(table.c_str());
  std::remove(log.c_str());
  ::rmdir(dir.c_str());
  if (status != 0 || calls.empty()) {
    throw BenchError("the syscall worker " + spec + " failed (is strace installed?): " + output.str());
  }
  return calls;
}

}  // namespace

int RunSyscallWorker(const std::string& spec_text, std::size_t count) {
  const WorkerSpec spec = ParseSpec(spec_text);
  const std::size_t total = count + (spec.resumed ? 1 : 0);
  const std::size_t num_resumed = spec.client ? ClientSide(spec, total) : ServerSide(spec, total);
  if (num_resumed != (spec.resumed ? count : 0)) {
    throw BenchError(std::to_string(num_resumed) + " of " + std::to_string(total) + " handshakes resumed");
  }
  return 0;
}

void AddHandshakeSyscalls(Report& report, const Options& opts) {
  const std::size_t extra = opts.handshakes;
  for (const char* side : {"server", "client"}) {
    for (const char* resume : {"full", "resumed"}) {
      Comparison& comparison = report.comparisons.emplace_back();
      comparison.id = std::string("handshake_syscalls.") + side + "_" + resume;
      comparison.group = "handshake_syscalls";
      comparison.title = std::string("Syscalls per ") + side + " connection, " + resume +
                         " TLS 1.3 handshake (accept or connect, handshake, one byte, close_notify, close)";
      comparison.metric = "syscalls";
      comparison.unit = "syscalls";
      comparison.higher_is_better = false;
      comparison.reference = "openssl";
      for (const char* kind : {"openssl", "ktls", "ktls_handshake"}) {
        if (std::string(kind) == "ktls_handshake" && std::string(side) == "client") continue;
        const std::string spec = std::string(side) + "," + kind + "," + resume;
        const auto base = Trace(spec, kBaseline);
        const auto more = Trace(spec, kBaseline + extra);
        const std::string k = kind;
        Case& c = comparison.Add(kind, k == "ktls"             ? "OpenSSL's handshake, then ktls offloads TX and RX"
                                       : k == "ktls_handshake" ? "ktls runs the handshake and offloads TX and RX"
                                                               : "handshake, records stay in OpenSSL");
        double total = 0;
        for (const auto& [name, calls] : more) {
          const auto found = base.find(name);
          const double per = static_cast<double>(calls - (found == base.end() ? 0 : found->second)) /
                             static_cast<double>(extra);
          if (std::abs(per) < 0.005) continue;
          c.breakdown[name] = per;
          total += per;
        }
        c.samples = {total};
        // The worker failed unless ktls offloaded both directions.
        c.notes = std::string(k != "openssl" ? "tx=kernel rx=kernel" : "tx=user rx=user") +
                  "; strace -c of the " + side + "'s thread, " + std::to_string(extra) +
                  " connections over a baseline of " + std::to_string(kBaseline);
      }
      report.PrintComparison(std::cout, comparison);
    }
  }
}

}  // namespace ktls::bench
