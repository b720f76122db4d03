// tools/ktls-serve/tick_clock.cc: see tick_clock.h.
#include "ktls-serve/tick_clock.h"

#include <fstream>
#include <string>
#include <thread>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

namespace ktls::serve {

namespace {

using std::chrono::steady_clock;

bool InvariantTsc() {
#if defined(__x86_64__)
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    const auto has = [&line](const char* flag) { return line.find(std::string(" ") + flag) != std::string::npos; };
    return has("constant_tsc") && has("nonstop_tsc");
  }
#endif
  return false;
}

std::uint64_t ReadTsc() {
#if defined(__x86_64__)
  return __rdtsc();
#else
  return 0;
#endif
}

}  // namespace

TickClock::TickClock() : use_tsc_(InvariantTsc()) {
  if (!use_tsc_) return;
  base_time_ = steady_clock::now();
  base_ticks_ = ReadTsc();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  Calibrate();
}

std::uint64_t TickClock::Now() const {
  if (use_tsc_) return ReadTsc();
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(steady_clock::now().time_since_epoch()).count());
}

std::int64_t TickClock::NowNs() const {
  if (!use_tsc_) return static_cast<std::int64_t>(Now());
  return static_cast<std::int64_t>(Elapsed(base_ticks_).count());
}

std::chrono::nanoseconds TickClock::Elapsed(std::uint64_t since) const {
  const std::uint64_t now = Now();
  if (now <= since) return std::chrono::nanoseconds(0);
  const double ns = static_cast<double>(now - since) * ns_per_tick_.load(std::memory_order_relaxed);
  return std::chrono::nanoseconds(static_cast<std::int64_t>(ns));
}

void TickClock::Calibrate() {
  if (!use_tsc_) return;
  const std::uint64_t ticks = ReadTsc();
  const auto time = steady_clock::now();
  if (ticks <= base_ticks_) return;
  const double ns = static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(time - base_time_).count());
  ns_per_tick_.store(ns / static_cast<double>(ticks - base_ticks_), std::memory_order_relaxed);
}

}  // namespace ktls::serve
