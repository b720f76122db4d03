// tools/common/connection_limits.h: the connection limits the servers share
// (ktls-serve, ktls-echo): one set of flags, defaults and checks, so both
// tools mean the same thing by --idle-timeout and --max-connections.
#ifndef KTLS_TOOLS_COMMON_CONNECTION_LIMITS_H_
#define KTLS_TOOLS_COMMON_CONNECTION_LIMITS_H_

#include <chrono>
#include <cstddef>
#include <string>

#include <cxxopts.hpp>

namespace ktls::tools {

// ConnectionLimits: how long a connection may make no progress, and how
// many connections a server serves at once (more wait in the listen queue).
struct ConnectionLimits {
  std::chrono::milliseconds idle_timeout{30'000};
  std::size_t max_connections = 10'000;
};

// AddConnectionLimitOptions adds --idle-timeout MS and --max-connections N,
// with ConnectionLimits' defaults, to a tool's options.
void AddConnectionLimitOptions(cxxopts::Options& options);

// ReadConnectionLimits takes both flags from parsed arguments into `out`.
// Returns false, with a message in `error`, when one is not positive.
bool ReadConnectionLimits(const cxxopts::ParseResult& args, ConnectionLimits& out, std::string& error);

}  // namespace ktls::tools

#endif  // KTLS_TOOLS_COMMON_CONNECTION_LIMITS_H_
