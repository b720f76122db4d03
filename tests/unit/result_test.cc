// The public result type.
#include "ktls/result.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <string>

namespace ktls {
namespace {

Result<int> Half(int n) {
  if (n % 2 != 0) return Error{ErrorCategory::kUsage, 0, "odd number", -1};
  return n / 2;
}

TEST(Result, CarriesValueOrError) {
  auto ok = Half(8);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 4);
  auto bad = Half(3);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().category, ErrorCategory::kUsage);
  EXPECT_EQ(bad.error().detail, "odd number");
}

TEST(Result, ErrorToStringNamesCategoryAndErrno) {
  Error e{ErrorCategory::kIo, ECONNRESET, "recvmsg"};
  const std::string text = e.ToString();
  EXPECT_EQ(text.rfind("io: recvmsg (", 0), 0u) << text;
  EXPECT_NE(text.find("reset"), std::string::npos) << text;
  EXPECT_EQ(ErrorCategoryName(ErrorCategory::kAlert), "alert");
  EXPECT_EQ(ErrorCategoryName(ErrorCategory::kUnsupported), "unsupported");
}

TEST(Result, VoidResult) {
  Result<void> ok;
  EXPECT_TRUE(ok.ok());
  Result<void> bad = Error{ErrorCategory::kClosed, 0, "connection already closed", -1};
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().category, ErrorCategory::kClosed);
}

}  // namespace
}  // namespace ktls
