// ktls/session_cache.h: the sessions a client keeps to resume later
// connections to the same server.
//
//   ktls::ClientConfig config;                    // has a SessionCache
//   auto first = ktls::Connect("example.org", 443, config);   // full handshake
//   ...read: the server's tickets arrive, even with RX in the kernel...
//   auto second = ktls::Connect("example.org", 443, config);  // resumes
//   second->session().resumed;                    // true
#ifndef KTLS_SESSION_CACHE_H_
#define KTLS_SESSION_CACHE_H_

#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "ktls/export.h"

namespace ktls {

namespace detail {
struct SessionCacheAccess;
}

// SessionCache: resumable sessions per server (host and port), bounded and
// thread-safe. ktls::Connect takes a session from it before the handshake
// and puts in every session the server gives: TLS 1.3 tickets (also those
// that arrive after RX went to the kernel) and TLS 1.2 sessions (session ID
// or ticket).
//
// A TLS 1.3 session is used once, as RFC 8446 C.4 recommends (a ticket used
// twice lets an observer link the connections); servers send several for
// that reason (OpenSSL: 2). A TLS 1.2 session stays until it expires or is
// replaced: resuming it again is how TLS 1.2 works. Expired sessions are
// never handed out.
//
// A resumed handshake checks no certificate, on either side: a session
// stands for the server it was made with and for the client certificate
// shown then. So Connect keeps apart the sessions of configs that would
// authenticate differently: of the sessions Connect stored, it resumes only
// those made with the same ClientConfig::sni (where it names another server
// than the host), ca_file and cert_file. With verify on it resumes only a
// session whose certificate matches the name (or IP address) it verifies,
// sessions brought in with Put too. Put's sessions are for any config;
// Take hands out any of host:port's.
class KTLS_API SessionCache {
 public:
  // max_servers: servers kept, least recently used dropped first.
  // max_per_server: sessions kept per server, oldest dropped first.
  explicit SessionCache(std::size_t max_servers = 1024, std::size_t max_per_server = 4);
  ~SessionCache();
  SessionCache(const SessionCache&) = delete;
  SessionCache& operator=(const SessionCache&) = delete;

  // Put stores session for host:port, taking its own reference (the caller
  // keeps theirs). A session that cannot be resumed is ignored. Use it to
  // bring in a session saved elsewhere (PEM_read_SSL_SESSION).
  // verified: the session's handshake verified the server's certificate;
  // Connect with ClientConfig::verify only resumes verified sessions (a
  // resumed handshake checks no certificate). Sessions you Put yourself
  // count as verified unless you say otherwise.
  void Put(const std::string& host, std::uint16_t port, SSL_SESSION* session, bool verified = true);

  // Take returns the newest unexpired session for host:port (the caller
  // owns the reference: SSL_SESSION_free), or nullptr. A TLS 1.3 session is
  // removed from the cache; a TLS 1.2 one stays. only_verified: skip
  // sessions whose handshake did not verify the server.
  SSL_SESSION* Take(const std::string& host, std::uint16_t port, bool only_verified = false);

  // size: sessions held, all servers together.
  std::size_t size() const;

 private:
  friend struct detail::SessionCacheAccess;
  // PutScoped and TakeScoped: Put and Take for Connect, with the scope of
  // its config (null: Put's and Take's, none). TakeScoped skips sessions
  // stored under another scope, and those usable refuses.
  void PutScoped(const std::string& host, std::uint16_t port, const std::string* scope, SSL_SESSION* session,
                 bool verified);
  SSL_SESSION* TakeScoped(const std::string& host, std::uint16_t port, const std::string* scope, bool only_verified,
                          const std::function<bool(SSL_SESSION*)>& usable);

  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace ktls

#endif  // KTLS_SESSION_CACHE_H_
