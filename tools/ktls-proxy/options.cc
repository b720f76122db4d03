// tools/ktls-proxy/options.cc: see options.h.
#include "ktls-proxy/options.h"

#include <charconv>
#include <vector>

#include <cxxopts.hpp>

namespace ktls::proxy {

bool ParseHostPort(const std::string& text, const char* flag, bool allow_zero, HostPort& out, std::string& error) {
  const std::size_t colon = text.rfind(':');
  std::string host = colon == std::string::npos ? std::string() : text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string port_text = colon == std::string::npos ? std::string() : text.substr(colon + 1);
  unsigned port = 0;
  const auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (host.empty() || port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
      port > 65535 || (port == 0 && !allow_zero)) {
    error = std::string(flag) + " wants HOST:PORT with a port from " + (allow_zero ? "0" : "1") +
            " to 65535, got \"" + text + "\"";
    return false;
  }
  out.host = host;
  out.port = static_cast<std::uint16_t>(port);
  return true;
}

namespace {

cxxopts::Options MakeOptions() {
  cxxopts::Options cli("ktls-proxy",
                       "TLS-terminating TCP proxy on kernel TLS (kTLS).\n"
                       "SIGINT/SIGTERM: stop accepting, drain (--drain-timeout), exit.\n"
                       "SIGUSR2: binary upgrade: start the binary on disk with the same arguments, hand it the "
                       "listeners and every relaying connection with both directions in the kernel on both legs (same "
                       "TCP connection, no new handshake), exit once none is left; if it cannot start or take over, "
                       "this process goes on serving and logs why. With --privsep (signal the key holder) the new "
                       "key holder starts workers of its own, and the old workers hand their relaying connections "
                       "back through this process to them");
  const ProxyOptions defaults;
  // clang-format off
  cli.add_options()
    ("listen", "Accept TLS clients on ADDR:PORT", cxxopts::value<std::string>()->default_value("127.0.0.1:8443"))
    ("backend", "Forward to HOST:PORT (resolved once, at start-up)", cxxopts::value<std::string>())
    ("cert", "Certificate chain (PEM); without it, a self-signed one is made", cxxopts::value<std::string>())
    ("key", "Private key (PEM), with --cert", cxxopts::value<std::string>())
    ("backend-tls", "TLS to the backend too (ktls's client, offloaded like the client side)")
    ("backend-ca", "With --backend-tls: trust these CAs (PEM) instead of the system's", cxxopts::value<std::string>())
    ("backend-sni", "With --backend-tls: the name to send and verify (default: the --backend host)",
     cxxopts::value<std::string>())
    ("backend-insecure", "With --backend-tls: do not verify the backend's certificate")
    ("rx", "RX in the kernel even where it cannot follow TLS 1.3 key updates (Linux < 6.14)")
    ("no-rx", "Keep RX in userspace TLS (TX still offloaded)")
    ("no-offload", "Keep both directions in userspace TLS (to compare)")
    ("ciphers", "TLS 1.2 cipher suites to clients, OpenSSL syntax (default: ECDHE with AES-GCM or ChaCha20-Poly1305)",
     cxxopts::value<std::string>())
    ("ciphersuites", "TLS 1.3 cipher suites to clients, OpenSSL syntax (default: OpenSSL's)",
     cxxopts::value<std::string>())
    ("threads", "Event loop threads, each with its own listener (0: one per core)",
     cxxopts::value<long long>()->default_value("0"))
    ("handshake-timeout", "Drop clients that have not finished the handshake by then (ms)",
     cxxopts::value<long long>()->default_value(std::to_string(defaults.handshake_timeout.count())))
    ("connect-timeout", "Give up connecting to the backend after this long (ms)",
     cxxopts::value<long long>()->default_value(std::to_string(defaults.connect_timeout.count())))
    ("drain-timeout", "On SIGINT/SIGTERM, let open connections finish for at most this long (ms), then cut the rest "
     "(both sides reset, end=drain_timeout_cut); also how long "
     "connections that cannot move on SIGUSR2 may go on in the old process (with --privsep, an old worker has this "
     "plus --handshake-timeout to hand everything back, or it is killed)",
     cxxopts::value<long long>()->default_value(std::to_string(defaults.drain_timeout.count())))
    ("proxy-protocol", "Send a PROXY protocol v2 header to the backend first")
    ("copy", "Move the bytes with read and write through this process, never splice (to compare)")
    ("metrics", "Serve Prometheus metrics over plain HTTP at http://ADDR:PORT/metrics (default: off; use loopback)",
     cxxopts::value<std::string>())
    ("privsep", "Privilege separation: this process (it must start as root) holds the key and does the handshakes; "
     "worker processes running as --user (one per --threads, which cannot read the key) connect to the backend and "
     "proxy, each client connection moved to them with both directions in the kernel. A connection that cannot move "
     "(RX kept in userspace on Linux < 6.14 without --rx, a cipher the kernel lacks) is ended with close_notify and "
     "logged (end=cannot_move), never proxied by the key holder. With --metrics, the key holder serves its counts and "
     "the workers' summed. Not with --no-offload")
    ("user", "With --privsep: the user the workers run as (not root)", cxxopts::value<std::string>())
    ("privsep-worker", "Internal: this is a --privsep worker (started by ktls-proxy itself)")
    ("upgrade-from", "Internal: take over from the ktls-proxy that started this one on SIGUSR2")
    ("h,help", "Show this help");
  // clang-format on
  tools::AddConnectionLimitOptions(cli);
  return cli;
}

bool Positive(const cxxopts::ParseResult& args, const char* name, std::chrono::milliseconds& out, bool allow_zero,
              std::string& error) {
  const long long ms = args[name].as<long long>();
  if (ms < 0 || (ms == 0 && !allow_zero)) {
    error = std::string("--") + name + " must be " + (allow_zero ? "zero or more" : "positive");
    return false;
  }
  out = std::chrono::milliseconds(ms);
  return true;
}

bool ReadPrivsep(const cxxopts::ParseResult& args, ProxyOptions& out, std::string& error) {
  out.privsep = args.count("privsep") != 0;
  out.privsep_worker = args.count("privsep-worker") != 0;
  out.upgrade_from = args.count("upgrade-from") != 0;
  if (args.count("user") != 0) out.privsep_user = args["user"].as<std::string>();
  if (out.privsep && out.privsep_user.empty()) {
    error = "--privsep needs --user USER";
    return false;
  }
  if (out.privsep_worker && out.upgrade_from) {
    error = "--upgrade-from does not go with --privsep-worker (the key holder takes over)";
    return false;
  }
  if (!out.privsep && (!out.privsep_user.empty() || out.privsep_worker)) {
    error = std::string(out.privsep_worker ? "--privsep-worker" : "--user") + " needs --privsep";
    return false;
  }
  // Nothing could move without both directions in the kernel.
  if (out.privsep && out.offload.no_offload) {
    error = "--privsep does not go with --no-offload";
    return false;
  }
  return true;
}

bool Read(const cxxopts::ParseResult& args, ProxyOptions& out, std::string& error) {
  if (!args.unmatched().empty()) {
    error = "unexpected argument: " + args.unmatched().front();
    return false;
  }
  if (args.count("backend") == 0) {
    error = "--backend HOST:PORT is required";
    return false;
  }
  if (!ParseHostPort(args["listen"].as<std::string>(), "--listen", true, out.listen, error) ||
      !ParseHostPort(args["backend"].as<std::string>(), "--backend", false, out.backend, error)) {
    return false;
  }
  if (args.count("cert") != args.count("key")) {
    error = "--cert and --key go together";
    return false;
  }
  if (args.count("cert") != 0) {
    out.cert_file = args["cert"].as<std::string>();
    out.key_file = args["key"].as<std::string>();
  }
  out.backend_tls = args.count("backend-tls") != 0;
  for (const char* flag : {"backend-ca", "backend-sni", "backend-insecure"}) {
    if (args.count(flag) != 0 && !out.backend_tls) {
      error = std::string("--") + flag + " needs --backend-tls";
      return false;
    }
  }
  if (args.count("backend-ca") != 0) out.backend_ca = args["backend-ca"].as<std::string>();
  if (args.count("backend-sni") != 0) out.backend_sni = args["backend-sni"].as<std::string>();
  out.backend_verify = args.count("backend-insecure") == 0;
  out.offload = {args.count("rx") != 0, args.count("no-rx") != 0, args.count("no-offload") != 0};
  if (out.offload.rx && out.offload.no_rx) {
    error = "--rx and --no-rx contradict each other";
    return false;
  }
  if (args.count("ciphers") != 0) out.ciphers = args["ciphers"].as<std::string>();
  if (args.count("ciphersuites") != 0) out.ciphersuites = args["ciphersuites"].as<std::string>();
  const long long threads = args["threads"].as<long long>();
  if (threads < 0 || threads > 1024) {
    error = "--threads must be from 0 (one per core) to 1024";
    return false;
  }
  out.threads = static_cast<unsigned>(threads);
  if (!Positive(args, "handshake-timeout", out.handshake_timeout, false, error) ||
      !Positive(args, "connect-timeout", out.connect_timeout, false, error) ||
      !Positive(args, "drain-timeout", out.drain_timeout, true, error) ||
      !tools::ReadConnectionLimits(args, out.limits, error)) {
    return false;
  }
  out.proxy_protocol = args.count("proxy-protocol") != 0;
  out.copy = args.count("copy") != 0;
  out.metrics_on = args.count("metrics") != 0;
  if (out.metrics_on && !ParseHostPort(args["metrics"].as<std::string>(), "--metrics", true, out.metrics, error)) {
    return false;
  }
  return ReadPrivsep(args, out, error);
}

}  // namespace

ParseOutcome ParseProxyOptions(int argc, const char* const* argv, ProxyOptions& out, std::string& text) {
  cxxopts::Options cli = MakeOptions();
  std::string error;
  try {
    const auto args = cli.parse(argc, argv);
    if (args.count("help") != 0) {
      text = cli.help();
      return ParseOutcome::kHelp;
    }
    if (Read(args, out, error)) return ParseOutcome::kRun;
  } catch (const cxxopts::exceptions::exception& e) {
    error = e.what();
  }
  text = "ktls-proxy: " + error + "\n" + cli.help();
  return ParseOutcome::kError;
}

}  // namespace ktls::proxy
