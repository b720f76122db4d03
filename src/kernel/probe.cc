// kernel/probe.cc: measure what kernel TLS can do, on real sockets.
//
// The kernel attaches the "tls" ULP only to an ESTABLISHED TCP socket
// (tls_init() returns ENOTCONN otherwise), so every question is asked on a
// freshly connected loopback pair. A probe on an unconnected socket, as the
// Go library this project started from did, always answers "no".
#include "ktls/probe.h"

#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>

#if defined(__linux__)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <array>

#include "core/unique_fd.h"
#include "kernel/crypto_info.h"
#include "kernel/syscalls.h"
#include "kernel/tls_uapi.h"
#endif

namespace ktls {

#if defined(__linux__)
using detail::UniqueFd;
#endif

bool Capabilities::Supports(TlsVersion version, Cipher cipher, bool need_rx) const noexcept {
  for (const CipherSupport& row : ciphers) {
    if (row.version == version && row.cipher == cipher) return row.tx && (row.rx || !need_rx);
  }
  return false;
}

namespace {

std::vector<CipherSupport> EmptyRows() {
  std::vector<CipherSupport> rows;
  for (TlsVersion version : kAllVersions) {
    for (Cipher cipher : kAllCiphers) rows.push_back(CipherSupport{version, cipher, false, false});
  }
  return rows;
}

#if defined(__linux__)

// ConnectedPair makes an established loopback TCP connection. Both ends are
// kept open until the question is answered, so the socket under test stays
// ESTABLISHED. On failure err holds the errno and step names the call.
struct PairResult {
  UniqueFd client;
  UniqueFd server;
  int err = 0;
  const char* step = "";
};

PairResult ConnectedPair() {
  PairResult out;
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (listener.get() < 0) return {UniqueFd(), UniqueFd(), errno, "socket"};
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t addr_len = sizeof(addr);
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return {UniqueFd(), UniqueFd(), errno, "bind 127.0.0.1"};
  }
  if (::listen(listener.get(), 1) != 0) return {UniqueFd(), UniqueFd(), errno, "listen"};
  if (::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &addr_len) != 0) {
    return {UniqueFd(), UniqueFd(), errno, "getsockname"};
  }
  out.client = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (out.client.get() < 0) return {UniqueFd(), UniqueFd(), errno, "socket"};
  int rc;
  do {
    rc = ::connect(out.client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return {UniqueFd(), UniqueFd(), errno, "connect to loopback"};
  int server_fd;
  do {
    server_fd = ::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
  } while (server_fd < 0 && errno == EINTR);
  if (server_fd < 0) return {UniqueFd(), UniqueFd(), errno, "accept"};
  out.server = UniqueFd(server_fd);
  return out;
}

int AttachUlp(int fd) {
  return detail::sys::SetSockOpt(fd, detail::uapi::kSolTcp, detail::uapi::kTcpUlp,
                                 detail::uapi::kTlsUlpName,
                                 sizeof(detail::uapi::kTlsUlpName) - 1);
}

// InstallZeroKey sets one direction with an all-zero key on a throwaway
// socket; no record is ever sent under it. Returns 0 or -errno.
int InstallZeroKey(int fd, int direction, TlsVersion version, Cipher cipher) {
  std::array<unsigned char, 32> key{};
  std::array<unsigned char, detail::kNonceLen> iv{};
  auto info = detail::PackCryptoInfo(version, cipher,
                                     std::span(key.data(), detail::KeyLength(cipher)), iv, 0);
  if (!info.ok()) return -EINVAL;
  return detail::sys::SetSockOpt(fd, detail::uapi::kSolTls, direction, info->data(), info->size());
}

std::string Describe(const char* step, int err) {
  std::string text = step;
  text += ": ";
  text += std::strerror(err);
  return text;
}

#endif  // __linux__

}  // namespace

Capabilities Probe() {
  Capabilities caps;
  caps.ciphers = EmptyRows();
#if !defined(__linux__)
  caps.reason = "kernel TLS is a Linux feature; this system is not Linux";
  return caps;
#else
  utsname uts{};
  if (::uname(&uts) == 0) caps.kernel = uts.release;

  {
    PairResult pair = ConnectedPair();
    if (pair.err != 0) {
      caps.reason = "cannot make a loopback TCP connection to probe with: " + Describe(pair.step, pair.err);
      return caps;
    }
    const int rc = AttachUlp(pair.client.get());
    if (rc != 0) {
      caps.reason = rc == -ENOENT
                        ? "the kernel has no \"tls\" upper-layer protocol (CONFIG_TLS off or the tls module not loaded): " +
                              Describe("setsockopt(TCP_ULP)", ENOENT)
                        : Describe("setsockopt(TCP_ULP, \"tls\")", -rc);
      return caps;
    }
    caps.ulp = true;
  }

  bool any_usable = false;
  for (CipherSupport& row : caps.ciphers) {
    PairResult pair = ConnectedPair();
    if (pair.err != 0 || AttachUlp(pair.client.get()) != 0) continue;
    row.tx = InstallZeroKey(pair.client.get(), detail::uapi::kTlsTx, row.version, row.cipher) == 0;
    row.rx = InstallZeroKey(pair.client.get(), detail::uapi::kTlsRx, row.version, row.cipher) == 0;
    any_usable = any_usable || (row.tx && row.rx);
  }

  // Rekey: Linux 6.14 accepts TLS_TX again on a TLS 1.3 socket (a KeyUpdate);
  // older kernels answer EBUSY.
  if (caps.Supports(TlsVersion::kTls13, Cipher::kAes128Gcm, false)) {
    PairResult pair = ConnectedPair();
    if (pair.err == 0 && AttachUlp(pair.client.get()) == 0 &&
        InstallZeroKey(pair.client.get(), detail::uapi::kTlsTx, TlsVersion::kTls13, Cipher::kAes128Gcm) == 0) {
      caps.rekey = InstallZeroKey(pair.client.get(), detail::uapi::kTlsTx, TlsVersion::kTls13,
                                  Cipher::kAes128Gcm) == 0;
    }
  }

  caps.available = any_usable;
  if (!any_usable) caps.reason = "the \"tls\" ULP attaches, but the kernel accepted no cipher for both TX and RX";
  return caps;
#endif
}

const Capabilities& CachedCapabilities() {
  static const Capabilities caps = Probe();  // Thread-safe initialisation (C++11 magic statics).
  return caps;
}

bool Available() { return CachedCapabilities().available; }

}  // namespace ktls
