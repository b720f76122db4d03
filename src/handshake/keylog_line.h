// handshake/keylog_line.h: parsing one NSS key-log line, as OpenSSL's
// key-log callback produces it: "LABEL <client_random hex> <secret hex>".
// This reads text that OpenSSL builds from the handshake, so it is strict
// and fuzzed (tests/fuzz).
#ifndef KTLS_SRC_HANDSHAKE_KEYLOG_LINE_H_
#define KTLS_SRC_HANDSHAKE_KEYLOG_LINE_H_

#include <array>
#include <optional>
#include <string_view>

#include "keys/secret.h"

namespace ktls::detail {

// The labels ktls needs (RFC 8446 traffic secrets, as named in the NSS
// key-log format).
enum class KeylogLabel {
  kClientTrafficSecret0,  // CLIENT_TRAFFIC_SECRET_0
  kServerTrafficSecret0,  // SERVER_TRAFFIC_SECRET_0
};

struct KeylogLine {
  KeylogLabel label;
  std::array<unsigned char, 32> client_random;
  Secret secret;
};

// ParseKeylogLine parses line, or returns nullopt for a label ktls does not
// need or any malformed line (wrong field count, bad hex, a client random
// that is not 32 bytes, a secret longer than Secret::kCapacity).
std::optional<KeylogLine> ParseKeylogLine(std::string_view line);

}  // namespace ktls::detail

#endif  // KTLS_SRC_HANDSHAKE_KEYLOG_LINE_H_
