// handshake/capture.cc
#include "handshake/capture.h"

#include <openssl/crypto.h>

#include <array>
#include <cstring>
#include <mutex>
#include <string_view>

#include "core/errors.h"
#include "handshake/keylog_line.h"

namespace ktls::detail {
namespace {

// TLS handshake message types (RFC 8446 4).
constexpr unsigned char kHandshakeFinished = 20;
constexpr unsigned char kHandshakeKeyUpdate = 24;

// PreviousKeylog: the key-log callback the context had before ktls's, kept
// in the context's ex_data so ktls can call it with every line.
struct PreviousKeylog {
  SSL_CTX_keylog_cb_func callback = nullptr;
};

void FreeCaptureState(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/, long /*argl*/,
                      void* /*argp*/) {
  delete static_cast<CaptureState*>(ptr);  // ~Secret wipes.
}

void FreePreviousKeylog(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/, long /*argl*/,
                        void* /*argp*/) {
  delete static_cast<PreviousKeylog*>(ptr);
}

int SslIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, FreeCaptureState);
  return index;
}

int CtxIndex() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, FreePreviousKeylog);
  return index;
}

void KeylogCallback(const SSL* ssl, const char* line) {
  SSL_CTX* ctx = SSL_get_SSL_CTX(ssl);
  if (auto* previous = static_cast<PreviousKeylog*>(SSL_CTX_get_ex_data(ctx, CtxIndex()));
      previous != nullptr && previous->callback != nullptr) {
    previous->callback(ssl, line);
  }
  CaptureState* state = GetCaptureState(ssl);
  if (state == nullptr) return;  // Not a connection ktls was asked to prepare.

  const std::string_view text(line);
  if (text.rfind("CLIENT_TRAFFIC_SECRET_0 ", 0) != 0 && text.rfind("SERVER_TRAFFIC_SECRET_0 ", 0) != 0) {
    return;  // Handshake secrets, exporter secrets: not needed.
  }
  std::optional<KeylogLine> parsed = ParseKeylogLine(text);
  std::array<unsigned char, 32> client_random{};
  if (!parsed || SSL_get_client_random(ssl, client_random.data(), client_random.size()) != client_random.size() ||
      CRYPTO_memcmp(client_random.data(), parsed->client_random.data(), client_random.size()) != 0) {
    ++state->rejected_keylog_lines;
    return;
  }
  Secret& target = parsed->label == KeylogLabel::kClientTrafficSecret0 ? state->client_secret : state->server_secret;
  target = parsed->secret;
}

void MessageCallback(int write_p, int /*version*/, int content_type, const void* buf, std::size_t len, SSL* ssl,
                     void* arg) {
  CountRecordEvent(*static_cast<CaptureState*>(arg), write_p != 0, content_type,
                   static_cast<const unsigned char*>(buf), len, SSL_version(ssl) == TLS1_3_VERSION);
}

}  // namespace

void CountRecordEvent(CaptureState& state, bool write_p, int content_type, const unsigned char* buf,
                      std::size_t len, bool tls13) {
  DirectionCount& dir = write_p ? state.tx : state.rx;
  if (content_type == SSL3_RT_ALERT && write_p && len >= 2) {
    ++state.written_alerts;
    state.last_written_alert[0] = buf[0];
    state.last_written_alert[1] = buf[1];
    return;
  }
  if (content_type == SSL3_RT_HEADER) {
    // One record. OpenSSL reports a record's header before the messages it
    // carries, so a key change announced by a message takes effect from the
    // next header on.
    if (!dir.app_keys && len >= 1 && buf[0] == SSL3_RT_CHANGE_CIPHER_SPEC) {
      // TLS 1.2's keys change right after ChangeCipherSpec: the next record
      // is seq 0. Counting from here stays exact however many records the
      // Finished spans (a peer may send it in 1-byte records, RFC 5246
      // 6.2.1). The header is the only sign of a ChangeCipherSpec OpenSSL
      // gives when reading one. The version may not be known yet (a TLS 1.3
      // middlebox-compatibility ChangeCipherSpec looks the same), so this
      // only restarts the count; the Finished decides below.
      dir.records = 0;
      return;
    }
    ++dir.records;
    return;
  }
  if (!tls13) {
    // TLS 1.2: the Finished completes the key change; the records since
    // ChangeCipherSpec, the Finished's included, are already counted.
    // Renegotiation, the only source of a second Finished, is disabled.
    if (content_type == SSL3_RT_HANDSHAKE && len >= 1 && buf[0] == kHandshakeFinished) dir.app_keys = true;
    return;
  }
  // TLS 1.3: ChangeCipherSpec records are middlebox-compatibility noise.
  if (content_type != SSL3_RT_HANDSHAKE || len < 1) return;
  switch (buf[0]) {
    case kHandshakeFinished:
      // The first Finished in a direction switches it to the application
      // traffic key. (ktls never enables post-handshake authentication, the
      // only source of a later Finished.)
      if (!dir.app_keys) {
        dir.app_keys = true;
        dir.records = 0;
      }
      break;
    case kHandshakeKeyUpdate:
      dir.key_updated = true;
      dir.records = 0;
      if (write_p) {
        ++state.written_key_updates;
        ++state.sent_key_updates;
      } else {
        ++state.read_key_updates;
        // KeyUpdate: type(1) length(3) request_update(1); 1 = update_requested.
        if (len >= 5 && buf[4] == 1) ++state.read_update_requests;
      }
      break;
    default:
      break;
  }
}

Result<void> InstallContextCapture(SSL_CTX* ctx) {
  if (ctx == nullptr) return MakeError(ErrorCategory::kUsage, "PrepareContext: null SSL_CTX");
  // Serialise preparation so two threads preparing one context cannot both
  // record ktls's own callback as "previous" and loop.
  static std::mutex mu;
  std::lock_guard lock(mu);
  SSL_CTX_keylog_cb_func current = SSL_CTX_get_keylog_callback(ctx);
  if (current == KeylogCallback) return {};  // Already prepared.
  auto* previous = new PreviousKeylog{current};
  if (SSL_CTX_set_ex_data(ctx, CtxIndex(), previous) != 1) {
    delete previous;
    return OpenSslError(ErrorCategory::kInternal, "SSL_CTX_set_ex_data");
  }
  SSL_CTX_set_keylog_callback(ctx, KeylogCallback);
  return {};
}

Result<void> InstallSslCapture(SSL* ssl) {
  if (ssl == nullptr) return MakeError(ErrorCategory::kUsage, "PrepareSsl: null SSL");
  if (SSL_CTX_get_keylog_callback(SSL_get_SSL_CTX(ssl)) != KeylogCallback) {
    return MakeError(ErrorCategory::kUsage, "PrepareSsl: call PrepareContext on the SSL's context first");
  }
  if (GetCaptureState(ssl) != nullptr) return {};
  auto* state = new CaptureState();
  if (SSL_set_ex_data(ssl, SslIndex(), state) != 1) {
    delete state;
    return OpenSslError(ErrorCategory::kInternal, "SSL_set_ex_data");
  }
  SSL_set_msg_callback(ssl, MessageCallback);
  SSL_set_msg_callback_arg(ssl, state);
  // Read-ahead would let OpenSSL pull records meant for the kernel into its
  // own buffer; without it OpenSSL reads exactly one record at a time.
  // Offload turns it back on where RX stays in OpenSSL for good.
  SSL_set_read_ahead(ssl, 0);
  // OpenSSL's own kTLS would race ktls for the socket.
  SSL_clear_options(ssl, SSL_OP_ENABLE_KTLS);
  // Renegotiation cannot work once records are in the kernel.
  SSL_set_options(ssl, SSL_OP_NO_RENEGOTIATION);
  // 0-RTT data is under a different key and replayable: never accepted.
  SSL_set_max_early_data(ssl, 0);
  SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  return {};
}

CaptureState* GetCaptureState(const SSL* ssl) {
  return static_cast<CaptureState*>(SSL_get_ex_data(ssl, SslIndex()));
}

}  // namespace ktls::detail
