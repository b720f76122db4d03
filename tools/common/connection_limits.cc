// tools/common/connection_limits.cc: see connection_limits.h.
#include "common/connection_limits.h"

namespace ktls::tools {

void AddConnectionLimitOptions(cxxopts::Options& options) {
  const ConnectionLimits defaults;
  options.add_options()
      ("idle-timeout", "Drop connections that make no progress for this long (ms)",
       cxxopts::value<long long>()->default_value(std::to_string(defaults.idle_timeout.count())))
      ("max-connections", "Connections served at once; more wait in the listen queue",
       cxxopts::value<long long>()->default_value(std::to_string(defaults.max_connections)));
}

bool ReadConnectionLimits(const cxxopts::ParseResult& args, ConnectionLimits& out, std::string& error) {
  // Signed, so that a negative value is refused instead of wrapping around.
  const long long idle_ms = args["idle-timeout"].as<long long>();
  const long long max_connections = args["max-connections"].as<long long>();
  if (idle_ms <= 0 || max_connections <= 0) {
    error = "--idle-timeout and --max-connections must be positive";
    return false;
  }
  out.idle_timeout = std::chrono::milliseconds(idle_ms);
  out.max_connections = static_cast<std::size_t>(max_connections);
  return true;
}

}  // namespace ktls::tools
