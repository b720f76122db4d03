// ktls-probe: print what kernel TLS can do on this machine.
//
//   ktls-probe           a table for people
//   ktls-probe --json    one JSON object for programs
//
// Exit status is 0 whenever the probe ran, whatever it found; 2 for a usage
// error.
#include <cstdio>
#include <iostream>
#include <string>

#include <cxxopts.hpp>
#include <nlohmann/json.hpp>

#include "ktls/probe.h"
#include "ktls/types.h"

namespace {

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
  return out;
}

void PrintTable(const ktls::Capabilities& caps) {
  const auto yes_no = [](bool b) { return b ? "yes" : "no"; };
  std::printf("kernel     %s\n", caps.kernel.c_str());
  std::printf("kTLS       %s\n", caps.available ? "available" : "unavailable");
  if (!caps.reason.empty()) std::printf("reason     %s\n", caps.reason.c_str());
  std::printf("tls ULP    %s\n", yes_no(caps.ulp));
  std::printf("TLS 1.3 rekey (KeyUpdate)  %s\n\n", yes_no(caps.rekey));
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
  if (json) {
    std::cout << ToJson(caps).dump(2) << "\n";
  } else {
    PrintTable(caps);
  }
  return 0;
}
