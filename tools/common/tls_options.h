// tools/common/tls_options.h: the TLS choices the servers among the tools
// (ktls-serve, ktls-proxy) make for their clients: which suites they offer,
// where each direction goes (--rx, --no-rx, --no-offload), and what they say
// when a client's choice keeps a connection in userspace TLS. Apart from the
// tools' main.cc so a test can check them against OpenSSL.
#ifndef KTLS_TOOLS_COMMON_TLS_OPTIONS_H_
#define KTLS_TOOLS_COMMON_TLS_OPTIONS_H_

#include <optional>
#include <string>
#include <string_view>

#include "ktls/offload.h"
#include "ktls/server.h"

namespace ktls::tools {

// kDefaultCipherList: the TLS 1.2 suites offered unless --ciphers says
// otherwise: Mozilla's "intermediate" profile without DHE, so ECDHE with
// AES-GCM or ChaCha20-Poly1305 only. Every one of them is a suite the kernel
// can carry; CBC suites (LUCKY13-class timing risks, and never offloadable)
// are not offered. TLS 1.3 suites stay OpenSSL's default (all AEAD).
inline constexpr std::string_view kDefaultCipherList =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

// SetCipherOptions sets config's TLS 1.2 cipher list to ciphers
// (--ciphers) or kDefaultCipherList when empty, and its TLS 1.3 suites to
// ciphersuites (--ciphersuites) or OpenSSL's default when empty. Whether
// OpenSSL accepts the lists is found by ktls::ServerContext::Create.
void SetCipherOptions(ktls::ServerConfig& config, const std::string& ciphers, const std::string& ciphersuites);

// OffloadChoice: the tools' offload flags. --rx puts RX in the kernel even
// where it cannot follow a TLS 1.3 KeyUpdate (Linux < 6.14), --no-rx keeps
// RX in OpenSSL, --no-offload keeps both directions there. Neither --rx nor
// --no-rx: the library's default (RX in the kernel where it can rekey).
struct OffloadChoice {
  bool rx = false;
  bool no_rx = false;
  bool no_offload = false;
};

// SetOffloadChoice applies choice to options (tx and rx). Returns false,
// with a message in `error`, when --rx and --no-rx are both given.
bool SetOffloadChoice(const OffloadChoice& choice, ktls::OffloadOptions& options, std::string& error);

// FallbackMessage: the line `tool` ("ktls-serve") logs when offload left a
// direction in userspace that it asked the kernel to take (tx_wanted: TX
// offload was on; kernel_has_ktls: the start-up probe found kTLS), with the
// library's reason ("cipher not offloadable: TLS_..."). nullopt when there
// is nothing worth saying: offload was off by choice, the kernel has no kTLS
// at all (said once at start-up), or only RX stayed in userspace (the
// default on kernels that cannot re-key RX).
std::optional<std::string> FallbackMessage(std::string_view tool, const ktls::OffloadReport& report, bool tx_wanted,
                                           bool kernel_has_ktls);

}  // namespace ktls::tools

#endif  // KTLS_TOOLS_COMMON_TLS_OPTIONS_H_
