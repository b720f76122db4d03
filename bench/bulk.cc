// bench/bulk.cc: bulk send and bulk receive over one loopback connection.
//
// The timed interval runs from the sender's first write to the moment the
// receiver has the last byte (both threads of this process read the same
// monotonic clock); the handshake is not in it. MB/s = 10^6 bytes/s.
//
// Bulk send: the server under test sends; the receiver is a plain OpenSSL
// client in userspace with read-ahead (one read(2) per 64 KiB), which
// decrypts every record with the CPU's AES/ChaCha instructions, the
// cheapest receiver there is, so that the sender's cost shows.
// Bulk receive: the same client sends (SSL_write, userspace) and the server
// under test receives.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <memory>

#include "cases.h"
#include "ktls/probe.h"
#include "runner.h"

namespace ktls::bench {
namespace {

constexpr std::size_t kPatternBytes = 1 << 20;        // Data repeats every MiB.
constexpr std::size_t kReceiverBufferBytes = 64 << 10;  // The bulk-send receiver's reads.
constexpr std::size_t kAfAlgRecordBytes = 16 << 10;
// The padding peer of bulk_receive_no_pad: every record padded to a full
// 16 KiB, from writes this much short of the read size.
constexpr std::size_t kPaddedRecordBytes = 16 << 10;
constexpr std::size_t kPaddingRoom = 256;

// SourceFile: an unlinked file of len bytes in dir (a tmpfs), for sendfile.
class SourceFile {
 public:
  SourceFile(const std::string& dir, std::span<const std::byte> pattern, std::size_t len) {
    std::string path = (dir.empty() ? std::string("/tmp") : dir) + "/ktls-bench-XXXXXX";
    fd_ = UniqueFd(::mkostemp(path.data(), O_CLOEXEC));
    if (!fd_) throw BenchError("cannot create a file in " + dir + ": " + std::strerror(errno));
    ::unlink(path.c_str());
    for (std::size_t done = 0; done < len;) {
      const std::size_t n = std::min(pattern.size(), len - done);
      const ssize_t wrote = ::pwrite(fd_.get(), pattern.data(), n, static_cast<off_t>(done));
      if (wrote <= 0) throw BenchError("cannot write the sendfile source in " + dir + ": " + std::strerror(errno));
      done += static_cast<std::size_t>(wrote);
    }
  }
  int fd() const { return fd_.get(); }

 private:
  UniqueFd fd_;
};

enum class SendCall : std::uint8_t { kWrite, kSendFile };

struct BulkInput {
  std::vector<std::byte> pattern = RandomBytes(kPatternBytes);
  std::unique_ptr<SourceFile> file;
};

double MegabytesPerSecond(std::size_t len, double seconds) { return seconds > 0 ? static_cast<double>(len) / seconds / 1e6 : 0; }

// CheckOffload: the server's TX (or RX) is where the variant says, and the
// kernel counted the socket. OpenSSL's own kTLS may legitimately stay off
// (it decides per cipher): that makes the variant unavailable. ktls must
// offload wherever the probe said the kernel takes the cipher.
std::string CheckOffload(const ServerEnd& end, ServerTls kind, bool rx, const std::map<std::string, long long>& before,
                         std::string& notes) {
  const bool in_kernel = rx ? end.rx_in_kernel() : end.tx_in_kernel();
  const std::string counter = rx ? "TlsRxSw" : "TlsTxSw";
  const long long counted = TlsStatDelta(before, TlsStat(), counter);
  notes = end.Where() + ", " + counter + " +" + std::to_string(counted);
  if (kind == ServerTls::kOpenSsl) {
    if (in_kernel) throw BenchError("plain OpenSSL is in the kernel?");
    return {};
  }
  if (!in_kernel) {
    if (kind == ServerTls::kOpenSslKtls) {
      return std::string("OpenSSL left ") + (rx ? "RX" : "TX") + " in userspace (BIO_get_ktls_" +
             (rx ? "recv" : "send") + " = 0)";
    }
    throw BenchError(std::string("ktls did not offload ") + (rx ? "RX" : "TX") + ": " + end.Where());
  }
  if (!TlsStat().empty() && counted != 1) {
    throw BenchError(counter + " moved by " + std::to_string(counted) + ", not 1, for one offloaded connection");
  }
  return {};
}

RunResult SendRun(SSL_CTX* server_ctx, SSL_CTX* client_ctx, ServerTls kind, SendCall call, std::size_t len,
                  std::size_t chunk, const BulkInput& input) {
  LoopbackListener listener;
  std::atomic<double> received_at{0};
  ClientThread client(listener.port(), [&](int fd) {
    UniqueSsl ssl = ClientHandshake(client_ctx, fd);
    std::vector<std::byte> buf(kReceiverBufferBytes);
    std::size_t got = 0;
    while (got < len) {
      const std::size_t n = SslRead(ssl.get(), buf);
      if (n == 0) throw BenchError("the sender closed after " + std::to_string(got) + " bytes");
      got += n;
    }
    received_at = NowSeconds();
    if (SslRead(ssl.get(), buf) != 0) throw BenchError("more data than was sent");
  });
  const auto before = TlsStat();
  ServerEnd server = ServerEnd::Handshake(server_ctx, listener.Accept(), kind);
  RunResult result;
  result.unavailable = CheckOffload(server, kind, /*rx=*/false, before, result.notes);
  if (!result.unavailable.empty()) return result;

  const double start = NowSeconds();
  if (call == SendCall::kSendFile) {
    server.SendFileAll(input.file->fd(), 0, len);
  } else {
    for (std::size_t sent = 0; sent < len;) {
      const std::size_t at = sent % input.pattern.size();
      const std::size_t n = std::min({chunk, len - sent, input.pattern.size() - at});
      server.WriteAll(std::span(input.pattern).subspan(at, n));
      sent += n;
    }
  }
  server.Shutdown();
  client.Join();
  result.values = {MegabytesPerSecond(len, received_at - start)};
  return result;
}

// ReceiveSetup: how the server under test offloads (kKtls) and how big the
// client's writes are (0: the server's read size), for ReceiveRun.
struct ReceiveSetup {
  OffloadOptions offload = ServerEnd::BothWays();
  std::size_t client_chunk = 0;
};

RunResult ReceiveRun(SSL_CTX* server_ctx, SSL_CTX* client_ctx, ServerTls kind, std::size_t len, std::size_t chunk,
                     const BulkInput& input, const ReceiveSetup& setup = {}) {
  LoopbackListener listener;
  std::atomic<double> started_at{0};
  const std::size_t client_chunk = setup.client_chunk != 0 ? setup.client_chunk : chunk;
  ClientThread client(listener.port(), [&](int fd) {
    UniqueSsl ssl = ClientHandshake(client_ctx, fd);
    started_at = NowSeconds();
    for (std::size_t sent = 0; sent < len;) {
      const std::size_t at = sent % input.pattern.size();
      const std::size_t n = std::min({client_chunk, len - sent, input.pattern.size() - at});
      SslWriteAll(ssl.get(), std::span(input.pattern).subspan(at, n));
      sent += n;
    }
    if (SSL_shutdown(ssl.get()) < 0) throw BenchError("client SSL_shutdown: " + OpenSslErrors());
    // Wait for the server's close_notify (reading the session tickets on the
    // way), so that closing cannot reset data the server has not read.
    std::vector<std::byte> buf(256);
    if (SslRead(ssl.get(), buf) != 0) throw BenchError("unexpected data from the server");
  });
  const auto before = TlsStat();
  ServerEnd server = ServerEnd::Handshake(server_ctx, listener.Accept(), kind, setup.offload);
  RunResult result;
  result.unavailable = CheckOffload(server, kind, /*rx=*/kind == ServerTls::kKtls, before, result.notes);
  if (!result.unavailable.empty()) return result;
  if (setup.offload.rx_expect_no_pad) {
    const KernelState state = server.kernel_state();
    if (!state.rx_no_pad) {
      // The client is waiting to send: let it, and drop the run.
      std::vector<std::byte> buf(chunk);
      while (server.Read(buf) != 0) {
      }
      server.Shutdown();
      client.Join();
      result.unavailable = "TLS_RX_EXPECT_NO_PAD is off: " + state.rx_no_pad_why_not;
      return result;
    }
    result.notes += ", rx_no_pad=on";
  }

  std::vector<std::byte> buf(chunk);
  std::size_t got = 0;
  while (got < len) {
    const std::size_t n = server.Read(buf);
    if (n == 0) throw BenchError("the client closed after " + std::to_string(got) + " bytes");
    got += n;
  }
  const double done = NowSeconds();
  if (server.Read(buf) != 0) throw BenchError("more data than was sent");
  server.Shutdown();
  client.Join();
  result.values = {MegabytesPerSecond(len, done - started_at)};
  return result;
}

std::string CipherId(const Suite& suite) { return std::string(CipherName(suite.cipher)); }

}  // namespace

void AddBulkSend(Report& report, const Options& opts) {
  BulkInput input;
  input.file = std::make_unique<SourceFile>(opts.file_dir, input.pattern, opts.bulk_bytes);
  const std::size_t len = opts.bulk_bytes;
  const auto size_for = [len](bool warmup) { return warmup ? std::max<std::size_t>(len / 8, 1) : len; };
  for (const Suite& suite : opts.suites) {
    const std::string suites(suite.name);
    UniqueSslCtx client_ctx = NewClientContext(suites, /*read_ahead=*/true);
    UniqueSslCtx plain_ctx = NewServerContext(suites, ServerTls::kOpenSsl);
    UniqueSslCtx openssl_ktls_ctx = NewServerContext(suites, ServerTls::kOpenSslKtls);
    UniqueSslCtx ktls_ctx = NewServerContext(suites, ServerTls::kKtls);
    AfAlgSeal af_alg(suite.cipher);

    Comparison& comparison = report.comparisons.emplace_back();
    comparison.id = "bulk_send." + CipherId(suite);
    comparison.group = "bulk_send";
    comparison.title = "Bulk send, one connection, " + std::to_string(len >> 20) + " MiB, " + suites;
    comparison.metric = "throughput";
    comparison.unit = "MB/s";
    comparison.reference = "af_alg";

    const auto send = [&](SSL_CTX* ctx, ServerTls kind, SendCall call) {
      return [&, ctx, kind, call](bool warmup) {
        return SendRun(ctx, client_ctx.get(), kind, call, size_for(warmup), opts.chunk_bytes, input);
      };
    };
    std::vector<Variant> variants;
    variants.push_back({"af_alg", "kernel AEAD alone: AF_ALG, 16 KiB records (the ceiling)", [&](bool warmup) {
                          RunResult result;
                          if (!af_alg.unavailable().empty()) {
                            result.unavailable = af_alg.unavailable();
                            return result;
                          }
                          const double start = NowSeconds();
                          af_alg.Seal(input.pattern, size_for(warmup), kAfAlgRecordBytes);
                          result.values = {MegabytesPerSecond(size_for(warmup), NowSeconds() - start)};
                          result.notes = "encrypt only, no socket";
                          return result;
                        }});
    variants.push_back({"ktls_write", "ktls Write (TX in the kernel)", send(ktls_ctx.get(), ServerTls::kKtls,
                                                                            SendCall::kWrite)});
    variants.push_back({"ktls_sendfile", "ktls SendFile (sendfile(2), TX in the kernel)",
                        send(ktls_ctx.get(), ServerTls::kKtls, SendCall::kSendFile)});
    variants.push_back({"openssl_write", "OpenSSL SSL_write (userspace)",
                        send(plain_ctx.get(), ServerTls::kOpenSsl, SendCall::kWrite)});
    variants.push_back({"openssl_ktls_write", "OpenSSL's own kTLS: SSL_write",
                        send(openssl_ktls_ctx.get(), ServerTls::kOpenSslKtls, SendCall::kWrite)});
    variants.push_back({"openssl_ktls_sendfile", "OpenSSL's own kTLS: SSL_sendfile",
                        send(openssl_ktls_ctx.get(), ServerTls::kOpenSslKtls, SendCall::kSendFile)});
    RunInterleaved(variants, opts.runs, {&comparison});
    report.PrintComparison(std::cout, comparison);
  }
}

void AddBulkReceive(Report& report, const Options& opts) {
  BulkInput input;
  const std::size_t len = opts.bulk_bytes;
  const auto size_for = [len](bool warmup) { return warmup ? std::max<std::size_t>(len / 8, 1) : len; };
  for (const Suite& suite : opts.suites) {
    const std::string suites(suite.name);
    UniqueSslCtx client_ctx = NewClientContext(suites, /*read_ahead=*/false);
    UniqueSslCtx plain_ctx = NewServerContext(suites, ServerTls::kOpenSsl);
    UniqueSslCtx read_ahead_ctx = NewServerContext(suites, ServerTls::kOpenSsl);
    SSL_CTX_set_read_ahead(read_ahead_ctx.get(), 1);
    SSL_CTX_set_default_read_buffer_len(read_ahead_ctx.get(), 64 * 1024);
    UniqueSslCtx ktls_ctx = NewServerContext(suites, ServerTls::kKtls);

    Comparison& comparison = report.comparisons.emplace_back();
    comparison.id = "bulk_receive." + CipherId(suite);
    comparison.group = "bulk_receive";
    comparison.title = "Bulk receive, one connection, " + std::to_string(len >> 20) + " MiB, " + suites;
    comparison.metric = "throughput";
    comparison.unit = "MB/s";
    comparison.reference = "openssl_read";

    const auto receive = [&](SSL_CTX* ctx, ServerTls kind) {
      return [&, ctx, kind](bool warmup) {
        return ReceiveRun(ctx, client_ctx.get(), kind, size_for(warmup), opts.chunk_bytes, input);
      };
    };
    std::vector<Variant> variants;
    variants.push_back({"openssl_read", "OpenSSL SSL_read (userspace)", receive(plain_ctx.get(), ServerTls::kOpenSsl)});
    variants.push_back({"openssl_read_ahead", "OpenSSL SSL_read with read-ahead (64 KiB buffer)",
                        receive(read_ahead_ctx.get(), ServerTls::kOpenSsl)});
    variants.push_back({"ktls_read", "ktls Read (RX in the kernel)", receive(ktls_ctx.get(), ServerTls::kKtls)});
    RunInterleaved(variants, opts.runs, {&comparison});
    report.PrintComparison(std::cout, comparison);
  }
}

void AddBulkReceiveNoPad(Report& report, const Options& opts) {
  BulkInput input;
  const std::size_t len = opts.bulk_bytes;
  const auto size_for = [len](bool warmup) { return warmup ? std::max<std::size_t>(len / 8, 1) : len; };
  // The padding peer pads every record to 16 KiB; its writes leave room
  // for that (OpenSSL never pads past the record limit).
  const std::size_t padded_chunk = opts.chunk_bytes > kPaddingRoom ? opts.chunk_bytes - kPaddingRoom : opts.chunk_bytes;
  for (const Suite& suite : opts.suites) {
    const std::string suites(suite.name);
    UniqueSslCtx client_ctx = NewClientContext(suites, /*read_ahead=*/false);
    UniqueSslCtx padding_client_ctx = NewClientContext(suites, /*read_ahead=*/false);
    if (SSL_CTX_set_block_padding(padding_client_ctx.get(), kPaddedRecordBytes) != 1) {
      throw BenchError("SSL_CTX_set_block_padding: " + OpenSslErrors());
    }
    UniqueSslCtx ktls_ctx = NewServerContext(suites, ServerTls::kKtls);

    Comparison& comparison = report.comparisons.emplace_back();
    comparison.id = "bulk_receive_no_pad." + CipherId(suite);
    comparison.group = "bulk_receive_no_pad";
    comparison.title = "Bulk receive with TLS_RX_EXPECT_NO_PAD, one connection, " + std::to_string(len >> 20) +
                       " MiB, " + suites;
    comparison.metric = "throughput";
    comparison.unit = "MB/s";
    comparison.reference = "ktls_read";

    ReceiveSetup no_pad;
    no_pad.offload.rx_expect_no_pad = true;
    ReceiveSetup padding;
    padding.client_chunk = padded_chunk;
    ReceiveSetup no_pad_padding = no_pad;
    no_pad_padding.client_chunk = padded_chunk;
    const auto receive = [&](SSL_CTX* client, const ReceiveSetup& setup) {
      return [&, client, setup](bool warmup) {
        return ReceiveRun(ktls_ctx.get(), client, ServerTls::kKtls, size_for(warmup), opts.chunk_bytes, input, setup);
      };
    };
    std::vector<Variant> variants;
    variants.push_back({"ktls_read", "ktls Read (RX in the kernel)", receive(client_ctx.get(), {})});
    variants.push_back({"ktls_read_no_pad", "ktls Read, rx_expect_no_pad", receive(client_ctx.get(), no_pad)});
    variants.push_back({"ktls_read_padding_peer", "ktls Read, the peer pads every record to 16 KiB",
                        receive(padding_client_ctx.get(), padding)});
    variants.push_back({"ktls_read_no_pad_padding_peer", "ktls Read, rx_expect_no_pad, the peer pads every record",
                        receive(padding_client_ctx.get(), no_pad_padding)});
    RunInterleaved(variants, opts.runs, {&comparison});
    report.PrintComparison(std::cout, comparison);
  }
}

}  // namespace ktls::bench
