// tools/ktls-serve/shared_metrics.h: --metrics with --privsep. Each worker
// process counts into a Metrics of its own in shared memory, a memfd the
// key holder made and gave it at kWorkerExtraFd; the key holder renders its
// own counts plus every worker's plus what dead workers had counted.
//
// One region per worker: a worker can write only its own counts (it could
// lie about them, no more), and the key holder only reads them. The memfd
// is sealed against resizing: a worker cannot shrink it under the key
// holder's mapping (a read past the end would be a SIGBUS).
#ifndef KTLS_TOOLS_KTLS_SERVE_SHARED_METRICS_H_
#define KTLS_TOOLS_KTLS_SERVE_SHARED_METRICS_H_

#include <cstddef>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "ktls-serve/metrics.h"
#include "ktls/kernel_tls_stats.h"
#include "ktls/result.h"

namespace ktls::serve {

// Nothing to destroy: a region is unmapped, never destructed.
static_assert(std::is_trivially_destructible_v<Metrics>);

// MetricsRegion: a Metrics in a memfd, mapped shared. Move-only; unmaps
// and closes the memfd when it goes.
class MetricsRegion {
 public:
  // Create (the key holder): a new sealed memfd the size of a Metrics,
  // mapped, holding zeroed counts.
  static std::optional<MetricsRegion> Create(std::string& error);
  // Map (a worker): takes fd, checks it is a region's size, maps it.
  static std::optional<MetricsRegion> Map(int fd, std::string& error);

  MetricsRegion(MetricsRegion&& other) noexcept;
  MetricsRegion& operator=(MetricsRegion&& other) noexcept;
  ~MetricsRegion();

  Metrics& metrics() const noexcept { return *metrics_; }
  int fd() const noexcept { return fd_; }
  // Reset zeroes every count (for a new worker; nothing else may be
  // counting into it).
  void Reset() noexcept;

 private:
  MetricsRegion(int fd, void* addr) noexcept;
  void Release() noexcept;

  int fd_ = -1;
  void* addr_ = nullptr;
  Metrics* metrics_ = nullptr;
};

// PrivsepMetrics: the key holder's view over its own counts and one region
// per worker slot (WorkerPool's slots).
class PrivsepMetrics {
 public:
  explicit PrivsepMetrics(const Metrics& own) : own_(own) {}
  PrivsepMetrics(const PrivsepMetrics&) = delete;
  PrivsepMetrics& operator=(const PrivsepMetrics&) = delete;

  // Create makes num_slots regions.
  bool Create(std::size_t num_slots, std::string& error);
  // WorkerStarting: WorkerPool::StartHook. The descriptor for slot's new
  // worker (at kWorkerExtraFd). On a restart (the dead worker reaped), its
  // counts go to the retired ones first, all but its open connections
  // (they died with it), and its region is zeroed for the new one.
  int WorkerStarting(std::size_t slot, bool restart);
  // Render: Metrics::Render of the sum of them all.
  std::string Render(const Result<KernelTlsStats>& tls_stat);

 private:
  const Metrics& own_;
  std::mutex mu_;  // A restart's move to retired_ is never half seen.
  std::vector<MetricsRegion> regions_;
  Metrics retired_;
};

}  // namespace ktls::serve

#endif  // KTLS_TOOLS_KTLS_SERVE_SHARED_METRICS_H_
