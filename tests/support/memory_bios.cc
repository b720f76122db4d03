// tests/support/memory_bios.cc
#include "tests/support/memory_bios.h"

#include <openssl/bio.h>
#include <openssl/err.h>

#include <stdexcept>

#include "tests/support/tls_peers.h"

namespace ktls::testing {
using plain_openssl::OpenSslErrors;

MemoryBios AttachMemoryBios(SSL* ssl) {
  MemoryBios bios{BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem())};
  if (bios.in == nullptr || bios.out == nullptr) throw std::runtime_error("BIO_new: " + OpenSslErrors());
  BIO_set_mem_eof_return(bios.in, -1);
  SSL_set_bio(ssl, bios.in, bios.out);
  return bios;
}

std::vector<std::uint8_t> TakeBytes(BIO* bio) {
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(BIO_pending(bio)));
  const int len = static_cast<int>(bytes.size());
  if (!bytes.empty() && BIO_read(bio, bytes.data(), len) != len) {
    throw std::runtime_error("BIO_read of a memory BIO came up short");
  }
  return bytes;
}

void GiveBytes(BIO* bio, std::span<const std::uint8_t> bytes) {
  const int len = static_cast<int>(bytes.size());
  if (!bytes.empty() && BIO_write(bio, bytes.data(), len) != len) {
    throw std::runtime_error("BIO_write to a memory BIO failed");
  }
}

std::string RunHandshake(SSL* client, const MemoryBios& client_bios, SSL* server, const MemoryBios& server_bios) {
  int client_ret = 0;
  int server_ret = 0;
  for (int round = 0; round < 10 && (client_ret != 1 || server_ret != 1); ++round) {
    ERR_clear_error();
    if (client_ret != 1) client_ret = SSL_do_handshake(client);
    if (client_ret != 1 && SSL_get_error(client, client_ret) != SSL_ERROR_WANT_READ) {
      return "client handshake: " + OpenSslErrors();
    }
    GiveBytes(server_bios.in, TakeBytes(client_bios.out));
    if (server_ret != 1) server_ret = SSL_do_handshake(server);
    if (server_ret != 1 && SSL_get_error(server, server_ret) != SSL_ERROR_WANT_READ) {
      return "server handshake: " + OpenSslErrors();
    }
    // Once the client is done, what the server writes is post-handshake
    // (TLS 1.3 tickets): the test decides where it goes.
    if (client_ret != 1) GiveBytes(client_bios.in, TakeBytes(server_bios.out));
  }
  if (client_ret != 1 || server_ret != 1) return "the handshake did not finish in 10 rounds";
  return {};
}

}  // namespace ktls::testing
