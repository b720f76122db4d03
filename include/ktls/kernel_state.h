// ktls/kernel_state.h: what the kernel says about one connection's kTLS,
// asked now (Connection::kernel_state()).
//
// ktls knows where it put each direction; this asks the kernel too: the
// record sequence numbers it holds (getsockopt(SOL_TLS, TLS_TX/TLS_RX)) and
// how the tls ULP protects each direction (sock_diag's INET_DIAG_ULP_INFO,
// the view `ss -tni` prints as "tcp-ulp-tls"). A few system calls: for
// diagnostics and metrics scrapes, not for every request.
#ifndef KTLS_KERNEL_STATE_H_
#define KTLS_KERNEL_STATE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ktls/export.h"
#include "ktls/types.h"

namespace ktls {

// KernelTlsConf: how the kernel handles one direction of a socket with the
// tls ULP (include/uapi/linux/tls.h TLS_CONF_*).
enum class KernelTlsConf : std::uint8_t {
  kUnknown,       // Not reported (no ULP info; see KernelUlpInfo::reported).
  kBase,          // The ULP is attached, but no key for this direction.
  kSoftware,      // The kernel's crypto (what UML and most machines do).
  kDevice,        // The network card encrypts (TLS_CONF_HW).
  kDeviceRecord,  // The card does whole records (TLS_CONF_HW_RECORD).
};

// KernelTlsConfName returns "unknown", "base", "software", "device" or
// "device_record".
KTLS_API std::string_view KernelTlsConfName(KernelTlsConf conf) noexcept;

// KernelUlpInfo: sock_diag's INET_DIAG_ULP_INFO for the socket.
struct KTLS_API KernelUlpInfo {
  // reported: the kernel answered the sock_diag query with ULP info. It
  // gives ULP info only to CAP_NET_ADMIN (root, or a container's root), and
  // only for a socket with a ULP; why_not says which it was, when known.
  bool reported = false;
  std::string why_not;
  std::string ulp;               // "tls".
  std::uint16_t version = 0;     // 0x0303 (TLS 1.2) or 0x0304 (TLS 1.3); 0 until a key is set.
  std::uint16_t cipher_type = 0; // TLS_CIPHER_*: 51 AES-128-GCM, 52 AES-256-GCM, 53 AES-128-CCM, 54 ChaCha20-Poly1305.
  KernelTlsConf tx_conf = KernelTlsConf::kUnknown;
  KernelTlsConf rx_conf = KernelTlsConf::kUnknown;
  bool zerocopy_tx = false;  // TLS_TX_ZEROCOPY_RO is on (Linux 5.19; device offload only).
  bool rx_no_pad = false;    // TLS_RX_EXPECT_NO_PAD is on (Linux 6.0).
};

// KernelDirectionState: one direction of a connection.
struct KTLS_API KernelDirectionState {
  // in_kernel: kTLS protects this direction (Connection::tx()/rx() is
  // Offload::kKernel); false: OpenSSL does, in this process.
  bool in_kernel = false;
  // why_not: why the direction stayed in OpenSSL (FallbackReason::kNone when
  // it is in the kernel); OffloadOptions::on_fallback was told the details.
  FallbackReason why_not = FallbackReason::kNone;
  // record_seq: the sequence number of the next record under the current
  // key, as the kernel reports it: the records sent (TX) or received (RX)
  // under that key, including any OpenSSL handled before offload. nullopt
  // when the direction is not in the kernel, or the kernel would not say.
  std::optional<std::uint64_t> record_seq;
  // key_updates: TLS 1.3 key updates of this direction since the handshake
  // (Connection::tx_key_updates()/rx_key_updates(); those OpenSSL made, for
  // a direction it holds, are no longer counted after Close).
  std::uint64_t key_updates = 0;
};

// KernelState: Connection::kernel_state().
struct KTLS_API KernelState {
  // cipher: what kTLS carries, when a direction is in the kernel.
  std::optional<TlsVersion> version;
  std::optional<Cipher> cipher;
  std::string cipher_suite;  // The IANA name (SessionInfo::cipher_suite), always.
  KernelDirectionState tx;
  KernelDirectionState rx;
  // rx_no_pad: TLS_RX_EXPECT_NO_PAD is on for this connection's RX
  // (OffloadOptions::rx_expect_no_pad); rx_no_pad_why_not says why not
  // when it is off (not asked for, TLS 1.2, RX not in the kernel, or the
  // probe found it unsafe on this kernel).
  bool rx_no_pad = false;
  std::string rx_no_pad_why_not;
  KernelUlpInfo ulp;
};

// QuerySocketUlpInfo asks sock_diag about the TCP socket fd (IPv4 or IPv6,
// connected). For a socket ktls did not make, too.
KTLS_API KernelUlpInfo QuerySocketUlpInfo(int fd);

}  // namespace ktls

#endif  // KTLS_KERNEL_STATE_H_
