// ktls-serve: an HTTPS static file server on kernel TLS.
//
//   ktls-serve [--root DIR] [--listen ADDR:PORT] [--cert FILE --key FILE]
//              [--threads N] [--rx|--no-rx] [--rx-no-pad] [--no-offload] [--dotfiles]
//              [--ciphers LIST] [--ciphersuites LIST] [--hsts SECONDS]
//              [--metrics ADDR:PORT] [--open-file-cache N] [limits...]
//
// HTTP/1.1 (Boost.Beast) with keep-alive, GET and HEAD, single ranges
// (If-Range), If-Modified-Since, no request body; file bodies go out with sendfile(2) through kTLS (or
// through OpenSSL, 16 KiB at a time, where TX stays in userspace). One
// access-log line per request on stdout, written in batches (at most
// --access-log-flush ms late, 1 s by default; whole lines, never mixed):
//   CLIENT METHOD PATH STATUS BYTES DURATIONms tx=kernel|user rx=kernel|user [reason=WHY]
// Start-up information and per-connection errors go to stderr.
// SIGINT/SIGTERM: stop accepting, finish the responses in flight (at most
// --drain-timeout), send close_notify, exit 0. SIGUSR1: one line on stderr
// with the connections open and the heap in use (a diagnostic, for leak
// tests). SIGUSR2: a binary upgrade that keeps the connections (README),
// with --privsep too. --metrics ADDR:PORT serves Prometheus text at
// /metrics on a separate plain-HTTP listener (metrics.h says what is
// counted).
#include <fcntl.h>
#include <malloc.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <utility>  // Before Boost: its awaitable.hpp uses std::exchange.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <cxxopts.hpp>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "common/connection_limits.h"
#include "common/privsep.h"
#include "common/self_signed.h"
#include "common/shared_metrics.h"
#include "common/tls_options.h"
#include "ktls-serve/file_response.h"
#include "ktls-serve/metrics.h"
#include "ktls-serve/metrics_http.h"
#include "ktls-serve/tick_clock.h"
#include "ktls/asio.h"
#include "ktls/kernel_tls_stats.h"
#include "ktls/move.h"
#include "ktls/probe.h"
#include "ktls/server.h"

namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using net::ip::tcp;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;
// --privsep --metrics: the key holder's counts and its workers'.
using SharedMetrics = ktls::tools::PrivsepMetrics<ktls::serve::Metrics>;
using std::chrono::milliseconds;

struct Options {
  std::string root = ".";
  std::string listen = "127.0.0.1:8443";
  std::string cert_file;
  std::string key_file;
  unsigned threads = 0;  // 0: one per core.
  bool rx = false;
  bool no_rx = false;
  bool rx_no_pad = false;  // TLS_RX_EXPECT_NO_PAD where safe (--rx-no-pad).
  bool no_offload = false;
  bool access_log = true;
  // Access-log lines wait in a per-thread buffer until the thread's next
  // sweep, at most this long (or until 32 KiB): one write per batch, not
  // per request. 0: a write per line.
  milliseconds access_log_flush{1000};
  bool dotfiles = false;        // Serve names starting with '.' (--dotfiles).
  std::string ciphers;          // TLS 1.2 suites; empty: kDefaultCipherList.
  std::string ciphersuites;     // TLS 1.3 suites; empty: OpenSSL's default.
  std::uint64_t hsts_seconds = 0;  // Strict-Transport-Security max-age; 0: none.
  std::size_t header_limit = 8 * 1024;
  std::size_t max_target_len = 2048;
  milliseconds handshake_timeout{10'000};
  milliseconds idle_timeout{30'000};
  // A request header must all arrive within this of its first byte
  // (--header-timeout), however steadily it trickles in.
  milliseconds header_timeout{30'000};
  milliseconds drain_timeout{10'000};
  std::size_t max_connections = 10'000;
  std::string metrics;  // --metrics ADDR:PORT; empty: no metrics listener.
  std::size_t open_file_cache = 0;  // Entries per thread; 0: no cache.
  milliseconds open_file_cache_valid{1000};
  // --privsep: this process handshakes; worker processes running as
  // privsep_user serve (ktls-serve/privsep.h). privsep_worker: this is one.
  bool privsep = false;
  std::string privsep_user;
  bool privsep_worker = false;
  // --upgrade-from: this process was started by SIGUSR2 in another one and
  // takes over its listener and connections on kWorkerFd.
  bool upgrade_from = false;
  // For SIGUSR2: the binary on disk and the arguments to start it with.
  std::string exe_path;
  std::vector<std::string> args;
};

// SendChunk: sendfile runs in pieces this big, each with the idle timeout:
// a client that stops reading is dropped, one that reads slowly is not.
constexpr std::size_t kSendChunk = 1024 * 1024;

// SmallBody: files up to this size are read and sent with their header in
// one write, so one TLS record and one syscall, where the header in a record
// of its own and the body by sendfile(2) would be two of each (the
// benchmark's 4 KiB file: docs/BENCHMARKS.md). Header and body together fit
// in one 16 KiB record.
constexpr std::size_t kSmallBody = 15 * 1024;

// WriteLog writes whole access-log lines to stdout. One writer at a time,
// so lines from different threads never interleave, even in a pipe.
std::mutex log_write_mu;
void WriteLog(std::string_view lines) {
  std::lock_guard lock(log_write_mu);
  while (!lines.empty()) {
    const ssize_t n = ::write(STDOUT_FILENO, lines.data(), lines.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // stdout is gone: the log is lost, serving goes on.
    lines.remove_prefix(static_cast<std::size_t>(n));
  }
}

// Access-log lines waiting in a worker's buffer are written once there are
// this many bytes, or after Options::access_log_flush.
constexpr std::size_t kLogBufferLimit = 32 * 1024;

void LogError(const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); }

// HeapReport: the heap in use over all of malloc's arenas, from
// malloc_info(3) (mallinfo2 sees the main arena only, and the worker
// threads allocate in arenas of their own). "in use" is what malloc got
// from the system (sbrk and mmap) less its free chunks: it grows with
// anything allocated and not freed.
std::string HeapReport() {
  char* xml = nullptr;
  std::size_t xml_len = 0;
  FILE* out = ::open_memstream(&xml, &xml_len);
  if (out == nullptr) return "heap unknown";
  const int rc = ::malloc_info(0, out);
  std::fclose(out);
  const std::string text(xml != nullptr ? xml : "", xml_len);
  std::free(xml);
  // The totals over all arenas follow the last </heap>.
  const std::size_t totals_at = text.rfind("</heap>");
  if (rc != 0 || totals_at == std::string::npos) return "heap unknown";
  const std::string totals = text.substr(totals_at);
  auto size_of = [&totals](const char* tag, const char* type) -> unsigned long long {
    const std::regex pattern(std::string("<") + tag + " type=\"" + type + "\"[^>]* size=\"([0-9]+)\"");
    std::smatch match;
    return std::regex_search(totals, match, pattern) ? std::stoull(match[1].str()) : 0;
  };
  const unsigned long long system = size_of("system", "current") + size_of("total", "mmap");
  const unsigned long long free_chunks = size_of("total", "fast") + size_of("total", "rest");
  return "heap in_use=" + std::to_string(system - free_chunks) + " system=" + std::to_string(system);
}

// Printable: the request target for the log, with anything unusual escaped.
std::string Printable(std::string_view text) {
  std::string out;
  for (unsigned char c : text.substr(0, 512)) {
    if (c > 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[4];
      std::snprintf(buf, sizeof(buf), "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

// One worker thread: its own io_context, and the sessions living on it.
struct SessionState {
  std::shared_ptr<ktls::asio::stream> stream;
  bool idle = false;  // Waiting for the next request (safe to interrupt).
};

class Deadline;

// KeyUpdatesSeen: a connection's key updates when they were last added to
// the metrics (after each request, and before the close).
struct KeyUpdatesSeen {
  std::uint64_t sent = 0;
  std::uint64_t received = 0;
};

struct Worker {
  net::io_context io{1};
  std::unordered_set<SessionState*> sessions;  // Touched only on this worker's thread.
  // The deadlines of its sessions, checked by a sweep every sweep_period;
  // now is the time of the last sweep. Both only on this worker's thread.
  std::unordered_set<Deadline*> deadlines;
  Clock::time_point now = Clock::now();
  milliseconds sweep_period{1000};
  net::steady_timer sweep{io};
  ktls::serve::TickClock* ticks = nullptr;  // Recalibrated by each sweep.
  // Access-log lines not yet written (FlushLog, by the sweep); only on
  // this worker's thread (and after it ended).
  std::string log_pending;
  std::unique_ptr<ktls::serve::OpenFileCache> file_cache;  // --open-file-cache; null without.
  // The Date header (RFC 9110 6.6.1), formatted by the sweep once a second
  // from `now` and wall_offset (the system clock less the steady one, read
  // again once a minute): no clock read per request.
  std::string date;
  std::time_t date_time = 0;
  Clock::duration wall_offset{};
  Clock::time_point wall_read{};
};

// UpdateDate (by the sweep) keeps worker.date the current HTTP-date.
void UpdateDate(Worker& worker) {
  if (worker.date.empty() || worker.now - worker.wall_read >= std::chrono::minutes(1)) {
    worker.wall_offset = std::chrono::duration_cast<Clock::duration>(
                             std::chrono::system_clock::now().time_since_epoch()) - worker.now.time_since_epoch();
    worker.wall_read = worker.now;
  }
  const auto wall = std::chrono::duration_cast<std::chrono::seconds>(worker.now.time_since_epoch() + worker.wall_offset);
  const auto seconds = static_cast<std::time_t>(wall.count());
  if (worker.date.empty() || seconds != worker.date_time) {
    worker.date_time = seconds;
    worker.date = ktls::serve::HttpDate(seconds);
  }
}

void FlushLog(Worker& worker) {
  if (worker.log_pending.empty()) return;
  WriteLog(worker.log_pending);
  worker.log_pending.clear();
  if (worker.log_pending.capacity() > kLogBufferLimit * 2) worker.log_pending.shrink_to_fit();
}

// Deadline: cancels the stream's operations when it runs out, unless
// re-armed or cancelled first. Arming and cancelling only set fields: the
// worker's sweep (Sweep) finds the ones that ran out, so a request costs
// no timer syscalls (timerfd_settime, clock_gettime: each a ptrace round
// trip in UML, and a few per request with one Asio timer per deadline).
class Deadline {
 public:
  Deadline(Worker& worker, std::weak_ptr<ktls::asio::stream> stream) : worker_(worker), stream_(std::move(stream)) {
    worker_.deadlines.insert(this);
  }
  ~Deadline() { worker_.deadlines.erase(this); }
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;
  // Arm: runs out after at least `after` (and at most two sweep periods
  // more), or at `due` (as late) if that comes first.
  void Arm(milliseconds after, Clock::time_point due = Clock::time_point::max()) {
    fired_ = false;
    armed_ = true;
    const Clock::time_point by_idle = worker_.now + after;
    expiry_ = (due < by_idle ? due : by_idle) + worker_.sweep_period;
  }
  void Cancel() { armed_ = false; }
  bool fired() const { return fired_; }
  // Check: called by the sweep with the current time.
  void Check(Clock::time_point now) {
    if (!armed_ || now < expiry_) return;
    armed_ = false;
    fired_ = true;
    if (auto s = stream_.lock()) s->cancel();
  }

 private:
  Worker& worker_;
  std::weak_ptr<ktls::asio::stream> stream_;
  Clock::time_point expiry_{};
  bool armed_ = false;
  bool fired_ = false;
};

// Sweep runs on each worker every sweep_period: refreshes the worker's
// clock and fires the deadlines that ran out.
void Sweep(Worker& worker) {
  worker.now = Clock::now();
  if (worker.ticks != nullptr) worker.ticks->Calibrate();
  UpdateDate(worker);
  FlushLog(worker);
  // Check may cancel a stream, which only posts completions: the set
  // does not change under us.
  for (auto* deadline : worker.deadlines) deadline->Check(worker.now);
  worker.sweep.expires_after(worker.sweep_period);
  worker.sweep.async_wait([&worker](error_code ec) {
    if (!ec) Sweep(worker);
  });
}

class Server {
 public:
  // tls: the handshake context; none in a --privsep worker, which only
  // serves connections it receives. pool: with --privsep, where handshaken
  // connections go instead of being served here; shared_metrics: with
  // --privsep and --metrics, this process's counts and the workers', what
  // --metrics serves.
  Server(Options options, std::optional<ktls::ServerContext> tls, ktls::serve::Root root,
         ktls::serve::Metrics& metrics, ktls::tools::WorkerPool* pool = nullptr,
         SharedMetrics* shared_metrics = nullptr)
      : options_(std::move(options)),
        tls_(std::move(tls)),
        root_(std::move(root)),
        metrics_(metrics),
        pool_(pool),
        shared_metrics_(shared_metrics) {
    const unsigned n = options_.threads != 0 ? options_.threads : std::max(1u, std::thread::hardware_concurrency());
    // Idle and header timeouts are checked this often: at most two periods late.
    // The access log is written by the same sweep.
    milliseconds period = std::clamp(std::min(options_.idle_timeout, options_.header_timeout) / 8, milliseconds(10),
                                     milliseconds(1000));
    if (options_.access_log_flush.count() != 0) period = std::max(milliseconds(10), std::min(period, options_.access_log_flush));
    for (unsigned i = 0; i < n; ++i) {
      workers_.push_back(std::make_unique<Worker>());
      workers_.back()->sweep_period = period;
      workers_.back()->ticks = &ticks_;
      if (options_.open_file_cache != 0) {
        workers_.back()->file_cache =
            std::make_unique<ktls::serve::OpenFileCache>(options_.open_file_cache, options_.open_file_cache_valid);
      }
    }
  }

  // Listen binds the listening socket and says where. After an upgrade it
  // takes the previous process's instead, and tells it it serves now.
  bool Listen(const tcp::endpoint& endpoint, std::string& error) {
    error_code ec;
    if (options_.upgrade_from) {
      const int fd = ktls::tools::ReceiveFd(ktls::tools::kWorkerFd, 'L');
      if (fd < 0) {
        error = std::string("--upgrade-from: no listening socket from the previous process: ") + std::strerror(errno);
        return false;
      }
      acceptor_.assign(endpoint.protocol(), fd, ec);
      if (ec) {
        error = "--upgrade-from: cannot take over the listening socket: " + ec.message();
        return false;
      }
      return true;  // Run says it serves ('R'), once its signals are handled.
    }
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
    if (ec) {
      error = "cannot listen on " + endpoint.address().to_string() + ":" + std::to_string(endpoint.port()) + ": " +
              ec.message();
      return false;
    }
    return true;
  }

  // ListenMetrics binds the --metrics listener.
  bool ListenMetrics(const tcp::endpoint& endpoint, std::string& error) {
    error_code ec;
    metrics_acceptor_.open(endpoint.protocol(), ec);
    if (!ec) metrics_acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) metrics_acceptor_.bind(endpoint, ec);
    if (!ec) metrics_acceptor_.listen(net::socket_base::max_listen_connections, ec);
    if (ec) {
      error = "--metrics: cannot listen on " + endpoint.address().to_string() + ":" + std::to_string(endpoint.port()) +
              ": " + ec.message();
      return false;
    }
    return true;
  }

  // Run serves until a signal, then drains. Returns the exit code.
  int Run() {
    tcp::acceptor& acceptor = acceptor_;
    std::vector<net::executor_work_guard<net::io_context::executor_type>> guards;
    std::vector<std::thread> threads;
    for (auto& worker : workers_) {
      net::post(worker->io, [w = worker.get()] { Sweep(*w); });
      guards.push_back(net::make_work_guard(worker->io));
      threads.emplace_back([&io = worker->io] { io.run(); });
    }
    net::signal_set signals(main_io_, SIGINT, SIGTERM);
    signals.async_wait([&](error_code ec, int signo) {
      if (ec) return;
      LogError("ktls-serve: signal " + std::to_string(signo) + ": draining " + std::to_string(active_.load()) +
               " connection(s)");
      BeginDrain(acceptor);
    });
    net::signal_set report(main_io_, SIGUSR1);
    std::function<void(error_code, int)> on_report = [&](error_code ec, int) {
      if (ec) return;
      LogError("ktls-serve: report: connections=" + std::to_string(active_.load()) + " " + HeapReport());
      report.async_wait(on_report);
    };
    report.async_wait(on_report);
    net::signal_set upgrade(main_io_, SIGUSR2);
    std::function<void(error_code, int)> on_upgrade = [&](error_code ec, int) {
      if (ec) return;
      StartUpgrade();
      upgrade.async_wait(on_upgrade);
    };
    upgrade.async_wait(on_upgrade);
    // Only now, with every signal handled: scripts signal once they read it,
    // and after an upgrade whoever sent the first SIGUSR2 may send the next
    // once the previous process says this one serves (its 'R'; before its
    // handler, SIGUSR2 would end this process). So too the metrics
    // listener: a process that cannot serve never says it does.
    const char ready = 'R';
    if (options_.upgrade_from && !options_.privsep_worker && ::write(ktls::tools::kWorkerFd, &ready, 1) != 1) {
      LogError(std::string("ktls-serve: --upgrade-from: the previous process is gone: ") + std::strerror(errno));
      guards.clear();
      for (auto& worker : workers_) worker->io.stop();
      for (auto& thread : threads) thread.join();
      return 1;
    }
    if (options_.upgrade_from || options_.privsep_worker) {
      // Connections arrive on kWorkerFd: from the handshake process (root,
      // which made the socket), or, after an upgrade, from the previous
      // process (this user) until it closes its end, holding none.
      from_.emplace(main_io_, ktls::tools::kWorkerFd);
      from_uid_ = options_.privsep_worker ? 0 : ::getuid();
      taking_over_ = options_.upgrade_from;
      net::co_spawn(main_io_, ReceiveLoop(), net::detached);
    }
    if (options_.privsep_worker) {
      std::fprintf(stderr, "ktls-serve: worker %d: serving %s as uid %u\n", static_cast<int>(::getpid()),
                   options_.root.c_str(), static_cast<unsigned>(::getuid()));
    } else {
      StartListening();
    }
    main_io_.run();  // Returns once the accept (or receive) loop ended and the drain finished.
    guards.clear();
    for (auto& worker : workers_) worker->io.stop();
    for (auto& thread : threads) thread.join();
    for (auto& worker : workers_) FlushLog(*worker);  // Their threads have ended.
    return 0;
  }

 private:
  // StartListening says where it serves, then accepts (and serves the
  // metrics, with --metrics).
  void StartListening() {
    error_code ec;
    const auto local = acceptor_.local_endpoint(ec);
    const std::string host = local.address().is_v6() ? "[" + local.address().to_string() + "]" : local.address().to_string();
    std::fprintf(stderr, "ktls-serve: serving %s on https://%s:%u/ with %zu thread(s)%s\n", options_.root.c_str(),
                 host.c_str(), local.port(), workers_.size(),
                 pool_ != nullptr ? (" for handshakes, workers running as " + options_.privsep_user).c_str() : "");
    if (metrics_acceptor_.is_open()) {
      const auto at = metrics_acceptor_.local_endpoint(ec);
      std::fprintf(stderr, "ktls-serve: metrics on http://%s:%u/metrics\n",
                   (at.address().is_v6() ? "[" + at.address().to_string() + "]" : at.address().to_string()).c_str(),
                   at.port());
      net::co_spawn(main_io_, ktls::serve::ServeMetrics(metrics_acceptor_, [this] { return RenderMetrics(); }),
                    net::detached);
    }
    net::co_spawn(main_io_, AcceptLoop(acceptor_), net::detached);
  }

  // RenderMetrics: what /metrics shows. With --privsep, the sum over this
  // process and the workers, after starting again any worker that died (so
  // its connections are no longer counted as open, and its counts are kept).
  std::string RenderMetrics() {
    if (shared_metrics_ == nullptr) return metrics_.Render(ktls::ReadKernelTlsStats());
    if (std::string error; pool_ != nullptr && !pool_->RestartExited(error)) {
      LogError("ktls-serve: starting a worker again: " + error);
    }
    ktls::serve::Metrics total;
    shared_metrics_->Sum(total);
    return total.Render(ktls::ReadKernelTlsStats());
  }

  net::awaitable<void> AcceptLoop(tcp::acceptor& acceptor) {
    std::size_t next = 0;
    net::steady_timer pause(main_io_);
    while (!draining_) {
      if (active_.load() >= options_.max_connections) {
        // Full: leave new clients in the listen queue until a slot frees.
        pause.expires_after(milliseconds(10));
        error_code ignored;
        co_await pause.async_wait(net::redirect_error(net::use_awaitable, ignored));
        continue;
      }
      Worker& worker = *workers_[next++ % workers_.size()];
      error_code ec;
      // The client's address comes with accept itself: no getpeername.
      tcp::endpoint remote;
      tcp::socket socket =
          co_await acceptor.async_accept(worker.io, remote, net::redirect_error(net::use_awaitable, ec));
      if (ec) {
        if (draining_ || ec == net::error::operation_aborted) break;
        LogError("ktls-serve: accept: " + ec.message());
        if (ec == net::error::no_descriptors || ec == net::error::no_buffer_space) {
          pause.expires_after(milliseconds(100));  // Out of fds: let connections end first.
          error_code ignored;
          co_await pause.async_wait(net::redirect_error(net::use_awaitable, ignored));
        }
        continue;
      }
      ++active_;
      net::co_spawn(worker.io, Session(worker, std::move(socket), remote), net::detached);
    }
  }

  void BeginDrain(tcp::acceptor& acceptor) {
    draining_ = true;
    error_code ignored;
    acceptor.close(ignored);
    if (from_) from_->cancel(ignored);
    // Idle connections end now; busy ones after their response.
    for (auto& worker : workers_) {
      net::post(worker->io, [w = worker.get()] {
        for (SessionState* session : w->sessions) {
          if (session->idle) session->stream->cancel();
        }
      });
    }
    drain_deadline_ = Clock::now() + options_.drain_timeout;
    net::co_spawn(main_io_, WaitDrained(), net::detached);
  }

  net::awaitable<void> WaitDrained() {
    net::steady_timer tick(main_io_);
    // Handing over to a new process waits for every response in flight:
    // each piece of one still has to go out within the idle timeout.
    // With --privsep, the workers hand theirs back (RecallWorkers) for as
    // long as that takes, which is bounded: a worker's own hand-back ends
    // at --drain-timeout (what has not moved by then is lost), as the key
    // holder that waits for it holds the key (RecallTimeout).
    while ((active_.load() > 0 &&
            ((handing_over_ && !options_.privsep_worker) || Clock::now() < drain_deadline_)) ||
           recalling_) {
      tick.expires_after(milliseconds(20));
      error_code ignored;
      co_await tick.async_wait(net::redirect_error(net::use_awaitable, ignored));
    }
    if (recall_thread_.joinable()) recall_thread_.join();
    if (active_.load() > 0) {
      LogError("ktls-serve: drain timeout: closing " + std::to_string(active_.load()) + " connection(s)");
    }
    if (upgrade_sock_ >= 0) ::close(std::exchange(upgrade_sock_, -1));  // Tells the new process: all handed over.
    main_io_.stop();
  }

  // StartUpgrade (SIGUSR2) starts the binary on disk with the same
  // arguments and hands it the listening socket; once it says it is ready,
  // this process hands over its connections (AwaitTakeover) and exits.
  // With --privsep this is the key holder, and the new one (root, as
  // this) starts workers of its own; the connections are in this one's
  // workers, which hand them back to be relayed (RecallWorkers).
  void StartUpgrade() {
    if (options_.privsep_worker || draining_ || upgrade_sock_ >= 0 || taking_over_) {
      LogError("ktls-serve: SIGUSR2: no upgrade (" +
               std::string(options_.privsep_worker ? "a --privsep worker: signal the handshake process"
                           : taking_over_          ? "still taking over from the previous process"
                                                   : "already under way") +
               ")");
      return;
    }
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
      LogError(std::string("ktls-serve: upgrade failed: socketpair: ") + std::strerror(errno));
      return;
    }
    const pid_t child =
        ktls::tools::StartSelf(options_.exe_path, "ktls-serve", options_.args, "--upgrade-from", pair[1], nullptr);
    ::close(pair[1]);
    if (child < 0 || !ktls::tools::SendFd(pair[0], acceptor_.native_handle(), 'L')) {
      LogError("ktls-serve: upgrade failed: cannot start " + options_.exe_path + ": " + std::strerror(errno) +
               "; this process goes on serving");
      if (child > 0) {
        ::kill(child, SIGKILL);
        ::waitpid(child, nullptr, 0);
      }
      ::close(pair[0]);
      return;
    }
    upgrade_sock_ = pair[0];
    upgrade_child_ = child;
    LogError("ktls-serve: upgrade: started " + options_.exe_path + " as pid " + std::to_string(child));
    net::co_spawn(main_io_, AwaitTakeover(), net::detached);
  }

  // AwaitTakeover waits (at most the handshake timeout) for the new process
  // to say it serves ('R'), then hands everything over; otherwise this
  // process goes on and says why.
  net::awaitable<void> AwaitTakeover() {
    net::posix::stream_descriptor ready(main_io_, ::dup(upgrade_sock_));
    net::steady_timer timer(main_io_);
    timer.expires_after(options_.handshake_timeout);
    timer.async_wait([&ready](error_code ec) {
      error_code ignored;
      if (!ec) ready.cancel(ignored);
    });
    char byte = 0;
    error_code ec;
    const std::size_t n =
        co_await ready.async_read_some(net::buffer(&byte, 1), net::redirect_error(net::use_awaitable, ec));
    timer.cancel();
    if (ec || n != 1 || byte != 'R') {
      LogError("ktls-serve: upgrade failed: pid " + std::to_string(upgrade_child_) +
               (ec == net::error::operation_aborted ? " did not take over in time"
                                                    : " exited before it took over") +
               "; this process goes on serving");
      ::kill(upgrade_child_, SIGKILL);
      ::waitpid(upgrade_child_, nullptr, 0);
      ::close(std::exchange(upgrade_sock_, -1));
      co_return;
    }
    LogError("ktls-serve: upgrade: pid " + std::to_string(upgrade_child_) + " serves now; handing over " +
             (pool_ != nullptr ? "the workers' connections and " : "") + std::to_string(active_.load()) +
             " connection(s)");
    // Sent from other threads than this loop's, blocking: AwaitTakeover's
    // reads may have left the socket non-blocking.
    if (const int flags = ::fcntl(upgrade_sock_, F_GETFL); flags >= 0) {
      (void)::fcntl(upgrade_sock_, F_SETFL, flags & ~O_NONBLOCK);
    }
    handing_over_ = true;
    if (pool_ != nullptr) RecallWorkers();
    BeginDrain(acceptor_);
  }

  // RecallWorkers (--privsep, once the new process serves): every worker
  // hands its connections back to this process (HandBack), which sends
  // each on to the new one, whose workers serve it: never served here, in
  // the process that holds the key. WaitDrained waits for the workers.
  void RecallWorkers() {
    recalling_ = true;
    recall_thread_ = std::thread([this] {
      pool_->Recall([this](ktls::Result<ktls::Connection> conn) {
        if (!conn.ok()) {
          LogError("ktls-serve: upgrade: from a worker: " + conn.error().ToString());
          return;
        }
        const std::string peer = PeerName(conn->fd());
        MoveOut(std::move(conn).value(), peer, [this](ktls::Connection& moving) { return SendToNewProcess(moving); },
                "the new process");
      }, RecallTimeout());
      recalling_ = false;
    });
  }

  // RecallTimeout: how long the workers have to hand everything back
  // (WorkerPool::Recall kills one that has not by then): --drain-timeout,
  // which bounds each worker's hand-back (WaitDrained), and
  // --handshake-timeout more for a loaded machine.
  milliseconds RecallTimeout() const { return options_.drain_timeout + options_.handshake_timeout; }

  // HandBack (a --privsep worker, on kRecall from the handshake process,
  // which upgrades): hands every connection back over kWorkerFd, idle ones
  // at once and busy ones after their response, as the process that
  // upgrades does (HandOver), then exits.
  void HandBack() {
    upgrade_sock_ = ::dup(ktls::tools::kWorkerFd);
    if (const int flags = upgrade_sock_ >= 0 ? ::fcntl(upgrade_sock_, F_GETFL) : -1; flags >= 0) {
      (void)::fcntl(upgrade_sock_, F_SETFL, flags & ~O_NONBLOCK);
    }
    LogError("ktls-serve: worker " + std::to_string(::getpid()) + ": handing " + std::to_string(active_.load()) +
             " connection(s) back for the new process");
    handing_over_ = true;
    BeginDrain(acceptor_);
  }

  // SendToNewProcess sends conn to the process that takes over.
  ktls::Result<void> SendToNewProcess(ktls::Connection& conn) {
    std::lock_guard lock(upgrade_mu_);
    return ktls::SendConnection(upgrade_sock_, conn);
  }

  // Conn: what a connection keeps for its whole life, kept small: an idle
  // keep-alive connection is this, the stream (with its ktls::Connection),
  // Asio's state for the socket, Session's frame and one wait. No read
  // buffer, parser or response: ServeNext has those only while it runs.
  struct Conn {
    Conn(Server& s, Worker& w, std::shared_ptr<ktls::asio::stream> st, std::string p)
        : server(s), worker(w), stream(std::move(st)), peer(std::move(p)), state{stream, false}, deadline(w, stream) {
      worker.sessions.insert(&state);
    }
    ~Conn() {
      if (handshaken) server.metrics_.Closed();
      worker.sessions.erase(&state);
      --server.active_;
    }
    Conn(const Conn&) = delete;
    Conn& operator=(const Conn&) = delete;

    Server& server;
    Worker& worker;
    std::shared_ptr<ktls::asio::stream> stream;
    std::string peer;
    SessionState state;
    Deadline deadline;
    KeyUpdatesSeen key_updates_seen;
    std::string leftover;  // Bytes after the last request (pipelined): usually none.
    bool handshaken = false;
  };

  // Step: what ServeNext did.
  enum class Step {
    kServed,  // Answered a request; the connection goes on.
    kIdle,    // Nothing of a request has arrived: wait for the socket.
    kEnd,     // Closed cleanly, timed out or the response said close: close_notify.
    kFailed,  // The connection failed: no close_notify.
  };

  net::awaitable<void> Session(Worker& worker, tcp::socket socket, tcp::endpoint remote) {
    error_code ec;
    std::string peer = remote.address().to_string() + ":" + std::to_string(remote.port());
    // Like nginx's default (tcp_nodelay on): a response's last small
    // segment must not wait for the client's delayed ACK.
    socket.set_option(tcp::no_delay(true), ec);
    auto c = std::make_shared<Conn>(*this, worker, std::make_shared<ktls::asio::stream>(std::move(socket)),
                                    std::move(peer));
    if (!co_await Handshake(*c)) co_return;
    if (pool_ != nullptr) {
      co_await Handoff(std::move(c));
      co_return;
    }
    co_await Serve(std::move(c));
  }

  // Handoff (--privsep) moves a handshaken connection to a worker process.
  // One that cannot move is never served here, in the process that holds
  // the key: it ends with close_notify, and the log says why.
  net::awaitable<void> Handoff(std::shared_ptr<Conn> c) {
    if (const std::string why = WhyNotMovable(*c); !why.empty()) {
      LogError(c->peer + " cannot move to a worker: " + why + "; ended with close_notify");
      co_await End(*c, true);
      co_return;
    }
    // Once the workers hand over to a new process (Recall), one
    // handshaken here goes to the new process as well.
    MoveOut(
        c->stream->release_connection(), c->peer,
        [this](ktls::Connection& conn) {
          if (!handing_over_) {
            auto handed = pool_->Hand(conn);
            if (handed.ok() || !pool_->recalled() || conn.fd() < 0) return handed;
          }
          return SendToNewProcess(conn);
        },
        "a worker or the new process");
  }

  // WhyNotMovable: why c cannot move to another process, or "".
  std::string WhyNotMovable(const Conn& c) const {
    if (std::string why = ktls::tools::WhyNotMovable(c.stream->connection()); !why.empty()) return why;
    if (!c.leftover.empty()) return "a pipelined request was already read";
    return "";
  }

  // MoveOut moves a connection to another process with send (to a
  // worker, or to the process that took over). If that fails, the
  // connection ends here (close_notify, best effort) and the log says why.
  static void MoveOut(ktls::Connection moving, const std::string& peer,
                      const std::function<ktls::Result<void>(ktls::Connection&)>& send, const char* to) {
    if (auto sent = send(moving); !sent.ok()) {
      LogError(peer + " not moved to " + to + ": " + sent.error().ToString());
      if (moving.fd() >= 0) (void)moving.Shutdown();
      moving.Close();
    }
  }

  // ReceiveLoop (a --privsep worker) serves the connections the handshake
  // process sends, until it goes away or a signal drains this worker.
  net::awaitable<void> ReceiveLoop() {
    std::size_t next = 0;
    net::steady_timer room_timer(main_io_);  // A key holder that took over: room in its workers' queues.
    bool waited_in_vain = false;
    while (!draining_) {
      error_code ec;
      co_await from_->async_wait(net::posix::descriptor_base::wait_read, net::redirect_error(net::use_awaitable, ec));
      if (ec || draining_) break;
      if (options_.privsep_worker && ktls::tools::TakeRecall(from_->native_handle())) {
        HandBack();
        break;
      }
      // A key holder that took over may end what it receives (MoveOut):
      // it came from a worker, through the previous key holder, so it is
      // distrusted (privsep.h: DistrustSocket).
      auto conn = ktls::ReceiveConnection(from_->native_handle(),
                                          {.peer_uid = from_uid_, .untrusted_sender = pool_ != nullptr});
      if (!conn.ok()) {
        if (conn.error().category == ktls::ErrorCategory::kClosed && options_.upgrade_from) {
          LogError("ktls-serve: the previous process handed over everything it could");
          break;
        }
        if (conn.error().category == ktls::ErrorCategory::kClosed) {
          LogError("ktls-serve: worker " + std::to_string(::getpid()) + ": the handshake process is gone: draining");
          BeginDrain(acceptor_);
          break;
        }
        LogError("ktls-serve: worker " + std::to_string(::getpid()) + ": " + conn.error().ToString());
        continue;
      }
      if (pool_ != nullptr) {
        // A key holder that took over (--privsep): a connection from the
        // previous one goes to a worker, as one handshaken here would, but
        // waits a little for room: the previous process hands over in a
        // burst, maybe before the new workers read anything. Waited on
        // this loop's timer, never blocking it (it accepts too); once one
        // waited in vain, the next do not wait until one goes.
        const std::string peer = PeerName(conn->fd());
        ktls::Connection moving = std::move(conn).value();
        auto handed = pool_->Hand(moving);
        const auto give_up = Clock::now() + (waited_in_vain ? milliseconds(0) : ktls::tools::kTakeOverRoomWait);
        while (!handed.ok() && moving.fd() >= 0 && handed.error().sys_errno == EAGAIN && Clock::now() < give_up) {
          room_timer.expires_after(milliseconds(20));
          error_code ignored;
          co_await room_timer.async_wait(net::redirect_error(net::use_awaitable, ignored));
          handed = pool_->Hand(moving);
        }
        waited_in_vain = !handed.ok() && handed.error().sys_errno == EAGAIN;
        MoveOut(std::move(moving), peer, [&handed](ktls::Connection&) { return handed; }, "a worker");
        continue;
      }
      Worker& worker = *workers_[next++ % workers_.size()];
      ++active_;
      net::co_spawn(worker.io, Adopted(worker, std::move(conn).value()), net::detached);
    }
    taking_over_ = false;
  }

  // Adopted serves a connection another process handshook.
  net::awaitable<void> Adopted(Worker& worker, ktls::Connection conn) {
    std::string peer = PeerName(conn.fd());
    auto c = std::make_shared<Conn>(*this, worker,
                                    std::make_shared<ktls::asio::stream>(worker.io.get_executor(), std::move(conn)),
                                    std::move(peer));
    // Counted as a connection where it was handshaken; open here.
    metrics_.Adopted();
    c->handshaken = true;
    co_await Serve(std::move(c));
  }

  // PeerName: the client's address and port, for the log.
  static std::string PeerName(int fd) {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "?";
    tcp::endpoint remote;
    remote.resize(len);
    std::memcpy(remote.data(), &addr, len);
    return remote.address().to_string() + ":" + std::to_string(remote.port());
  }

  // Serve answers requests until there are none to read, then leaves the
  // connection to Idle (and ends: no frame is kept while it waits), or
  // until the connection ends.
  net::awaitable<void> Serve(std::shared_ptr<Conn> c) {
    // Between requests until one is read: one that arrives (a handshake
    // finished, a connection received) once a hand-over began moves on.
    Step step = Step::kServed;
    while (!draining_) {
      step = co_await ServeNext(*c);
      if (step == Step::kIdle) {
        Idle(std::move(c));
        co_return;
      }
      if (step != Step::kServed) break;
    }
    // Out of the loop after a request served: draining, or handing over.
    co_await End(*c, step != Step::kFailed, step == Step::kServed);
  }

  // Idle waits for the next request without a coroutine: an idle
  // connection is its Conn and this one wait. A cancelled wait (the idle
  // timeout, or draining) closes the connection politely.
  void Idle(std::shared_ptr<Conn> c) {
    c->state.idle = true;
    c->deadline.Arm(options_.idle_timeout);
    Conn& conn = *c;
    conn.stream->async_wait(ktls::Wait::kReadable, [this, c = std::move(c)](error_code ec) mutable {
      c->state.idle = false;
      c->deadline.Cancel();
      Worker& worker = c->worker;
      if (ec) {
        net::co_spawn(worker.io,
                      [this, c = std::move(c)]() -> net::awaitable<void> { co_await End(*c, true, true); },
                      net::detached);
      } else {
        net::co_spawn(worker.io, Serve(std::move(c)), net::detached);
      }
    });
  }

  net::awaitable<bool> Handshake(Conn& c) {
    error_code ec;
    co_await c.stream->async_handshake(*tls_, net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      LogError(c.peer + " handshake failed: " + c.stream->last_error().ToString());
      metrics_.HandshakeFailed(ec == boost::system::errc::timed_out   ? ktls::serve::kHandshakeTimeout
                               : ec == net::error::operation_aborted ? ktls::serve::kHandshakeCancelled
                                                                     : ktls::serve::HandshakeFailureIndex(
                                                                           c.stream->last_error().category));
      co_return false;
    }
    metrics_.Handshaken(c.stream->connection().tx(), c.stream->connection().rx());
    c.handshaken = true;
    co_return true;
  }

  // HandOver (during an upgrade) moves a connection to the new process.
  // False when it cannot move (a direction in OpenSSL, or bytes of the
  // next request already read here): End closes it instead.
  bool HandOver(Conn& c) {
    if (const std::string why = WhyNotMovable(c); !why.empty()) {
      LogError(c.peer + " not handed over: " + why + "; ended with close_notify");
      return false;
    }
    // A --privsep worker's upgrade_sock_ leads to the handshake process,
    // which relays (RecallWorkers).
    MoveOut(c.stream->release_connection(), c.peer,
            [this](ktls::Connection& conn) { return SendToNewProcess(conn); }, "the new process");
    return true;
  }

  // End closes the connection: close_notify when clean, then a lingering
  // close (bounded, without blocking the loop), so that a client still
  // sending reads our close_notify or alert rather than a reset.
  net::awaitable<void> End(Conn& c, bool clean, bool may_move = false) {
    if (may_move && handing_over_ && HandOver(c)) co_return;
    error_code ec;
    if (clean) {
      c.deadline.Arm(options_.idle_timeout);
      // close_notify only: async_close sends the FIN, after lingering if
      // the client is still open, or with close if it has closed.
      co_await c.stream->async_shutdown(ktls::ShutdownFlags::kCloseNotifyOnly,
                                        net::redirect_error(net::use_awaitable, ec));
      c.deadline.Cancel();
    }
    CountKeyUpdates(c.stream->connection(), c.key_updates_seen);  // Before Close frees what OpenSSL counted.
    co_await c.stream->async_close(net::redirect_error(net::use_awaitable, ec));
  }

  // ServeNext reads one request (calling Connection::Read itself, so that
  // it can return kIdle, buffer freed, when nothing has arrived) and
  // answers it. The request's header must all arrive within the header
  // timeout of its first byte, each piece within the idle timeout.
  net::awaitable<Step> ServeNext(Conn& c) {
    // A read this big takes a whole request in one recvmsg, usually.
    constexpr std::size_t kReadSize = 2048;
    http::request_parser<http::empty_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(options_.header_limit));
    parser.body_limit(0);
    std::string buf = std::move(c.leftover);
    c.leftover.clear();
    std::size_t parsed = 0;  // Bytes of buf the parser has taken.
    error_code ec;           // A parse error, answered with 400 or 431.
    ktls::Connection& conn = c.stream->connection();
    // When the header must be complete: set at its first byte.
    std::optional<Clock::time_point> header_due;
    for (;;) {
      if (parsed < buf.size()) {
        parsed += parser.put(net::buffer(buf.data() + parsed, buf.size() - parsed), ec);
        if (ec == http::error::need_more) ec = {};
        // No request body is accepted: one announced by Transfer-Encoding
        // (chunked, or any coding, which RFC 9112 6.3 says to refuse) is
        // refused once the header is in, never parsed (Beast bounds
        // neither a chunk line nor the trailers).
        if (!ec && parser.is_header_done() && parser.get().count(http::field::transfer_encoding) != 0) {
          ec = http::error::bad_transfer_encoding;
        }
        if (ec || parser.is_done()) break;
      }
      // Whatever the parser does, the bytes held for one request stay
      // within the header limit and one read (no body is ever read).
      if (buf.size() >= options_.header_limit + kReadSize) {
        ec = http::error::header_limit;
        break;
      }
      const std::size_t had = buf.size();
      buf.resize(had + kReadSize);
      auto read = conn.Read(std::as_writable_bytes(std::span(buf)).subspan(had));
      buf.resize(had + (read.ok() ? read->bytes : 0));
      if (!read.ok()) {
        // The connection failed (a TLS alert, truncation, a reset).
        LogError(c.peer + " connection error: " + read.error().ToString());
        co_return Step::kFailed;
      }
      if (read->end_of_stream) co_return Step::kEnd;  // close_notify (in the middle of a request or not).
      if (!buf.empty() && !header_due) header_due = c.worker.now + options_.header_timeout;
      if (!read->would_block) continue;
      if (buf.empty() && read->wait == ktls::Wait::kReadable) co_return Step::kIdle;
      // Part of a request (or a read that must write first: OpenSSL
      // answering a KeyUpdate): wait here.
      c.deadline.Arm(options_.idle_timeout, header_due.value_or(Clock::time_point::max()));
      co_await c.stream->async_wait(read->wait, net::redirect_error(net::use_awaitable, ec));
      c.deadline.Cancel();
      if (ec) {
        if (c.deadline.fired()) {
          LogError(c.peer + (header_due && c.worker.now >= *header_due
                                 ? " dropped: request header not complete within the header timeout"
                                 : " dropped: request not complete within the idle timeout"));
        }
        co_return Step::kEnd;
      }
    }
    const std::uint64_t started = ticks_.Now();
    if (parsed < buf.size()) c.leftover.assign(buf, parsed);  // The next request's first bytes.
    // Answered in a coroutine of its own: the response's state lives only
    // while it is being sent.
    if (co_await Answer(c.worker, *c.stream, c.deadline, parser, ec, c.peer, started, c.key_updates_seen)) {
      co_return Step::kServed;
    }
    co_return ec ? Step::kFailed : Step::kEnd;
  }

  // Answer answers the request parser read (ec: how the read ended, a
  // parse error or none), logs and counts it. Returns whether the
  // connection goes on; ec says whether it failed.
  net::awaitable<bool> Answer(Worker& worker, ktls::asio::stream& stream, Deadline& deadline,
                              const http::request_parser<http::empty_body>& parser, error_code& ec,
                              const std::string& peer, std::uint64_t started, KeyUpdatesSeen& key_updates_seen) {
    ktls::serve::FileResponse response;
    bool head = false;
    std::string method = "-";
    std::string target = "-";
    if (ec) {
      // Beast could not parse the request: answer and close.
      const auto status = ec == http::error::header_limit ? http::status::request_header_fields_too_large
                                                          : http::status::bad_request;
      response = ktls::serve::ErrorResponse(status, true);
      if (ec == http::error::bad_transfer_encoding) response.refusal = "transfer-encoding";
    } else {
      const auto& request = parser.get();
      head = request.method() == http::verb::head;
      method = std::string(request.method_string());
      target = Printable(std::string_view(request.target().data(), request.target().size()));
      response = ktls::serve::Respond(root_, request, {options_.max_target_len, options_.dotfiles},
                                      worker.file_cache.get(), worker.file_cache ? ticks_.NowNs() : 0);
      if (head) response.send_body = false;
      if (!request.keep_alive()) response.close = true;
    }
    if (draining_ && !handing_over_) response.close = true;
    const std::uint64_t sent = co_await WriteResponse(stream, deadline, response, worker.date, ec);
    const ktls::Connection& conn = stream.connection();
    LogAccess(worker, peer, method, target, response, sent, started,
              std::string("tx=") + ktls::OffloadName(conn.tx()) + " rx=" + ktls::OffloadName(conn.rx()), ec);
    metrics_.Request(static_cast<unsigned>(response.status));
    CountKeyUpdates(stream.connection(), key_updates_seen);
    if (ec) {
      if (deadline.fired()) LogError(peer + " dropped: not reading the response within the idle timeout");
      co_return false;
    }
    co_return !response.close;
  }

  template <typename Body>
  void SetHeader(http::response<Body>& header, const ktls::serve::FileResponse& response,
                 const std::string& date) const {
    if (!date.empty()) header.set(http::field::date, date);
    header.set(http::field::server, "ktls-serve");
    if (options_.hsts_seconds != 0) {
      header.set(http::field::strict_transport_security, "max-age=" + std::to_string(options_.hsts_seconds));
    }
    if (!response.content_type.empty()) header.set(http::field::content_type, response.content_type);
    if (!response.last_modified.empty()) header.set(http::field::last_modified, response.last_modified);
    if (!response.content_range.empty()) header.set(http::field::content_range, response.content_range);
    if (!response.location.empty()) header.set(http::field::location, response.location);
    if (!response.allow.empty()) header.set(http::field::allow, response.allow);
    if (response.file_fd >= 0) header.set(http::field::accept_ranges, "bytes");
    if (response.status != http::status::not_modified) header.content_length(response.length);
    header.keep_alive(!response.close);
  }

  // ReadSmallBody reads a small file's bytes to send: false (and ec) when
  // the file cannot be read or ended early.
  static bool ReadSmallBody(const ktls::serve::FileResponse& response, std::string& body, error_code& ec) {
    if (response.file != nullptr && response.file->has_body) {  // From the open-file cache.
      const auto& bytes = response.file->body;
      body.assign(bytes.data() + response.offset, static_cast<std::size_t>(response.length));
      return true;
    }
    body.resize(static_cast<std::size_t>(response.length));
    std::size_t got = 0;
    while (got < body.size()) {
      const ssize_t n = ::pread(response.file_fd, body.data() + got, body.size() - got,
                                static_cast<off_t>(response.offset + got));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN && ::fcntl(response.file_fd, F_SETFL, 0) == 0) continue;  // O_NONBLOCK honoured.
      if (n <= 0) {
        ec = n == 0 ? make_error_code(ktls::asio::error::file_ended) : error_code(errno, boost::system::system_category());
        return false;
      }
      got += static_cast<std::size_t>(n);
    }
    return true;
  }

  // WriteResponse sends the header and the body; returns the body bytes sent.
  net::awaitable<std::uint64_t> WriteResponse(ktls::asio::stream& stream, Deadline& deadline,
                                              const ktls::serve::FileResponse& response, const std::string& date,
                                              error_code& ec) {
    // Status, headers and a short body (an error text, a small file) in one
    // write, so in one TLS record, with TX in the kernel or in OpenSSL
    // (the stream gathers up to 16 KiB of pieces into one write).
    if (!response.send_body || response.file_fd < 0 || response.length <= kSmallBody) {
      http::response<http::string_body> message{response.status, 11};
      SetHeader(message, response, date);
      if (response.send_body && response.file_fd >= 0) {
        if (!ReadSmallBody(response, message.body(), ec)) co_return 0;
      } else if (response.send_body) {
        message.body() = response.text_body;
      }
      deadline.Arm(options_.idle_timeout);
      const std::size_t written = co_await http::async_write(stream, message, net::redirect_error(net::use_awaitable, ec));
      deadline.Cancel();
      metrics_.ResponseBytes(ktls::serve::ResponsePath::kWrite, written);
      co_return ec || !response.send_body ? 0 : response.length;
    }
    // A large file: the header with WriteFlags::kMore, so it can share the
    // first record with the file's first bytes (kTLS: MSG_MORE, then
    // sendfile fills the open record).
    http::response<http::empty_body> header{response.status, 11};
    SetHeader(header, response, date);
    std::ostringstream header_text;
    header_text << header.base();
    const std::string head = std::move(header_text).str();
    std::size_t head_sent = 0;
    deadline.Arm(options_.idle_timeout);
    while (head_sent < head.size() && !ec) {
      head_sent += co_await stream.async_write_some(net::buffer(head) + head_sent, ktls::WriteFlags::kMore,
                                                    net::redirect_error(net::use_awaitable, ec));
    }
    deadline.Cancel();
    metrics_.ResponseBytes(ktls::serve::ResponsePath::kWrite, head_sent);
    if (ec) co_return 0;
    // With TX in OpenSSL, the stream's sendfile reads the file and writes it.
    const auto file_path = stream.connection().tx() == ktls::Offload::kKernel ? ktls::serve::ResponsePath::kSendfile
                                                                              : ktls::serve::ResponsePath::kWrite;
    std::uint64_t sent = 0;
    while (sent < response.length) {
      const std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(kSendChunk, response.length - sent));
      deadline.Arm(options_.idle_timeout);
      const std::size_t n = co_await stream.async_sendfile(
          response.file_fd, static_cast<off_t>(response.offset + sent), chunk, net::redirect_error(net::use_awaitable, ec));
      deadline.Cancel();
      sent += n;
      metrics_.ResponseBytes(file_path, n);
      if (ec) break;
    }
    co_return sent;
  }

  // CountKeyUpdates adds the connection's key updates since seen to the
  // metrics. The connection's counts include OpenSSL's while it holds a
  // direction, and lose them once Close frees the SSL: so count before
  // closing, and never count a count that went down.
  void CountKeyUpdates(const ktls::Connection& conn, KeyUpdatesSeen& seen) {
    const std::uint64_t sent = conn.tx_key_updates();
    const std::uint64_t received = conn.rx_key_updates();
    metrics_.KeyUpdates(sent > seen.sent ? sent - seen.sent : 0, received > seen.received ? received - seen.received : 0);
    seen = {std::max(sent, seen.sent), std::max(received, seen.received)};
  }

  void LogAccess(Worker& worker, const std::string& peer, const std::string& method, const std::string& target,
                 const ktls::serve::FileResponse& response, std::uint64_t sent, std::uint64_t started,
                 const std::string& offload, error_code ec) {
    if (!options_.access_log) return;
    const auto ms = std::chrono::duration_cast<milliseconds>(ticks_.Elapsed(started)).count();
    std::string line = peer + " " + method + " " + target + " " + std::to_string(static_cast<unsigned>(response.status)) +
                       " " + std::to_string(sent) + " " + std::to_string(ms) + "ms " + offload;
    if (!response.refusal.empty()) line += " reason=" + response.refusal;
    if (ec) line += " error=" + Printable(ec.message());
    line.push_back('\n');
    worker.log_pending += line;
    if (options_.access_log_flush.count() == 0 || worker.log_pending.size() >= kLogBufferLimit) FlushLog(worker);
  }

  Options options_;
  ktls::serve::TickClock ticks_;  // Before workers_: they point at it.
  std::optional<ktls::ServerContext> tls_;
  ktls::serve::Root root_;
  net::io_context main_io_{1};
  tcp::acceptor acceptor_{main_io_};
  ktls::serve::Metrics& metrics_;
  tcp::acceptor metrics_acceptor_{main_io_};
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<std::size_t> active_ = 0;
  std::atomic<bool> draining_ = false;
  Clock::time_point drain_deadline_;
  ktls::tools::WorkerPool* pool_ = nullptr;                 // --privsep: where connections go.
  SharedMetrics* shared_metrics_ = nullptr;   // --privsep --metrics: what /metrics sums.
  std::optional<net::posix::stream_descriptor> from_;       // A worker, or after an upgrade: where they come from.
  uid_t from_uid_ = 0;                                      // Who must be sending them.
  // SIGUSR2: the socket to the new process, while handing over.
  int upgrade_sock_ = -1;
  pid_t upgrade_child_ = -1;
  std::mutex upgrade_mu_;                                   // One SendConnection at a time on it.
  std::atomic<bool> handing_over_ = false;
  // --upgrade-from: connections still come from the previous process. A
  // SIGUSR2 now would recall them half-way (refused until it is done).
  bool taking_over_ = false;
  // --privsep: the thread relaying the workers' connections (RecallWorkers).
  std::thread recall_thread_;
  std::atomic<bool> recalling_ = false;
};

std::string Capabilities() {
  const ktls::Capabilities& caps = ktls::CachedCapabilities();
  if (!caps.available) return "kTLS unavailable on Linux " + caps.kernel + ": " + caps.reason + " (serving in userspace TLS)";
  std::string text = "kTLS on Linux " + caps.kernel + ":";
  for (const ktls::CipherSupport& row : caps.ciphers) {
    if (!row.tx && !row.rx) continue;
    text += std::string(" ") + std::string(ktls::TlsVersionName(row.version)) + "/" +
            std::string(ktls::CipherName(row.cipher)) + (row.tx && row.rx ? "(tx+rx)" : row.tx ? "(tx)" : "(rx)");
  }
  text += caps.rekey ? "; TLS 1.3 key updates: yes" : "; TLS 1.3 key updates: no (Linux < 6.14)";
  text += caps.rx_no_pad ? "; RX no-pad: yes" : "; RX no-pad: no (" + caps.rx_no_pad_reason + ")";
  return text;
}

void RaiseFileLimit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &limit);
  }
}

// ParseListen parses ADDR:PORT given to flag ("--listen").
std::optional<tcp::endpoint> ParseListen(const std::string& text, const char* flag, std::string& error) {
  const std::size_t colon = text.rfind(':');
  if (colon == std::string::npos) {
    error = std::string(flag) + " wants ADDR:PORT, got " + text;
    return std::nullopt;
  }
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  error_code ec;
  const auto address = net::ip::make_address(host, ec);
  unsigned long port = 0;
  try {
    port = std::stoul(text.substr(colon + 1));
  } catch (...) {
    port = 65536;
  }
  if (ec || port > 65535) {
    error = std::string(flag) + ": bad address or port: " + text;
    return std::nullopt;
  }
  return tcp::endpoint(address, static_cast<unsigned short>(port));
}

}  // namespace

// RunPrivsepWorker: a --privsep worker serves the connections that arrive
// on kWorkerFd from the handshake process; it holds no key and no listener.
int RunPrivsepWorker(Options o) {
  if (::geteuid() == 0 || ::getuid() == 0) {
    std::fprintf(stderr, "ktls-serve: a --privsep worker must not run as root\n");
    return 2;
  }
  ktls::tools::HardenWorker();
  std::string error;
  auto root = ktls::serve::Root::Open(o.root, error);
  if (!root) {
    std::fprintf(stderr, "ktls-serve: worker: %s\n", error.c_str());
    return 1;
  }
  ::signal(SIGPIPE, SIG_IGN);
  RaiseFileLimit();
  o.threads = 1;  // One process per handshake thread already.
  (void)ktls::CachedCapabilities();  // The probe, now rather than in the first connection's time.
  // With --metrics, the counts go where the handshake process reads them
  // (kWorkerExtraFd); without, nobody reads them.
  ktls::serve::Metrics local_metrics;
  std::optional<ktls::tools::MetricsRegion<ktls::serve::Metrics>> region;
  if (!o.metrics.empty()) {
    region = ktls::tools::MetricsRegion<ktls::serve::Metrics>::Map(ktls::tools::kWorkerExtraFd, error);
    if (!region) std::fprintf(stderr, "ktls-serve: worker: --metrics not counted: %s\n", error.c_str());
  }
  Server server(o, std::nullopt, std::move(*root), region ? region->metrics() : local_metrics);
  return server.Run();
}

int main(int argc, char** argv) {
  cxxopts::Options cli("ktls-serve", "HTTPS static file server on kernel TLS");
  Options o;
  long long handshake_ms = 0, header_ms = 0, drain_ms = 0, log_flush_ms = 0, cache_valid_ms = 0;
  // clang-format off
  cli.add_options()
    ("root", "Directory to serve", cxxopts::value<std::string>()->default_value("."))
    ("listen", "Address and port", cxxopts::value<std::string>()->default_value("127.0.0.1:8443"))
    ("cert", "Certificate chain (PEM); without it, a self-signed one is made", cxxopts::value<std::string>())
    ("key", "Private key (PEM)", cxxopts::value<std::string>())
    ("threads", "Worker threads (0: one per core)", cxxopts::value<unsigned>()->default_value("0"))
    ("rx", "RX in the kernel even where it cannot follow TLS 1.3 key updates (Linux < 6.14)")
    ("no-rx", "Keep RX in userspace TLS (TX still offloaded)")
    ("rx-no-pad", "With TLS 1.3 RX in the kernel, expect clients not to pad records (TLS_RX_EXPECT_NO_PAD, where "
     "the kernel does it right: 6.1 does not): one copy less; a padded record is decrypted twice")
    ("no-offload", "Keep both directions in userspace TLS (to compare)")
    ("no-access-log", "Do not log each request")
    ("access-log-flush", "Write access-log lines at most this long after their request (ms; they are written "
     "in batches, one write each; 0: one write per line)", cxxopts::value<long long>()->default_value("1000"))
    ("dotfiles", "Serve files and directories whose names start with '.' (default: 404, except /.well-known/)")
    ("ciphers", "TLS 1.2 cipher suites, OpenSSL syntax (default: ECDHE with AES-GCM or ChaCha20-Poly1305)",
     cxxopts::value<std::string>())
    ("ciphersuites", "TLS 1.3 cipher suites, OpenSSL syntax (default: OpenSSL's)", cxxopts::value<std::string>())
    ("hsts", "Send Strict-Transport-Security with this max-age (seconds; default: not sent)",
     cxxopts::value<std::uint64_t>()->default_value("0"))
    ("header-limit", "Maximum request header size, request line included (bytes; larger: 431)",
     cxxopts::value<std::size_t>()->default_value("8192"))
    ("max-target", "Maximum request-target length (bytes; longer: 414)",
     cxxopts::value<std::size_t>()->default_value("2048"))
    ("handshake-timeout", "Drop clients that have not finished the handshake by then (ms)",
     cxxopts::value<long long>()->default_value("10000"))
    ("header-timeout", "Drop clients whose request header is not complete this long after its first byte, "
     "however steadily it arrives (ms; each piece must also come within --idle-timeout)",
     cxxopts::value<long long>()->default_value("30000"))
    ("drain-timeout", "On SIGINT/SIGTERM, wait at most this long for responses in flight (ms); on SIGUSR2 with "
     "--privsep, how long an old worker hands its connections back (it is killed at this plus --handshake-timeout)",
     cxxopts::value<long long>()->default_value("10000"))
    ("metrics", "Serve Prometheus metrics over plain HTTP at http://ADDR:PORT/metrics (default: off; use loopback; "
     "with --privsep, the handshake process serves them for all its workers)",
     cxxopts::value<std::string>())
    ("open-file-cache", "Keep up to N recently served files open per thread, with their metadata and, up to 15 KiB, "
     "their bytes (default: 0, no cache; alone: 1000)", cxxopts::value<std::size_t>()->default_value("0")->implicit_value("1000"))
    ("open-file-cache-valid", "Trust a cached file this long after it was last checked; the next request after that "
     "opens the path again and drops the entry if the file changed (ms)",
     cxxopts::value<long long>()->default_value("1000"))
    ("privsep", "Privilege separation: this process (it must start as root) holds the key and does the handshakes; "
     "worker processes running as --user serve the requests, each connection moved to them with both directions in "
     "the kernel. A connection that cannot move (RX kept in userspace on Linux < 6.14 without --rx, a cipher the "
     "kernel lacks) is ended with close_notify and logged, never served by the key holder. With --metrics, this "
     "process serves the sum of its counts and the workers'. SIGUSR2 to this process upgrades (the workers' "
     "connections go to the new process's workers)")
    ("user", "With --privsep: the user the workers run as (not root)", cxxopts::value<std::string>())
    ("privsep-worker", "Internal: this is a --privsep worker (started by ktls-serve itself)")
    ("upgrade-from", "Internal: take over from the ktls-serve that started this one on SIGUSR2")
    ("h,help", "Show this help");
  // clang-format on
  ktls::tools::AddConnectionLimitOptions(cli);
  ktls::tools::ConnectionLimits limits;
  std::string error;
  try {
    auto args = cli.parse(argc, argv);
    if (args.count("help") != 0) {
      std::printf("%s\n", cli.help().c_str());
      return 0;
    }
    o.root = args["root"].as<std::string>();
    o.listen = args["listen"].as<std::string>();
    if (args.count("cert") != 0) o.cert_file = args["cert"].as<std::string>();
    if (args.count("key") != 0) o.key_file = args["key"].as<std::string>();
    o.threads = args["threads"].as<unsigned>();
    o.rx = args.count("rx") != 0;
    o.no_rx = args.count("no-rx") != 0;
    o.rx_no_pad = args.count("rx-no-pad") != 0;
    o.no_offload = args.count("no-offload") != 0;
    o.access_log = args.count("no-access-log") == 0;
    log_flush_ms = args["access-log-flush"].as<long long>();
    o.dotfiles = args.count("dotfiles") != 0;
    if (args.count("ciphers") != 0) o.ciphers = args["ciphers"].as<std::string>();
    if (args.count("ciphersuites") != 0) o.ciphersuites = args["ciphersuites"].as<std::string>();
    o.hsts_seconds = args["hsts"].as<std::uint64_t>();
    o.header_limit = args["header-limit"].as<std::size_t>();
    o.max_target_len = args["max-target"].as<std::size_t>();
    handshake_ms = args["handshake-timeout"].as<long long>();
    header_ms = args["header-timeout"].as<long long>();
    drain_ms = args["drain-timeout"].as<long long>();
    if (args.count("metrics") != 0) o.metrics = args["metrics"].as<std::string>();
    o.open_file_cache = args["open-file-cache"].as<std::size_t>();
    cache_valid_ms = args["open-file-cache-valid"].as<long long>();
    o.privsep = args.count("privsep") != 0;
    if (args.count("user") != 0) o.privsep_user = args["user"].as<std::string>();
    o.privsep_worker = args.count("privsep-worker") != 0;
    o.upgrade_from = args.count("upgrade-from") != 0;
    if (!ktls::tools::ReadConnectionLimits(args, limits, error)) {
      std::fprintf(stderr, "ktls-serve: %s\n", error.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ktls-serve: %s\n%s\n", e.what(), cli.help().c_str());
    return 2;
  }
  if (o.cert_file.empty() != o.key_file.empty()) {
    std::fprintf(stderr, "ktls-serve: --cert and --key go together\n");
    return 2;
  }
  if (handshake_ms <= 0 || header_ms <= 0 || drain_ms < 0 || log_flush_ms < 0 || cache_valid_ms < 0 ||
      o.header_limit == 0) {
    std::fprintf(stderr, "ktls-serve: --handshake-timeout, --header-timeout and --header-limit must be positive, "
                         "--drain-timeout and "
                         "--access-log-flush and --open-file-cache-valid not negative\n");
    return 2;
  }
  o.access_log_flush = milliseconds(log_flush_ms);
  o.open_file_cache_valid = milliseconds(cache_valid_ms);
  o.handshake_timeout = milliseconds(handshake_ms);
  o.header_timeout = milliseconds(header_ms);
  o.idle_timeout = limits.idle_timeout;
  o.max_connections = limits.max_connections;
  o.drain_timeout = milliseconds(drain_ms);
  if (o.privsep && o.privsep_user.empty()) {
    std::fprintf(stderr, "ktls-serve: --privsep needs --user\n");
    return 2;
  }
  if (o.privsep_worker) return RunPrivsepWorker(o);
  // SIGUSR2 starts the binary on disk with these arguments (an upgrade).
  char path[4096];
  if (const ssize_t n = ::readlink("/proc/self/exe", path, sizeof(path)); n > 0 && n < ssize_t{sizeof(path)}) {
    o.exe_path.assign(path, static_cast<std::size_t>(n));
  }
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]) != "--upgrade-from") o.args.emplace_back(argv[i]);
  }
  // Counted whether or not --metrics serves them: a relaxed atomic add each.
  ktls::serve::Metrics metrics;
  // --privsep --metrics: the workers count in shared memory, one region each.
  std::optional<SharedMetrics> shared_metrics;
  std::optional<ktls::tools::WorkerPool> pool;
  if (o.privsep) {
    // The workers start before the key is read: they are fresh images
    // anyway, but nothing of it is even in this process yet.
    const unsigned n = o.threads != 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency());
    ktls::tools::WorkerPool::StartHook start_hook;
    if (!o.metrics.empty()) {
      shared_metrics.emplace(metrics, "ktls-serve-metrics");
      if (!shared_metrics->Create(n, error)) {
        std::fprintf(stderr, "ktls-serve: --metrics: %s\n", error.c_str());
        return 1;
      }
      start_hook = shared_metrics->StartHook();
    }
    // o.args: without --upgrade-from, which is this process's, not theirs.
    if (const int code = ktls::tools::StartPrivsep("ktls-serve", o.privsep_user, o.args, n, pool, error,
                                                   std::move(start_hook));
        code != 0) {
      std::fprintf(stderr, "ktls-serve: %s\n", error.c_str());
      return code;
    }
  }

  auto root = ktls::serve::Root::Open(o.root, error);
  if (!root) {
    std::fprintf(stderr, "ktls-serve: %s\n", error.c_str());
    return 1;
  }
  auto endpoint = ParseListen(o.listen, "--listen", error);
  if (!endpoint) {
    std::fprintf(stderr, "ktls-serve: %s\n", error.c_str());
    return 2;
  }
  std::optional<tcp::endpoint> metrics_endpoint;
  if (!o.metrics.empty()) {
    metrics_endpoint = ParseListen(o.metrics, "--metrics", error);
    if (!metrics_endpoint) {
      std::fprintf(stderr, "ktls-serve: %s\n", error.c_str());
      return 2;
    }
  }
  ktls::ServerConfig config;
  ktls::tools::SelfSigned self_signed;
  if (o.cert_file.empty()) {
    if (!ktls::tools::MakeSelfSigned(self_signed, error)) {
      std::fprintf(stderr, "ktls-serve: cannot make a self-signed certificate: %s\n", error.c_str());
      return 1;
    }
    config.cert_file = self_signed.cert_file;
    config.key_file = self_signed.key_file;
    std::fprintf(stderr, "ktls-serve: self-signed certificate for localhost, SHA-256 fingerprint %s\n",
                 self_signed.fingerprint.c_str());
  } else {
    config.cert_file = o.cert_file;
    config.key_file = o.key_file;
  }
  config.alpn = {"http/1.1"};
  config.handshake_timeout = o.handshake_timeout;
  if (!ktls::tools::SetOffloadChoice({o.rx, o.no_rx, o.no_offload}, config.offload, error)) {
    std::fprintf(stderr, "ktls-serve: %s\n", error.c_str());
    return 2;
  }
  config.offload.rx_expect_no_pad = o.rx_no_pad;
  ktls::tools::SetCipherOptions(config, o.ciphers, o.ciphersuites);
  // A client whose choice the kernel cannot carry (a CBC suite --ciphers
  // allowed) is served in userspace TLS: say why.
  config.offload.on_fallback = [&metrics, tx_wanted = !o.no_offload,
                                has_ktls = ktls::CachedCapabilities().available](const ktls::OffloadReport& report) {
    metrics.Fallback(report);
    if (auto message = ktls::tools::FallbackMessage("ktls-serve", report, tx_wanted, has_ktls)) LogError(*message);
  };
  auto tls = ktls::ServerContext::Create(config);
  if (!tls.ok()) {
    std::fprintf(stderr, "ktls-serve: TLS configuration: %s\n", tls.error().ToString().c_str());
    return 1;
  }
  // sendfile(2) raises SIGPIPE when a client is gone (it has no
  // MSG_NOSIGNAL); that is an error for that connection, not the process.
  ::signal(SIGPIPE, SIG_IGN);
  RaiseFileLimit();
  std::fprintf(stderr, "ktls-serve: %s\n", Capabilities().c_str());

  Server server(o, std::move(tls).value(), std::move(*root), metrics, pool ? &*pool : nullptr,
                shared_metrics ? &*shared_metrics : nullptr);
  if (!server.Listen(*endpoint, error) || (metrics_endpoint && !server.ListenMetrics(*metrics_endpoint, error))) {
    std::fprintf(stderr, "ktls-serve: %s\n", error.c_str());
    return 1;
  }
  const int code = server.Run();
  if (pool) pool->Stop(o.drain_timeout + milliseconds(1000));  // They drain as this process did.
  return code;
}
