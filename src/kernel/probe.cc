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

#include <sys/utsname.h>

#include "kernel/kernel_tls_build.h"

#if KTLS_KERNEL_TLS
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <span>
#include <vector>

#include "core/unique_fd.h"
#include "kernel/crypto_info.h"
#include "kernel/syscalls.h"
#include "kernel/tls_uapi.h"
#endif

namespace ktls {

#if KTLS_KERNEL_TLS
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

#if KTLS_KERNEL_TLS

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

// The no-pad probe's records: TLS 1.3 AES-128-GCM under the all-zero key
// and IV InstallZeroKey sets, so nonce = sequence number (RFC 8446 5.3).
constexpr std::size_t kNoPadRecords = 4;
constexpr std::size_t kNoPadRecordData = 1000;
constexpr std::size_t kGcmTagLen = 16;

// SealPaddedRecord appends one TLS 1.3 application-data record carrying
// data and pad_len zero bytes of padding (RFC 8446 5.4) to out.
bool SealPaddedRecord(std::uint64_t seq, std::span<const unsigned char> data, std::size_t pad_len,
                      std::vector<unsigned char>& out) {
  std::vector<unsigned char> inner(data.begin(), data.end());
  inner.push_back(detail::uapi::kRecordApplicationData);
  inner.resize(inner.size() + pad_len, 0);
  const std::size_t record_len = inner.size() + kGcmTagLen;
  const std::array<unsigned char, 5> header = {detail::uapi::kRecordApplicationData, 3, 3,
                                               static_cast<unsigned char>(record_len >> 8),
                                               static_cast<unsigned char>(record_len & 0xff)};
  std::array<unsigned char, detail::kNonceLen> nonce{};
  for (int i = 0; i < 8; ++i) nonce[detail::kNonceLen - 1 - i] = static_cast<unsigned char>(seq >> (8 * i));
  const std::array<unsigned char, 16> key{};
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  if (ctx == nullptr) return false;
  std::vector<unsigned char> sealed(inner.size() + kGcmTagLen);
  int len = 0;
  int final_len = 0;
  const bool ok = EVP_EncryptInit_ex(ctx, EVP_aes_128_gcm(), nullptr, key.data(), nonce.data()) == 1 &&
                  EVP_EncryptUpdate(ctx, nullptr, &len, header.data(), static_cast<int>(header.size())) == 1 &&
                  EVP_EncryptUpdate(ctx, sealed.data(), &len, inner.data(), static_cast<int>(inner.size())) == 1 &&
                  EVP_EncryptFinal_ex(ctx, sealed.data() + len, &final_len) == 1 &&
                  EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, static_cast<int>(kGcmTagLen),
                                      sealed.data() + inner.size()) == 1;
  EVP_CIPHER_CTX_free(ctx);
  if (!ok) return false;
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), sealed.begin(), sealed.end());
  return true;
}

// ProbeRxNoPad turns TLS_RX_EXPECT_NO_PAD on for a TLS 1.3 RX socket, sends
// it records with padding (the kernel's guess is wrong for each: it must
// notice and decrypt again), and checks every byte that comes out. Returns
// "" when no-pad is safe, else why not.
std::string ProbeRxNoPad() {
  PairResult pair = ConnectedPair();
  if (pair.err != 0) return "cannot make a loopback TCP connection to probe with: " + Describe(pair.step, pair.err);
  const int rx_fd = pair.server.get();
  if (const int rc = AttachUlp(rx_fd); rc != 0) return Describe("setsockopt(TCP_ULP, \"tls\")", -rc);
  if (const int rc = InstallZeroKey(rx_fd, detail::uapi::kTlsRx, TlsVersion::kTls13, Cipher::kAes128Gcm); rc != 0) {
    return Describe("setsockopt(TLS_RX), TLS 1.3 AES_128_GCM", -rc);
  }
  const int one = 1;
  if (const int rc = detail::sys::SetSockOpt(rx_fd, detail::uapi::kSolTls, detail::uapi::kTlsRxExpectNoPad, &one,
                                             sizeof(one));
      rc != 0) {
    return rc == -ENOPROTOOPT ? "the kernel has no TLS_RX_EXPECT_NO_PAD (Linux 6.0 and later)"
                              : Describe("setsockopt(TLS_RX_EXPECT_NO_PAD)", -rc);
  }
  // Several records, each padded by a different amount, sent at once.
  std::vector<unsigned char> want;
  std::vector<unsigned char> wire;
  for (std::size_t i = 0; i < kNoPadRecords; ++i) {
    std::vector<unsigned char> data(kNoPadRecordData);
    for (std::size_t j = 0; j < data.size(); ++j) data[j] = static_cast<unsigned char>(i * 31 + j * 7 + 1);
    if (!SealPaddedRecord(i, data, 1 + i * 100, wire)) return "could not seal a test record (OpenSSL AES-128-GCM)";
    want.insert(want.end(), data.begin(), data.end());
  }
  const timeval timeout{1, 0};
  ::setsockopt(rx_fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (::send(pair.client.get(), wire.data(), wire.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(wire.size())) {
    return Describe("send of the test records", errno);
  }
  std::vector<unsigned char> got(want.size() + 64);
  std::size_t have = 0;
  while (have < want.size()) {
    iovec iov{got.data() + have, got.size() - have};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n = detail::sys::RecvMsg(rx_fd, &msg, 0);
    if (n <= 0) {
      return "the kernel failed to read padded records with TLS_RX_EXPECT_NO_PAD on (" +
             (n == 0 ? std::string("end of stream") : Describe("recvmsg", static_cast<int>(-n))) + " after " +
             std::to_string(have) + " of " + std::to_string(want.size()) + " bytes)";
    }
    have += static_cast<std::size_t>(n);
  }
  if (have != want.size() || !std::equal(want.begin(), want.end(), got.begin())) {
    return "the kernel returned wrong bytes for padded records with TLS_RX_EXPECT_NO_PAD on (a broken retry, as "
           "in Linux 6.1)";
  }
  return {};
}

#endif  // __linux__

}  // namespace

Capabilities Probe() {
  Capabilities caps;
  caps.ciphers = EmptyRows();
  utsname uts{};
  if (::uname(&uts) == 0) caps.kernel = uts.release;
#if !KTLS_KERNEL_TLS
  caps.reason = detail::kNoKernelTlsReason;
  caps.rx_no_pad_reason = caps.reason;
  return caps;
#else

  {
    PairResult pair = ConnectedPair();
    if (pair.err != 0) {
      caps.reason = "cannot make a loopback TCP connection to probe with: " + Describe(pair.step, pair.err);
      caps.rx_no_pad_reason = caps.reason;
      return caps;
    }
    const int rc = AttachUlp(pair.client.get());
    if (rc != 0) {
      caps.reason = rc == -ENOENT
                        ? "the kernel has no \"tls\" upper-layer protocol (CONFIG_TLS off or the tls module not loaded): " +
                              Describe("setsockopt(TCP_ULP)", ENOENT)
                        : Describe("setsockopt(TCP_ULP, \"tls\")", -rc);
      caps.rx_no_pad_reason = caps.reason;
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

  if (caps.Supports(TlsVersion::kTls13, Cipher::kAes128Gcm, true)) {
    caps.rx_no_pad_reason = ProbeRxNoPad();
    caps.rx_no_pad = caps.rx_no_pad_reason.empty();
  } else {
    caps.rx_no_pad_reason = "the kernel takes no TLS 1.3 AES_128_GCM RX key to try it with";
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
