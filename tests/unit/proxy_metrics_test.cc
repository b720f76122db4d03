// ktls-proxy's metrics: the end= words as labels, and with --privsep the
// counts of one connection split between the key holder (its accept,
// handshake and move) and a worker (its relay and end), summed as the key
// holder's /metrics sums them (common/shared_metrics.h): each connection
// counted once, the open gauge right in both processes and after a worker
// died. (That they follow real connections through real workers is
// tests/interop/proxy_privsep_interop.py's job, in the kernels.)
#include "ktls-proxy/metrics.h"

#include <fcntl.h>
#include <gtest/gtest.h>

#include <optional>
#include <string>

#include "common/shared_metrics.h"
#include "tests/support/prometheus_text.h"

namespace ktls::proxy {
namespace {

using testing::SampleValue;
using Region = tools::MetricsRegion<ProxyMetrics>;

constexpr const char* kOpen = "ktls_proxy_connections_open";
constexpr const char* kKernelKernel = "ktls_proxy_handshakes_total{tx=\"kernel\",rx=\"kernel\"}";
constexpr const char* kClientCloseNotify = "ktls_proxy_connections_total{end=\"client_close_notify\"}";
constexpr const char* kHandshakeTimeout = "ktls_proxy_connections_total{end=\"handshake_timeout\"}";
constexpr const char* kUpSpliced = "ktls_proxy_bytes_total{direction=\"up\",path=\"spliced\"}";
constexpr const char* kDownCopied = "ktls_proxy_bytes_total{direction=\"down\",path=\"copied\"}";

std::string End(const std::string& label) { return "ktls_proxy_connections_total{end=\"" + label + "\"}"; }

TEST(ProxyMetrics, EndWordsAreLabelledUpToTheirColon) {
  ProxyMetrics metrics;
  for (const char* end : {"alert:unknown_ca", "cannot_move", "not_moved", "no_such_end"}) {
    metrics.Opened();
    metrics.Closed(end, 0, 0, 0, 0);
  }
  const std::string text = metrics.Render();
  EXPECT_EQ(SampleValue(text, End("alert")), 1) << text;
  EXPECT_EQ(SampleValue(text, End("cannot_move")), 1) << text;
  EXPECT_EQ(SampleValue(text, End("not_moved")), 1) << text;
  EXPECT_EQ(SampleValue(text, End("other")), 1) << text;
  EXPECT_EQ(SampleValue(text, kOpen), 0) << text;
}

// KeyHolderMoves: what the key holder counts of a connection it moved.
void KeyHolderMoves(ProxyMetrics& key_holder) {
  key_holder.Opened();
  key_holder.Handshaken(Offload::kKernel, Offload::kKernel);
  key_holder.Moved();
}

TEST(ProxyMetrics, APrivsepConnectionIsCountedOnceAcrossTheProcesses) {
  ProxyMetrics key_holder;
  tools::PrivsepMetrics<ProxyMetrics> sum(key_holder, "test-proxy-metrics");
  std::string error;
  ASSERT_TRUE(sum.Create(2, error)) << error;
  std::optional<Region> workers[2];
  for (std::size_t slot = 0; slot < 2; ++slot) {
    workers[slot] = Region::Map(::fcntl(sum.WorkerStarting(slot, false), F_DUPFD_CLOEXEC, 0), error);
    ASSERT_TRUE(workers[slot]) << error;
  }
  const auto render = [&sum] {
    ProxyMetrics total;
    sum.Sum(total);
    return total.Render();
  };

  // One moved to each worker, and open there; one timed out in the
  // key holder's handshake.
  for (auto& worker : workers) {
    KeyHolderMoves(key_holder);
    worker->metrics().Opened();
  }
  key_holder.Opened();
  key_holder.Closed("handshake_timeout", 0, 0, 0, 0);
  EXPECT_EQ(SampleValue(key_holder.Render(), kOpen), 0) << "the key holder holds none";
  std::string text = render();
  EXPECT_EQ(SampleValue(text, kOpen), 2) << text;
  EXPECT_EQ(SampleValue(text, kKernelKernel), 2) << text;
  EXPECT_EQ(SampleValue(text, kHandshakeTimeout), 1) << text;

  workers[1]->metrics().Closed("client_close_notify", 100, 0, 200, 7);
  text = render();
  EXPECT_EQ(SampleValue(text, kOpen), 1) << text;
  EXPECT_EQ(SampleValue(text, kClientCloseNotify), 1) << text;
  EXPECT_EQ(SampleValue(text, kUpSpliced), 100) << text;
  EXPECT_EQ(SampleValue(text, kDownCopied), 7) << text;
  EXPECT_EQ(SampleValue(text, kKernelKernel), 2) << "the worker counts no handshake";

  // Worker 0 died with its connection: no longer open, nothing else lost;
  // its successor counts on from zero.
  workers[0] = Region::Map(::fcntl(sum.WorkerStarting(0, true), F_DUPFD_CLOEXEC, 0), error);
  ASSERT_TRUE(workers[0]) << error;
  text = render();
  EXPECT_EQ(SampleValue(text, kOpen), 0) << text;
  EXPECT_EQ(SampleValue(text, kKernelKernel), 2) << text;
  EXPECT_EQ(SampleValue(text, kClientCloseNotify), 1) << text;
  KeyHolderMoves(key_holder);
  workers[0]->metrics().Opened();
  workers[0]->metrics().Closed("client_close_notify", 5, 0, 5, 0);
  text = render();
  EXPECT_EQ(SampleValue(text, kOpen), 0) << text;
  EXPECT_EQ(SampleValue(text, kClientCloseNotify), 2) << text;
  EXPECT_EQ(SampleValue(text, kUpSpliced), 105) << text;
  EXPECT_EQ(SampleValue(text, kKernelKernel), 3) << text;
}

}  // namespace
}  // namespace ktls::proxy
