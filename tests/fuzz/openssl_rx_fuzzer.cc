// openssl_rx_fuzzer: the userspace path. A real TLS handshake with a plain
// OpenSSL client, then offload with TX "in the kernel" (the syscall seam
// plays it, see fuzz_connection.h) and RX left in OpenSSL: the mixed mode a
// kernel that refuses TLS_RX, or RxOffload::kOff, gives. The input scripts
// what the client does (application data, KeyUpdates, renegotiation,
// close_notify, a FIN, raw bytes on the wire) between the server's reads,
// writes, key updates and Shutdown. This is where ktls relays what OpenSSL
// tries to write (alerts, KeyUpdate answers) through the kernel instead.
//
// The kernel's capabilities are faked too: the first offload probes them
// through the same stand-ins, so this process sees kTLS with rekey.
//
// Input format (every field is optional at the end of the input):
//   config: one byte
//     bits 0-1 the suite: TLS 1.3 AES-128-GCM, AES-256-GCM,
//              ChaCha20-Poly1305, AES-128-CCM (or their ECDHE-ECDSA TLS 1.2
//              counterparts with bit 2)
//     bit 2    TLS 1.2
//     bit 3    the server sends two session tickets (TLS 1.3)
//     bit 4    setsockopt with a new key fails
//     bit 5    sendmsg fails (EPIPE)
//   then steps, each an op byte; op & 7 says which, op >> 3 is its parameter:
//     0  the client sends (param + 1) * 8 bytes of application data, taken
//        from the input
//     1  the client sends a KeyUpdate (param odd: update_requested); TLS 1.2:
//        the client asks to renegotiate
//     2  the client sends close_notify
//     3  the client sends a FIN
//     4  param + 1 raw bytes from the input go on the wire as they are
//     5  the server Reads into a buffer of kReadSizes[param % size] bytes
//     6  param 0-28: the server Writes (param + 1) * 300 bytes; 29: Shutdown;
//        30: UpdateKeys(false); 31: UpdateKeys(true)
//     7  the server Reads until it would block
//   and at the end, the server reads until it would block, ends or fails.
//
// What must hold: no crash or sanitizer report; Read delivers a prefix of
// the client's application data, in order, nothing after close_notify, a
// FIN or raw bytes, and nothing after it reported an error or the end; what
// ktls sends through the "kernel" is checked as in kernel_rx.
#include <fcntl.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/self_signed.h"
#include "core/openssl_ptr.h"
#include "core/unique_fd.h"
#include "kernel/tls_uapi.h"
#include "ktls/offload.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/fuzz_connection.h"
#include "tests/support/fault_syscalls.h"

namespace ktls::testing {
namespace {

namespace uapi = detail::uapi;

constexpr std::array<std::size_t, 8> kReadSizes = {1, 5, 16, 100, 1000, 16383, 16384, 65536};
constexpr std::array<const char*, 4> kTls13Suites = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                                     "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_CCM_SHA256"};
constexpr std::array<const char*, 4> kTls12Suites = {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                                                     "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-CCM"};

// Contexts: made once per process; the server's is prepared for ktls.
struct Contexts {
  detail::UniqueSslCtx server;
  detail::UniqueSslCtx client;
};

const Contexts& GetContexts() {
  static const Contexts contexts = [] {
    // The client is plain OpenSSL, whose socket writes raise SIGPIPE once
    // the client itself sent a FIN.
    std::signal(SIGPIPE, SIG_IGN);
    Contexts c;
    tools::SelfSigned cert;
    std::string error;
    FUZZ_CHECK(tools::MakeSelfSigned(cert, error));
    c.server.reset(SSL_CTX_new(TLS_server_method()));
    c.client.reset(SSL_CTX_new(TLS_client_method()));
    FUZZ_CHECK(c.server && c.client);
    FUZZ_CHECK(SSL_CTX_use_certificate_chain_file(c.server.get(), cert.cert_file.c_str()) == 1);
    FUZZ_CHECK(SSL_CTX_use_PrivateKey_file(c.server.get(), cert.key_file.c_str(), SSL_FILETYPE_PEM) == 1);
    std::string suites13;
    for (const char* suite : kTls13Suites) suites13 += std::string(suites13.empty() ? "" : ":") + suite;
    std::string suites12;
    for (const char* suite : kTls12Suites) suites12 += std::string(suites12.empty() ? "" : ":") + suite;
    FUZZ_CHECK(SSL_CTX_set_ciphersuites(c.server.get(), suites13.c_str()) == 1);
    FUZZ_CHECK(SSL_CTX_set_cipher_list(c.server.get(), suites12.c_str()) == 1);
    FUZZ_CHECK(PrepareContext(c.server.get()).ok());
    SSL_CTX_set_verify(c.client.get(), SSL_VERIFY_NONE, nullptr);
    return c;
  }();
  return contexts;
}

bool SetNonBlocking(int fd) { return ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) == 0; }

// Handshake runs both ends over non-blocking sockets until both are done.
bool Handshake(SSL* client, SSL* server) {
  // Step advances one end; false when it failed for good.
  const auto step = [](SSL* ssl, bool& done) {
    if (done) return true;
    const int rc = SSL_do_handshake(ssl);
    done = rc == 1;
    const int code = done ? SSL_ERROR_NONE : SSL_get_error(ssl, rc);
    return done || code == SSL_ERROR_WANT_READ || code == SSL_ERROR_WANT_WRITE;
  };
  bool client_done = false, server_done = false;
  for (int round = 0; round < 200 && !(client_done && server_done); ++round) {
    if (!step(client, client_done) || !step(server, server_done)) return false;
  }
  return client_done && server_done;
}

void Run(std::span<const std::uint8_t> data) {
  FuzzInput input(data);
  std::uint8_t config = 0;
  (void)input.Byte(&config);
  const bool tls12 = (config & 4) != 0;
  const Contexts& contexts = GetContexts();

  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return;
  detail::UniqueFd client_fd(fds[0]);
  const int server_fd = fds[1];  // The Connection owns it once OffloadSsl succeeds.
  FUZZ_CHECK(SetNonBlocking(client_fd.get()) && SetNonBlocking(server_fd));
  detail::UniqueSsl client(SSL_new(contexts.client.get()));
  SSL* server = SSL_new(contexts.server.get());
  FUZZ_CHECK(client && server);
  FUZZ_CHECK(PrepareSsl(server).ok());
  SSL_set_num_tickets(server, (config & 8) != 0 ? 2 : 0);
  if (tls12) {
    FUZZ_CHECK(SSL_set_max_proto_version(client.get(), TLS1_2_VERSION) == 1);
    FUZZ_CHECK(SSL_set_cipher_list(client.get(), kTls12Suites[config & 3]) == 1);
  } else {
    FUZZ_CHECK(SSL_set_min_proto_version(client.get(), TLS1_3_VERSION) == 1);
    FUZZ_CHECK(SSL_set_ciphersuites(client.get(), kTls13Suites[config & 3]) == 1);
  }
  SSL_set_fd(client.get(), client_fd.get());
  SSL_set_fd(server, server_fd);
  SSL_set_connect_state(client.get());
  SSL_set_accept_state(server);
  FUZZ_CHECK(Handshake(client.get(), server));

  KernelTx tx;
  tx.set_key_fails = (config & 0x10) != 0;
  tx.sendmsg_fails = (config & 0x20) != 0;
  bool offloading = true;  // The first TLS_TX on server_fd is the offload.
  StandIns stand_ins;
  stand_ins.set_sock_opt = [&](int fd, int level, int name, const void* value, socklen_t len) -> std::optional<int> {
    if (level == uapi::kSolTcp && name == uapi::kTcpUlp) return 0;
    if (level != uapi::kSolTls) return std::nullopt;
    if (fd != server_fd) return 0;  // The capability probe's own sockets.
    const bool initial = offloading;
    if (name == uapi::kTlsRx) return -ENOPROTOOPT;  // Never asked for: RX stays in OpenSSL (kOff).
    offloading = false;
    return tx.SetKey(name, value, len, initial);
  };
  stand_ins.get_sock_opt = [&](int fd, int level, int name, void* value, socklen_t* len) -> std::optional<int> {
    if (fd != server_fd) return std::nullopt;
    return tx.GetSockOpt(level, name, value, len);
  };
  stand_ins.send_msg = [&](int fd, const msghdr* msg, int) -> std::optional<ssize_t> {
    FUZZ_CHECK(fd == server_fd);  // OpenSSL's own writes are refused before they reach a socket.
    return tx.SendMsg(msg);
  };
  SetStandIns(std::move(stand_ins));

  OffloadOptions options;
  options.rx = RxOffload::kOff;
  auto conn = OffloadSsl(server, options);
  FUZZ_CHECK(conn.ok());
  FUZZ_CHECK(conn->tx() == Offload::kKernel && conn->rx() == Offload::kUser);

  ReadModel model;
  std::vector<std::byte> buf;
  const auto read = [&](std::size_t len) {
    buf.assign(len, std::byte{0});
    auto got = conn->Read(buf);
    model.Check(got, buf);
    return got;
  };
  const auto read_until_blocked = [&] {
    for (int i = 0; i < 64; ++i) {
      auto got = read(16384);
      if (!got.ok() || got->would_block || got->end_of_stream) break;
    }
  };
  bool client_done = false;  // close_notify, FIN or raw bytes: nothing more the server may deliver.
  std::uint8_t op = 0;
  while (input.Byte(&op)) {
    const unsigned param = op >> 3;
    switch (op & 7) {
      case 0: {
        const auto payload = input.Bytes((param + 1) * 8);
        if (payload.empty() || client_done) break;
        std::size_t written = 0;
        if (SSL_write_ex(client.get(), payload.data(), payload.size(), &written) == 1) {
          model.data.insert(model.data.end(), payload.begin(), payload.begin() + static_cast<std::ptrdiff_t>(written));
        }
        break;
      }
      case 1:
        if (client_done) break;
        if (tls12) {
          (void)SSL_renegotiate(client.get());
        } else {
          (void)SSL_key_update(client.get(), (param & 1) != 0 ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED);
        }
        (void)SSL_do_handshake(client.get());  // Sends it; the answer is never read.
        break;
      case 2:
        if (client_done) break;
        (void)SSL_shutdown(client.get());
        client_done = true;
        model.Fatal();
        break;
      case 3:
        ::shutdown(client_fd.get(), SHUT_WR);
        client_done = true;
        model.Fatal();
        break;
      case 4: {
        const auto raw = input.Bytes(param + 1);
        if (raw.empty()) break;
        (void)::send(client_fd.get(), raw.data(), raw.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        client_done = true;  // The client's records no longer line up.
        model.Fatal();
        break;
      }
      case 5:
        (void)read(kReadSizes[param % kReadSizes.size()]);
        break;
      case 6:
        if (param <= 28) {
          const std::vector<std::byte> out((param + 1) * 300, std::byte{'w'});
          (void)conn->Write(out);
        } else if (param == 29) {
          (void)conn->Shutdown();
        } else {
          (void)conn->UpdateKeys(param == 31);
        }
        break;
      default:
        read_until_blocked();
        break;
    }
  }
  read_until_blocked();
  if (model.ended) (void)read(16384);  // A second look after the end: still nothing.
  conn->Close();
  ClearFaults();
}

}  // namespace
}  // namespace ktls::testing

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ktls::testing::Run(std::span(data, size));
  return 0;
}
