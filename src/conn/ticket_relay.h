// conn/ticket_relay.h: TLS 1.3 session tickets that kTLS received, handed to
// OpenSSL so that they become ordinary resumable sessions.
//
// With RX in the kernel, a NewSessionTicket arrives as a decrypted control
// record that OpenSSL never sees, and a ticket alone resumes nothing: the
// session's PSK comes from the resumption secret that only the SSL holds.
// The relay keeps the SSL and what its record layer expects of the next
// record it reads: the peer's traffic key and IV at offload (the very key
// OpenSSL itself still holds) and OpenSSL's next read sequence number. Each
// ticket message is sealed again as that record and fed to SSL_read through
// a memory BIO: OpenSSL derives the PSK, builds the SSL_SESSION (lifetime,
// nonce, max_early_data, all its own) and calls the context's new-session
// callback, exactly as if it had read the ticket from the socket. A ticket
// OpenSSL refuses fails the same way it would in userspace: OpenSSL writes
// its alert (to the no-write BIO, which ktls relays through the kernel).
//
// What it keeps per connection: the SSL (its record buffers released
// between tickets), a memory BIO, and 60 bytes of key, IV and counter: about
// 20 KB of heap in all (ktls-bench client_memory.heap; 1.4 KB without),
// against 52 KB for an OpenSSL client in userspace. The key goes when the
// relay goes: at close, or at the peer's first KeyUpdate, after which RFC
// 8446 7.2 wants the old key deleted.
#ifndef KTLS_SRC_CONN_TICKET_RELAY_H_
#define KTLS_SRC_CONN_TICKET_RELAY_H_

#include <openssl/ssl.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "keys/secret.h"
#include "ktls/result.h"
#include "ktls/types.h"

namespace ktls::detail {

class TicketRelay {
 public:
  // Create attaches a memory BIO as ssl's read side (ssl owns it). ssl must
  // have finished a TLS 1.3 handshake and must outlive the relay;
  // peer_secret is the peer's application traffic secret OpenSSL reads
  // with, next_read_seq the sequence number of the next record OpenSSL
  // would read.
  static Result<std::unique_ptr<TicketRelay>> Create(SSL* ssl, Cipher cipher, const Secret& peer_secret,
                                                     std::uint64_t next_read_seq);

  // Deliver hands one complete NewSessionTicket (handshake header included)
  // to OpenSSL. An error means OpenSSL refused it (and wrote the alert it
  // would send) or could not run.
  Result<void> Deliver(std::span<const unsigned char> message);

  TicketRelay(const TicketRelay&) = delete;
  TicketRelay& operator=(const TicketRelay&) = delete;

 private:
  TicketRelay(SSL* ssl, BIO* rbio, Cipher cipher, std::uint64_t next_read_seq)
      : ssl_(ssl), rbio_(rbio), cipher_(cipher), seq_(next_read_seq) {}
  // Seal appends one TLS 1.3 record holding fragment as a handshake record
  // under the next sequence number.
  Result<void> Seal(std::span<const unsigned char> fragment, std::vector<unsigned char>& out);

  SSL* ssl_;   // Not owned.
  BIO* rbio_;  // Owned by ssl_.
  Cipher cipher_;
  Secret key_;
  Secret iv_;
  std::uint64_t seq_;
};

}  // namespace ktls::detail

#endif  // KTLS_SRC_CONN_TICKET_RELAY_H_
