// tests/kernel/kernel_state_kernel_test.cc: what the kernel says, through
// ktls, against what the kernel counts.
//
//  a. ReadKernelTlsStats agrees with /proc/net/tls_stat read another way,
//     knows every counter this kernel lists, and its counters follow one
//     connection offloaded at both ends (TlsCurr* up while it is open and
//     back down after, TlsTxSw/TlsRxSw up for good).
//  b. Connection::kernel_state() on both ends of a connection, for each
//     place the server's directions can end up: each direction's in_kernel
//     and sock_diag's TLS_CONF add up to exactly the tls_stat deltas; the
//     record sequence numbers the kernel reports move by exactly the records
//     written, and each end's TX number equals the other end's RX number;
//     where the kernel can rekey, a KeyUpdate is counted per direction and
//     in TlsTxRekeyOk/TlsRxRekeyOk, and restarts the TX sequence number.
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "ktls/client.h"
#include "ktls/connection.h"
#include "ktls/kernel_state.h"
#include "ktls/kernel_tls_stats.h"
#include "ktls/offload.h"
#include "ktls/probe.h"
#include "ktls/server.h"
#include "tests/support/kernel_env.h"
#include "tests/support/sockets.h"
#include "tests/support/tls_peers.h"

namespace ktls::testing {
namespace {

// Stats: ReadKernelTlsStats now, after the process-wide probe (whose own
// sockets count too) has run; a failed read fails the test.
KernelTlsStats Stats() {
  (void)CachedCapabilities();
  auto stats = ReadKernelTlsStats();
  EXPECT_TRUE(stats.ok()) << stats.error().ToString();
  return stats.ok() ? *stats : KernelTlsStats{};
}

long long Delta(const KernelTlsStats& before, const KernelTlsStats& after, const char* name) {
  const auto b = before.Get(name);
  const auto a = after.Get(name);
  if (!b || !a) return -1000;  // Missing: never equal to an expected delta.
  return static_cast<long long>(*a) - static_cast<long long>(*b);
}

// KernelCipherType: TLS_CIPHER_* as sock_diag reports it.
std::uint16_t KernelCipherType(Cipher cipher) {
  switch (cipher) {
    case Cipher::kAes128Gcm: return 51;
    case Cipher::kAes256Gcm: return 52;
    case Cipher::kAes128Ccm: return 53;
    case Cipher::kChaCha20Poly1305: return 54;
  }
  return 0;
}

// --- a. The counters themselves ------------------------------------------------

TEST(KernelTlsStatsKernelTest, AgreesWithProcAndFollowsOneConnection) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const KernelTlsStats before = Stats();
  const std::map<std::string, long long> independent = ReadTlsStat();  // tests/support's own parser.
  ASSERT_EQ(before.counters.size(), independent.size());
  for (const KernelTlsCounter& counter : before.counters) {
    ASSERT_TRUE(independent.count(counter.name)) << counter.name;
    EXPECT_EQ(static_cast<long long>(counter.value), independent.at(counter.name)) << counter.name;
    EXPECT_NE(FindKernelTlsCounter(counter.name), nullptr) << "a counter ktls cannot explain: " << counter.name;
  }
  // The rekey counters came with rekey (Linux 6.14).
  EXPECT_EQ(before.Get("TlsTxRekeyOk").has_value(), CachedCapabilities().rekey);
  EXPECT_EQ(before.Get("TlsRxRekeyReceived").has_value(), CachedCapabilities().rekey);

  TestServer server(ServerFor(), 1, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  std::optional<KernelTlsStats> open;
  {
    auto conn = ConnectTo(server.port(), ClientFor());
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    ASSERT_TRUE(server.WaitHandshaken(1));
    ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");
    open = Stats();
    std::vector<std::uint8_t> echoed;
    EXPECT_EQ(EchoThrough(*conn, RandomBytes(1000), Pace::kLockstep, echoed), "");
    server.Join();
  }
  const KernelTlsStats after = Stats();
  for (const char* name : {"TlsCurrTxSw", "TlsCurrRxSw", "TlsTxSw", "TlsRxSw"}) {
    EXPECT_EQ(Delta(before, *open, name), 2) << name << " with one connection open, both ends in the kernel";
  }
  EXPECT_EQ(Delta(before, after, "TlsCurrTxSw"), 0) << "closed: no TX session left";
  EXPECT_EQ(Delta(before, after, "TlsCurrRxSw"), 0) << "closed: no RX session left";
  EXPECT_EQ(Delta(before, after, "TlsTxSw"), 2);
  EXPECT_EQ(Delta(before, after, "TlsRxSw"), 2);
  EXPECT_EQ(Delta(before, after, "TlsDecryptError"), 0);
}

// --- b. Connection::kernel_state() --------------------------------------------

struct ServerPlace {
  const char* name;
  TxOffload tx;
  RxOffload rx;
  Offload want_tx;
  Offload want_rx;
};

void PrintTo(const ServerPlace& place, std::ostream* out) { *out << place.name; }

class KernelStateKernelTest : public ::testing::TestWithParam<ServerPlace> {};

// ExpectDirection: one direction's state against where ktls put it. The
// ULP's view: software where the kernel has the key, "base" where the ULP
// is attached (TX went to the kernel) without one, nothing without the ULP.
void ExpectDirection(const KernelState& state, const KernelDirectionState& direction, KernelTlsConf conf,
                     Offload want, const char* what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(direction.in_kernel, want == Offload::kKernel);
  EXPECT_EQ(direction.record_seq.has_value(), want == Offload::kKernel)
      << "the kernel reports a sequence number exactly for a direction it holds";
  const KernelTlsConf expected = want == Offload::kKernel ? KernelTlsConf::kSoftware
                                 : state.tx.in_kernel     ? KernelTlsConf::kBase
                                                          : KernelTlsConf::kUnknown;
  EXPECT_EQ(KernelTlsConfName(conf), KernelTlsConfName(expected));
}

TEST_P(KernelStateKernelTest, MatchesTlsStatAndCountsRecords) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const ServerPlace place = GetParam();
  const bool rekey = CachedCapabilities().rekey;
  constexpr int kClientRecords = 5;
  constexpr int kServerRecords = 3;
  const KernelTlsStats before = Stats();

  ServerConfig config = ServerFor();
  config.offload.tx = place.tx;
  config.offload.rx = place.rx;
  std::mutex mu;
  std::optional<KernelState> server_initial, server_final;
  TestServer server(config, 1, [&](Connection& conn, ServerEnd& end) {
    {
      std::lock_guard lock(mu);
      server_initial = conn.kernel_state();
    }
    std::vector<std::uint8_t> got;
    end.error = ReadExactly(conn, kClientRecords * 100, got);
    for (int i = 0; i < kServerRecords && end.error.empty(); ++i) end.error = WriteAll(conn, RandomBytes(10));
    {
      std::lock_guard lock(mu);
      server_final = conn.kernel_state();
    }
    if (end.error.empty()) Echo(conn, end);  // Until the client's close_notify.
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  ASSERT_TRUE(server.WaitHandshaken(1));

  const KernelState initial = conn->kernel_state();
  ASSERT_TRUE(initial.tx.in_kernel && initial.rx.in_kernel) << "the client offloads both directions";
  ASSERT_TRUE(initial.tx.record_seq && initial.rx.record_seq);
  ASSERT_TRUE(initial.ulp.reported) << initial.ulp.why_not;
  EXPECT_EQ(initial.ulp.ulp, "tls");
  EXPECT_EQ(initial.ulp.version, 0x0304);
  ASSERT_TRUE(initial.cipher.has_value());
  EXPECT_EQ(initial.ulp.cipher_type, KernelCipherType(*initial.cipher));
  EXPECT_FALSE(initial.cipher_suite.empty());

  if (rekey) {
    ASSERT_TRUE(conn->UpdateKeys(false).ok());
    const KernelState updated = conn->kernel_state();
    EXPECT_EQ(updated.tx.key_updates, 1u);
    EXPECT_EQ(updated.tx.record_seq, 0u) << "a new TX key starts at record 0";
  } else {
    EXPECT_EQ(conn->UpdateKeys(false).error().category, ErrorCategory::kUnsupported);
  }
  const std::uint64_t tx_start = rekey ? 0 : *initial.tx.record_seq;
  for (int i = 0; i < kClientRecords; ++i) ASSERT_EQ(WriteAll(*conn, RandomBytes(100)), "");
  std::vector<std::uint8_t> got;
  ASSERT_EQ(ReadExactly(*conn, kServerRecords * 10, got), "");
  const KernelState client = conn->kernel_state();
  const KernelTlsStats open = Stats();

  // Records: one per write, exactly.
  EXPECT_EQ(client.tx.record_seq, tx_start + kClientRecords);
  ASSERT_EQ(ShutdownText(*conn), "");
  std::vector<std::uint8_t> rest;
  EXPECT_EQ(ReadToEnd(*conn, rest), "");
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, place.want_tx, place.want_rx, "the server");
  ASSERT_TRUE(server_initial && server_final);
  const KernelState& s = *server_final;
  ExpectDirection(s, s.tx, s.ulp.tx_conf, place.want_tx, "server TX");
  ExpectDirection(s, s.rx, s.ulp.rx_conf, place.want_rx, "server RX");
  ExpectDirection(client, client.tx, client.ulp.tx_conf, Offload::kKernel, "client TX");
  ExpectDirection(client, client.rx, client.ulp.rx_conf, Offload::kKernel, "client RX");
  if (place.want_tx == Offload::kUser) {
    EXPECT_FALSE(s.ulp.reported) << "no ULP on a socket that stayed in OpenSSL";
  }
  // The two kernels agree: what one end sent under the current key is what
  // the other received under it (tickets sent before offload included).
  if (s.rx.in_kernel) EXPECT_EQ(s.rx.record_seq, client.tx.record_seq);
  if (s.tx.in_kernel) EXPECT_EQ(s.tx.record_seq, client.rx.record_seq);
  if (s.tx.in_kernel) EXPECT_EQ(*s.tx.record_seq, *server_initial->tx.record_seq + kServerRecords);
  EXPECT_EQ(s.rx.key_updates, rekey ? 1u : 0u) << "the server saw the client's KeyUpdate, wherever its RX is";

  // The per-connection view adds up to the kernel's counters, both ends.
  const auto count = [](bool a, bool b) { return static_cast<long long>(a) + static_cast<long long>(b); };
  const auto software = [](KernelTlsConf conf) { return conf == KernelTlsConf::kSoftware; };
  EXPECT_EQ(Delta(before, open, "TlsCurrTxSw"), count(client.tx.in_kernel, s.tx.in_kernel));
  EXPECT_EQ(Delta(before, open, "TlsCurrRxSw"), count(client.rx.in_kernel, s.rx.in_kernel));
  EXPECT_EQ(Delta(before, open, "TlsCurrTxSw"), count(software(client.ulp.tx_conf), software(s.ulp.tx_conf)));
  EXPECT_EQ(Delta(before, open, "TlsCurrRxSw"), count(software(client.ulp.rx_conf), software(s.ulp.rx_conf)));
  const KernelTlsStats after = Stats();
  EXPECT_EQ(Delta(before, after, "TlsTxSw"), count(client.tx.in_kernel, s.tx.in_kernel));
  EXPECT_EQ(Delta(before, after, "TlsRxSw"), count(client.rx.in_kernel, s.rx.in_kernel));
  if (rekey) {
    EXPECT_EQ(Delta(before, after, "TlsTxRekeyOk"), static_cast<long long>(client.tx.key_updates));
    EXPECT_EQ(Delta(before, after, "TlsRxRekeyOk"), s.rx.in_kernel ? static_cast<long long>(s.rx.key_updates) : 0);
    EXPECT_EQ(Delta(before, after, "TlsRxRekeyReceived"), s.rx.in_kernel ? 1 : 0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    ServerPlaces, KernelStateKernelTest,
    ::testing::Values(ServerPlace{"BothInKernel", TxOffload::kOn, RxOffload::kOn, Offload::kKernel, Offload::kKernel},
                      ServerPlace{"RxInOpenSsl", TxOffload::kOn, RxOffload::kOff, Offload::kKernel, Offload::kUser},
                      ServerPlace{"BothInOpenSsl", TxOffload::kOff, RxOffload::kOff, Offload::kUser, Offload::kUser}),
    [](const ::testing::TestParamInfo<ServerPlace>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace ktls::testing
