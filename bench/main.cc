// ktls-bench: measures ktls against OpenSSL in userspace, OpenSSL's own
// kTLS and the kernel's AEAD ceiling, on the kernel it runs on.
//
//   ktls-bench [--cases bulk_send,bulk_receive,bulk_receive_no_pad,handshakes,handshake_syscalls,idle_memory,moves]
//              [--runs 5] [--json FILE] ...
//
// Every comparison runs in this one process on this one kernel: never put
// figures from two kernels (or UML and a host) side by side. Prints a table
// per comparison (median of --runs runs, min, max, ratio to the reference)
// and writes everything as JSON (bench/report.h) for scripts/bench, which
// runs it inside the UML kernels and renders docs/BENCHMARKS.md.
//
// Exit status: 0 measured; 1 a case failed (a handshake, an offload that
// should have happened, a counter that did not move), or this kernel has no
// kTLS where it was promised (KTLS_REQUIRE_KERNEL=1 or a UML guest); 2
// usage; 77 this kernel has no kTLS (nothing to compare) and none was
// promised.
#include <openssl/crypto.h>
#include <signal.h>
#include <sys/utsname.h>

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <string>

#include <cxxopts.hpp>
#include <nlohmann/json.hpp>

#include "cases.h"
#include "common/kernel_promise.h"
#include "ktls/probe.h"
#include "ktls/types.h"

namespace {

using ktls::bench::Options;

const char* const kAllCases[] = {"bulk_send", "bulk_receive", "bulk_receive_no_pad", "handshakes", "handshake_syscalls",
                                   "idle_memory", "moves"};

std::vector<std::string> SplitCommas(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    if (!part.empty()) parts.push_back(part);
  }
  return parts;
}

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown";
}

nlohmann::json Environment(const ktls::Capabilities& caps, const std::string& label) {
  utsname uts{};
  ::uname(&uts);
  nlohmann::json ciphers = nlohmann::json::array();
  for (const ktls::CipherSupport& row : caps.ciphers) {
    if (row.version != ktls::TlsVersion::kTls13) continue;
    ciphers.push_back({{"cipher", ktls::CipherName(row.cipher)}, {"tx", row.tx}, {"rx", row.rx}});
  }
  const char* uml = std::getenv("KTLS_IN_UML");
  const char* uml_kernel = std::getenv("KTLS_UML_KERNEL");
  char date[32] = "";
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return {{"label", label},
          {"kernel", uts.release},
          {"machine", uts.machine},
          {"uml", uml != nullptr && std::string(uml) == "1"},
          {"uml_kernel", uml_kernel != nullptr ? uml_kernel : ""},
          {"cpu", CpuModel()},
          {"openssl", OpenSSL_version(OPENSSL_VERSION)},
          {"ktls_rekey", caps.rekey},
          {"tls13_ciphers", ciphers},
          {"date", date}};
}

}  // namespace

int main(int argc, char** argv) {
  cxxopts::Options cli("ktls-bench", "Benchmark ktls against OpenSSL and the kernel's AEAD ceiling (see docs/BENCHMARKS.md).");
  Options opts;
  cli.add_options()
      ("cases", "Comma-separated: bulk_send, bulk_receive, bulk_receive_no_pad, handshakes, handshake_syscalls, idle_memory, moves",
       cxxopts::value<std::string>()->default_value(
           "bulk_send,bulk_receive,bulk_receive_no_pad,handshakes,handshake_syscalls,idle_memory,moves"))
      ("runs", "Measured runs per case (median, min, max)", cxxopts::value<int>()->default_value("5"))
      ("bulk-mib", "MiB per bulk send/receive run", cxxopts::value<std::size_t>()->default_value("64"))
      ("chunk-kib", "KiB per write/read call in the bulk cases", cxxopts::value<std::size_t>()->default_value("16"))
      ("handshakes", "Handshakes per handshake run", cxxopts::value<std::size_t>()->default_value("200"))
      ("idle-connections", "Connections held per memory run", cxxopts::value<std::size_t>()->default_value("1000"))
      ("ciphers", "Comma-separated ciphers (AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305, AES_128_CCM); default: all the kernel takes",
       cxxopts::value<std::string>()->default_value(""))
      ("file-dir", "Directory (a tmpfs) for the sendfile source file", cxxopts::value<std::string>()->default_value("/dev/shm"))
      ("label", "A name for this environment in the JSON (\"uml-6.1\")", cxxopts::value<std::string>()->default_value(""))
      ("json", "Write the results as JSON to this file", cxxopts::value<std::string>()->default_value(""))
      ("syscall-worker", "Internal (handshake_syscalls runs it under strace): SIDE,KIND,RESUME",
       cxxopts::value<std::string>()->default_value(""))
      ("h,help", "Show this help");
  std::set<std::string> cases;
  std::string json_path;
  std::string label;
  std::string syscall_worker;
  std::vector<std::string> cipher_names;
  try {
    const auto args = cli.parse(argc, argv);
    if (args.count("help") != 0) {
      std::cout << cli.help();
      return 0;
    }
    if (!args.unmatched().empty()) throw cxxopts::exceptions::exception("unexpected argument: " + args.unmatched().front());
    for (const std::string& c : SplitCommas(args["cases"].as<std::string>())) {
      if (std::find(std::begin(kAllCases), std::end(kAllCases), c) == std::end(kAllCases)) {
        throw cxxopts::exceptions::exception("unknown case: " + c);
      }
      cases.insert(c);
    }
    opts.runs = args["runs"].as<int>();
    opts.bulk_bytes = args["bulk-mib"].as<std::size_t>() << 20;
    opts.chunk_bytes = args["chunk-kib"].as<std::size_t>() << 10;
    opts.handshakes = args["handshakes"].as<std::size_t>();
    opts.idle_connections = args["idle-connections"].as<std::size_t>();
    opts.file_dir = args["file-dir"].as<std::string>();
    json_path = args["json"].as<std::string>();
    label = args["label"].as<std::string>();
    cipher_names = SplitCommas(args["ciphers"].as<std::string>());
    syscall_worker = args["syscall-worker"].as<std::string>();
    if (opts.runs < 1 || opts.bulk_bytes == 0 || opts.chunk_bytes == 0 || opts.handshakes == 0 ||
        opts.idle_connections == 0) {
      throw cxxopts::exceptions::exception("--runs and the sizes must be at least 1");
    }
  } catch (const cxxopts::exceptions::exception& e) {
    std::cerr << "ktls-bench: " << e.what() << "\n" << cli.help();
    return 2;
  }

  // A client that goes away early must be an error on a write, not a signal.
  ::signal(SIGPIPE, SIG_IGN);
  if (!syscall_worker.empty()) {
    try {
      return ktls::bench::RunSyscallWorker(syscall_worker, opts.handshakes);
    } catch (const std::exception& e) {
      std::cerr << "ktls-bench: syscall worker FAILED: " << e.what() << "\n";
      return 1;
    }
  }
  // The cached probe is the one the library consults at every offload: run
  // it now, so that its test sockets do not show up in a case's counters.
  const ktls::Capabilities& caps = ktls::CachedCapabilities();
  if (!caps.available) {
    if (ktls::tools::KernelTlsPromised()) {
      std::cout << "FAIL: kernel TLS is promised (KTLS_REQUIRE_KERNEL=1 or a UML guest) but this kernel has none ("
                << caps.reason << ")\n";
      return 1;
    }
    std::cout << "SKIP: this kernel has no kTLS (" << caps.reason << "); nothing to compare\n";
    return 77;
  }

  ktls::bench::Report report;
  report.environment = Environment(caps, label);
  nlohmann::json skipped = nlohmann::json::array();
  for (const ktls::bench::Suite& suite : ktls::bench::Tls13Suites()) {
    const std::string name(ktls::CipherName(suite.cipher));
    if (!cipher_names.empty() && std::find(cipher_names.begin(), cipher_names.end(), name) == cipher_names.end()) {
      continue;
    }
    if (!caps.Supports(ktls::TlsVersion::kTls13, suite.cipher, /*need_rx=*/true)) {
      skipped.push_back({{"cipher", name}, {"reason", "the kernel does not take it for TLS 1.3 TX and RX"}});
      continue;
    }
    opts.suites.push_back(suite);
  }
  nlohmann::json suite_names = nlohmann::json::array();
  for (const auto& suite : opts.suites) suite_names.push_back(suite.name);
  report.parameters = {{"runs", opts.runs},
                       {"bulk_bytes", opts.bulk_bytes},
                       {"chunk_bytes", opts.chunk_bytes},
                       {"handshakes_per_run", opts.handshakes},
                       {"idle_connections", opts.idle_connections},
                       {"suites", suite_names},
                       {"suites_skipped", skipped},
                       {"cases", std::vector<std::string>(cases.begin(), cases.end())}};
  std::cout << "ktls-bench on " << report.environment["kernel"].get<std::string>()
            << (report.environment["uml"].get<bool>() ? " (UML)" : "") << ", " << opts.runs << " runs per case\n";

  const double start = ktls::bench::NowSeconds();
  try {
    for (const char* name : kAllCases) {
      if (cases.count(name) == 0) continue;
      std::cerr << "== " << name << "\n";
      const std::string c = name;
      if (c == "bulk_send") ktls::bench::AddBulkSend(report, opts);
      if (c == "bulk_receive") ktls::bench::AddBulkReceive(report, opts);
      if (c == "bulk_receive_no_pad") ktls::bench::AddBulkReceiveNoPad(report, opts);
      if (c == "handshakes") ktls::bench::AddHandshakes(report, opts);
      if (c == "handshake_syscalls") ktls::bench::AddHandshakeSyscalls(report, opts);
      if (c == "idle_memory") ktls::bench::AddIdleMemory(report, opts);
      if (c == "moves") ktls::bench::AddMoves(report, opts);
    }
  } catch (const std::exception& e) {
    std::cerr << "ktls-bench: FAILED: " << e.what() << "\n";
    return 1;
  }
  report.environment["seconds"] = ktls::bench::NowSeconds() - start;

  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << report.ToJson().dump(2) << "\n";
    if (!out) {
      std::cerr << "ktls-bench: cannot write " << json_path << "\n";
      return 1;
    }
  }
  return 0;
}
