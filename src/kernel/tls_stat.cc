// kernel/tls_stat.cc: /proc/net/tls_stat, read and parsed.
//
// The file is net/tls/tls_proc.c's seq_file: one line per counter, the name
// padded with spaces to 32 columns, a tab, the value. Only the shape "name,
// blanks, number" is relied on, so any padding parses.
#include "ktls/kernel_tls_stats.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <string>

#include "core/errors.h"
#include "core/unique_fd.h"
#include "kernel/kernel_tls_build.h"

namespace ktls {

namespace {

constexpr std::array<KernelTlsCounterInfo, 17> kKnown = {{
    {"TlsCurrTxSw", "TX sessions installed now, records encrypted by the kernel's software crypto", true},
    {"TlsCurrRxSw", "RX sessions installed now, records decrypted by the kernel's software crypto", true},
    {"TlsCurrTxDevice", "TX sessions installed now, records encrypted by the network card", true},
    {"TlsCurrRxDevice", "RX sessions installed now, records decrypted by the network card", true},
    {"TlsTxSw", "TX sessions ever installed with the kernel's software crypto", false},
    {"TlsRxSw", "RX sessions ever installed with the kernel's software crypto", false},
    {"TlsTxDevice", "TX sessions ever installed with network card crypto", false},
    {"TlsRxDevice", "RX sessions ever installed with network card crypto", false},
    {"TlsDecryptError", "received records that failed to decrypt or authenticate (bad tag, bad padding)", false},
    {"TlsRxDeviceResync", "RX resynchronisations requested from network cards", false},
    {"TlsDecryptRetry", "records decrypted twice because TLS_RX_EXPECT_NO_PAD guessed wrong (Linux 6.0)", false},
    {"TlsRxNoPadViolation", "data records decrypted twice because TLS_RX_EXPECT_NO_PAD guessed wrong (Linux 6.0)",
     false},
    {"TlsRxRekeyOk", "RX keys replaced on a live session (TLS 1.3 KeyUpdate; Linux 6.14)", false},
    {"TlsRxRekeyError", "RX key replacements the kernel refused (Linux 6.14)", false},
    {"TlsTxRekeyOk", "TX keys replaced on a live session (TLS 1.3 KeyUpdate; Linux 6.14)", false},
    {"TlsTxRekeyError", "TX key replacements the kernel refused (Linux 6.14)", false},
    {"TlsRxRekeyReceived", "KeyUpdate messages received, each pausing RX until new keys are set (Linux 6.14)", false},
}};

bool IsBlank(char c) { return c == ' ' || c == '\t'; }

}  // namespace

std::optional<std::uint64_t> KernelTlsStats::Get(std::string_view name) const noexcept {
  for (const KernelTlsCounter& counter : counters) {
    if (counter.name == name) return counter.value;
  }
  return std::nullopt;
}

std::span<const KernelTlsCounterInfo> KnownKernelTlsCounters() noexcept { return kKnown; }

const KernelTlsCounterInfo* FindKernelTlsCounter(std::string_view name) noexcept {
  for (const KernelTlsCounterInfo& info : kKnown) {
    if (info.name == name) return &info;
  }
  return nullptr;
}

Result<KernelTlsStats> ParseKernelTlsStats(std::string_view text) {
  KernelTlsStats stats;
  std::size_t line_number = 0;
  while (!text.empty()) {
    const std::size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    ++line_number;
    while (!line.empty() && IsBlank(line.back())) line.remove_suffix(1);
    if (line.empty()) continue;
    const auto bad = [&](const char* what) {
      return detail::MakeError(ErrorCategory::kProtocol, "tls_stat line " + std::to_string(line_number) + ": " +
                                                             what + ": \"" + std::string(line.substr(0, 80)) + "\"");
    };
    std::size_t name_end = 0;
    while (name_end < line.size() && !IsBlank(line[name_end])) ++name_end;
    std::size_t value_at = name_end;
    while (value_at < line.size() && IsBlank(line[value_at])) ++value_at;
    if (name_end == 0 || value_at == name_end || value_at == line.size()) return bad("not a name and a value");
    const std::string_view value_text = line.substr(value_at);
    std::uint64_t value = 0;
    const auto [ptr, ec] = std::from_chars(value_text.data(), value_text.data() + value_text.size(), value);
    if (ec == std::errc::result_out_of_range) return bad("value out of range");
    if (ec != std::errc() || ptr != value_text.data() + value_text.size()) return bad("value is not a number");
    const std::string_view name = line.substr(0, name_end);
    if (stats.Get(name)) return bad("counter listed twice");
    stats.counters.push_back(KernelTlsCounter{std::string(name), value});
  }
  return stats;
}

Result<KernelTlsStats> ReadKernelTlsStats() {
  // Without kernel TLS in the library, the counters say nothing about it.
  if constexpr (!detail::kKernelTls) {
    return detail::MakeError(ErrorCategory::kUnsupported, detail::kNoKernelTlsReason);
  }
  constexpr const char* kPath = "/proc/net/tls_stat";
  detail::UniqueFd fd(::open(kPath, O_RDONLY | O_CLOEXEC));
  if (!fd) {
    const int err = errno;
    if (err == ENOENT) {
      return detail::MakeError(ErrorCategory::kUnsupported,
                               "no /proc/net/tls_stat: this kernel has no kTLS (CONFIG_TLS off or the tls module not "
                               "loaded)");
    }
    return detail::SysError(err, std::string("open ") + kPath);
  }
  // A seq_file: read until the end, in as many pieces as it takes.
  std::string text;
  std::array<char, 4096> buf;
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return detail::SysError(errno, std::string("read ") + kPath);
    if (n == 0) break;
    text.append(buf.data(), static_cast<std::size_t>(n));
  }
  return ParseKernelTlsStats(text);
}

}  // namespace ktls
