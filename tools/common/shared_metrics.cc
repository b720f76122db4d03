// common/shared_metrics.cc: the memfd under every metrics region
// (shared_metrics.h).
#include "common/shared_metrics.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ktls::tools {

namespace {

std::string Why(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

// MapShared maps fd (size bytes) shared, or closes it.
void* MapShared(int fd, std::size_t size, std::string& error) {
  void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr != MAP_FAILED) return addr;
  error = Why("mmap of the metrics region");
  ::close(fd);
  return nullptr;
}

}  // namespace

std::optional<SharedMemory> SharedMemory::Create(const char* name, std::size_t size, std::string& error) {
  const int fd = ::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) {
    error = Why("memfd_create");
    return std::nullopt;
  }
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0 ||
      ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    error = Why("sizing the metrics memfd");
    ::close(fd);
    return std::nullopt;
  }
  void* addr = MapShared(fd, size, error);
  if (addr == nullptr) return std::nullopt;
  return SharedMemory(fd, addr, size);
}

std::optional<SharedMemory> SharedMemory::Map(int fd, std::size_t size, std::string& error) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size != static_cast<off_t>(size)) {
    error = "descriptor " + std::to_string(fd) + " is not a metrics region of " + std::to_string(size) +
            " bytes (from another version of this program?)";
    ::close(fd);
    return std::nullopt;
  }
  void* addr = MapShared(fd, size, error);
  if (addr == nullptr) return std::nullopt;
  return SharedMemory(fd, addr, size);
}

SharedMemory::SharedMemory(SharedMemory&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      addr_(std::exchange(other.addr_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

SharedMemory& SharedMemory::operator=(SharedMemory&& other) noexcept {
  if (this != &other) {
    Release();
    fd_ = std::exchange(other.fd_, -1);
    addr_ = std::exchange(other.addr_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

SharedMemory::~SharedMemory() { Release(); }

void SharedMemory::Release() noexcept {
  if (addr_ != nullptr) ::munmap(addr_, size_);
  if (fd_ >= 0) ::close(fd_);
  addr_ = nullptr;
  size_ = 0;
  fd_ = -1;
}

}  // namespace ktls::tools
