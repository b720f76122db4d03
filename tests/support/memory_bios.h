// tests/support/memory_bios.h: two OpenSSL endpoints talking over memory
// BIOs that the test moves by hand, so it sees (and can withhold) every
// record each side writes.
#ifndef KTLS_TESTS_SUPPORT_MEMORY_BIOS_H_
#define KTLS_TESTS_SUPPORT_MEMORY_BIOS_H_

#include <openssl/ssl.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ktls::testing {

// MemoryBios: an SSL's two memory BIOs; the SSL owns them.
struct MemoryBios {
  BIO* in = nullptr;   // What the SSL reads (the test writes the peer's bytes here).
  BIO* out = nullptr;  // What the SSL wrote.
};

// AttachMemoryBios gives ssl a fresh read and write memory BIO. An empty
// read BIO asks OpenSSL to retry rather than reporting end of file. Throws
// std::runtime_error when OpenSSL is out of memory.
MemoryBios AttachMemoryBios(SSL* ssl);

// TakeBytes removes and returns everything in a memory BIO; GiveBytes
// appends bytes to one.
std::vector<std::uint8_t> TakeBytes(BIO* bio);
void GiveBytes(BIO* bio, std::span<const std::uint8_t> bytes);

// RunHandshake runs a client and a server (connect and accept state set)
// to completion, moving every flight across; what the server writes after
// its handshake finished (TLS 1.3 session tickets) stays in its out BIO.
// Returns what went wrong, or an empty string.
std::string RunHandshake(SSL* client, const MemoryBios& client_bios, SSL* server, const MemoryBios& server_bios);

}  // namespace ktls::testing

#endif  // KTLS_TESTS_SUPPORT_MEMORY_BIOS_H_
