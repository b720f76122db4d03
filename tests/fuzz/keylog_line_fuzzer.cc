// keylog_line_fuzzer: ParseKeylogLine (src/handshake/keylog_line.h) on any
// text. OpenSSL builds the lines, but they pass through the application's
// own key-log callback chain first, and a parser that trusts its input is
// how key material ends up in the wrong place.
//
// Besides not crashing: a line that parses must be exactly the line the
// parsed values print as (label, 32-byte client random, secret of at most
// Secret::kCapacity bytes, hex in either case), so nothing is accepted that
// the format does not allow.
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "handshake/keylog_line.h"
#include "keys/secret.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

std::string Hex(std::span<const unsigned char> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

std::string Lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using ktls::detail::KeylogLabel;
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  const auto parsed = ktls::detail::ParseKeylogLine(line);
  if (!parsed) return 0;
  FUZZ_CHECK(!parsed->secret.empty());
  FUZZ_CHECK(parsed->secret.size() <= ktls::detail::Secret::kCapacity);
  const std::string label = parsed->label == KeylogLabel::kClientTrafficSecret0 ? "CLIENT_TRAFFIC_SECRET_0"
                                                                               : "SERVER_TRAFFIC_SECRET_0";
  const std::string printed = label + " " + Hex(parsed->client_random) + " " + Hex(parsed->secret.bytes());
  FUZZ_CHECK(line.substr(0, label.size()) == label);  // The label is case-sensitive.
  FUZZ_CHECK(Lower(line) == Lower(printed));
  return 0;
}
