// tests/support/sockets.cc
#include "tests/support/sockets.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>

namespace ktls::testing {
namespace {

[[noreturn]] void ThrowErrno(const char* call) {
  throw std::system_error(errno, std::generic_category(), std::string("LoopbackTcpPair: ") + call);
}

sockaddr* AsSockaddr(sockaddr_in* addr) { return reinterpret_cast<sockaddr*>(addr); }

}  // namespace

SocketPair LoopbackTcpPair() {
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener) ThrowErrno("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(listener.get(), AsSockaddr(&addr), sizeof(addr)) != 0) ThrowErrno("bind 127.0.0.1");
  if (::listen(listener.get(), 1) != 0) ThrowErrno("listen");
  socklen_t addr_len = sizeof(addr);
  if (::getsockname(listener.get(), AsSockaddr(&addr), &addr_len) != 0) ThrowErrno("getsockname");

  SocketPair pair;
  pair.client.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!pair.client) ThrowErrno("socket");
  int rc;
  do {
    rc = ::connect(pair.client.get(), AsSockaddr(&addr), sizeof(addr));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) ThrowErrno("connect");
  int server_fd;
  do {
    server_fd = ::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
  } while (server_fd < 0 && errno == EINTR);
  if (server_fd < 0) ThrowErrno("accept");
  pair.server.reset(server_fd);
  return pair;
}

UniqueFd ConnectLoopback(std::uint16_t port, std::chrono::milliseconds io_timeout) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  int rc = -1;
  if (fd) {
    do {
      rc = ::connect(fd.get(), AsSockaddr(&addr), sizeof(addr));
    } while (rc != 0 && errno == EINTR);
  }
  if (rc != 0 || (io_timeout.count() > 0 && !SetIoTimeout(fd.get(), io_timeout))) return UniqueFd();
  return fd;
}

bool SetIoTimeout(int fd, std::chrono::milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  return ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0 &&
         ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == 0;
}

bool WriteAll(int fd, std::span<const std::uint8_t> bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == ENOTSOCK) n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
  return true;
}

bool ReadExactly(int fd, std::span<std::uint8_t> out) {
  while (!out.empty()) {
    const ssize_t n = ::read(fd, out.data(), out.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) {
      errno = 0;
      return false;
    }
    out = out.subspan(static_cast<std::size_t>(n));
  }
  return true;
}

std::map<std::string, long long> ReadTlsStat() {
  std::map<std::string, long long> counters;
  std::ifstream file("/proc/net/tls_stat");
  std::string line;
  while (std::getline(file, line)) {
    std::istringstream fields(line);
    std::string name;
    long long value = 0;
    if (fields >> name >> value) counters[name] = value;
  }
  return counters;
}

long long TlsStatDelta(const std::map<std::string, long long>& before, const std::string& name) {
  const auto after = ReadTlsStat();
  const auto a = after.find(name);
  const auto b = before.find(name);
  return a == after.end() || b == before.end() ? -1 : a->second - b->second;
}

std::vector<std::uint8_t> RandomBytes(std::size_t len) {
  std::vector<std::uint8_t> bytes(len);
  if (len > 0 && RAND_bytes(bytes.data(), static_cast<int>(len)) != 1) {
    throw std::runtime_error("RandomBytes: RAND_bytes failed");
  }
  return bytes;
}

std::string Sha256Hex(std::span<const std::uint8_t> bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &digest_len, EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("Sha256Hex: EVP_Digest failed");
  }
  static constexpr char kHexDigits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * digest_len);
  for (unsigned int i = 0; i < digest_len; ++i) {
    hex.push_back(kHexDigits[digest[i] >> 4]);
    hex.push_back(kHexDigits[digest[i] & 0x0f]);
  }
  return hex;
}

}  // namespace ktls::testing
