// Unit tests: the TLS choices ktls-serve and ktls-proxy make
// (tools/common/tls_options), as OpenSSL reads them: the suites a client is
// offered, the offload flags, and when a fallback is worth a log line.
#include "common/tls_options.h"

#include <gtest/gtest.h>
#include <openssl/obj_mac.h>
#include <openssl/ssl.h>

#include <set>
#include <string>
#include <string_view>

#include "common/self_signed.h"
#include "ktls/server.h"

namespace ktls::tools {
namespace {

// Tls12Suites: the TLS 1.2 suites (OpenSSL names) of the context that
// ServerContext::Create makes from config.
std::set<std::string> Tls12Suites(ServerConfig config, bool* all_ecdhe_aead) {
  SelfSigned cert;
  std::string error;
  EXPECT_TRUE(MakeSelfSigned(cert, error)) << error;
  config.cert_file = cert.cert_file;
  config.key_file = cert.key_file;
  auto context = ServerContext::Create(config);
  EXPECT_TRUE(context.ok()) << context.error().ToString();
  std::set<std::string> names;
  *all_ecdhe_aead = true;
  if (!context.ok()) return names;
  STACK_OF(SSL_CIPHER)* ciphers = SSL_CTX_get_ciphers(context->ssl_ctx());
  for (int i = 0; i < sk_SSL_CIPHER_num(ciphers); ++i) {
    const SSL_CIPHER* cipher = sk_SSL_CIPHER_value(ciphers, i);
    if (std::string_view(SSL_CIPHER_get_version(cipher)) == "TLSv1.3") continue;  // TLS 1.3 suites.
    names.insert(SSL_CIPHER_get_name(cipher));
    if (SSL_CIPHER_get_kx_nid(cipher) != NID_kx_ecdhe || SSL_CIPHER_is_aead(cipher) != 1) *all_ecdhe_aead = false;
  }
  return names;
}

TEST(TlsOptionsTest, DefaultOffersOnlyEcdheAeadSuitesInTls12) {
  ServerConfig config;
  SetCipherOptions(config, "", "");
  EXPECT_EQ(config.ciphersuites, "") << "TLS 1.3: OpenSSL's default";
  bool all_ecdhe_aead = false;
  const auto names = Tls12Suites(config, &all_ecdhe_aead);
  EXPECT_TRUE(all_ecdhe_aead);
  EXPECT_EQ(names, (std::set<std::string>{"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
                                          "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
                                          "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"}));
}

TEST(TlsOptionsTest, CiphersAndCiphersuitesReplaceTheDefaults) {
  ServerConfig config;
  SetCipherOptions(config, "ECDHE-ECDSA-AES128-SHA", "TLS_AES_128_CCM_SHA256");
  EXPECT_EQ(config.ciphersuites, "TLS_AES_128_CCM_SHA256");
  bool all_ecdhe_aead = true;
  EXPECT_EQ(Tls12Suites(config, &all_ecdhe_aead), std::set<std::string>{"ECDHE-ECDSA-AES128-SHA"});
  EXPECT_FALSE(all_ecdhe_aead) << "a CBC suite, because --ciphers asked for it";
}

TEST(TlsOptionsTest, FallbackMessageOnlyWhenTxWasWantedAndPossible) {
  const OffloadReport cbc{Offload::kUser, Offload::kUser, "cipher not offloadable: TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"};
  EXPECT_EQ(FallbackMessage("ktls-serve", cbc, true, true),
            "ktls-serve: a connection stays in userspace TLS: cipher not offloadable: "
            "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA");
  EXPECT_EQ(FallbackMessage("ktls-serve", cbc, false, true), std::nullopt) << "--no-offload: by choice";
  EXPECT_EQ(FallbackMessage("ktls-serve", cbc, true, false), std::nullopt) << "no kTLS: said once at start-up";
  const OffloadReport rx_only{Offload::kKernel, Offload::kUser, "RX stays in OpenSSL"};
  EXPECT_EQ(FallbackMessage("ktls-serve", rx_only, true, true), std::nullopt) << "RX in userspace is ktls-serve's own default";
}

TEST(TlsOptionsTest, OffloadFlagsSetEachDirection) {
  std::string error;
  OffloadOptions options;
  ASSERT_TRUE(SetOffloadChoice({}, options, error)) << error;
  EXPECT_EQ(options.rx, RxOffload::kAuto);
  EXPECT_EQ(options.tx, TxOffload::kOn);
  ASSERT_TRUE(SetOffloadChoice({.rx = true}, options, error)) << error;
  EXPECT_EQ(options.rx, RxOffload::kOn);
  ASSERT_TRUE(SetOffloadChoice({.no_rx = true}, options, error)) << error;
  EXPECT_EQ(options.rx, RxOffload::kOff);
  ASSERT_TRUE(SetOffloadChoice({.no_offload = true}, options, error)) << error;
  EXPECT_EQ(options.tx, TxOffload::kOff);
  EXPECT_FALSE(SetOffloadChoice({.rx = true, .no_rx = true}, options, error));
  EXPECT_EQ(error, "--rx and --no-rx contradict each other");
}

}  // namespace
}  // namespace ktls::tools
