// tools/common/kernel_promise.h: whether this run was promised kernel TLS,
// for the tests and the benchmark: where it was, finding no kTLS is a
// failure, never a skip.
#ifndef KTLS_TOOLS_COMMON_KERNEL_PROMISE_H_
#define KTLS_TOOLS_COMMON_KERNEL_PROMISE_H_

#include <cstdlib>
#include <cstring>

namespace ktls::tools {

// KernelTlsPromised: true with KTLS_REQUIRE_KERNEL=1 (CI), or inside a UML
// guest of the test harness (KTLS_IN_UML=1), whose kernels all have kTLS.
inline bool KernelTlsPromised() {
  for (const char* name : {"KTLS_REQUIRE_KERNEL", "KTLS_IN_UML"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && std::strcmp(value, "1") == 0) return true;
  }
  return false;
}

}  // namespace ktls::tools

#endif  // KTLS_TOOLS_COMMON_KERNEL_PROMISE_H_
