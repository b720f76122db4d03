// ktls/kernel_tls_stats.h: the kernel's own kTLS counters, process-wide.
//
// Linux counts kTLS sockets per network namespace in /proc/net/tls_stat
// (one "Name value" line per counter; the file exists once the tls module
// is loaded). These are the kernel's figures, not ktls's: they count every
// kTLS socket in the namespace, whoever made it, and they are the proof
// that the kernel, not OpenSSL, does a connection's records.
//
//   auto stats = ktls::ReadKernelTlsStats();
//   if (stats.ok()) std::printf("%llu\n", (unsigned long long)stats->Get("TlsTxSw").value_or(0));
#ifndef KTLS_KERNEL_TLS_STATS_H_
#define KTLS_KERNEL_TLS_STATS_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ktls/export.h"
#include "ktls/result.h"

namespace ktls {

// KernelTlsCounter: one line of /proc/net/tls_stat.
struct KTLS_API KernelTlsCounter {
  std::string name;  // As the kernel spells it: "TlsTxSw".
  std::uint64_t value = 0;
};

// KernelTlsStats: every counter /proc/net/tls_stat lists, in the kernel's
// order, including any this version of ktls does not know (newer kernels
// add counters; 7.2 has five rekey counters 6.1 lacks).
struct KTLS_API KernelTlsStats {
  std::vector<KernelTlsCounter> counters;

  // Get returns the counter's value, or nullopt where this kernel does not
  // have it.
  std::optional<std::uint64_t> Get(std::string_view name) const noexcept;
};

// KernelTlsCounterInfo: what one counter the kernel may list means.
struct KTLS_API KernelTlsCounterInfo {
  std::string_view name;         // "TlsTxSw"
  std::string_view description;  // One line, for people.
  bool gauge = false;            // Goes up and down (TlsCurr*); the rest only grow.
};

// KnownKernelTlsCounters: every counter of Linux 6.1 to 7.2's
// net/tls/tls_proc.c, in the kernel's order.
KTLS_API std::span<const KernelTlsCounterInfo> KnownKernelTlsCounters() noexcept;

// FindKernelTlsCounter returns the counter's description, or nullptr for a
// name ktls does not know.
KTLS_API const KernelTlsCounterInfo* FindKernelTlsCounter(std::string_view name) noexcept;

// ParseKernelTlsStats parses the text of /proc/net/tls_stat: lines of a
// name, blanks (spaces or tabs), a decimal value. Fails with kProtocol,
// naming the line, on anything else (a missing or non-numeric value, a
// value above 2^64 - 1, a name twice). Empty text is no counters.
KTLS_API Result<KernelTlsStats> ParseKernelTlsStats(std::string_view text);

// ReadKernelTlsStats reads and parses /proc/net/tls_stat now (for the
// calling thread's network namespace). Fails with kUnsupported when the
// file does not exist (no kTLS: CONFIG_TLS off or the tls module not
// loaded), kIo when it cannot be read. Cheap: one small read.
KTLS_API Result<KernelTlsStats> ReadKernelTlsStats();

}  // namespace ktls

#endif  // KTLS_KERNEL_TLS_STATS_H_
