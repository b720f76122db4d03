// tests/support/offload_shape.h: run one kernel test in each offload state
// a connection can be in: both directions in the kernel, TX only, neither.
//
//   class MyTest : public OffloadShapeTest {};
//   TEST_P(MyTest, X) { ... config.offload = Options(); ... WantTx() ... }
//   INSTANTIATE_TEST_SUITE_P(Shapes, MyTest, AllOffloadShapes(), OffloadShapeName);
#ifndef KTLS_TESTS_SUPPORT_OFFLOAD_SHAPE_H_
#define KTLS_TESTS_SUPPORT_OFFLOAD_SHAPE_H_

#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "kernel/tls_uapi.h"
#include "ktls/connection.h"
#include "ktls/offload.h"
#include "tests/support/fault_syscalls.h"

namespace ktls::testing {

// OffloadShape: which directions go to the kernel, on both ends.
enum class OffloadShape { kBoth, kTxOnly, kNeither };

inline std::string OffloadShapeName(const ::testing::TestParamInfo<OffloadShape>& info) {
  switch (info.param) {
    case OffloadShape::kBoth: return "BothInKernel";
    case OffloadShape::kTxOnly: return "TxOnlyInKernel";
    case OffloadShape::kNeither: return "NeitherInKernel";
  }
  return "?";
}

inline auto AllOffloadShapes() {
  return ::testing::Values(OffloadShape::kBoth, OffloadShape::kTxOnly, OffloadShape::kNeither);
}

// OffloadShapeTest: Options() gives the OffloadOptions for the shape (both
// ends use them); WantTx()/WantRx() where each direction must end up.
class OffloadShapeTest : public ::testing::TestWithParam<OffloadShape> {
 protected:
  void SetUp() override {
    ClearFaults();
    if (GetParam() == OffloadShape::kNeither) {
      // The one way to keep a connection whole in OpenSSL on a kTLS kernel:
      // the ULP refuses to attach.
      InjectFault({.call = Syscall::kSetSockOpt, .err = ENOENT, .level = detail::uapi::kSolTcp,
                   .name = detail::uapi::kTcpUlp, .times = -1});
    }
  }
  void TearDown() override { ClearFaults(); }

  OffloadOptions Options() const {
    OffloadOptions options;
    options.rx = GetParam() == OffloadShape::kBoth ? RxOffload::kOn : RxOffload::kOff;
    return options;
  }
  Offload WantTx() const { return GetParam() == OffloadShape::kNeither ? Offload::kUser : Offload::kKernel; }
  Offload WantRx() const { return GetParam() == OffloadShape::kBoth ? Offload::kKernel : Offload::kUser; }
};

}  // namespace ktls::testing

#endif  // KTLS_TESTS_SUPPORT_OFFLOAD_SHAPE_H_
