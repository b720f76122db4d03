// conn/traffic_keys.h: one direction's kernel crypto_info from a TLS 1.3
// traffic secret, and the record-count limits ktls keeps to.
#ifndef KTLS_SRC_CONN_TRAFFIC_KEYS_H_
#define KTLS_SRC_CONN_TRAFFIC_KEYS_H_

#include <cstdint>
#include <optional>

#include "kernel/crypto_info.h"
#include "keys/secret.h"
#include "ktls/result.h"
#include "ktls/types.h"

namespace ktls::detail {

// PackTls13Direction derives key and IV from secret and packs them with the
// sequence number of the next record.
Result<KernelCryptoInfo> PackTls13Direction(Cipher cipher, const Secret& secret, std::uint64_t rec_seq);

// DefaultKeyUpdateThreshold is the TX record count at which ktls updates
// keys when the caller did not choose one; 0 means never. AES-GCM: 2^24
// (RFC 8446 5.5 allows 2^24.5 full-size records). AES-CCM: 2^21, below the
// analysis RFC 9001 6.6 gives for CCM. ChaCha20-Poly1305: never; its limit
// is beyond the 2^64 sequence numbers.
std::uint64_t DefaultKeyUpdateThreshold(Cipher cipher) noexcept;

// RecSeqOf reads the record sequence number out of a crypto_info the kernel
// returned from getsockopt(SOL_TLS, TLS_TX or TLS_RX).
std::optional<std::uint64_t> RecSeqOf(const unsigned char* info, std::size_t len);

}  // namespace ktls::detail

#endif  // KTLS_SRC_CONN_TRAFFIC_KEYS_H_
