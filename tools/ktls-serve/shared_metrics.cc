// tools/ktls-serve/shared_metrics.cc: counts in shared memory for
// --privsep workers (shared_metrics.h).
#include "ktls-serve/shared_metrics.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <utility>

namespace ktls::serve {

namespace {

std::string Why(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

// MapRegion maps fd (a region's size) shared, or closes it.
void* MapRegion(int fd, std::string& error) {
  void* addr = ::mmap(nullptr, sizeof(Metrics), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr != MAP_FAILED) return addr;
  error = Why("mmap of the metrics region");
  ::close(fd);
  return nullptr;
}

}  // namespace

MetricsRegion::MetricsRegion(int fd, void* addr) noexcept
    : fd_(fd),
      addr_(addr),
      // The memory is zero (a new memfd, or Reset before this worker
      // started): constructing starts the object's life in this process.
      metrics_(new (addr) Metrics()) {}

std::optional<MetricsRegion> MetricsRegion::Create(std::string& error) {
  const int fd = ::memfd_create("ktls-serve-metrics", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) {
    error = Why("memfd_create");
    return std::nullopt;
  }
  if (::ftruncate(fd, sizeof(Metrics)) != 0 ||
      ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    error = Why("sizing the metrics memfd");
    ::close(fd);
    return std::nullopt;
  }
  void* addr = MapRegion(fd, error);
  if (addr == nullptr) return std::nullopt;
  return MetricsRegion(fd, addr);
}

std::optional<MetricsRegion> MetricsRegion::Map(int fd, std::string& error) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size != static_cast<off_t>(sizeof(Metrics))) {
    error = "descriptor " + std::to_string(fd) + " is not a metrics region of " + std::to_string(sizeof(Metrics)) +
            " bytes (a ktls-serve of another version?)";
    ::close(fd);
    return std::nullopt;
  }
  void* addr = MapRegion(fd, error);
  if (addr == nullptr) return std::nullopt;
  return MetricsRegion(fd, addr);
}

MetricsRegion::MetricsRegion(MetricsRegion&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      addr_(std::exchange(other.addr_, nullptr)),
      metrics_(std::exchange(other.metrics_, nullptr)) {}

MetricsRegion& MetricsRegion::operator=(MetricsRegion&& other) noexcept {
  if (this != &other) {
    Release();
    fd_ = std::exchange(other.fd_, -1);
    addr_ = std::exchange(other.addr_, nullptr);
    metrics_ = std::exchange(other.metrics_, nullptr);
  }
  return *this;
}

MetricsRegion::~MetricsRegion() { Release(); }

void MetricsRegion::Release() noexcept {
  if (addr_ != nullptr) ::munmap(addr_, sizeof(Metrics));
  if (fd_ >= 0) ::close(fd_);
  addr_ = nullptr;
  metrics_ = nullptr;
  fd_ = -1;
}

void MetricsRegion::Reset() noexcept { metrics_ = new (addr_) Metrics(); }

bool PrivsepMetrics::Create(std::size_t num_slots, std::string& error) {
  std::lock_guard lock(mu_);
  for (std::size_t i = 0; i < num_slots; ++i) {
    auto region = MetricsRegion::Create(error);
    if (!region) return false;
    regions_.push_back(std::move(*region));
  }
  return true;
}

int PrivsepMetrics::WorkerStarting(std::size_t slot, bool restart) {
  std::lock_guard lock(mu_);
  if (slot >= regions_.size()) return -1;
  if (restart) {
    retired_.Add(regions_[slot].metrics(), false);
    regions_[slot].Reset();
  }
  return regions_[slot].fd();
}

std::string PrivsepMetrics::Render(const Result<KernelTlsStats>& tls_stat) {
  Metrics total;
  {
    std::lock_guard lock(mu_);
    total.Add(own_, true);
    total.Add(retired_, false);
    for (const MetricsRegion& region : regions_) total.Add(region.metrics(), true);
  }
  return total.Render(tls_stat);
}

}  // namespace ktls::serve
