// Key material after offload, on a real handshake and a real kernel: the
// crypto_info structs ktls hands to setsockopt(TLS_TX/TLS_RX) and the
// traffic secrets captured from the key log are wiped before offload
// returns, and no fallback reason or error text carries a secret or a key.
// (Secret and KernelCryptoInfo wiping themselves: tests/unit/secrets_test.cc.
// ktls-echo's output: tests/interop/secrets_log_check.py.)
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "handshake/capture.h"
#include "kernel/tls_uapi.h"
#include "ktls/offload.h"
#include "tests/support/fault_syscalls.h"
#include "tests/support/kernel_env.h"
#include "tests/support/sockets.h"
#include "tests/support/tls_peers.h"

namespace ktls::testing {
namespace {

namespace uapi = detail::uapi;
using Bytes = std::vector<std::uint8_t>;

// Every secret OpenSSL logged, from the application's own key-log callback
// (PrepareContext keeps it and calls it first).
std::mutex g_keylog_mu;
std::vector<Bytes> g_logged_secrets;

void CollectSecret(const SSL* /*ssl*/, const char* line) {
  // "LABEL <client_random hex> <secret hex>"
  const std::string text(line);
  const std::size_t last_space = text.rfind(' ');
  Bytes secret;
  for (std::size_t i = last_space + 1; i + 1 < text.size(); i += 2) {
    secret.push_back(static_cast<std::uint8_t>(std::stoi(text.substr(i, 2), nullptr, 16)));
  }
  std::lock_guard lock(g_keylog_mu);
  g_logged_secrets.push_back(std::move(secret));
}

std::string Hex(const Bytes& bytes, bool upper) {
  static constexpr char kLower[] = "0123456789abcdef";
  static constexpr char kUpper[] = "0123456789ABCDEF";
  std::string out;
  for (std::uint8_t b : bytes) {
    out.push_back((upper ? kUpper : kLower)[b >> 4]);
    out.push_back((upper ? kUpper : kLower)[b & 0xf]);
  }
  return out;
}

bool ContainsBytes(std::span<const std::uint8_t> haystack, const Bytes& needle) {
  return !needle.empty() && std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) != haystack.end();
}

// Mentions: text holds secret raw, or in hex of either case.
bool Mentions(const std::string& text, const Bytes& secret) {
  const auto raw = std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size());
  return ContainsBytes(raw, secret) || text.find(Hex(secret, false)) != std::string::npos ||
         text.find(Hex(secret, true)) != std::string::npos;
}

// HandedToKernel: one setsockopt(SOL_TLS, TLS_TX or TLS_RX) ktls made.
struct HandedToKernel {
  int name = 0;
  const void* value = nullptr;  // ktls's own buffer, alive until offload returns.
  Bytes bytes;                  // What it held at the call.
  std::optional<bool> wiped;    // Looked at again from on_fallback.
};

bool AllZero(const void* p, std::size_t len) {
  const auto* bytes = static_cast<const std::uint8_t*>(p);
  return std::all_of(bytes, bytes + len, [](std::uint8_t b) { return b == 0; });
}

TEST(SecretsKernelTest, KeysHandedToTheKernelAndCapturedSecretsAreWipedAtOffload) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  {
    std::lock_guard lock(g_keylog_mu);
    g_logged_secrets.clear();
  }
  const TempCert& cert = TestCert();
  detail::UniqueSslCtx server_ctx(SSL_CTX_new(TLS_server_method()));
  detail::UniqueSslCtx client_ctx(SSL_CTX_new(TLS_client_method()));
  ASSERT_TRUE(server_ctx && client_ctx);
  ASSERT_EQ(SSL_CTX_use_certificate_chain_file(server_ctx.get(), cert.cert_file.c_str()), 1);
  ASSERT_EQ(SSL_CTX_use_PrivateKey_file(server_ctx.get(), cert.key_file.c_str(), SSL_FILETYPE_PEM), 1);
  ASSERT_EQ(SSL_CTX_set_min_proto_version(server_ctx.get(), TLS1_3_VERSION), 1);
  SSL_CTX_set_num_tickets(server_ctx.get(), 0);
  SSL_CTX_set_keylog_callback(server_ctx.get(), CollectSecret);
  ASSERT_TRUE(PrepareContext(server_ctx.get()).ok());

  SocketPair pair = LoopbackTcpPair();
  ASSERT_TRUE(SetIoTimeout(pair.client.get(), std::chrono::seconds(20)) && SetIoTimeout(pair.server.get(), std::chrono::seconds(20)));
  detail::UniqueSsl client(SSL_new(client_ctx.get()));
  SSL* server = SSL_new(server_ctx.get());  // The Connection owns it from OffloadSsl on.
  ASSERT_TRUE(client && server);
  ASSERT_TRUE(PrepareSsl(server).ok());
  SSL_set_fd(client.get(), pair.client.get());
  SSL_set_fd(server, pair.server.release());  // ...and the socket.
  int connect_rc = 0;
  std::thread client_thread([&] { connect_rc = SSL_connect(client.get()); });
  const int accept_rc = SSL_accept(server);
  client_thread.join();
  ASSERT_EQ(accept_rc, 1);
  ASSERT_EQ(connect_rc, 1);

  // Let TLS_TX through to the kernel and refuse TLS_RX, keeping a copy of
  // each: the refusal keeps RX in OpenSSL, so on_fallback runs, and it runs
  // before offload returns, while ktls's crypto_info buffers still exist.
  std::vector<HandedToKernel> handed;
  SetStandIns({.set_sock_opt = [&](int, int level, int name, const void* value,
                                   socklen_t len) -> std::optional<int> {
    if (level != uapi::kSolTls || (name != uapi::kTlsTx && name != uapi::kTlsRx)) return std::nullopt;
    const auto* p = static_cast<const std::uint8_t*>(value);
    handed.push_back({name, value, Bytes(p, p + len), std::nullopt});
    return name == uapi::kTlsRx ? std::optional<int>(-EINVAL) : std::nullopt;
  }});
  std::vector<std::string> texts;  // Everything ktls told us in words.
  OffloadOptions options;
  options.rx = RxOffload::kOn;  // Try RX on 6.1 too.
  options.on_fallback = [&](const OffloadReport& report) {
    texts.push_back(report.reason);
    for (HandedToKernel& h : handed) h.wiped = AllZero(h.value, h.bytes.size());
  };
  auto conn = OffloadSsl(server, options);
  ClearFaults();
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  ASSERT_EQ(conn->tx(), Offload::kKernel);
  ASSERT_EQ(conn->rx(), Offload::kUser);

  ASSERT_EQ(handed.size(), 2u) << "TLS_TX and TLS_RX";
  for (const HandedToKernel& h : handed) {
    SCOPED_TRACE(h.name == uapi::kTlsTx ? "TLS_TX" : "TLS_RX");
    EXPECT_FALSE(AllZero(h.bytes.data(), h.bytes.size())) << "the kernel was handed a key";
    ASSERT_TRUE(h.wiped.has_value()) << "on_fallback should have run";
    EXPECT_TRUE(*h.wiped) << "the crypto_info handed to setsockopt should be zero once offload is done with it";
  }
  // The captured traffic secrets: gone from the capture state, which lives
  // on with the SSL while RX is in OpenSSL.
  std::vector<Bytes> secrets;
  {
    std::lock_guard lock(g_keylog_mu);
    secrets = g_logged_secrets;
  }
  ASSERT_GE(secrets.size(), 2u) << "the key log should have shown the traffic secrets";
  const detail::CaptureState* state = detail::GetCaptureState(server);
  ASSERT_NE(state, nullptr);
  EXPECT_TRUE(state->client_secret.empty() && state->server_secret.empty());
  const auto state_bytes = std::span(reinterpret_cast<const std::uint8_t*>(state), sizeof(*state));
  for (const Bytes& secret : secrets) {
    EXPECT_FALSE(ContainsBytes(state_bytes, secret)) << "a logged secret is still in the capture state";
  }

  // The key the kernel got was the real one: data crosses both ways.
  const Bytes hello = {'h', 'e', 'l', 'l', 'o'};
  ASSERT_TRUE(conn->WriteAll(std::as_bytes(std::span(hello))).ok());
  std::uint8_t buf[16];
  std::size_t got = 0;
  ASSERT_EQ(SSL_read_ex(client.get(), buf, sizeof(buf), &got), 1);
  EXPECT_EQ(Bytes(buf, buf + got), hello);
  ASSERT_EQ(SSL_write(client.get(), "x", 1), 1);
  std::byte in[16];
  auto read = conn->Read(in);
  ASSERT_TRUE(read.ok()) << read.error().ToString();
  EXPECT_EQ(read->bytes, 1u);
  // An error's words too: the peer leaves without close_notify.
  ::shutdown(pair.client.get(), SHUT_WR);
  read = conn->Read(in);
  ASSERT_FALSE(read.ok());
  texts.push_back(read.error().ToString());

  for (const std::string& text : texts) {
    for (const Bytes& secret : secrets) EXPECT_FALSE(Mentions(text, secret)) << text;
    for (const HandedToKernel& h : handed) {
      // Key, salt, IV in one piece or any 16-byte run of the struct.
      for (std::size_t at = 4; at + 16 <= h.bytes.size(); ++at) {
        EXPECT_FALSE(Mentions(text, Bytes(h.bytes.begin() + at, h.bytes.begin() + at + 16))) << text;
      }
    }
  }
}

}  // namespace
}  // namespace ktls::testing
