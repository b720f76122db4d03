// ktls-probe: print what kernel TLS can do on this machine.
//
//   ktls-probe           a table for people
//   ktls-probe --json    one JSON object for programs
//
// Both also show the kernel's own kTLS counters (/proc/net/tls_stat), read
// after the probe ran (its throwaway sockets count there too), each with a
// line saying what it counts.
//
// Exit status is 0 whenever the probe ran, whatever it found; 2 for a usage
// error.
#include <cstdio>
#include <iostream>
#include <string>
#include <utility>

#include <cxxopts.hpp>
#include <nlohmann/json.hpp>

#include "ktls/kernel_tls_stats.h"
#include "ktls/probe.h"
#include "ktls/types.h"

namespace {

// AddTlsStat: "tls_stat": {"TlsTxSw": 3, ...}, every counter the kernel
// lists; or null, with the reason in "tls_stat_error".
void AddTlsStat(nlohmann::json& out, const ktls::Result<ktls::KernelTlsStats>& stats) {
  if (!stats.ok()) {
    out["tls_stat"] = nullptr;
    out["tls_stat_error"] = stats.error().ToString();
    return;
  }
  nlohmann::json counters = nlohmann::json::object();
  for (const ktls::KernelTlsCounter& counter : stats->counters) counters[counter.name] = counter.value;
  out["tls_stat"] = std::move(counters);
}

nlohmann::json ToJson(const ktls::Capabilities& caps) {
  nlohmann::json ciphers = nlohmann::json::array();
  for (const ktls::CipherSupport& row : caps.ciphers) {
    ciphers.push_back({{"version", ktls::TlsVersionName(row.version)},
                       {"cipher", ktls::CipherName(row.cipher)},
                       {"tx", row.tx},
                       {"rx", row.rx}});
  }
  nlohmann::json out = {
      {"available", caps.available}, {"ulp", caps.ulp},   {"kernel", caps.kernel},
      {"rekey", caps.rekey},         {"ciphers", ciphers},
  };
  if (!caps.reason.empty()) out["reason"] = caps.reason;
  out["rx_no_pad"] = caps.rx_no_pad;
  if (!caps.rx_no_pad) out["rx_no_pad_reason"] = caps.rx_no_pad_reason;
  return out;
}

void PrintTlsStat(const ktls::Result<ktls::KernelTlsStats>& stats) {
  std::printf("\nkernel counters (/proc/net/tls_stat)\n");
  if (!stats.ok()) {
    std::printf("  unavailable: %s\n", stats.error().ToString().c_str());
    return;
  }
  for (const ktls::KernelTlsCounter& counter : stats->counters) {
    const ktls::KernelTlsCounterInfo* info = ktls::FindKernelTlsCounter(counter.name);
    std::printf("  %-20s %12llu  %s\n", counter.name.c_str(), static_cast<unsigned long long>(counter.value),
                info != nullptr ? std::string(info->description).c_str() : "(not known to this ktls-probe)");
  }
}

void PrintTable(const ktls::Capabilities& caps) {
  const auto yes_no = [](bool b) { return b ? "yes" : "no"; };
  std::printf("kernel     %s\n", caps.kernel.c_str());
  std::printf("kTLS       %s\n", caps.available ? "available" : "unavailable");
  if (!caps.reason.empty()) std::printf("reason     %s\n", caps.reason.c_str());
  std::printf("tls ULP    %s\n", yes_no(caps.ulp));
  std::printf("TLS 1.3 rekey (KeyUpdate)  %s\n", yes_no(caps.rekey));
  std::printf("TLS 1.3 RX no-pad (TLS_RX_EXPECT_NO_PAD)  %s\n", yes_no(caps.rx_no_pad));
  if (!caps.rx_no_pad) std::printf("  why not: %s\n", caps.rx_no_pad_reason.c_str());
  std::printf("\n");
  std::printf("%-8s %-18s %-4s %-4s\n", "version", "cipher", "tx", "rx");
  for (const ktls::CipherSupport& row : caps.ciphers) {
    std::printf("%-8s %-18s %-4s %-4s\n", std::string(ktls::TlsVersionName(row.version)).c_str(),
                std::string(ktls::CipherName(row.cipher)).c_str(), yes_no(row.tx), yes_no(row.rx));
  }
}

}  // namespace

int main(int argc, char** argv) {
  cxxopts::Options options("ktls-probe", "Report what kernel TLS (kTLS) can do on this machine.");
  options.add_options()("json", "Print one JSON object instead of a table")("h,help", "Show this help");
  bool json = false;
  try {
    const cxxopts::ParseResult args = options.parse(argc, argv);
    if (args.count("help") != 0) {
      std::cout << options.help();
      return 0;
    }
    if (!args.unmatched().empty()) throw cxxopts::exceptions::exception("unexpected argument: " + args.unmatched().front());
    json = args["json"].as<bool>();
  } catch (const cxxopts::exceptions::exception& e) {
    std::cerr << "ktls-probe: " << e.what() << "\n" << options.help();
    return 2;
  }

  const ktls::Capabilities caps = ktls::Probe();
  const auto stats = ktls::ReadKernelTlsStats();  // After the probe: its sockets are counted.
  if (json) {
    nlohmann::json out = ToJson(caps);
    AddTlsStat(out, stats);
    std::cout << out.dump(2) << "\n";
  } else {
    PrintTable(caps);
    PrintTlsStat(stats);
  }
  return 0;
}
