// tools/ktls-serve/tick_clock.h: elapsed time for the access log without a
// syscall.
//
// std::chrono::steady_clock is a vDSO call on most Linux systems, but a real
// syscall where there is no vDSO (User-Mode Linux, some sandboxes), and the
// access log reads the clock twice per request. On x86-64 with an invariant
// TSC (constant_tsc and nonstop_tsc in /proc/cpuinfo) TickClock reads the
// TSC instead and converts ticks with a rate measured against steady_clock:
// once at start (20 ms), then refined by Calibrate (ktls-serve's sweep calls
// it every period). Elsewhere it is steady_clock.
#ifndef KTLS_TOOLS_KTLS_SERVE_TICK_CLOCK_H_
#define KTLS_TOOLS_KTLS_SERVE_TICK_CLOCK_H_

#include <atomic>
#include <chrono>
#include <cstdint>

namespace ktls::serve {

class TickClock {
 public:
  // TickClock measures the TSC's rate when it can use it (20 ms).
  TickClock();

  // Now: an opaque tick count; only differences mean anything.
  std::uint64_t Now() const;
  // NowNs: a monotonic time in nanoseconds (since the clock was made).
  std::int64_t NowNs() const;
  // Elapsed: the time from since (a Now()) until now.
  std::chrono::nanoseconds Elapsed(std::uint64_t since) const;
  // Calibrate refines the rate over the time since start. Thread-safe.
  void Calibrate();
  // uses_tsc: whether ticks are the TSC's (for --help and tests).
  bool uses_tsc() const { return use_tsc_; }

 private:
  bool use_tsc_ = false;
  std::uint64_t base_ticks_ = 0;
  std::chrono::steady_clock::time_point base_time_{};
  std::atomic<double> ns_per_tick_{1.0};
};

}  // namespace ktls::serve

#endif  // KTLS_TOOLS_KTLS_SERVE_TICK_CLOCK_H_
