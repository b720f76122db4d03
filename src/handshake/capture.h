// handshake/capture.h: what ktls learns from OpenSSL during a handshake, so
// it can hand the connection to the kernel afterwards.
//
// Traffic secrets come from the key-log callback (OpenSSL 3.0 has no other
// way to get TLS 1.3 traffic secrets). Record sequence numbers come from the
// message callback: it is told of every record header read or written, and of
// every handshake message; counting headers since the last key change gives
// the sequence number of the next record in each direction, exactly, whatever
// the handshake looked like (session tickets, client certificates,
// HelloRetryRequest, resumption).
#ifndef KTLS_SRC_HANDSHAKE_CAPTURE_H_
#define KTLS_SRC_HANDSHAKE_CAPTURE_H_

#include <openssl/ssl.h>

#include <atomic>
#include <cstdint>

#include "keys/secret.h"
#include "ktls/result.h"

namespace ktls::detail {

// DirectionCount: records in one direction under the current key.
struct DirectionCount {
  // app_keys: the application traffic key (secret_0) is in use; set when our
  // Finished was written (TX) or the peer's was read (RX).
  bool app_keys = false;
  // key_updated: a KeyUpdate moved this direction past secret_0.
  bool key_updated = false;
  // records: records under the current key, i.e. the next record's sequence
  // number.
  std::uint64_t records = 0;
};

// CaptureState: attached to one SSL (ex_data) by PrepareSsl; freed, and its
// secrets wiped, with the SSL.
struct CaptureState {
  Secret client_secret;  // CLIENT_TRAFFIC_SECRET_0
  Secret server_secret;  // SERVER_TRAFFIC_SECRET_0
  DirectionCount tx;
  DirectionCount rx;
  // rejected_keylog_lines: lines for this SSL that did not parse or whose
  // client random did not match; nonzero means the secrets are not to be
  // trusted.
  int rejected_keylog_lines = 0;
  // What OpenSSL wrote, for a Connection whose TX is in the kernel: there
  // OpenSSL's writes never reach the wire, and ktls sends their equivalent.
  int written_key_updates = 0;        // KeyUpdate messages.
  int written_alerts = 0;             // Alerts; the last one's bytes below.
  unsigned char last_written_alert[2] = {0, 0};
  std::atomic<std::uint64_t> read_key_updates = 0;  // KeyUpdates OpenSSL received.
  // KeyUpdates OpenSSL wrote (never reset): with TX in OpenSSL these are
  // the connection's TX key updates, its own answers to update_requested
  // included.
  std::atomic<std::uint64_t> sent_key_updates = 0;
  // KeyUpdates OpenSSL received with update_requested. OpenSSL answers only
  // at its next SSL_write, which never comes with TX in the kernel; ktls
  // answers these itself.
  std::uint64_t read_update_requests = 0;
};

// InstallContextCapture installs the chaining key-log callback on ctx.
Result<void> InstallContextCapture(SSL_CTX* ctx);

// InstallSslCapture attaches a CaptureState to ssl and sets the message
// callback, read-ahead off, and OpenSSL's own kTLS off.
Result<void> InstallSslCapture(SSL* ssl);

// GetCaptureState returns ssl's state, or nullptr if ssl was not prepared.
CaptureState* GetCaptureState(const SSL* ssl);

// CountRecordEvent applies one message-callback event to state; exposed for
// unit tests that replay OpenSSL's callback sequences. tls13: the
// negotiated version is TLS 1.3 (its keys change at Finished and KeyUpdate;
// TLS 1.2's at ChangeCipherSpec).
void CountRecordEvent(CaptureState& state, bool write_p, int content_type, const unsigned char* buf,
                      std::size_t len, bool tls13 = true);

}  // namespace ktls::detail

#endif  // KTLS_SRC_HANDSHAKE_CAPTURE_H_
