// examples/echo_server.cc: a blocking TLS echo server on kernel TLS.
//
//   echo_server CERT.pem KEY.pem [PORT [CONNECTIONS]]
//
// Listens on 127.0.0.1:PORT (default 8443; 0 picks a free port), and for
// each client, one at a time: handshake and offload (Accept), then echo
// everything it reads until the client's close_notify, then close_notify
// back. Says where each direction ended up and what the kernel says about
// the connection. Stops after CONNECTIONS clients (default: never).
//
// Build against an installed ktls: find_package(ktls) and ktls::ktls.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>

#include <ktls/connection.h>
#include <ktls/kernel_state.h>
#include <ktls/server.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s CERT.pem KEY.pem [PORT [CONNECTIONS]]\n", argv[0]);
    return 2;
  }
  const std::string port = argc > 3 ? argv[3] : "8443";
  const long connections = argc > 4 ? std::atol(argv[4]) : -1;
  std::signal(SIGPIPE, SIG_IGN);  // A client that vanishes is an error for it, not the end of us.

  ktls::ServerConfig config;
  config.cert_file = argv[1];
  config.key_file = argv[2];
  config.offload.on_fallback = [](const ktls::OffloadReport& report) {
    std::fprintf(stderr, "stayed in userspace TLS: %s\n", report.reason.c_str());
  };
  auto listener = ktls::Listener::Listen("127.0.0.1:" + port, config);
  if (!listener.ok()) {
    std::fprintf(stderr, "listen: %s\n", listener.error().ToString().c_str());
    return 1;
  }
  std::printf("listening on 127.0.0.1:%d\n", listener->port());
  std::fflush(stdout);

  for (long served = 0; connections < 0 || served < connections; ++served) {
    auto conn = listener->Accept();  // TCP accept, handshake, offload.
    if (!conn.ok()) {
      std::fprintf(stderr, "accept: %s\n", conn.error().ToString().c_str());
      continue;
    }
    const ktls::KernelState kernel = conn->kernel_state();
    std::printf("connection: tx=%s rx=%s cipher=%s ulp=%s\n", ktls::OffloadName(conn->tx()),
                ktls::OffloadName(conn->rx()), conn->session().cipher_suite.c_str(),
                kernel.ulp.reported ? kernel.ulp.ulp.c_str() : "-");
    std::fflush(stdout);
    std::byte buf[16384];
    for (;;) {
      auto got = conn->Read(buf);  // Plaintext: the kernel (or OpenSSL) decrypted it.
      if (!got.ok()) {
        std::fprintf(stderr, "read: %s\n", got.error().ToString().c_str());
        break;
      }
      if (got->end_of_stream) {  // The client's close_notify.
        (void)conn->Shutdown();  // Ours back.
        break;
      }
      if (auto put = conn->WriteAll(std::span(buf, got->bytes)); !put.ok()) {
        std::fprintf(stderr, "write: %s\n", put.error().ToString().c_str());
        break;
      }
    }
    conn->Close();
  }
  return 0;
}
