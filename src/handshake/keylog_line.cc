// handshake/keylog_line.cc
#include "handshake/keylog_line.h"

namespace ktls::detail {
namespace {

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// DecodeHex decodes hex into out (exactly out.size() bytes). False on any
// bad digit or length mismatch.
bool DecodeHex(std::string_view hex, std::span<unsigned char> out) {
  if (hex.size() != out.size() * 2) return false;
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int hi = HexDigit(hex[2 * i]);
    const int lo = HexDigit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<unsigned char>(hi << 4 | lo);
  }
  return true;
}

// NextField splits off the text up to the next single space.
std::string_view NextField(std::string_view& rest) {
  const std::size_t space = rest.find(' ');
  std::string_view field = rest.substr(0, space);
  rest = space == std::string_view::npos ? std::string_view() : rest.substr(space + 1);
  return field;
}

}  // namespace

std::optional<KeylogLine> ParseKeylogLine(std::string_view line) {
  std::string_view rest = line;
  const std::string_view label = NextField(rest);
  const std::string_view random_hex = NextField(rest);
  const std::string_view secret_hex = NextField(rest);
  if (!rest.empty() || secret_hex.empty()) return std::nullopt;

  KeylogLine out{};
  if (label == "CLIENT_TRAFFIC_SECRET_0") {
    out.label = KeylogLabel::kClientTrafficSecret0;
  } else if (label == "SERVER_TRAFFIC_SECRET_0") {
    out.label = KeylogLabel::kServerTrafficSecret0;
  } else {
    return std::nullopt;
  }
  if (!DecodeHex(random_hex, out.client_random)) return std::nullopt;
  if (secret_hex.size() % 2 != 0 || !out.secret.Resize(secret_hex.size() / 2)) return std::nullopt;
  if (!DecodeHex(secret_hex, out.secret.mutable_bytes())) {
    out.secret.Wipe();
    return std::nullopt;
  }
  return out;
}

}  // namespace ktls::detail
