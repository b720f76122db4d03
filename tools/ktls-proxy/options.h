// tools/ktls-proxy/options.h: ktls-proxy's command line: the flags, their
// defaults and every check on them, apart from main.cc so a unit test can
// feed it bad command lines.
#ifndef KTLS_TOOLS_KTLS_PROXY_OPTIONS_H_
#define KTLS_TOOLS_KTLS_PROXY_OPTIONS_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/connection_limits.h"
#include "common/tls_options.h"

namespace ktls::proxy {

// HostPort: "HOST:PORT" or "[V6]:PORT", split.
struct HostPort {
  std::string host;  // Without brackets.
  std::uint16_t port = 0;
};

// ParseHostPort splits text given to flag (for the message). Port 0 only
// with allow_zero (a listener: the kernel picks one). false and `error`
// when it is not HOST:PORT.
bool ParseHostPort(const std::string& text, const char* flag, bool allow_zero, HostPort& out, std::string& error);

struct ProxyOptions {
  HostPort listen{"127.0.0.1", 8443};
  HostPort backend;
  std::string cert_file;  // Empty: a self-signed certificate.
  std::string key_file;
  // --backend-tls: TLS to the backend too, through ktls's client.
  bool backend_tls = false;
  std::string backend_ca;   // Empty: the system's CAs.
  std::string backend_sni;  // Empty: the backend's host name (none for an address).
  bool backend_verify = true;
  tools::OffloadChoice offload;  // Both legs.
  std::string ciphers;           // TLS 1.2 suites to clients; empty: tools::kDefaultCipherList.
  std::string ciphersuites;      // TLS 1.3 suites to clients; empty: OpenSSL's.
  unsigned threads = 0;          // 0: one per core.
  std::chrono::milliseconds handshake_timeout{10'000};
  std::chrono::milliseconds connect_timeout{5'000};
  std::chrono::milliseconds drain_timeout{10'000};
  tools::ConnectionLimits limits;  // --idle-timeout, --max-connections.
  bool proxy_protocol = false;
  // copy: move the bytes with read and write through this process, never
  // splice (to compare).
  bool copy = false;
  // metrics_on, metrics: --metrics ADDR:PORT, Prometheus text at /metrics.
  bool metrics_on = false;
  HostPort metrics;
  // --privsep: this process (root) holds the key and does the handshakes;
  // worker processes running as privsep_user proxy (common/privsep.h).
  // privsep_worker: this is one of them.
  bool privsep = false;
  std::string privsep_user;
  bool privsep_worker = false;
  // upgrade_from: this process was started by SIGUSR2 in another one
  // (upgrade.h) and takes over its listeners and connections.
  bool upgrade_from = false;
};

enum class ParseOutcome {
  kRun,    // out is complete.
  kHelp,   // --help: print `text` and exit 0.
  kError,  // print `text` (what is wrong, then the usage) and exit 2.
};

// ParseProxyOptions reads argv into out. On kHelp and kError, `text` says
// what to print.
ParseOutcome ParseProxyOptions(int argc, const char* const* argv, ProxyOptions& out, std::string& text);

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_OPTIONS_H_
