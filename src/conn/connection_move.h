// conn/connection_move.h: the state a connection with both directions in
// the kernel needs to go on in another process (Connection::Export and
// Import, ktls/move.h), and its byte format.
//
// Format (all integers big-endian), version 1:
//   "KTLSCONN" | u16 format version | u32 length of the rest, then
//   u8 role (0 client, 1 server) | u16 TLS version (0x0303, 0x0304) |
//   u8 cipher (ktls::Cipher) | u8 flags (MovedFlag) |
//   u64 key_update_threshold | u64 tx_open_record | u64 handshake_record_len |
//   u64 tx_key_updates | u64 rx_key_updates | u64 tickets_relayed |
//   u64 tickets_dropped | u64 renegotiations_refused |
//   u8 tx_warning_pending | u8 warning_alerts_in_a_row |
//   secret tx | secret rx                       (u8 length, bytes)
//   blob early_plaintext | blob splice_rx_held |
//   blob handshake_bytes | blob alert_bytes     (u32 length, bytes)
//   string protocol | string cipher_suite | string alpn | string sni
//                                               (u16 length, bytes)
//   u8 resumed | u16 certificate count, each a blob |
//   u64 linger milliseconds | u64 linger max_bytes
// Nothing may follow. ParseMovedState checks every length and value.
#ifndef KTLS_SRC_CONN_CONNECTION_MOVE_H_
#define KTLS_SRC_CONN_CONNECTION_MOVE_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "keys/secret.h"
#include "ktls/connection.h"
#include "ktls/offload.h"
#include "ktls/result.h"
#include "ktls/types.h"

namespace ktls::detail {

inline constexpr std::uint16_t kMovedStateFormat = 1;

// MovedState: everything of a ConnectionImpl that is not in the kernel.
// Wipes its secrets and plaintext when destroyed.
struct MovedState {
  MovedState() = default;
  MovedState(MovedState&&) = default;
  MovedState& operator=(MovedState&&) = default;
  ~MovedState();

  bool is_server = false;
  TlsVersion version = TlsVersion::kTls13;
  Cipher cipher = Cipher::kAes128Gcm;
  // Flags.
  bool kernel_rekey = false;
  bool peer_closed = false;
  bool sent_close = false;
  bool peer_eof = false;
  bool tx_update_pending = false;
  bool tx_update_request_peer = false;
  bool discard_handshake_record = false;
  bool sent_fin = false;
  std::uint64_t key_update_threshold = 0;
  std::uint64_t tx_open_record = 0;
  std::uint64_t handshake_record_len = 0;
  std::uint64_t tx_key_updates = 0;
  std::uint64_t rx_key_updates = 0;
  std::uint64_t tickets_relayed = 0;
  std::uint64_t tickets_dropped = 0;
  std::uint64_t renegotiations_refused = 0;
  std::uint8_t tx_warning_pending = 0;
  std::uint8_t warning_alerts_in_a_row = 0;
  Secret tx_secret;
  Secret rx_secret;
  std::vector<std::byte> early_plaintext;  // Not yet delivered.
  std::vector<std::byte> splice_rx_held;
  std::vector<unsigned char> handshake_bytes;
  std::vector<unsigned char> alert_bytes;
  SessionInfo session;
  LingerOptions linger;
};

// SerializeMovedState: the format above, in one allocation (no copy of the
// secrets is left behind in freed memory).
std::vector<std::byte> SerializeMovedState(const MovedState& state);

// ParseMovedState: the inverse; a kUsage error naming what is wrong for
// anything Serialize could not have made.
Result<MovedState> ParseMovedState(std::span<const std::byte> bytes);

// ImportConnection: Connection::Import, the connection marked as from an
// untrusted sender (ConnectionImpl::from_untrusted_sender) if so.
Result<Connection> ImportConnection(int fd, std::span<const std::byte> state, bool from_untrusted_sender);

// TrafficSecretLength: the length of a TLS 1.3 traffic secret for cipher
// (its suite's hash).
std::size_t TrafficSecretLength(Cipher cipher) noexcept;

}  // namespace ktls::detail

#endif  // KTLS_SRC_CONN_CONNECTION_MOVE_H_
