// tests/support/sockets.h: sockets, byte I/O and small helpers for tests
// that talk over real loopback TCP connections.
//
// These call the kernel directly, not through the library's syscall seam: they
// drive the *other* end of a connection, or set one up. Tests call the seam
// (ktls::detail::sys) themselves when the call under test must go through it.
#ifndef KTLS_TESTS_SUPPORT_SOCKETS_H_
#define KTLS_TESTS_SUPPORT_SOCKETS_H_


#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "core/unique_fd.h"

namespace ktls::testing {

// UniqueFd: the library's own move-only fd (src/core/unique_fd.h).
using UniqueFd = ktls::detail::UniqueFd;

// SocketPair: the two ends of one established TCP connection.
struct SocketPair {
  UniqueFd client;  // The end that called connect().
  UniqueFd server;  // The end accept() returned.
};

// LoopbackTcpPair connects a fresh TCP socket to a listener on 127.0.0.1
// (ephemeral port) and returns both established ends; the listener is closed.
// Throws std::system_error naming the failed call.
SocketPair LoopbackTcpPair();

// ConnectLoopback connects a fresh TCP socket to 127.0.0.1:port and, when
// io_timeout is not zero, sets it (SetIoTimeout). An empty UniqueFd if
// anything failed (errno set).
UniqueFd ConnectLoopback(std::uint16_t port, std::chrono::milliseconds io_timeout = {});

// SetIoTimeout sets SO_RCVTIMEO and SO_SNDTIMEO so a test that goes wrong
// fails with EAGAIN instead of hanging. Returns false if setsockopt failed.
bool SetIoTimeout(int fd, std::chrono::milliseconds timeout);

// WriteAll writes every byte (retrying short writes and EINTR; never raises
// SIGPIPE). Returns false on error, errno set.
bool WriteAll(int fd, std::span<const std::uint8_t> bytes);

// ReadExactly reads exactly out.size() bytes. Returns false on error (errno
// set) or end of stream before that (errno 0).
bool ReadExactly(int fd, std::span<std::uint8_t> out);

// ReadTlsStat parses /proc/net/tls_stat ("TlsTxSw   3" per line) into a map
// from counter name to value. Empty if the file does not exist (no kTLS).
std::map<std::string, long long> ReadTlsStat();

// TlsStatDelta: how much counter name grew from before (a ReadTlsStat) to
// now; -1 where either reading lacks it, which no count can equal.
long long TlsStatDelta(const std::map<std::string, long long>& before, const std::string& name);

// RandomBytes returns len bytes from OpenSSL's RAND_bytes.
std::vector<std::uint8_t> RandomBytes(std::size_t len);

// Sha256Hex returns the SHA-256 of bytes as 64 lower-case hex digits.
std::string Sha256Hex(std::span<const std::uint8_t> bytes);

}  // namespace ktls::testing

#endif  // KTLS_TESTS_SUPPORT_SOCKETS_H_
