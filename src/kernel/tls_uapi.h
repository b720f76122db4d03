// kernel/tls_uapi.h: the kernel TLS ABI, defined once.
//
// Everything here mirrors include/uapi/linux/tls.h (and the TCP_ULP option
// from include/uapi/linux/tcp.h). It is spelled out rather than included so
// ktls builds against old or missing kernel headers, and on systems other
// than Linux. The values are ABI: the kernel never changes them. Each entry
// names the kernel version that introduced it.
#ifndef KTLS_SRC_KERNEL_TLS_UAPI_H_
#define KTLS_SRC_KERNEL_TLS_UAPI_H_

#include <cstdint>

namespace ktls::detail::uapi {

// include/uapi/linux/tcp.h, Linux 4.13.
inline constexpr int kSolTcp = 6;  // IPPROTO_TCP
inline constexpr int kTcpUlp = 31;
inline constexpr char kTlsUlpName[] = "tls";

// include/linux/socket.h, Linux 4.13.
inline constexpr int kSolTls = 282;

// setsockopt/getsockopt names at SOL_TLS. TLS_TX: Linux 4.13; TLS_RX: 4.17;
// TLS_TX_ZEROCOPY_RO: 5.19; TLS_RX_EXPECT_NO_PAD: 6.0.
inline constexpr int kTlsTx = 1;
inline constexpr int kTlsRx = 2;
inline constexpr int kTlsTxZerocopyRo = 3;
inline constexpr int kTlsRxExpectNoPad = 4;

// cmsg types at SOL_TLS. TLS_SET_RECORD_TYPE: 4.13; TLS_GET_RECORD_TYPE: 4.17.
inline constexpr int kTlsSetRecordType = 1;
inline constexpr int kTlsGetRecordType = 2;

// Protocol versions, as the record layer writes them.
inline constexpr std::uint16_t kTls12Version = 0x0303;  // TLS_1_2_VERSION, 4.13
inline constexpr std::uint16_t kTls13Version = 0x0304;  // TLS_1_3_VERSION, 5.1

// Cipher types and their sizes.
// AES-128-GCM: TLS 1.2 in 4.13, TLS 1.3 in 5.1.
inline constexpr std::uint16_t kCipherAesGcm128 = 51;
inline constexpr int kAesGcm128IvLen = 8;
inline constexpr int kAesGcm128KeyLen = 16;
inline constexpr int kAesGcm128SaltLen = 4;
inline constexpr int kAesGcm128TagLen = 16;
inline constexpr int kAesGcm128RecSeqLen = 8;

// AES-256-GCM: 5.1.
inline constexpr std::uint16_t kCipherAesGcm256 = 52;
inline constexpr int kAesGcm256IvLen = 8;
inline constexpr int kAesGcm256KeyLen = 32;
inline constexpr int kAesGcm256SaltLen = 4;
inline constexpr int kAesGcm256TagLen = 16;
inline constexpr int kAesGcm256RecSeqLen = 8;

// AES-128-CCM: 5.2.
inline constexpr std::uint16_t kCipherAesCcm128 = 53;
inline constexpr int kAesCcm128IvLen = 8;
inline constexpr int kAesCcm128KeyLen = 16;
inline constexpr int kAesCcm128SaltLen = 4;
inline constexpr int kAesCcm128TagLen = 16;
inline constexpr int kAesCcm128RecSeqLen = 8;

// ChaCha20-Poly1305: 5.11. No salt: the whole 12-byte IV goes in iv.
inline constexpr std::uint16_t kCipherChaCha20Poly1305 = 54;
inline constexpr int kChaCha20Poly1305IvLen = 12;
inline constexpr int kChaCha20Poly1305KeyLen = 32;
inline constexpr int kChaCha20Poly1305SaltLen = 0;
inline constexpr int kChaCha20Poly1305TagLen = 16;
inline constexpr int kChaCha20Poly1305RecSeqLen = 8;

// Record content types (RFC 8446 section 5.1).
inline constexpr std::uint8_t kRecordChangeCipherSpec = 20;
inline constexpr std::uint8_t kRecordAlert = 21;
inline constexpr std::uint8_t kRecordHandshake = 22;
inline constexpr std::uint8_t kRecordApplicationData = 23;

// sock_diag's view of the tls ULP (what `ss -tni` prints as tcp-ulp-tls).
// include/uapi/linux/inet_diag.h: INET_DIAG_INFO (the attribute whose
// request bit also brings the ULP info), INET_DIAG_ULP_INFO (Linux 5.3) and
// its nested INET_ULP_INFO_*; include/uapi/linux/tls.h: TLS_INFO_* (5.3;
// TLS_INFO_ZC_RO_TX 5.19, TLS_INFO_RX_NO_PAD 6.0) and TLS_CONF_*.
inline constexpr int kInetDiagInfo = 2;
inline constexpr int kInetDiagUlpInfo = 19;
inline constexpr int kInetUlpInfoName = 1;
inline constexpr int kInetUlpInfoTls = 2;
inline constexpr int kTlsInfoVersion = 1;
inline constexpr int kTlsInfoCipher = 2;
inline constexpr int kTlsInfoTxConf = 3;
inline constexpr int kTlsInfoRxConf = 4;
inline constexpr int kTlsInfoZcRoTx = 5;
inline constexpr int kTlsInfoRxNoPad = 6;
inline constexpr int kTlsConfBase = 1;
inline constexpr int kTlsConfSw = 2;
inline constexpr int kTlsConfHw = 3;
inline constexpr int kTlsConfHwRecord = 4;

// struct tls_crypto_info.
struct CryptoInfo {
  std::uint16_t version;
  std::uint16_t cipher_type;
};

// struct tls12_crypto_info_aes_gcm_128 (used for TLS 1.3 too).
struct CryptoInfoAesGcm128 {
  CryptoInfo info;
  unsigned char iv[kAesGcm128IvLen];
  unsigned char key[kAesGcm128KeyLen];
  unsigned char salt[kAesGcm128SaltLen];
  unsigned char rec_seq[kAesGcm128RecSeqLen];
};

// struct tls12_crypto_info_aes_gcm_256.
struct CryptoInfoAesGcm256 {
  CryptoInfo info;
  unsigned char iv[kAesGcm256IvLen];
  unsigned char key[kAesGcm256KeyLen];
  unsigned char salt[kAesGcm256SaltLen];
  unsigned char rec_seq[kAesGcm256RecSeqLen];
};

// struct tls12_crypto_info_aes_ccm_128.
struct CryptoInfoAesCcm128 {
  CryptoInfo info;
  unsigned char iv[kAesCcm128IvLen];
  unsigned char key[kAesCcm128KeyLen];
  unsigned char salt[kAesCcm128SaltLen];
  unsigned char rec_seq[kAesCcm128RecSeqLen];
};

// struct tls12_crypto_info_chacha20_poly1305.
struct CryptoInfoChaCha20Poly1305 {
  CryptoInfo info;
  unsigned char iv[kChaCha20Poly1305IvLen];
  unsigned char key[kChaCha20Poly1305KeyLen];
  // The kernel declares salt[0] here; a zero-length member adds nothing.
  unsigned char rec_seq[kChaCha20Poly1305RecSeqLen];
};

// The kernel checks optlen against sizeof() of these structs exactly.
static_assert(sizeof(CryptoInfoAesGcm128) == 40);
static_assert(sizeof(CryptoInfoAesGcm256) == 56);
static_assert(sizeof(CryptoInfoAesCcm128) == 40);
static_assert(sizeof(CryptoInfoChaCha20Poly1305) == 56);

}  // namespace ktls::detail::uapi

#endif  // KTLS_SRC_KERNEL_TLS_UAPI_H_
