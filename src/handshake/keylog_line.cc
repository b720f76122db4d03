// handshake/keylog_line.cc
#include "handshake/keylog_line.h"

#include <array>
#include <span>
#include <string_view>

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

// SplitFields splits line at single spaces into exactly three non-empty
// fields: no space before the first, none after the last.
bool SplitFields(std::string_view line, std::array<std::string_view, 3>& fields) {
  for (std::size_t i = 0; i < fields.size(); ++i) {
    const std::size_t space = line.find(' ');
    const bool last = i + 1 == fields.size();
    if ((space == std::string_view::npos) != last) return false;  // A field missing, or one too many.
    fields[i] = line.substr(0, space);
    if (fields[i].empty()) return false;
    if (!last) line.remove_prefix(space + 1);
  }
  return true;
}

}  // namespace

std::optional<KeylogLine> ParseKeylogLine(std::string_view line) {
  std::array<std::string_view, 3> fields;
  if (!SplitFields(line, fields)) return std::nullopt;
  const auto [label, random_hex, secret_hex] = fields;

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
