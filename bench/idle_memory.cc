// bench/idle_memory.cc: memory per established, idle connection.
//
// This process is the server and holds the connections; the clients live
// in a child process, so nothing of theirs is counted in the server's
// heap or RSS. After a few warm-up connections (one-time allocations:
// OpenSSL's per-thread state, ktls's probe), the baseline is taken; then
// `n` more connections are established (handshake, offload, one byte to
// the client) and kept; the difference divided by n is the cost of one.
//
//   heap:   glibc mallinfo2(): bytes allocated (uordblks + hblkhd)
//   RSS:    /proc/self/statm resident pages
//   kernel: /proc/meminfo Slab, the whole kernel, so it counts both ends
//           of each connection (the client ends are the same in every case)
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

#include "cases.h"
#include "ktls/probe.h"
#include "runner.h"

namespace ktls::bench {
namespace {

constexpr std::size_t kWarmupConnections = 16;

struct MemorySample {
  double heap = 0;   // bytes
  double rss = 0;    // bytes
  double slab = 0;   // bytes
};

MemorySample SampleMemory() {
  MemorySample sample;
  const struct mallinfo2 info = mallinfo2();
  sample.heap = static_cast<double>(info.uordblks + info.hblkhd);
  std::ifstream statm("/proc/self/statm");
  long long size = 0, resident = 0;
  statm >> size >> resident;
  sample.rss = static_cast<double>(resident) * static_cast<double>(::sysconf(_SC_PAGESIZE));
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  long long kb = 0;
  std::string unit;
  while (meminfo >> key >> kb) {
    std::getline(meminfo, unit);
    if (key == "Slab:") sample.slab = static_cast<double>(kb) * 1024;
  }
  return sample;
}

// RaiseFdLimit makes room for `need` descriptors (both processes inherit it).
void RaiseFdLimit(std::size_t need) {
  rlimit limit{};
  ::getrlimit(RLIMIT_NOFILE, &limit);
  if (limit.rlim_cur >= need) return;
  limit.rlim_cur = need;
  if (limit.rlim_max < need) limit.rlim_max = need;
  if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) {
    throw BenchError("need " + std::to_string(need) + " file descriptors: setrlimit: " + std::strerror(errno));
  }
}

// ClientProcess: a child that makes `count` plain OpenSSL connections to
// port, one after another, reads one byte on each, reports "R" (or "E" and
// the error) on a pipe, and holds them until its control pipe closes.
class ClientProcess {
 public:
  ClientProcess(std::uint16_t port, std::size_t count, bool with_certificate) {
    int ready[2], control[2];
    if (::pipe2(ready, O_CLOEXEC) != 0 || ::pipe2(control, O_CLOEXEC) != 0) {
      throw BenchError(std::string("pipe: ") + std::strerror(errno));
    }
    std::cout.flush();
    pid_ = ::fork();
    if (pid_ < 0) throw BenchError(std::string("fork: ") + std::strerror(errno));
    if (pid_ == 0) {
      ::close(ready[0]);
      ::close(control[1]);
      RunChild(port, count, with_certificate, ready[1], control[0]);
    }
    ::close(ready[1]);
    ::close(control[0]);
    ready_ = UniqueFd(ready[0]);
    control_ = UniqueFd(control[1]);
  }
  ~ClientProcess() {
    control_.reset();  // The child lets go of its connections and exits,
    // unless it is stuck in a handshake because this side failed.
    if (!ready_seen_ && pid_ > 0) ::kill(pid_, SIGKILL);
    if (pid_ > 0) {
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
    }
  }

  // WaitReady: every connection has its byte, or the child's error.
  void WaitReady() {
    std::string message;
    char buf[512];
    for (;;) {
      const ssize_t n = ::read(ready_.get(), buf, sizeof(buf));
      if (n > 0) {
        message.append(buf, static_cast<std::size_t>(n));
        if (message == "R") {
          ready_seen_ = true;
          return;
        }
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      break;
    }
    throw BenchError("client process: " + (message.empty() ? std::string("exited early") : message.substr(1)));
  }

 private:
  [[noreturn]] static void RunChild(std::uint16_t port, std::size_t count, bool with_certificate, int ready,
                                    int control) {
    std::string report = "R";
    try {
      UniqueSslCtx ctx = NewClientContext("", /*read_ahead=*/false, with_certificate);
      std::vector<std::pair<UniqueFd, UniqueSsl>> conns;
      conns.reserve(count);
      std::byte byte[16];
      for (std::size_t i = 0; i < count; ++i) {
        UniqueFd fd = ConnectLoopback(port);
        UniqueSsl ssl = ClientHandshake(ctx.get(), fd.get());
        if (SslRead(ssl.get(), byte) != 1) throw BenchError("expected one byte");
        conns.emplace_back(std::move(fd), std::move(ssl));
      }
      if (::write(ready, report.data(), report.size()) < 0) _exit(1);
      char c;
      while (::read(control, &c, 1) != 0 && errno == EINTR) {
      }
      _exit(0);
    } catch (const std::exception& e) {
      report = std::string("E") + e.what();
    }
    if (::write(ready, report.data(), report.size()) < 0) _exit(1);
    _exit(1);
  }

  pid_t pid_ = -1;
  bool ready_seen_ = false;
  UniqueFd ready_;
  UniqueFd control_;
};

// Variant: one way of holding the connections.
struct IdleVariant {
  SSL_CTX* ctx;
  ServerTls kind;
  OffloadOptions options;
  bool want_rx_kernel;
  bool client_certificates;
};

OffloadOptions OffloadWith(RxOffload rx, bool keep_peer_certificates = true) {
  OffloadOptions options;
  options.rx = rx;
  options.keep_peer_certificates = keep_peer_certificates;
  return options;
}

RunResult IdleRun(const IdleVariant& v, std::size_t n) {
  LoopbackListener listener;
  const std::size_t total = kWarmupConnections + n;
  std::vector<ServerEnd> ends;
  ends.reserve(total);
  ClientProcess clients(listener.port(), total, v.client_certificates);
  const std::byte one{1};
  const auto accept_one = [&] {
    ServerEnd end = ServerEnd::Handshake(v.ctx, listener.Accept(), v.kind, v.options);
    if (v.kind == ServerTls::kKtls && (!end.tx_in_kernel() || end.rx_in_kernel() != v.want_rx_kernel)) {
      throw BenchError("ktls offloaded " + end.Where() + ", expected rx in the " +
                       (v.want_rx_kernel ? "kernel" : "user"));
    }
    end.WriteAll(std::span(&one, 1));
    ends.push_back(std::move(end));
  };
  for (std::size_t i = 0; i < kWarmupConnections; ++i) accept_one();
  const auto stat_before = TlsStat();
  // Give free heap pages back first, so that RSS grows with what the
  // connections really touch, not into pages earlier runs left resident.
  ::malloc_trim(0);
  const MemorySample before = SampleMemory();
  for (std::size_t i = 0; i < n; ++i) accept_one();
  clients.WaitReady();
  const MemorySample after = SampleMemory();
  const auto stat_after = TlsStat();

  RunResult result;
  const long long tx = TlsStatDelta(stat_before, stat_after, "TlsCurrTxSw");
  const long long rxs = TlsStatDelta(stat_before, stat_after, "TlsCurrRxSw");
  result.notes = ends.back().Where() + ", TlsCurrTxSw +" + std::to_string(tx) + " TlsCurrRxSw +" + std::to_string(rxs);
  if (!stat_after.empty() && v.kind == ServerTls::kKtls &&
      (tx != static_cast<long long>(n) || rxs != (v.want_rx_kernel ? static_cast<long long>(n) : 0))) {
    throw BenchError("kTLS counters do not match the connections held: " + result.notes);
  }
  const double per = 1.0 / static_cast<double>(n);
  result.values = {(after.heap - before.heap) * per, (after.rss - before.rss) * per, (after.slab - before.slab) * per};
  return result;
}

}  // namespace

void AddIdleMemory(Report& report, const Options& opts) {
  const std::size_t n = opts.idle_connections;
  // Each connection is a descriptor in this process and one in the child.
  RaiseFdLimit(n + kWarmupConnections + 64);
  UniqueSslCtx plain_ctx = NewServerContext("", ServerTls::kOpenSsl);
  UniqueSslCtx release_ctx = NewServerContext("", ServerTls::kOpenSsl);
  SSL_CTX_set_mode(release_ctx.get(), SSL_MODE_RELEASE_BUFFERS);
  UniqueSslCtx ktls_ctx = NewServerContext("", ServerTls::kKtls);
  UniqueSslCtx plain_mtls_ctx = NewServerContext("", ServerTls::kOpenSsl);
  RequireClientCertificate(plain_mtls_ctx.get());
  UniqueSslCtx ktls_mtls_ctx = NewServerContext("", ServerTls::kKtls);
  RequireClientCertificate(ktls_mtls_ctx.get());
  const auto count_for = [n](bool warmup) { return warmup ? std::max<std::size_t>(n / 10, 1) : n; };

  const std::string what = std::to_string(n) + " idle TLS 1.3 connections, server side";
  const struct {
    const char* id;
    const char* title;
    const char* unit;
  } metrics[] = {
      {"idle_memory.heap", "Userspace heap per connection", "bytes"},
      {"idle_memory.rss", "Resident memory (RSS) per connection", "bytes"},
      {"idle_memory.kernel", "Kernel slab per connection (both ends, whole kernel)", "bytes"},
  };
  std::vector<Comparison*> comparisons;
  for (const auto& m : metrics) {
    Comparison& comparison = report.comparisons.emplace_back();
    comparison.id = m.id;
    comparison.group = "idle_memory";
    comparison.title = std::string(m.title) + ", " + what;
    comparison.metric = "memory";
    comparison.unit = m.unit;
    comparison.higher_is_better = false;
    comparison.reference = "openssl";
  }
  for (std::size_t i = 0; i < std::size(metrics); ++i) {
    comparisons.push_back(&report.comparisons[report.comparisons.size() - std::size(metrics) + i]);
  }

  const auto run = [&](IdleVariant v) { return [&, v](bool warmup) { return IdleRun(v, count_for(warmup)); }; };
  std::vector<Variant> variants;
  variants.push_back({"openssl", "OpenSSL, records in userspace (defaults)",
                      run({plain_ctx.get(), ServerTls::kOpenSsl, OffloadWith(RxOffload::kOn), false, false})});
  variants.push_back({"openssl_release_buffers", "OpenSSL with SSL_MODE_RELEASE_BUFFERS",
                      run({release_ctx.get(), ServerTls::kOpenSsl, OffloadWith(RxOffload::kOn), false, false})});
  variants.push_back({"ktls", "ktls, TX and RX in the kernel",
                      run({ktls_ctx.get(), ServerTls::kKtls, OffloadWith(RxOffload::kOn), true, false})});
  if (!CachedCapabilities().rekey) {
    // Where the kernel cannot rekey, ktls's default keeps RX (and the SSL)
    // in userspace: show what that costs too.
    variants.push_back({"ktls_rx_user", "ktls default here: TX in the kernel, RX in OpenSSL",
                        run({ktls_ctx.get(), ServerTls::kKtls, OffloadWith(RxOffload::kAuto), false, false})});
  }
  // Mutual TLS: the server keeps each client's certificate (OpenSSL in its
  // session, ktls as DER in SessionInfo).
  variants.push_back({"openssl_client_cert", "OpenSSL, clients present a certificate",
                      run({plain_mtls_ctx.get(), ServerTls::kOpenSsl, OffloadWith(RxOffload::kOn), false, true})});
  variants.push_back({"ktls_client_cert", "ktls, TX and RX in the kernel, clients present a certificate",
                      run({ktls_mtls_ctx.get(), ServerTls::kKtls, OffloadWith(RxOffload::kOn), true, true})});
  variants.push_back({"ktls_client_cert_not_kept", "the same with OffloadOptions::keep_peer_certificates = false",
                      run({ktls_mtls_ctx.get(), ServerTls::kKtls, OffloadWith(RxOffload::kOn, false), true, true})});
  RunInterleaved(variants, opts.runs, comparisons);
  for (const Comparison* comparison : comparisons) report.PrintComparison(std::cout, *comparison);
  AddClientMemory(report, opts);
}

}  // namespace ktls::bench
