// bench/moves.cc: moving live connections (issue #20, ktls/move.h).
//
// This process holds opts.handshakes offloaded server connections (both
// directions in the kernel; the clients, plain OpenSSL, on a thread of
// their own keep theirs open) and moves every one of them once, timed:
//
//   export_import:  Connection::Export, then Connection::Import of the
//                   same socket and state (the library's own cost: packing,
//                   wiping, and Import's checks of state and socket)
//   unix_socket:    SendConnection into an AF_UNIX socket pair and
//                   ReceiveConnection from its other end, as a handshake
//                   process and a worker would (plus sendmsg/recvmsg and
//                   SCM_RIGHTS), in one process so that only the move is
//                   timed
//
// Reported: connections moved per second, and the bytes of state one
// connection carries (TLS 1.3, TLS_AES_128_GCM_SHA256, no client
// certificate; the traffic secrets only where the kernel can rekey).
#include <sys/socket.h>
#include <unistd.h>

#include <future>
#include <string>
#include <vector>

#include "cases.h"
#include "ktls/move.h"
#include "ktls/probe.h"
#include "runner.h"

namespace ktls::bench {
namespace {

constexpr std::string_view kSuite = "TLS_AES_128_GCM_SHA256";

RunResult MoveAll(std::size_t n, bool through_socket) {
  UniqueSslCtx server_ctx = NewServerContext(std::string(kSuite), ServerTls::kKtls);
  UniqueSslCtx client_ctx = NewClientContext(std::string(kSuite), /*read_ahead=*/false);
  LoopbackListener listener;
  std::promise<void> done;
  std::shared_future<void> finished = done.get_future().share();
  ClientThread clients(listener, [&, finished] {
    std::vector<UniqueSsl> ssls;
    std::vector<UniqueFd> fds;
    for (std::size_t i = 0; i < n; ++i) {
      fds.push_back(ConnectLoopback(listener.port()));
      ssls.push_back(ClientHandshake(client_ctx.get(), fds.back().get()));
    }
    finished.wait();
  });
  std::vector<Connection> conns;
  conns.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    ServerEnd end = ServerEnd::Handshake(server_ctx.get(), listener.Accept(), ServerTls::kKtls);
    if (!end.tx_in_kernel() || !end.rx_in_kernel()) {
      throw BenchError("not both directions in the kernel: " + end.Where());
    }
    conns.push_back(end.TakeConnection());
  }
  int pair[2] = {-1, -1};
  if (through_socket && ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    throw BenchError("socketpair failed");
  }
  UniqueFd send_end(pair[0]), receive_end(pair[1]);
  std::size_t state_bytes = 0;
  const double start = NowSeconds();
  for (Connection& conn : conns) {
    if (through_socket) {
      if (auto sent = SendConnection(send_end.get(), conn); !sent.ok()) {
        throw BenchError("SendConnection: " + sent.error().ToString());
      }
      auto received = ReceiveConnection(receive_end.get());
      if (!received.ok()) throw BenchError("ReceiveConnection: " + received.error().ToString());
      conn = std::move(received).value();
    } else {
      auto exported = conn.Export();
      if (!exported.ok()) throw BenchError("Export: " + exported.error().ToString());
      state_bytes = exported->state().bytes().size();
      auto imported = Connection::Import(exported->fd(), exported->state().bytes());
      if (!imported.ok()) throw BenchError("Import: " + imported.error().ToString());
      exported->release_fd();
      conn = std::move(imported).value();
    }
  }
  const double seconds = NowSeconds() - start;
  // One more export, untimed, for the size (the socket case too).
  auto exported = conns.front().Export();
  if (!exported.ok()) throw BenchError("Export: " + exported.error().ToString());
  state_bytes = exported->state().bytes().size();
  done.set_value();
  clients.Join();
  RunResult result;
  result.values = {static_cast<double>(n) / seconds, static_cast<double>(state_bytes)};
  result.notes = std::to_string(n) + " connections, both directions in the kernel; key updates " +
                 (CachedCapabilities().rekey ? "possible (the traffic secrets travel)"
                                             : "impossible here (no secret travels)");
  return result;
}

}  // namespace

void AddMoves(Report& report, const Options& opts) {
  Comparison rate{"moves.rate", "moves", "Connections moved per second (higher is better)", "rate", "moves/s", true,
                  "export_import", {}};
  Comparison size{"moves.state_bytes", "moves", "Bytes of state a moved connection carries", "size", "bytes", false,
                  "export_import", {}};
  if (!CachedCapabilities().available) {
    for (Comparison* c : {&rate, &size}) {
      c->Add("export_import", "Export + Import").unavailable = "no kernel TLS here";
    }
    report.comparisons.push_back(std::move(rate));
    report.comparisons.push_back(std::move(size));
    return;
  }
  const std::size_t n = opts.handshakes;
  std::vector<Variant> variants = {
      {"export_import", "Export + Import, in-process", [n](bool warmup) { return MoveAll(warmup ? 8 : n, false); }},
      {"unix_socket", "SendConnection + ReceiveConnection, AF_UNIX",
       [n](bool warmup) { return MoveAll(warmup ? 8 : n, true); }},
  };
  RunInterleaved(variants, opts.runs, {&rate, &size});
  report.comparisons.push_back(std::move(rate));
  report.comparisons.push_back(std::move(size));
}

}  // namespace ktls::bench
