// core/scope_exit.h: ScopeExit runs a function when it leaves its scope, by
// return or by exception.
#ifndef KTLS_SRC_CORE_SCOPE_EXIT_H_
#define KTLS_SRC_CORE_SCOPE_EXIT_H_

#include <utility>

namespace ktls::detail {

template <typename F>
class ScopeExit {
 public:
  explicit ScopeExit(F f) : f_(std::move(f)) {}
  ~ScopeExit() { f_(); }
  ScopeExit(const ScopeExit&) = delete;
  ScopeExit& operator=(const ScopeExit&) = delete;

 private:
  F f_;
};

}  // namespace ktls::detail

#endif  // KTLS_SRC_CORE_SCOPE_EXIT_H_
