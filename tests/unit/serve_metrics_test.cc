// ktls-serve's metrics: the fixed label sets, the mapping of the library's
// fallback reasons onto them, and the text Render makes. (That a real
// Prometheus parser reads it, and that the counts follow real connections,
// is tests/interop/serve_metrics_interop.py's job, in the kernels.)
#include "ktls-serve/metrics.h"

#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

namespace ktls::serve {
namespace {

// SampleValue: the value of the one sample line "name{labels} value", or -1.
long long SampleValue(const std::string& text, const std::string& name_and_labels) {
  std::istringstream lines(text);
  std::string line;
  long long found = -1;
  while (std::getline(lines, line)) {
    if (line.rfind(name_and_labels + " ", 0) == 0) {
      if (found != -1) return -2;  // Twice.
      found = std::stoll(line.substr(name_and_labels.size() + 1));
    }
  }
  return found;
}

// The phrases ClassifyFallback looks for, as the library writes them
// (src/conn/offload.cc), each with the label it must give.
struct Phrase {
  const char* reason;  // A reason as OffloadReport::reason carries it.
  const char* source;  // The part of it that offload.cc spells literally.
  FallbackReason expected;
};
const Phrase kPhrases[] = {
    {"offload is turned off (TxOffload::kOff)", "offload is turned off (TxOffload::kOff)", FallbackReason::kDisabled},
    {"RX offload is turned off", "RX offload is turned off", FallbackReason::kDisabled},
    {"kernel TLS unavailable: the kernel has no \"tls\" upper-layer protocol", "kernel TLS unavailable: ",
     FallbackReason::kNoKernelTls},
    {"protocol TLSv1.1 cannot be offloaded", "protocol ", FallbackReason::kProtocol},
    {"cipher not offloadable: TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "cipher not offloadable: ", FallbackReason::kCipher},
    {"the kernel does not accept TLS 1.3 AES_128_CCM", "the kernel does not accept ", FallbackReason::kCipher},
    {"the kernel does not accept TLS 1.3 AES_128_CCM for RX", "the kernel does not accept ", FallbackReason::kCipher},
    {"RX stays in OpenSSL: this kernel cannot install new RX keys (needs Linux 6.14), so a peer's KeyUpdate would "
     "end the connection (RxOffload::kOn forces RX offload)",
     "this kernel cannot install new RX keys", FallbackReason::kNoRekey},
    {"setsockopt(TLS_TX): No such file or directory", "setsockopt(TLS_TX): ", FallbackReason::kKernelRefused},
    {"setsockopt(TCP_ULP, \"tls\"): Operation not permitted", "setsockopt(TCP_ULP, ", FallbackReason::kKernelRefused},
    {"RX record count unknown", "RX record count unknown", FallbackReason::kOther},
    {"OpenSSL has unsent data buffered", "OpenSSL has unsent data buffered", FallbackReason::kOther},
};

TEST(ServeMetrics, ClassifiesEachFallbackReasonTheLibraryGives) {
  for (const Phrase& phrase : kPhrases) {
    EXPECT_EQ(FallbackReasonName(ClassifyFallback(phrase.reason)), FallbackReasonName(phrase.expected))
        << phrase.reason;
  }
  // The first clause decides: TX's reason, not the RX reason added after it.
  EXPECT_EQ(ClassifyFallback("cipher not offloadable: X; RX offload is turned off"), FallbackReason::kCipher);
  EXPECT_EQ(ClassifyFallback(""), FallbackReason::kOther);
}

// The classifier reads the library's text: if offload.cc stops saying one
// of these phrases, this fails, rather than the metric quietly saying
// "other".
TEST(ServeMetrics, TheLibraryStillSaysEveryPhraseTheClassifierReads) {
  std::ifstream file(std::string(KTLS_SOURCE_DIR) + "/src/conn/offload.cc");
  ASSERT_TRUE(file) << "cannot read src/conn/offload.cc";
  std::stringstream text;
  text << file.rdbuf();
  for (const Phrase& phrase : kPhrases) {
    EXPECT_NE(text.str().find(phrase.source), std::string::npos) << "offload.cc no longer says: " << phrase.source;
  }
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
  metrics.Fallback(OffloadReport{Offload::kKernel, Offload::kUser, "RX offload is turned off"});
  metrics.Fallback(OffloadReport{Offload::kUser, Offload::kUser, "cipher not offloadable: TLS_X"});
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

TEST(ServeMetrics, WithoutTlsStatTheFamilyHasNoSamples) {
  Metrics metrics;
  const std::string text =
      metrics.Render(Error{ErrorCategory::kUnsupported, 0, "no /proc/net/tls_stat", -1});
  EXPECT_NE(text.find("# TYPE ktls_kernel_tls_stat gauge"), std::string::npos);
  EXPECT_EQ(text.find("ktls_kernel_tls_stat{"), std::string::npos) << text;
}

}  // namespace
}  // namespace ktls::serve
