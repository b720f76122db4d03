// tests/support/strict_gtest_main.cc: main() for every gtest binary here, in
// place of gtest_main, so that a run cannot pass without testing anything.
//
// Each binary is one CTest test (or one per test, discovered), and CTest only
// sees the exit status. gtest exits 0 when tests skipped (GTEST_SKIP), and
// when --gtest_filter selected nothing (gtest 1.12 has no
// --gtest_fail_if_no_test_selected). So, after the run:
//   - no test selected (a filter that matches nothing): exit 1, always;
//   - where kernel TLS is promised (KTLS_REQUIRE_KERNEL=1, or inside a UML
//     guest: KTLS_IN_UML=1), any skip is a failure: a skipped test, or a
//     skip in SetUpTestSuite or a global Environment's SetUp (gtest records
//     those apart from the tests, in ad-hoc results); disabled tests too.
// The checks read gtest's results after RUN_ALL_TESTS, so no test body,
// fixture or environment can get around them.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "common/kernel_promise.h"

namespace {

// Skips: every skip in the run, named: tests, suites' SetUpTestSuite, and
// global set-up.
std::vector<std::string> Skips(const testing::UnitTest& unit) {
  std::vector<std::string> skips;
  if (unit.ad_hoc_test_result().Skipped()) skips.push_back("global set-up (a test Environment)");
  for (int i = 0; i < unit.total_test_suite_count(); ++i) {
    const testing::TestSuite& suite = *unit.GetTestSuite(i);
    if (!suite.should_run()) continue;
    if (suite.ad_hoc_test_result().Skipped()) skips.push_back(std::string(suite.name()) + " (SetUpTestSuite)");
    for (int j = 0; j < suite.total_test_count(); ++j) {
      const testing::TestInfo& test = *suite.GetTestInfo(j);
      if (test.should_run() && test.result()->Skipped()) {
        skips.push_back(std::string(suite.name()) + "." + test.name());
      }
    }
  }
  return skips;
}

}  // namespace

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  const int status = RUN_ALL_TESTS();
  // --gtest_list_tests (CTest's test discovery) runs nothing, and rightly.
  if (GTEST_FLAG_GET(list_tests)) return status;
  const testing::UnitTest& unit = *testing::UnitTest::GetInstance();
  if (unit.test_to_run_count() == 0) {
    std::printf("FAIL: no test selected (--gtest_filter=%s): a run that tests nothing must not pass\n",
                GTEST_FLAG_GET(filter).c_str());
    return 1;
  }
  if (!ktls::tools::KernelTlsPromised()) return status;
  const std::vector<std::string> skips = Skips(unit);
  for (const std::string& skip : skips) {
    std::printf("FAIL: skipped where kernel TLS is promised (KTLS_REQUIRE_KERNEL=1 or a UML guest): %s\n",
                skip.c_str());
  }
  if (unit.reportable_disabled_test_count() > 0) {
    std::printf("FAIL: %d disabled test(s) where kernel TLS is promised\n", unit.reportable_disabled_test_count());
  }
  if (!skips.empty() || unit.reportable_disabled_test_count() > 0) return 1;
  return status;
}
