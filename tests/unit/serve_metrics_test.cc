// ktls-serve's metrics: the fixed label sets, the mapping of the library's
// fallback reasons onto them, and the text Render makes; and the key
// holder's sum of --privsep workers' counts (common/shared_metrics.h) over
// a worker that died and was started again. (The regions themselves:
// shared_metrics_test.cc.) (That a real Prometheus parser
// reads it, and that the counts follow real connections and workers, is
// tests/interop/serve_metrics_interop.py's and serve_privsep_interop.py's
// job, in the kernels.)
#include "ktls-serve/metrics.h"
#include "common/shared_metrics.h"
#include "tests/support/prometheus_text.h"

#include <fcntl.h>
#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

namespace ktls::serve {
namespace {

using testing::SampleValue;

TEST(ServeMetrics, LabelsEveryFallbackReasonButNone) {
  const std::string text = Metrics().Render(KernelTlsStats{});
  for (std::size_t i = 1; i < kNumFallbackReasons; ++i) {
    const std::string reason = FallbackReasonName(static_cast<FallbackReason>(i));
    for (const char* direction : {"tx", "rx"}) {
      EXPECT_EQ(SampleValue(text, std::string("ktls_offload_fallbacks_total{direction=\"") + direction +
                                      "\",reason=\"" + reason + "\"}"),
                0)
          << reason;
    }
  }
  EXPECT_EQ(text.find("reason=\"none\""), std::string::npos) << "a direction that fell back has a reason";
}

TEST(ServeMetrics, RendersEveryFamilyWithHelpTypeAndEveryLabel) {
  Metrics metrics;
  const std::string text = metrics.Render(KernelTlsStats{});
  for (const char* family : {"ktls_connections_total counter", "ktls_open_connections gauge",
                             "ktls_handshake_failures_total counter", "ktls_offload_fallbacks_total counter",
                             "ktls_requests_total counter", "ktls_response_bytes_total counter",
                             "ktls_key_updates_total counter", "ktls_kernel_tls_stat gauge"}) {
    const std::string name = std::string(family).substr(0, std::string(family).find(' '));
    EXPECT_NE(text.find("\n# TYPE " + std::string(family) + "\n"), std::string::npos) << family << "\n" << text;
    EXPECT_NE(text.find("# HELP " + name + " "), std::string::npos) << family;
  }
  EXPECT_EQ(SampleValue(text, "ktls_connections_total{tx=\"kernel\",rx=\"user\"}"), 0);
  EXPECT_EQ(SampleValue(text, "ktls_open_connections"), 0);
  for (std::string_view reason : kHandshakeFailureReasons) {
    EXPECT_EQ(SampleValue(text, "ktls_handshake_failures_total{reason=\"" + std::string(reason) + "\"}"), 0);
  }
  EXPECT_EQ(SampleValue(text, "ktls_offload_fallbacks_total{direction=\"rx\",reason=\"no_rekey\"}"), 0);
  EXPECT_EQ(SampleValue(text, "ktls_requests_total{code=\"other\"}"), 0);
  // Every sample line is "name{labels} value" or "name value", nothing else.
  const std::regex sample(R"(^[a-z_]+(\{[a-z_]+="[A-Za-z0-9_]+"(,[a-z_]+="[A-Za-z0-9_]+")*\})? [0-9]+$)");
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("# ", 0) == 0) continue;
    EXPECT_TRUE(std::regex_match(line, sample)) << line;
  }
}

TEST(ServeMetrics, CountsWhatHappened) {
  Metrics metrics;
  metrics.Handshaken(Offload::kKernel, Offload::kKernel);
  metrics.Handshaken(Offload::kKernel, Offload::kUser);
  metrics.Handshaken(Offload::kKernel, Offload::kUser);
  metrics.Closed();
  metrics.HandshakeFailed(kHandshakeTimeout);
  metrics.HandshakeFailed(HandshakeFailureIndex(ErrorCategory::kAlert));
  metrics.HandshakeFailed(HandshakeFailureIndex(ErrorCategory::kAlert));
  metrics.Fallback(OffloadReport{Offload::kKernel, Offload::kUser, "RX offload is turned off", FallbackReason::kNone,
                                 FallbackReason::kDisabled});
  metrics.Fallback(OffloadReport{Offload::kUser, Offload::kUser, "cipher not offloadable: TLS_X",
                                 FallbackReason::kCipher, FallbackReason::kCipher});
  metrics.Request(200);
  metrics.Request(200);
  metrics.Request(404);
  metrics.Request(418);
  metrics.ResponseBytes(ResponsePath::kSendfile, 1 << 20);
  metrics.ResponseBytes(ResponsePath::kWrite, 150);
  metrics.ResponseBytes(ResponsePath::kWrite, 50);
  metrics.KeyUpdates(2, 0);
  metrics.KeyUpdates(0, 3);
  KernelTlsStats stats;
  stats.counters = {{"TlsCurrTxSw", 2}, {"TlsTxSw", 17}, {"bad name\"", 1}};
  const std::string text = metrics.Render(stats);
  EXPECT_EQ(SampleValue(text, "ktls_connections_total{tx=\"kernel\",rx=\"kernel\"}"), 1);
  EXPECT_EQ(SampleValue(text, "ktls_connections_total{tx=\"kernel\",rx=\"user\"}"), 2);
  EXPECT_EQ(SampleValue(text, "ktls_connections_total{tx=\"user\",rx=\"user\"}"), 0);
  EXPECT_EQ(SampleValue(text, "ktls_open_connections"), 2);
  EXPECT_EQ(SampleValue(text, "ktls_handshake_failures_total{reason=\"timeout\"}"), 1);
  EXPECT_EQ(SampleValue(text, "ktls_handshake_failures_total{reason=\"alert\"}"), 2);
  EXPECT_EQ(SampleValue(text, "ktls_handshake_failures_total{reason=\"protocol\"}"), 0);
  EXPECT_EQ(SampleValue(text, "ktls_offload_fallbacks_total{direction=\"rx\",reason=\"disabled\"}"), 1);
  EXPECT_EQ(SampleValue(text, "ktls_offload_fallbacks_total{direction=\"tx\",reason=\"disabled\"}"), 0);
  EXPECT_EQ(SampleValue(text, "ktls_offload_fallbacks_total{direction=\"tx\",reason=\"cipher\"}"), 1);
  EXPECT_EQ(SampleValue(text, "ktls_offload_fallbacks_total{direction=\"rx\",reason=\"cipher\"}"), 1);
  EXPECT_EQ(SampleValue(text, "ktls_requests_total{code=\"200\"}"), 2);
  EXPECT_EQ(SampleValue(text, "ktls_requests_total{code=\"404\"}"), 1);
  EXPECT_EQ(SampleValue(text, "ktls_requests_total{code=\"other\"}"), 1);
  EXPECT_EQ(SampleValue(text, "ktls_response_bytes_total{path=\"sendfile\"}"), 1 << 20);
  EXPECT_EQ(SampleValue(text, "ktls_response_bytes_total{path=\"write\"}"), 200);
  EXPECT_EQ(SampleValue(text, "ktls_key_updates_total{direction=\"sent\"}"), 2);
  EXPECT_EQ(SampleValue(text, "ktls_key_updates_total{direction=\"received\"}"), 3);
  EXPECT_EQ(SampleValue(text, "ktls_kernel_tls_stat{counter=\"TlsCurrTxSw\"}"), 2);
  EXPECT_EQ(SampleValue(text, "ktls_kernel_tls_stat{counter=\"TlsTxSw\"}"), 17);
  EXPECT_EQ(text.find("bad name"), std::string::npos) << "a name that is no identifier must not reach a label";
}

TEST(ServeMetrics, AdoptedCountsOpenButNotAConnection) {
  Metrics metrics;
  metrics.Adopted();
  metrics.Adopted();
  metrics.Closed();
  const std::string text = metrics.Render(KernelTlsStats{});
  EXPECT_EQ(SampleValue(text, "ktls_open_connections"), 1);
  EXPECT_EQ(SampleValue(text, "ktls_connections_total{tx=\"kernel\",rx=\"kernel\"}"), 0);
}

TEST(ServeMetrics, AddSumsEveryCountAndOpenOnlyWhenAsked) {
  Metrics from;
  from.Handshaken(Offload::kKernel, Offload::kKernel);
  from.Request(200);
  from.ResponseBytes(ResponsePath::kSendfile, 100);
  from.KeyUpdates(1, 2);
  from.HandshakeFailed(kHandshakeTimeout);
  Metrics with_open, without_open;
  with_open.Add(from, true);
  with_open.Add(from, true);
  without_open.Add(from, false);
  const std::string text = with_open.Render(KernelTlsStats{});
  EXPECT_EQ(SampleValue(text, "ktls_connections_total{tx=\"kernel\",rx=\"kernel\"}"), 2);
  EXPECT_EQ(SampleValue(text, "ktls_open_connections"), 2);
  EXPECT_EQ(SampleValue(text, "ktls_requests_total{code=\"200\"}"), 2);
  EXPECT_EQ(SampleValue(text, "ktls_response_bytes_total{path=\"sendfile\"}"), 200);
  EXPECT_EQ(SampleValue(text, "ktls_key_updates_total{direction=\"received\"}"), 4);
  EXPECT_EQ(SampleValue(text, "ktls_handshake_failures_total{reason=\"timeout\"}"), 2);
  const std::string text_without = without_open.Render(KernelTlsStats{});
  EXPECT_EQ(SampleValue(text_without, "ktls_connections_total{tx=\"kernel\",rx=\"kernel\"}"), 1);
  EXPECT_EQ(SampleValue(text_without, "ktls_open_connections"), 0);
}

TEST(ServeMetrics, WithoutTlsStatTheFamilyHasNoSamples) {
  Metrics metrics;
  const std::string text =
      metrics.Render(Error{ErrorCategory::kUnsupported, 0, "no /proc/net/tls_stat", -1});
  EXPECT_NE(text.find("# TYPE ktls_kernel_tls_stat gauge"), std::string::npos);
  EXPECT_EQ(text.find("ktls_kernel_tls_stat{"), std::string::npos) << text;
}

constexpr const char* kKernelKernel = "ktls_connections_total{tx=\"kernel\",rx=\"kernel\"}";
constexpr const char* kOk = "ktls_requests_total{code=\"200\"}";
constexpr const char* kOpen = "ktls_open_connections";

std::string Render(tools::PrivsepMetrics<Metrics>& sum) {
  Metrics total;
  sum.Sum(total);
  return total.Render(KernelTlsStats{});
}

TEST(ServeMetrics, ThePrivsepSumKeepsADeadWorkersCountsButNotItsOpenConnections) {
  Metrics own;
  own.Handshaken(Offload::kKernel, Offload::kKernel);
  own.Handshaken(Offload::kKernel, Offload::kKernel);
  own.Closed();  // Moved to a worker.
  own.Closed();
  tools::PrivsepMetrics<Metrics> sum(own, "test-metrics");
  std::string error;
  ASSERT_TRUE(sum.Create(2, error)) << error;
  using Region = tools::MetricsRegion<Metrics>;
  std::optional<Region> workers[2];
  for (std::size_t slot = 0; slot < 2; ++slot) {
    const int fd = sum.WorkerStarting(slot, false);
    ASSERT_GE(fd, 0);
    workers[slot] = Region::Map(::fcntl(fd, F_DUPFD_CLOEXEC, 0), error);
    ASSERT_TRUE(workers[slot]) << error;
    workers[slot]->metrics().Adopted();
    workers[slot]->metrics().Request(200);
    workers[slot]->metrics().Request(200);
  }
  std::string text = Render(sum);
  EXPECT_EQ(SampleValue(text, kKernelKernel), 2);
  EXPECT_EQ(SampleValue(text, kOpen), 2);
  EXPECT_EQ(SampleValue(text, kOk), 4);

  // Slot 0's worker died holding its connection; a new one starts there.
  const int fd = sum.WorkerStarting(0, true);
  workers[0] = Region::Map(::fcntl(fd, F_DUPFD_CLOEXEC, 0), error);
  ASSERT_TRUE(workers[0]) << error;
  text = Render(sum);
  EXPECT_EQ(SampleValue(text, kKernelKernel), 2);
  EXPECT_EQ(SampleValue(text, kOpen), 1);
  EXPECT_EQ(SampleValue(text, kOk), 4) << "a dead worker's counts are kept";
  EXPECT_EQ(SampleValue(workers[0]->metrics().Render(KernelTlsStats{}), kOk), 0) << "the new worker starts at 0";
  workers[0]->metrics().Request(200);
  EXPECT_EQ(SampleValue(Render(sum), kOk), 5);
  EXPECT_EQ(sum.WorkerStarting(2, false), -1) << "no such slot";
}

}  // namespace
}  // namespace ktls::serve
