// examples/client.cc: a TLS client on kernel TLS.
//
//   client HOST PORT [CA.pem [MESSAGE]]
//
// Connects (verifying the server against CA.pem, or the system's CAs),
// offloads, sends MESSAGE (default "hello from ktls"), prints as many bytes
// as come back (from an echo server, the message itself), then ends with
// close_notify both ways. Where each direction went goes to stderr.
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>

#include <ktls/client.h>
#include <ktls/connection.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s HOST PORT [CA.pem [MESSAGE]]\n", argv[0]);
    return 2;
  }
  ktls::ClientConfig config;  // Verifies the server's certificate and name.
  if (argc > 3) config.ca_file = argv[3];
  const std::string message = argc > 4 ? argv[4] : "hello from ktls";
  auto conn = ktls::Connect(argv[1], static_cast<std::uint16_t>(std::atoi(argv[2])), config);
  if (!conn.ok()) {
    std::fprintf(stderr, "connect: %s\n", conn.error().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "tx=%s rx=%s %s %s\n", ktls::OffloadName(conn->tx()), ktls::OffloadName(conn->rx()),
               conn->session().protocol.c_str(), conn->session().cipher_suite.c_str());
  if (auto put = conn->WriteAll(std::as_bytes(std::span(message))); !put.ok()) {
    std::fprintf(stderr, "write: %s\n", put.error().ToString().c_str());
    return 1;
  }
  // An echo's worth back, then close_notify. (Closing our side first would
  // also work, but a server whose handshake finishes after our FIN cannot
  // offload: the kernel takes the tls ULP only on an ESTABLISHED socket.)
  std::byte buf[16384];
  std::size_t received = 0;
  bool server_closed = false;
  while (received < message.size() && !server_closed) {
    auto got = conn->Read(buf);
    if (!got.ok()) {
      std::fprintf(stderr, "read: %s\n", got.error().ToString().c_str());
      return 1;
    }
    server_closed = got->end_of_stream;  // The server's close_notify.
    std::fwrite(buf, 1, got->bytes, stdout);
    received += got->bytes;
  }
  std::fputc('\n', stdout);
  if (auto done = conn->Shutdown(); !done.ok()) {
    std::fprintf(stderr, "shutdown: %s\n", done.error().ToString().c_str());
    return 1;
  }
  while (!server_closed) {  // Until the server's close_notify: the end is known.
    auto got = conn->Read(buf);
    if (!got.ok()) {
      std::fprintf(stderr, "read: %s\n", got.error().ToString().c_str());
      return 1;
    }
    server_closed = got->end_of_stream;
  }
  conn->Close();
  return 0;
}
