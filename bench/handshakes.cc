// bench/handshakes.cc: handshakes per second, one connection after the
// other, the server's kinds taking turns (ServerTurns), each a whole
// connection: TCP connect and accept, the TLS 1.3 handshake (ECDHE X25519,
// ECDSA P-256 certificate, two session tickets, OpenSSL's default suite),
// then for ktls the offload of both directions; the server writes one byte
// and close_notify, the client reads them (and the tickets before them),
// and both close. Resumed handshakes present the ticket of the previous
// connection.
//
// The same server SSL_CTX settings and the same plain OpenSSL client are
// used for every kind. "ktls" is OpenSSL's own handshake with
// PrepareContext/PrepareSsl before it and OffloadSsl after it (offloading
// an existing OpenSSL connection); "ktls_handshake" is ktls running the
// handshake itself (ServerContext::Handshake), as its Listener, event-loop
// and Asio paths do.
#include <cstdio>
#include <iostream>
#include <optional>

#include "cases.h"
#include "runner.h"

namespace ktls::bench {
namespace {

// ServerKind: who runs the server's side of a connection in ServerTurns.
enum class ServerKind : std::uint8_t {
  kOpenSsl,        // OpenSSL alone (SSL_accept on a socket BIO).
  kOffloadSsl,     // The same handshake, ktls::PrepareSsl before and OffloadSsl after.
  kKtlsHandshake,  // ktls runs the handshake (ServerContext::Handshake) and offloads.
};
constexpr std::size_t kKinds = 3;

// ServerTurns: one run of `count` connections per kind, the server taking
// turns, connection i served by kind i % kKinds, so whatever else the
// machine does hits every kind alike (on a busy host, runs of one kind
// after the other differed by more than the 5% measured). The client is
// the same plain OpenSSL for all and, resuming, presents the ticket of the
// previous connection of the same kind (each server context has its own
// ticket keys). A kind's rate is its connections over the time the server
// spent on them, from accept to close; on UML's one CPU that includes the
// client's share.
struct TurnsResult {
  RunResult kinds[kKinds];  // By ServerKind.
};
TurnsResult ServerTurns(SSL_CTX* plain_ctx, SSL_CTX* ktls_ctx, const ServerContext& ktls_context, SSL_CTX* client_ctx,
                        bool resumed, std::size_t count) {
  const auto kind_of = [](std::size_t i) { return static_cast<ServerKind>(i % kKinds); };
  LoopbackListener listener;
  // A resumed run starts with one full handshake per kind, untimed, for the tickets.
  const std::size_t first = resumed ? kKinds : 0;
  const std::size_t total = first + kKinds * count;
  std::size_t num_resumed = 0;
  ClientThread client(listener, [&] {
    UniqueSession sessions[kKinds];
    std::byte byte[16];
    for (std::size_t i = 0; i < total; ++i) {
      UniqueSession& session = sessions[i % kKinds];
      UniqueFd fd = ConnectLoopback(listener.port());
      UniqueSsl ssl = ClientHandshake(client_ctx, fd.get(), resumed ? session.get() : nullptr);
      if (SslRead(ssl.get(), byte) != 1) throw BenchError("expected one byte from the server");
      if (SslRead(ssl.get(), byte) != 0) throw BenchError("expected close_notify from the server");
      if (SSL_session_reused(ssl.get()) == 1) ++num_resumed;
      if (resumed) session.reset(SSL_get1_session(ssl.get()));
      // The server has closed; we do not answer its close_notify. Marking
      // the SSL shut down keeps OpenSSL from flagging the session as not
      // resumable when it is freed.
      SSL_set_shutdown(ssl.get(), SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    }
  });
  const auto before = TlsStat();
  const std::byte one{1};
  // Where the server's time goes, per kind and phase.
  struct Phases {
    double handshake = 0, offload = 0, finish = 0, close = 0;
    double total() const { return handshake + offload + finish + close; }
  } phases[kKinds];
  for (std::size_t i = 0; i < total; ++i) {
    const ServerKind kind = kind_of(i);
    const double t0 = NowSeconds();
    std::optional<ServerEnd> end;
    switch (kind) {
      case ServerKind::kOpenSsl:
        end.emplace(ServerEnd::Handshake(plain_ctx, listener.Accept(), ServerTls::kOpenSsl));
        break;
      case ServerKind::kOffloadSsl:
        end.emplace(ServerEnd::Handshake(ktls_ctx, listener.Accept(), ServerTls::kKtls));
        break;
      case ServerKind::kKtlsHandshake:
        end.emplace(ServerEnd::Handshake(ktls_context, listener.Accept()));
        break;
    }
    const double t1 = NowSeconds();
    if (kind != ServerKind::kOpenSsl && !(end->tx_in_kernel() && end->rx_in_kernel())) {
      throw BenchError("ktls did not offload both directions: " + end->Where());
    }
    end->WriteAll(std::span(&one, 1));
    end->Shutdown();
    const double t2 = NowSeconds();
    const double offload = end->offload_seconds();
    end.reset();
    const double t3 = NowSeconds();
    if (i < first) continue;
    Phases& p = phases[i % kKinds];
    p.handshake += t1 - t0 - offload;
    p.offload += offload;
    p.finish += t2 - t1;
    p.close += t3 - t2;
  }
  client.Join();

  if (num_resumed != (resumed ? kKinds * count : 0)) {
    throw BenchError(std::to_string(num_resumed) + " of " + std::to_string(total) + " handshakes resumed, expected " +
                     std::to_string(resumed ? kKinds * count : 0));
  }
  const auto after = TlsStat();
  const long long tx = TlsStatDelta(before, after, "TlsTxSw");
  const long long rx = TlsStatDelta(before, after, "TlsRxSw");
  const long long want = static_cast<long long>((kKinds - 1) * (total / kKinds));
  if (!after.empty() && (tx != want || rx != want)) {
    throw BenchError("TlsTxSw +" + std::to_string(tx) + ", TlsRxSw +" + std::to_string(rx) + " for " +
                     std::to_string(want) + " ktls connections");
  }
  const auto us = [count](double seconds) {
    return std::to_string(static_cast<int>(seconds / static_cast<double>(count) * 1e6));
  };
  TurnsResult result;
  for (std::size_t k = 0; k < kKinds; ++k) {
    const ServerKind kind = kind_of(k);
    RunResult& r = result.kinds[k];
    const Phases& p = phases[k];
    r.notes = std::string(kind == ServerKind::kOpenSsl ? "tx=user rx=user" : "tx=kernel rx=kernel") +
              ", the three kinds taking turns, connection by connection; TlsTxSw +" + std::to_string(tx) +
              " TlsRxSw +" + std::to_string(rx) + " per run (the two ktls kinds' turns)";
    r.notes += "; server us per connection: accept+handshake " + us(p.handshake);
    if (kind == ServerKind::kOffloadSsl) r.notes += ", OffloadSsl " + us(p.offload);
    if (kind == ServerKind::kKtlsHandshake) r.notes += " (with the offload)";
    r.notes += ", write+close_notify " + us(p.finish) + ", close " + us(p.close);
    r.values = {p.total() > 0 ? static_cast<double>(count) / p.total() : 0};
  }
  return result;
}

// ClientResumedRun: resumed handshakes per second on the client's side. A
// plain OpenSSL server on its own thread sends its tickets, then answers a
// one-byte request with one byte and close_notify on each connection; the client makes `count` connections one
// after another (after one full handshake, untimed), each resuming with the
// newest ticket of the one before. ktls: the client offloads both
// directions right after SSL_connect, so every ticket arrives through the
// kernel and reaches OpenSSL through ktls's ticket relay; openssl: the
// client reads the tickets itself.
RunResult ClientResumedRun(SSL_CTX* server_ctx, SSL_CTX* client_ctx, bool ktls, std::size_t count) {
  LoopbackListener listener;
  const std::size_t total = count + 1;
  // ClientThread runs any body on its own thread; here it is the server.
  ClientThread server(listener, [&] {
    const std::byte one{1};
    for (std::size_t i = 0; i < total; ++i) {
      ServerEnd end = ServerEnd::Handshake(server_ctx, listener.Accept(), ServerTls::kOpenSsl);
      // Answer a one-byte request: closing before the client offloaded
      // would leave its socket in CLOSE_WAIT, where TCP_ULP is refused.
      std::byte request[1];
      if (end.Read(request) != 1) throw BenchError("expected a one-byte request");
      end.WriteAll(std::span(&one, 1));
      end.Shutdown();
    }
  });
  const auto before = TlsStat();
  UniqueSession session;
  std::size_t num_resumed = 0;
  std::byte byte[16];
  double start = NowSeconds();
  for (std::size_t i = 0; i < total; ++i) {
    if (i == 1) start = NowSeconds();
    UniqueFd fd = ConnectLoopback(listener.port());
    if (!ktls) {
      UniqueSsl ssl = ClientHandshake(client_ctx, fd.get(), session.get());
      SslWriteAll(ssl.get(), std::span(byte, 1));
      if (SslRead(ssl.get(), byte) != 1 || SslRead(ssl.get(), byte) != 0) {
        throw BenchError("expected one byte and close_notify from the server");
      }
      num_resumed += SSL_session_reused(ssl.get()) == 1;
      session.reset(SSL_get1_session(ssl.get()));
      SSL_set_shutdown(ssl.get(), SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
      continue;
    }
    UniqueSession latest;
    Connection conn = KtlsClientHandshake(client_ctx, std::move(fd), session.get(), &latest, ServerEnd::BothWays());
    if (auto sent = conn.Write(std::span(byte, 1)); !sent.ok() || sent->bytes != 1) {
      throw BenchError("the client's request did not go out");
    }
    auto got = conn.Read(byte);
    auto end = got.ok() && got->bytes == 1 ? conn.Read(byte) : got;
    if (!got.ok() || got->bytes != 1 || !end.ok() || !end->end_of_stream) {
      throw BenchError("expected one byte and close_notify from the server");
    }
    // OpenSSL's server sends two tickets after a full handshake, one after
    // a resumed one.
    if (conn.tickets_relayed() == 0 || conn.tickets_dropped() != 0) {
      throw BenchError("the client's tickets were not relayed");
    }
    num_resumed += conn.session().resumed;
    (void)conn.Shutdown();
    conn.Close();
    session = std::move(latest);
  }
  const double elapsed = NowSeconds() - start;
  server.Join();
  if (num_resumed != count) {
    throw BenchError(std::to_string(num_resumed) + " of " + std::to_string(count) + " handshakes resumed");
  }
  const auto after = TlsStat();
  RunResult result;
  const long long tx = TlsStatDelta(before, after, "TlsTxSw");
  const long long rx = TlsStatDelta(before, after, "TlsRxSw");
  if (!after.empty() && (tx != (ktls ? static_cast<long long>(total) : 0) || tx != rx)) {
    throw BenchError("TlsTxSw +" + std::to_string(tx) + ", TlsRxSw +" + std::to_string(rx) + " for " +
                     std::to_string(total) + " client connections");
  }
  result.notes = std::string(ktls ? "client tx=kernel rx=kernel, its tickets relayed" : "client tx=user rx=user") +
                 ", TlsTxSw +" + std::to_string(tx) + " TlsRxSw +" + std::to_string(rx) + " per run";
  result.values = {elapsed > 0 ? static_cast<double>(count) / elapsed : 0};
  return result;
}

}  // namespace

void AddHandshakes(Report& report, const Options& opts) {
  UniqueSslCtx client_ctx = NewClientContext("", /*read_ahead=*/false);
  UniqueSslCtx plain_ctx = NewServerContext("", ServerTls::kOpenSsl);
  UniqueSslCtx ktls_ctx = NewServerContext("", ServerTls::kKtls);
  const std::size_t count = opts.handshakes;
  const auto count_for = [count](bool warmup) { return warmup ? std::max<std::size_t>(count / 4, 1) : count; };

  UniqueSslCtx handshake_ctx = NewServerContext("", ServerTls::kKtls);  // Its own ticket keys.
  const ServerContext ktls_context = ServerEnd::KtlsServerContext(handshake_ctx.get());
  for (const bool resumed : {false, true}) {
    Comparison& comparison = report.comparisons.emplace_back();
    comparison.id = resumed ? "handshakes.resumed" : "handshakes.full";
    comparison.group = "handshakes";
    comparison.title = std::string(resumed ? "Resumed (ticket)" : "Full") + " TLS 1.3 handshakes per second, " +
                       std::to_string(count) + " connections of each kind, taking turns";
    comparison.metric = "rate";
    comparison.unit = "handshakes/s";
    comparison.reference = "openssl";
    comparison.Add("openssl", "handshake, records stay in OpenSSL");
    comparison.Add("ktls", "the same handshake, then ktls offloads TX and RX (OffloadSsl)");
    comparison.Add("ktls_handshake", "ktls runs the handshake (ServerContext::Handshake) and offloads TX and RX");
    // Each run measures all three; each run's ratios are ktls's over
    // OpenSSL's, all under the same load.
    std::vector<double> ratios[kKinds];
    for (int run = 0; run <= opts.runs; ++run) {
      const bool warmup = run == 0;
      const TurnsResult turns =
          ServerTurns(plain_ctx.get(), ktls_ctx.get(), ktls_context, client_ctx.get(), resumed, count_for(warmup));
      for (std::size_t k = 0; k < kKinds; ++k) comparison.cases[k].notes = turns.kinds[k].notes;
      if (warmup) continue;
      const double o = turns.kinds[0].values.front();
      for (std::size_t k = 0; k < kKinds; ++k) {
        comparison.cases[k].samples.push_back(turns.kinds[k].values.front());
        ratios[k].push_back(o > 0 ? turns.kinds[k].values.front() / o : 0);
      }
      std::fprintf(stderr, "  %s run %d/%d openssl %.1f ktls %.1f (ratio %.3f) ktls_handshake %.1f (ratio %.3f)\n",
                   comparison.id.c_str(), run, opts.runs, o, turns.kinds[1].values.front(), ratios[1].back(),
                   turns.kinds[2].values.front(), ratios[2].back());
    }
    for (std::size_t k = 1; k < kKinds; ++k) {
      const Summary spread = Summarize(ratios[k]);
      double mean = 0;
      for (double r : ratios[k]) mean += r / static_cast<double>(ratios[k].size());
      char text[160];
      std::snprintf(text, sizeof(text), "; ratio to OpenSSL per run: mean %.3f, median %.3f, min %.3f, max %.3f",
                    mean, spread.median, spread.min, spread.max);
      comparison.cases[k].notes += text;
    }
    report.PrintComparison(std::cout, comparison);
  }

  // The client's side of resumption: ktls clients keep the tickets that
  // arrive with RX in the kernel.
  UniqueSslCtx resuming_client_ctx = NewResumingClientContext();
  Comparison& comparison = report.comparisons.emplace_back();
  comparison.id = "handshakes.client_resumed";
  comparison.group = "handshakes";
  comparison.title = "Resumed TLS 1.3 handshakes per second on the client, " + std::to_string(count) +
                     " connections one after another, each with the previous one's newest ticket";
  comparison.metric = "rate";
  comparison.unit = "handshakes/s";
  comparison.reference = "openssl";
  std::vector<Variant> variants;
  variants.push_back({"openssl", "client in OpenSSL, reads its tickets itself", [&](bool warmup) {
                        return ClientResumedRun(plain_ctx.get(), client_ctx.get(), false, count_for(warmup));
                      }});
  variants.push_back({"ktls", "client offloads TX and RX; tickets come through the kernel", [&](bool warmup) {
                        return ClientResumedRun(plain_ctx.get(), resuming_client_ctx.get(), true, count_for(warmup));
                      }});
  RunInterleaved(variants, opts.runs, {&comparison});
  report.PrintComparison(std::cout, comparison);
}

}  // namespace ktls::bench
