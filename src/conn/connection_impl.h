// conn/connection_impl.h: the state behind ktls::Connection.
#ifndef KTLS_SRC_CONN_CONNECTION_IMPL_H_
#define KTLS_SRC_CONN_CONNECTION_IMPL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "core/openssl_ptr.h"
#include "core/unique_fd.h"
#include "ktls/connection.h"
#include "ktls/types.h"

namespace ktls::detail {

class ConnectionImpl {
 public:
  // fd: the socket. ssl: the OpenSSL connection, while any direction needs
  // it. Directions start in userspace; Offload moves them.
  ConnectionImpl(UniqueFd fd, UniqueSsl ssl, bool is_server);

  Result<IoProgress> Read(std::span<std::byte> buf);
  Result<IoProgress> Write(std::span<const std::byte> data);
  Result<IoProgress> SendFile(int file_fd, off_t offset, std::size_t count);
  Result<void> Shutdown();
  void Close();

  // --- set up by offload (conn/offload.cc) ---
  UniqueFd socket;
  UniqueSsl ssl;  // Null once both directions are in the kernel.
  bool is_server;
  Offload tx = Offload::kUser;
  Offload rx = Offload::kUser;
  SessionInfo session;
  // Plaintext OpenSSL decrypted before RX went to the kernel; delivered
  // before anything the kernel returns.
  std::vector<std::byte> early_plaintext;
  std::size_t early_plaintext_offset = 0;
  // The peer's close_notify was already seen (before or after offload).
  std::atomic<bool> peer_closed = false;
  // OpenSSL tried to write with TX in the kernel (mixed mode); see
  // conn/no_write_bio.h. Written under ssl_mu_.
  bool openssl_write_attempted = false;
  std::atomic<std::uint64_t> tickets_dropped = 0;

 private:
  Result<IoProgress> ReadKernel(std::span<std::byte> buf);
  Result<IoProgress> ReadUser(std::span<std::byte> buf);
  // HandleControlRecord consumes bytes of a non-data record that the
  // kernel returned. Returns an IoProgress with end_of_stream set for
  // close_notify, nullopt to keep reading, or the error that ends the
  // connection.
  std::optional<Result<IoProgress>> HandleControlRecord(unsigned char type, std::span<const std::byte> bytes);
  // SendAlert sends a fatal alert (best effort: the connection is ending).
  void SendFatalAlert(int alert);
  Result<void> SendKernelControlRecord(unsigned char type, std::span<const unsigned char> payload);
  Result<IoProgress> Fail(Error error);
  // WaitFor waits for the socket to become readable (POLLIN) or writable
  // (POLLOUT) when the socket is blocking. Returns false, without waiting,
  // when the caller made the socket non-blocking: then "would block" is the
  // answer to give.
  bool WaitFor(short events);

  // One reader and one writer may run at once: OpenSSL calls are serialised
  // by ssl_mu_ (never held while waiting); the flags are atomic.
  std::mutex ssl_mu_;
  std::atomic<bool> failed_ = false;     // An error ended the connection.
  std::atomic<bool> sent_close_ = false;  // We sent close_notify (or a fatal alert).
  std::vector<unsigned char> handshake_bytes_;  // Partial post-handshake message.
  std::vector<unsigned char> alert_bytes_;      // Partial alert.
};

}  // namespace ktls::detail

#endif  // KTLS_SRC_CONN_CONNECTION_IMPL_H_
