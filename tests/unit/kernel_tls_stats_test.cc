// ParseKernelTlsStats on /proc/net/tls_stat as Linux 6.1 and 7.2 print it
// (captured from the test kernels), and on text that is not that shape.
#include "ktls/kernel_tls_stats.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <string>

namespace ktls {
namespace {

// net/tls/tls_proc.c pads each name to 32 columns, then a tab.
std::string Line(const std::string& name, unsigned long long value) {
  return name + std::string(32 - name.size(), ' ') + "\t" + std::to_string(value) + "\n";
}

// Linux 6.1 (Debian bookworm's UML kernel) after some traffic.
std::string Linux61Sample() {
  return Line("TlsCurrTxSw", 2) + Line("TlsCurrRxSw", 1) + Line("TlsCurrTxDevice", 0) + Line("TlsCurrRxDevice", 0) +
         Line("TlsTxSw", 17) + Line("TlsRxSw", 9) + Line("TlsTxDevice", 0) + Line("TlsRxDevice", 0) +
         Line("TlsDecryptError", 3) + Line("TlsRxDeviceResync", 0) + Line("TlsDecryptRetry", 0) +
         Line("TlsRxNoPadViolation", 0);
}

// Linux 7.2 (Debian sid's UML kernel): the five rekey counters follow.
std::string Linux72Sample() {
  return Linux61Sample() + Line("TlsRxRekeyOk", 4) + Line("TlsRxRekeyError", 0) + Line("TlsTxRekeyOk", 5) +
         Line("TlsTxRekeyError", 1) + Line("TlsRxRekeyReceived", 6);
}

TEST(KernelTlsStats, ParsesLinux61InTheKernelsOrder) {
  auto stats = ParseKernelTlsStats(Linux61Sample());
  ASSERT_TRUE(stats.ok()) << stats.error().ToString();
  ASSERT_EQ(stats->counters.size(), 12u);
  EXPECT_EQ(stats->counters.front().name, "TlsCurrTxSw");
  EXPECT_EQ(stats->counters.back().name, "TlsRxNoPadViolation");
  EXPECT_EQ(stats->Get("TlsCurrTxSw"), 2u);
  EXPECT_EQ(stats->Get("TlsCurrRxSw"), 1u);
  EXPECT_EQ(stats->Get("TlsTxSw"), 17u);
  EXPECT_EQ(stats->Get("TlsRxSw"), 9u);
  EXPECT_EQ(stats->Get("TlsDecryptError"), 3u);
  EXPECT_EQ(stats->Get("TlsTxRekeyOk"), std::nullopt) << "6.1 has no rekey counters";
}

TEST(KernelTlsStats, ParsesLinux72WithItsRekeyCounters) {
  auto stats = ParseKernelTlsStats(Linux72Sample());
  ASSERT_TRUE(stats.ok()) << stats.error().ToString();
  ASSERT_EQ(stats->counters.size(), 17u);
  EXPECT_EQ(stats->Get("TlsTxSw"), 17u);
  EXPECT_EQ(stats->Get("TlsRxRekeyOk"), 4u);
  EXPECT_EQ(stats->Get("TlsRxRekeyError"), 0u);
  EXPECT_EQ(stats->Get("TlsTxRekeyOk"), 5u);
  EXPECT_EQ(stats->Get("TlsTxRekeyError"), 1u);
  EXPECT_EQ(stats->Get("TlsRxRekeyReceived"), 6u);
  // Every counter 7.2 lists is one ktls can explain, in the same order.
  const auto known = KnownKernelTlsCounters();
  ASSERT_EQ(known.size(), stats->counters.size());
  for (std::size_t i = 0; i < known.size(); ++i) {
    EXPECT_EQ(known[i].name, stats->counters[i].name);
    EXPECT_FALSE(known[i].description.empty());
    EXPECT_EQ(known[i].gauge, known[i].name.starts_with("TlsCurr")) << known[i].name;
  }
}

TEST(KernelTlsStats, KeepsCountersItDoesNotKnow) {
  auto stats = ParseKernelTlsStats(Linux72Sample() + Line("TlsSomethingNew", 42));
  ASSERT_TRUE(stats.ok()) << stats.error().ToString();
  EXPECT_EQ(stats->Get("TlsSomethingNew"), 42u);
  EXPECT_EQ(FindKernelTlsCounter("TlsSomethingNew"), nullptr);
  ASSERT_NE(FindKernelTlsCounter("TlsTxSw"), nullptr);
  EXPECT_FALSE(FindKernelTlsCounter("TlsTxSw")->gauge);
}

TEST(KernelTlsStats, TakesAnyBlanksAndTheFullUnsignedRange) {
  auto stats = ParseKernelTlsStats("TlsTxSw 1\nTlsRxSw\t\t18446744073709551615  \n\n");
  ASSERT_TRUE(stats.ok()) << stats.error().ToString();
  EXPECT_EQ(stats->Get("TlsTxSw"), 1u);
  EXPECT_EQ(stats->Get("TlsRxSw"), 18446744073709551615u);
  auto empty = ParseKernelTlsStats("");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->counters.empty());
}

TEST(KernelTlsStats, RefusesLinesOfAnotherShapeNamingTheLine) {
  for (const char* text : {"TlsTxSw\n", "TlsTxSw 12x\n", "TlsTxSw -1\n", "TlsTxSw 18446744073709551616\n",
                           "  5\n", "TlsTxSw 1\nTlsTxSw 2\n", "TlsTxSw 1 2\n"}) {
    auto stats = ParseKernelTlsStats(text);
    ASSERT_FALSE(stats.ok()) << text;
    EXPECT_EQ(stats.error().category, ErrorCategory::kProtocol) << text;
    EXPECT_NE(stats.error().detail.find("tls_stat line "), std::string::npos) << stats.error().detail;
  }
  auto second = ParseKernelTlsStats("TlsTxSw 1\nTlsRxSw oops\n");
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.error().detail.find("line 2"), std::string::npos) << second.error().detail;
}

// On the host: readable exactly where the kernel has kTLS (and the library
// has kernel TLS: without it, tests/unit/no_kernel_tls_test.cc).
TEST(KernelTlsStats, ReadAgreesWithProcfs) {
  struct stat st {};
  auto stats = ReadKernelTlsStats();
  if (!KTLS_KERNEL_TLS) {
    ASSERT_FALSE(stats.ok());
    EXPECT_EQ(stats.error().category, ErrorCategory::kUnsupported);
  } else if (::stat("/proc/net/tls_stat", &st) == 0) {
    ASSERT_TRUE(stats.ok()) << stats.error().ToString();
    EXPECT_TRUE(stats->Get("TlsTxSw").has_value());
  } else {
    ASSERT_FALSE(stats.ok());
    EXPECT_EQ(stats.error().category, ErrorCategory::kUnsupported);
    EXPECT_NE(stats.error().detail.find("tls module"), std::string::npos) << stats.error().detail;
  }
}

}  // namespace
}  // namespace ktls
