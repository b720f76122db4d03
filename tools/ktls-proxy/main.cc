// ktls-proxy: a TLS-terminating TCP proxy on kernel TLS.
//
//   ktls-proxy --listen ADDR:PORT --backend HOST:PORT [--cert FILE --key FILE]
//              [--backend-tls [--backend-ca FILE] [--backend-sni NAME]
//               [--backend-insecure]] [--rx|--no-rx] [--no-offload]
//              [--threads N] [--proxy-protocol] [--copy] [--metrics ADDR:PORT]
//              [--privsep --user USER] [timeouts, limits]
//
// Clients' TLS ends here (their records in the kernel: kTLS); the plaintext
// goes on to the backend over TCP, or over TLS again with --backend-tls,
// moved by splice(2) through a pipe per direction, so it never enters this
// process where the kernel holds both directions (--copy: read and write,
// to compare). Half-closes pass through both ways, a reset on one side
// resets the other. One line per connection on stdout when it closes
// (connection_log.h); start-up information on stderr.
// SIGINT/SIGTERM: stop accepting, let open connections finish for at most
// --drain-timeout, close the rest, exit 0. --metrics ADDR:PORT serves
// Prometheus text at /metrics (metrics.h says what is counted).
// SIGUSR2: a binary upgrade (upgrade.h): the binary on disk starts with the
// same arguments, takes the listeners and every relaying connection that
// can move (at a quiet point: no byte in a pipe), and this process exits
// once it holds none (or at --drain-timeout).
// --privsep --user USER: this process (root) holds the key, accepts and
// handshakes; worker processes running as USER, started from this binary
// (common/privsep.h), get each connection (ktls/move.h), connect to the
// backend and proxy it. SIGTERM drains this process, then the workers.
// With --metrics they count in shared memory (common/shared_metrics.h)
// and this process's /metrics sums them. SIGUSR2 there starts a new key
// holder (with workers of its own), and this one's workers hand their
// relaying connections back to it, to be relayed on (never proxied here).
//
// This file only wires: the flags (options.h), the backend (backend.h), one
// event loop per thread (event_loop.h), the signals.
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/privsep.h"
#include "common/self_signed.h"
#include "common/shared_metrics.h"
#include "common/tls_options.h"
#include "ktls-proxy/backend.h"
#include "ktls-proxy/event_loop.h"
#include "ktls-proxy/metrics.h"
#include "ktls-proxy/metrics_http.h"
#include "ktls-proxy/options.h"
#include "ktls-proxy/proxy_connection.h"
#include "ktls-proxy/upgrade.h"
#include "ktls/probe.h"
#include "ktls/server.h"

namespace {

using ktls::proxy::ProxyMetrics;
using ktls::proxy::ProxyOptions;
// --privsep --metrics: the key holder's counts and its workers'.
using SharedMetrics = ktls::tools::PrivsepMetrics<ProxyMetrics>;

void LogLine(const std::string& text) {
  std::string line = text + "\n";
  // One write per line: lines from different threads never interleave.
  (void)!::write(STDOUT_FILENO, line.data(), line.size());
}

std::string Capabilities() {
  const ktls::Capabilities& caps = ktls::CachedCapabilities();
  if (!caps.available) return "kTLS unavailable on Linux " + caps.kernel + ": " + caps.reason + " (userspace TLS)";
  return "kTLS on Linux " + caps.kernel + (caps.rekey ? "; TLS 1.3 key updates: yes" : "; TLS 1.3 key updates: no");
}

void RaiseFileLimit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &limit);
  }
}

// FallbackLogger: says on stderr why a connection's direction stayed in
// OpenSSL.
std::function<void(const ktls::OffloadReport&)> FallbackLogger(const ProxyOptions& options) {
  return [tx_wanted = !options.offload.no_offload,
          has_ktls = ktls::CachedCapabilities().available](const ktls::OffloadReport& report) {
    if (auto message = ktls::tools::FallbackMessage("ktls-proxy", report, tx_wanted, has_ktls)) {
      std::fprintf(stderr, "%s\n", message->c_str());
    }
  };
}

// RunWorker: a --privsep worker proxies the connections that arrive on
// kWorkerFd from the handshake process, in one event loop. It holds no key
// and no listener; with --backend-tls it makes its own client context (the
// CAs, no server key).
int RunWorker(const ProxyOptions& options) {
  if (::geteuid() == 0 || ::getuid() == 0) {
    std::fprintf(stderr, "ktls-proxy: a --privsep worker must not run as root\n");
    return 2;
  }
  ktls::tools::HardenWorker();
  std::string error;
  auto backend = ktls::proxy::Backend::Create(options, FallbackLogger(options), error);
  if (!backend) {
    std::fprintf(stderr, "ktls-proxy: worker: %s\n", error.c_str());
    return 1;
  }
  // With --metrics, the counts go where the key holder reads them
  // (kWorkerExtraFd); without, nobody reads them.
  ProxyMetrics local_metrics;
  std::optional<ktls::tools::MetricsRegion<ProxyMetrics>> region;
  if (options.metrics_on) {
    region = ktls::tools::MetricsRegion<ProxyMetrics>::Map(ktls::tools::kWorkerExtraFd, error);
    if (!region) std::fprintf(stderr, "ktls-proxy: worker: --metrics not counted: %s\n", error.c_str());
  }
  const ktls::proxy::ProxyContext context{
      &options, nullptr, &*backend, LogLine, region ? &region->metrics() : &local_metrics, {}};
  std::atomic<std::size_t> active{0};
  ktls::proxy::EventLoop loop(context, active);
  if (!loop.ReceiveFrom(ktls::proxy::UniqueFd(ktls::tools::kWorkerFd), 0, error)) {
    std::fprintf(stderr, "ktls-proxy: worker: %s\n", error.c_str());
    return 1;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, ktls::tools::kRecallSignal);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::atomic<bool> ended{false};
  std::thread waiter([&] {
    for (;;) {
      int signo = 0;
      sigwait(&signals, &signo);
      if (ended.load()) return;
      if (signo == ktls::tools::kRecallSignal) {
        // The handshake process upgrades: kRecall follows what is queued.
        loop.ExpectRecall();
        continue;
      }
      std::fprintf(stderr, "ktls-proxy: worker %d: signal %d: draining %zu connection(s)\n",
                   static_cast<int>(::getpid()), signo, active.load());
      loop.BeginDrain();
      return;
    }
  });
  std::fprintf(stderr, "ktls-proxy: worker %d: proxying to %s as uid %u\n", static_cast<int>(::getpid()),
               backend->name().c_str(), static_cast<unsigned>(::getuid()));
  loop.Run();  // Until a signal, or the handshake process went away, and the drain.
  ended = true;
  pthread_kill(waiter.native_handle(), SIGTERM);  // Ends the wait if no signal came.
  waiter.join();
  return 0;
}

// EndUnmoved: a relay that reached a key holder and could go no further
// (never proxied there): ended at once, its streams cut (both sides reset:
// neither may take it for complete), its line written (end=not_moved).
void EndUnmoved(const ktls::proxy::ProxyContext& context, ktls::proxy::ReceivedRelay& relay, const std::string& why) {
  std::fprintf(stderr, "ktls-proxy: upgrade: a connection not moved: %s\n", why.c_str());
  if (relay.client.fd() < 0 || !relay.backend.open()) return;  // Lost on the way: nothing left to end.
  const auto now = ktls::proxy::ProxyConnection::Clock::now();
  ktls::proxy::ProxyConnection(context, std::move(relay.client), std::move(relay.backend), relay.counts, now)
      .Abort("not_moved", "not_moved", now);
}

// ReceiveHandedOver (after an upgrade, on a thread of its own): the
// connections the previous process hands over, each to the next loop (or
// with --privsep to a worker: a key holder serves none), until it has sent
// all it could (or the stream broke: then it is shut, so the previous
// process keeps the rest rather than wait).
void ReceiveHandedOver(const ktls::proxy::ProxyContext& context,
                       const std::vector<std::unique_ptr<ktls::proxy::EventLoop>>& loops,
                       ktls::tools::WorkerPool* pool) {
  std::size_t next = 0;
  // --privsep: a connection waits a little for room in the workers' queues
  // (the previous process hands over in a burst, maybe before they read
  // anything), unless the one before waited as long in vain.
  bool waited_in_vain = false;
  auto wait_for = [&waited_in_vain] {
    return waited_in_vain ? std::chrono::milliseconds(0) : ktls::tools::kTakeOverRoomWait;
  };
  auto note = [&waited_in_vain](const ktls::Result<void>& handed) {
    waited_in_vain = !handed.ok() && handed.error().sys_errno == EAGAIN;
  };
  for (;;) {
    auto relay = ktls::proxy::ReceiveRelay(ktls::tools::kWorkerFd, ::getuid(), context.backend->tls(), true);
    if (!relay.ok()) {
      if (relay.error().category == ktls::ErrorCategory::kClosed) {
        std::fprintf(stderr, "ktls-proxy: upgrade: the previous process handed over everything it could\n");
      } else {
        std::fprintf(stderr, "ktls-proxy: upgrade: taking over a connection: %s\n", relay.error().ToString().c_str());
        if (relay.error().category != ktls::ErrorCategory::kIo) continue;  // That one only; the stream is in step.
      }
      ::shutdown(ktls::tools::kWorkerFd, SHUT_RDWR);
      return;
    }
    const auto now = ktls::proxy::ProxyConnection::Clock::now();
    if (!relay->backend.open()) {
      // Handshaken in the previous key holder (--privsep), no backend yet.
      if (pool == nullptr) {
        loops[next++ % loops.size()]->Adopt(
            std::make_unique<ktls::proxy::ProxyConnection>(context, std::move(relay->client), now));
      } else if (auto handed = pool->Hand(relay->client, wait_for()); note(handed), !handed.ok()) {
        std::fprintf(stderr, "ktls-proxy: upgrade: a handshaken connection not moved to a worker: %s\n",
                     handed.error().ToString().c_str());
        if (relay->client.fd() >= 0) (void)relay->client.Shutdown();
      }
      continue;
    }
    if (pool != nullptr) {
      auto handed = pool->HandWith([&relay](int sock) { return ktls::proxy::HandRelayToWorker(sock, *relay); },
                                   [&relay] { return relay->client.fd() >= 0 && relay->backend.open(); }, wait_for());
      note(handed);
      if (!handed.ok()) EndUnmoved(context, *relay, "to a worker: " + handed.error().ToString());
      continue;
    }
    loops[next++ % loops.size()]->Adopt(std::make_unique<ktls::proxy::ProxyConnection>(
        context, std::move(relay->client), std::move(relay->backend), relay->counts, now));
  }
}

// RecallWorkers (--privsep, once the new key holder serves): every worker
// hands its relaying connections back (EventLoop::HandBack), each relayed
// here to the new key holder, which gives it to one of its workers. Blocks
// until every worker has exited, or at most --drain-timeout (which bounds
// each worker's hand-back: its drain) plus --handshake-timeout (for a
// loaded machine): a worker not done by then is killed, its connections
// lost (WorkerPool::RecallWith).
void RecallWorkers(ktls::tools::WorkerPool& pool, ktls::proxy::Successor& successor,
                   const ktls::proxy::ProxyContext& context) {
  const auto timeout = context.options->drain_timeout + context.options->handshake_timeout;
  pool.RecallWith([&](int sock) {
    // The socket's credentials are this process's (it made it), as the
    // worker checks them the other way.
    auto relay = ktls::proxy::ReceiveRelay(sock, ::getuid(), context.backend->tls());
    if (!relay.ok()) {
      if (relay.error().category == ktls::ErrorCategory::kClosed) return false;  // The worker is done.
      std::fprintf(stderr, "ktls-proxy: upgrade: from a worker: %s\n", relay.error().ToString().c_str());
      return relay.error().category != ktls::ErrorCategory::kIo;  // Out of step: read no more from it.
    }
    if (auto sent = successor.Send(relay->counts, relay->client, relay->backend); !sent.ok()) {
      EndUnmoved(context, *relay, "to the new process: " + sent.error().ToString());
    }
    return true;
  }, timeout);
}

int Run(const ProxyOptions& options, std::vector<std::string> args, const std::string& exe_path) {
  std::string error;
  if (options.upgrade_from && !ktls::proxy::AcceptPredecessor(ktls::tools::kWorkerFd, error)) {
    std::fprintf(stderr, "ktls-proxy: %s\n", error.c_str());
    return 1;
  }
  const unsigned num_threads = options.threads != 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  ProxyMetrics metrics;  // Counted whether or not --metrics serves them.
  // --privsep --metrics: the workers count in shared memory, one region each.
  std::optional<SharedMetrics> shared_metrics;
  std::optional<ktls::tools::WorkerPool> pool;
  if (options.privsep) {
    ktls::tools::WorkerPool::StartHook start_hook;
    if (options.metrics_on) {
      shared_metrics.emplace(metrics, "ktls-proxy-metrics");
      if (!shared_metrics->Create(num_threads, error)) {
        std::fprintf(stderr, "ktls-proxy: --metrics: %s\n", error.c_str());
        return 1;
      }
      start_hook = shared_metrics->StartHook();
    }
    // Before the key is read: nothing of it is even in this process yet.
    // (A copy of args: SIGUSR2 starts the new key holder with them too.)
    if (const int code = ktls::tools::StartPrivsep("ktls-proxy", options.privsep_user, args, num_threads,
                                                   pool, error, std::move(start_hook));
        code != 0) {
      std::fprintf(stderr, "ktls-proxy: %s\n", error.c_str());
      return code;
    }
  }
  auto fallback = FallbackLogger(options);
  ktls::ServerConfig config;
  ktls::tools::SelfSigned self_signed;
  if (options.cert_file.empty()) {
    if (!ktls::tools::MakeSelfSigned(self_signed, error)) {
      std::fprintf(stderr, "ktls-proxy: cannot make a self-signed certificate: %s\n", error.c_str());
      return 1;
    }
    config.cert_file = self_signed.cert_file;
    config.key_file = self_signed.key_file;
    std::fprintf(stderr, "ktls-proxy: self-signed certificate for localhost, SHA-256 fingerprint %s\n",
                 self_signed.fingerprint.c_str());
  } else {
    config.cert_file = options.cert_file;
    config.key_file = options.key_file;
  }
  config.handshake_timeout = options.handshake_timeout;
  if (!ktls::tools::SetOffloadChoice(options.offload, config.offload, error)) {
    std::fprintf(stderr, "ktls-proxy: %s\n", error.c_str());
    return 2;
  }
  config.offload.on_fallback = fallback;
  ktls::tools::SetCipherOptions(config, options.ciphers, options.ciphersuites);
  auto tls = ktls::ServerContext::Create(config);
  if (!self_signed.cert_file.empty()) {
    // The context has loaded them; leave no key behind.
    std::remove(self_signed.cert_file.c_str());
    std::remove(self_signed.key_file.c_str());
    ::rmdir(self_signed.cert_file.substr(0, self_signed.cert_file.rfind('/')).c_str());
  }
  if (!tls.ok()) {
    std::fprintf(stderr, "ktls-proxy: TLS configuration: %s\n", tls.error().ToString().c_str());
    return 1;
  }
  auto backend = ktls::proxy::Backend::Create(options, fallback, error);
  if (!backend) {
    std::fprintf(stderr, "ktls-proxy: %s\n", error.c_str());
    return 1;
  }
  ktls::proxy::ProxyContext context{&options, &tls.value(), &*backend, LogLine, &metrics, {}};
  // Set (SIGUSR2, --privsep) before the workers are recalled: a handshake
  // that finishes after that goes to the new key holder instead.
  std::atomic<ktls::proxy::Successor*> handshakes_to{nullptr};
  if (pool) {
    context.hand_off = [&pool, &handshakes_to](ktls::Connection& conn) {
      auto handed = pool->Hand(conn);
      ktls::proxy::Successor* to = handshakes_to.load();
      if (handed.ok() || conn.fd() < 0 || !pool->recalled() || to == nullptr) return handed;
      return to->SendHandshaken(conn);
    };
  }
  ktls::proxy::MetricsServer metrics_server;
  // With --privsep, the sum over this process and the workers, after
  // starting again any worker that died (so its connections are no longer
  // counted as open, and its counts are kept).
  auto render = [&metrics, &shared_metrics, &pool] {
    if (!shared_metrics) return metrics.Render();
    if (std::string why; !pool->RestartExited(why)) {
      std::fprintf(stderr, "ktls-proxy: starting a worker again: %s\n", why.c_str());
    }
    ProxyMetrics total;
    shared_metrics->Sum(total);
    return total.Render();
  };
  if (options.metrics_on && !metrics_server.Start(options.metrics.host, options.metrics.port, render, error)) {
    std::fprintf(stderr, "ktls-proxy: %s\n", error.c_str());
    return 1;
  }

  std::atomic<std::size_t> active{0};
  std::vector<std::unique_ptr<ktls::proxy::EventLoop>> loops;
  std::uint16_t port = options.listen.port;
  for (unsigned i = 0; i < num_threads; ++i) {
    loops.push_back(std::make_unique<ktls::proxy::EventLoop>(context, active));
    // The first listener picks the port (when --listen says 0); the others
    // share it (SO_REUSEPORT). After an upgrade: the previous process's.
    bool listening;
    if (options.upgrade_from) {
      const int fd = ktls::proxy::ReceiveListener(ktls::tools::kWorkerFd);
      if (fd < 0) error = std::string("--upgrade-from: no listener from the previous process: ") + std::strerror(errno);
      listening = fd >= 0 && loops.back()->ListenOn(ktls::proxy::UniqueFd(fd), error);
    } else {
      listening = loops.back()->Listen(options.listen.host, port, error);
    }
    if (!listening) {
      std::fprintf(stderr, "ktls-proxy: %s\n", error.c_str());
      return 1;
    }
    port = loops.back()->port();
  }

  // SIGINT and SIGTERM go to this thread's sigwait only: blocked here,
  // before the loops start, so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::vector<std::thread> threads;
  for (auto& loop : loops) threads.emplace_back([&loop] { loop->Run(); });
  std::thread receiver;  // After an upgrade: the connections handed over.
  std::atomic<bool> receiving{false};
  if (options.upgrade_from) {
    if (!ktls::proxy::SayServing(ktls::tools::kWorkerFd)) {
      std::fprintf(stderr, "ktls-proxy: --upgrade-from: the previous process is gone\n");
    } else {
      receiving = true;
      receiver = std::thread([&] {
        ReceiveHandedOver(context, loops, pool ? &*pool : nullptr);
        receiving = false;
      });
    }
  }

  const std::string host = options.listen.host.find(':') != std::string::npos ? "[" + options.listen.host + "]"
                                                                              : options.listen.host;
  std::fprintf(stderr, "ktls-proxy: %s\n", Capabilities().c_str());
  if (options.metrics_on) {
    const std::string at = options.metrics.host.find(':') != std::string::npos ? "[" + options.metrics.host + "]"
                                                                               : options.metrics.host;
    std::fprintf(stderr, "ktls-proxy: metrics on http://%s:%u/metrics\n", at.c_str(), metrics_server.port());
  }
  std::fprintf(stderr, "ktls-proxy: listening on %s:%u, backend %s%s, %u thread(s)%s, %s\n", host.c_str(), port,
               backend->name().c_str(), backend->tls() ? " (TLS)" : "", num_threads,
               pool ? (" for handshakes, workers running as " + options.privsep_user).c_str() : "",
               options.copy ? "copy" : "splice");
  std::optional<ktls::proxy::Successor> successor;
  for (;;) {
    int signo = 0;
    sigwait(&signals, &signo);
    if (signo != SIGUSR2) {
      std::fprintf(stderr, "ktls-proxy: signal %d: draining %zu connection(s)\n", signo, active.load());
      break;
    }
    if (receiving.load()) {
      std::fprintf(stderr, "ktls-proxy: SIGUSR2: no upgrade (still taking over from the previous process)\n");
      continue;
    }
    std::vector<int> listeners;
    for (auto& loop : loops) listeners.push_back(loop->listener());
    successor.emplace();
    if (!successor->Start(exe_path, args, listeners, options.handshake_timeout, error)) {
      std::fprintf(stderr, "ktls-proxy: upgrade failed: %s; this process goes on serving\n", error.c_str());
      successor.reset();
      continue;
    }
    std::fprintf(stderr, "ktls-proxy: upgrade: pid %d serves now; handing over %s%zu connection(s)\n",
                 static_cast<int>(successor->pid()), pool ? "the workers' connections and " : "", active.load());
    break;
  }
  std::thread recaller;  // --privsep: the workers' connections, relayed.
  if (successor && pool) {
    handshakes_to = &*successor;
    recaller = std::thread([&] { RecallWorkers(*pool, *successor, context); });
  }
  if (receiver.joinable()) {
    // Stop taking connections over before draining: what is still on its
    // way stays with the previous process.
    ::shutdown(ktls::tools::kWorkerFd, SHUT_RDWR);
    receiver.join();
  }
  for (auto& loop : loops) {
    // A key holder's loops hold handshakes only: they drain, each to a
    // worker, or once the recall began to the new key holder.
    if (successor && !pool) {
      loop->BeginHandOver([&to = *successor](const ktls::proxy::RelayCounts& counts, ktls::Connection& client,
                                             ktls::proxy::Endpoint& to_backend) {
        return to.Send(counts, client, to_backend);
      });
    } else {
      loop->BeginDrain();
    }
  }
  for (auto& thread : threads) thread.join();
  if (recaller.joinable()) recaller.join();  // Every worker has handed back and exited.
  metrics_server.Stop();
  if (pool) pool->Stop(options.drain_timeout + std::chrono::milliseconds(1000));  // They drain as this process did.
  if (successor) {
    successor->Close();  // Tells the new process: nothing more comes.
    std::fprintf(stderr, "ktls-proxy: upgrade: handed over; exiting\n");
  } else {
    std::fprintf(stderr, "ktls-proxy: drained\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  ProxyOptions options;
  std::string text;
  switch (ktls::proxy::ParseProxyOptions(argc, argv, options, text)) {
    case ktls::proxy::ParseOutcome::kHelp: std::printf("%s\n", text.c_str()); return 0;
    case ktls::proxy::ParseOutcome::kError: std::fprintf(stderr, "%s\n", text.c_str()); return 2;
    case ktls::proxy::ParseOutcome::kRun: break;
  }
  // splice(2) and the kernel's sends to a client that is gone must not
  // kill the process: that is one connection's error.
  ::signal(SIGPIPE, SIG_IGN);
  RaiseFileLimit();
  std::setvbuf(stderr, nullptr, _IOLBF, 0);
  if (options.privsep_worker) return RunWorker(options);
  // A --privsep worker gets the same arguments, and --privsep-worker; the
  // process SIGUSR2 starts, the same and --upgrade-from, from the binary
  // on disk (read now: it may be replaced by then).
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]) != "--upgrade-from") args.emplace_back(argv[i]);
  }
  std::string exe_path;
  char path[4096];
  if (const ssize_t n = ::readlink("/proc/self/exe", path, sizeof(path)); n > 0 && n < ssize_t{sizeof(path)}) {
    exe_path.assign(path, static_cast<std::size_t>(n));
  }
  return Run(options, std::move(args), exe_path);
}
