// conn/tls_constants.h: the TLS numbers a connection sends and checks after
// the handshake (alerts, post-handshake messages, record sizes), once for
// every file of ConnectionImpl.
#ifndef KTLS_SRC_CONN_TLS_CONSTANTS_H_
#define KTLS_SRC_CONN_TLS_CONSTANTS_H_

#include <cstddef>
#include <cstdint>

namespace ktls::detail {

// TLS alert descriptions ktls sends or names (RFC 8446 6).
inline constexpr int kAlertCloseNotify = 0;
inline constexpr int kAlertUnexpectedMessage = 10;
inline constexpr int kAlertBadRecordMac = 20;
inline constexpr int kAlertRecordOverflow = 22;
inline constexpr int kAlertHandshakeFailure = 40;
inline constexpr int kAlertIllegalParameter = 47;
inline constexpr int kAlertDecodeError = 50;
inline constexpr int kAlertProtocolVersion = 70;
inline constexpr int kAlertInternalError = 80;
inline constexpr int kAlertUserCanceled = 90;
inline constexpr int kAlertNoRenegotiation = 100;
inline constexpr unsigned char kAlertLevelWarning = 1;
inline constexpr unsigned char kAlertLevelFatal = 2;

// Post-handshake messages a peer may send (RFC 8446 4), and TLS 1.2's
// renegotiation openers (RFC 5246 7.4).
inline constexpr unsigned char kHandshakeHelloRequest = 0;
inline constexpr unsigned char kHandshakeClientHello = 1;
inline constexpr unsigned char kHandshakeNewSessionTicket = 4;
inline constexpr unsigned char kHandshakeKeyUpdate = 24;
inline constexpr std::size_t kHandshakeHeaderLen = 4;

// KeyUpdate (RFC 8446 4.6.3): handshake type 24, a 1-byte body.
inline constexpr unsigned char kKeyUpdateNotRequested = 0;
inline constexpr unsigned char kKeyUpdateRequested = 1;

// The largest TLS plaintext record (RFC 8446 5.1).
inline constexpr std::size_t kMaxRecordPlaintext = 16 * 1024;

// MaxRecordsFor bounds the records one write of len bytes makes: full
// records first, one more for a record left open by the previous write.
constexpr std::uint64_t MaxRecordsFor(std::size_t len) {
  return (len + kMaxRecordPlaintext - 1) / kMaxRecordPlaintext + 1;
}

}  // namespace ktls::detail

#endif  // KTLS_SRC_CONN_TLS_CONSTANTS_H_
