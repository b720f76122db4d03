// tools/ktls-serve/tls_options.cc: see tls_options.h.
#include "ktls-serve/tls_options.h"

namespace ktls::serve {

void SetCipherOptions(ktls::ServerConfig& config, const std::string& ciphers, const std::string& ciphersuites) {
  config.cipher_list = ciphers.empty() ? std::string(kDefaultCipherList) : ciphers;
  config.ciphersuites = ciphersuites;  // Empty: OpenSSL's default.
}

std::optional<std::string> FallbackMessage(const ktls::OffloadReport& report, bool tx_wanted, bool kernel_has_ktls) {
  if (!tx_wanted || !kernel_has_ktls || report.tx != ktls::Offload::kUser) return std::nullopt;
  return "ktls-serve: a connection stays in userspace TLS: " + report.reason;
}

}  // namespace ktls::serve
