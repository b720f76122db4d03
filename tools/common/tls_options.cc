// tools/common/tls_options.cc: see tls_options.h.
#include "common/tls_options.h"

namespace ktls::tools {

void SetCipherOptions(ktls::ServerConfig& config, const std::string& ciphers, const std::string& ciphersuites) {
  config.cipher_list = ciphers.empty() ? std::string(kDefaultCipherList) : ciphers;
  config.ciphersuites = ciphersuites;  // Empty: OpenSSL's default.
}

bool SetOffloadChoice(const OffloadChoice& choice, ktls::OffloadOptions& options, std::string& error) {
  if (choice.rx && choice.no_rx) {
    error = "--rx and --no-rx contradict each other";
    return false;
  }
  options.rx = choice.no_rx ? ktls::RxOffload::kOff : choice.rx ? ktls::RxOffload::kOn : ktls::RxOffload::kAuto;
  options.tx = choice.no_offload ? ktls::TxOffload::kOff : ktls::TxOffload::kOn;
  return true;
}

std::optional<std::string> FallbackMessage(std::string_view tool, const ktls::OffloadReport& report, bool tx_wanted,
                                           bool kernel_has_ktls) {
  if (!tx_wanted || !kernel_has_ktls || report.tx != ktls::Offload::kUser) return std::nullopt;
  return std::string(tool) + ": a connection stays in userspace TLS: " + report.reason;
}

}  // namespace ktls::tools
