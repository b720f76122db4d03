// tests/unit/strict_main_selftest.cc: a tiny gtest binary on
// strict_gtest_main.cc, with a skip in each place a skip can hide (a test
// body, SetUpTestSuite, a global Environment). check_strict_main.py runs it
// and asserts the exit status: strict_gtest_main must fail these runs where
// kernel TLS is promised, and any run whose filter selects nothing.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

namespace {

TEST(StrictMainPasses, Passes) { EXPECT_EQ(1 + 1, 2); }

TEST(StrictMainSkipInBody, Skips) { GTEST_SKIP() << "skipped in the test body"; }

class StrictMainSkipInSuiteSetUp : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { GTEST_SKIP() << "skipped in SetUpTestSuite"; }
};

TEST_F(StrictMainSkipInSuiteSetUp, WouldPass) { EXPECT_TRUE(true); }

// SkipEnvironment skips in the global set-up when
// KTLS_STRICT_SELFTEST_SKIP_GLOBAL=1.
class SkipEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    const char* skip = std::getenv("KTLS_STRICT_SELFTEST_SKIP_GLOBAL");
    if (skip != nullptr && std::strcmp(skip, "1") == 0) GTEST_SKIP() << "skipped in the global set-up";
  }
};

// Registered before main runs: gtest owns the environment.
[[maybe_unused]] ::testing::Environment* const skip_environment =
    ::testing::AddGlobalTestEnvironment(new SkipEnvironment);

}  // namespace
