// connection_state_fuzzer: ParseMovedState (src/conn/connection_move.h), the
// state Connection::Import reads, on any bytes. The state comes from another
// process, possibly a compromised one: its parser must never crash, and must
// accept only what SerializeMovedState could have made.
//
// Besides not crashing: a state that parses serializes back to exactly the
// input (the format has one encoding per state, so nothing is accepted that
// the format does not allow), and its values hold together (secrets of the
// cipher's length where key updates are possible, none otherwise).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>

#include "conn/connection_move.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
  auto parsed = ktls::detail::ParseMovedState(input);
  if (!parsed.ok()) {
    FUZZ_CHECK(parsed.error().category == ktls::ErrorCategory::kUsage);
    return 0;
  }
  const auto again = ktls::detail::SerializeMovedState(*parsed);
  FUZZ_CHECK(again.size() == input.size());
  FUZZ_CHECK(std::equal(again.begin(), again.end(), input.begin()));
  const std::size_t secret_len =
      parsed->kernel_rekey ? ktls::detail::TrafficSecretLength(parsed->cipher) : 0;
  FUZZ_CHECK(parsed->tx_secret.size() == secret_len && parsed->rx_secret.size() == secret_len);
  return 0;
}
