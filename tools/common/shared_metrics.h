// common/shared_metrics.h: --metrics with --privsep (ktls-serve,
// ktls-proxy). Each worker process counts into a metrics object of its own
// in shared memory, a memfd the key holder made and gave it at
// kWorkerExtraFd (privsep.h); the key holder renders its own counts plus
// every worker's plus what dead workers had counted.
//
// One region per worker: a worker can write only its own counts (it could
// lie about them, no more), and the key holder only reads them. The memfd
// is sealed against resizing: a worker cannot shrink it under the key
// holder's mapping (a read past the end would be a SIGBUS).
//
// What a program's metrics type M must be: trivially destructible (a
// region is unmapped, never destructed), default-constructible to all
// zeroes, made of lock-free atomics only (no pointer: each process maps it
// at its own address; no lock elsewhere), and have
//   void Add(const M& from, bool open) noexcept;
// which adds every count of from to this one's, and the open-connections
// gauge too only with open (a dead worker's connections died with it).
#ifndef KTLS_TOOLS_COMMON_SHARED_METRICS_H_
#define KTLS_TOOLS_COMMON_SHARED_METRICS_H_

#include <cstddef>
#include <functional>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace ktls::tools {

// SharedMemory: a memfd of a fixed size, mapped shared, read and write.
// Move-only; unmaps and closes the memfd when it goes.
class SharedMemory {
 public:
  // Create: a new memfd called name (as /proc shows it) of size bytes,
  // zeroed, sealed against growing, shrinking and further seals, mapped.
  static std::optional<SharedMemory> Create(const char* name, std::size_t size, std::string& error);
  // Map: takes fd (closed on failure too), checks it is size bytes, maps it.
  static std::optional<SharedMemory> Map(int fd, std::size_t size, std::string& error);

  SharedMemory(SharedMemory&& other) noexcept;
  SharedMemory& operator=(SharedMemory&& other) noexcept;
  ~SharedMemory();

  void* addr() const noexcept { return addr_; }
  int fd() const noexcept { return fd_; }

 private:
  SharedMemory(int fd, void* addr, std::size_t size) noexcept : fd_(fd), addr_(addr), size_(size) {}
  void Release() noexcept;

  int fd_ = -1;
  void* addr_ = nullptr;
  std::size_t size_ = 0;
};

// MetricsRegion: an M in a SharedMemory. Move-only.
template <typename M>
class MetricsRegion {
  static_assert(std::is_trivially_destructible_v<M>, "a region is unmapped, never destructed");
  static_assert(std::is_nothrow_default_constructible_v<M>);

 public:
  // Create (the key holder): a new region holding zeroed counts; name
  // names the memfd ("ktls-serve-metrics").
  static std::optional<MetricsRegion> Create(const char* name, std::string& error) {
    auto memory = SharedMemory::Create(name, sizeof(M), error);
    if (!memory) return std::nullopt;
    return MetricsRegion(std::move(*memory));
  }
  // Map (a worker): takes fd, checks it is a region's size, maps it.
  static std::optional<MetricsRegion> Map(int fd, std::string& error) {
    auto memory = SharedMemory::Map(fd, sizeof(M), error);
    if (!memory) return std::nullopt;
    return MetricsRegion(std::move(*memory));
  }

  M& metrics() const noexcept { return *metrics_; }
  int fd() const noexcept { return memory_.fd(); }
  // Reset zeroes every count (for a new worker; nothing else may be
  // counting into it).
  void Reset() noexcept { metrics_ = new (memory_.addr()) M(); }

 private:
  // The memory is zero (a new memfd, or Reset before this worker started):
  // constructing starts the object's life in this process.
  explicit MetricsRegion(SharedMemory memory) noexcept
      : memory_(std::move(memory)), metrics_(new (memory_.addr()) M()) {}

  SharedMemory memory_;
  M* metrics_;
};

// PrivsepMetrics: the key holder's view over its own counts and one region
// per worker slot (WorkerPool's slots).
template <typename M>
class PrivsepMetrics {
 public:
  // own: the key holder's counts (outliving this); name: the memfds'.
  PrivsepMetrics(const M& own, const char* name) : own_(own), name_(name) {}
  PrivsepMetrics(const PrivsepMetrics&) = delete;
  PrivsepMetrics& operator=(const PrivsepMetrics&) = delete;

  // Create makes num_slots regions.
  bool Create(std::size_t num_slots, std::string& error) {
    std::lock_guard lock(mu_);
    for (std::size_t i = 0; i < num_slots; ++i) {
      auto region = MetricsRegion<M>::Create(name_, error);
      if (!region) return false;
      regions_.push_back(std::move(*region));
    }
    return true;
  }
  // WorkerStarting: WorkerPool::StartHook. The descriptor for slot's new
  // worker (at kWorkerExtraFd), or -1 for no such slot. On a restart (the
  // dead worker reaped), its counts go to the retired ones first, all but
  // its open connections (they died with it), and its region is zeroed
  // for the new one.
  int WorkerStarting(std::size_t slot, bool restart) {
    std::lock_guard lock(mu_);
    if (slot >= regions_.size()) return -1;
    if (restart) {
      retired_.Add(regions_[slot].metrics(), false);
      regions_[slot].Reset();
    }
    return regions_[slot].fd();
  }
  // StartHook: WorkerStarting as a WorkerPool::StartHook (this must
  // outlive the pool).
  std::function<int(std::size_t, bool)> StartHook() {
    return [this](std::size_t slot, bool restart) { return WorkerStarting(slot, restart); };
  }
  // Sum adds to total (a new M) the counts of them all.
  void Sum(M& total) {
    std::lock_guard lock(mu_);  // A restart's move to retired_ is never half seen.
    total.Add(own_, true);
    total.Add(retired_, false);
    for (const MetricsRegion<M>& region : regions_) total.Add(region.metrics(), true);
  }

 private:
  const M& own_;
  const char* name_;
  std::mutex mu_;
  std::vector<MetricsRegion<M>> regions_;
  M retired_;
};

}  // namespace ktls::tools

#endif  // KTLS_TOOLS_COMMON_SHARED_METRICS_H_
