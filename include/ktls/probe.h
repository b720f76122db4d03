// ktls/probe.h: what kernel TLS can do on this machine, measured.
//
// The kernel only accepts the "tls" upper-layer protocol on an established
// TCP socket, so the probe builds a connected loopback TCP pair for every
// question it asks. Nothing is inferred from the kernel version.
#ifndef KTLS_PROBE_H_
#define KTLS_PROBE_H_

#include <string>
#include <vector>

#include "ktls/export.h"
#include "ktls/types.h"

namespace ktls {

// CipherSupport: whether the kernel accepted TLS_TX and TLS_RX for one
// (version, cipher) pair.
struct KTLS_API CipherSupport {
  TlsVersion version = TlsVersion::kTls13;
  Cipher cipher = Cipher::kAes128Gcm;
  bool tx = false;
  bool rx = false;
};

// Capabilities: the result of Probe().
struct KTLS_API Capabilities {
  // available: the "tls" ULP attaches and at least one (version, cipher)
  // pair takes both TX and RX.
  bool available = false;
  // ulp: setsockopt(TCP_ULP, "tls") succeeded on an established socket.
  bool ulp = false;
  // rekey: the kernel accepts TLS_TX a second time on a TLS 1.3 socket
  // (Linux 6.14 and later). EBUSY on the second set means no.
  bool rekey = false;
  // rx_no_pad: TLS_RX_EXPECT_NO_PAD (Linux 6.0; TLS 1.3 RX) is safe to turn
  // on here (OffloadOptions::rx_expect_no_pad). Measured, not inferred
  // from the version: the probe sets it on a loopback socket and sends it
  // padded records, which the kernel must decrypt a second time without
  // the guess. Linux 6.1 accepts the option but returns wrong bytes for
  // such records, so there it is false.
  bool rx_no_pad = false;
  // rx_no_pad_reason: why rx_no_pad is false (empty when it is true).
  std::string rx_no_pad_reason;
  // kernel: the running kernel's release, as `uname -r` prints it.
  std::string kernel;
  // reason: why kTLS is unavailable (empty when available).
  std::string reason;
  // ciphers: one row for each version and cipher, TLS 1.2 rows first, in the
  // order of kAllCiphers.
  std::vector<CipherSupport> ciphers;

  // Supports reports the row for (version, cipher).
  bool Supports(TlsVersion version, Cipher cipher, bool need_rx) const noexcept;
};

// Probe measures the kernel's TLS capabilities now. It opens and closes a
// handful of loopback sockets and takes a few milliseconds; it never fails,
// reporting what went wrong in Capabilities::reason instead. A library
// built without kernel TLS (the CMake option KTLS_KERNEL_TLS off, the
// default on systems other than Linux) asks nothing and reports it
// unavailable, with the reason "built without kernel TLS".
KTLS_API Capabilities Probe();

// CachedCapabilities runs Probe() once per process and returns that result.
// Thread-safe.
KTLS_API const Capabilities& CachedCapabilities();

// Available is the cheap shortcut: CachedCapabilities().available.
KTLS_API bool Available();

}  // namespace ktls

#endif  // KTLS_PROBE_H_
