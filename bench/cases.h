// bench/cases.h: the benchmark cases ktls-bench runs. Each adds its
// comparisons to the report (see report.h for what one holds).
#ifndef KTLS_BENCH_CASES_H_
#define KTLS_BENCH_CASES_H_

#include <cstddef>
#include <string>
#include <vector>

#include "peers.h"
#include "report.h"

namespace ktls::bench {

struct Options {
  int runs = 5;                              // Measured runs per case (median, min, max).
  std::size_t bulk_bytes = 64 << 20;         // Bytes per bulk run.
  std::size_t chunk_bytes = 16 << 10;        // Bytes per write/read call.
  std::size_t handshakes = 200;              // Handshakes per run.
  std::size_t idle_connections = 1000;       // Connections held per memory run.
  std::string file_dir = "/dev/shm";         // Where the sendfile source lives (tmpfs).
  std::vector<Suite> suites;                 // The TLS 1.3 suites to measure.
};

// AddBulkSend: one connection sends opts.bulk_bytes to a userspace OpenSSL
// client, per suite: ktls Write and SendFile, OpenSSL SSL_write, OpenSSL's
// kTLS SSL_write and SSL_sendfile; the reference is the kernel's own AEAD
// through AF_ALG on the same records (the ceiling).
void AddBulkSend(Report& report, const Options& opts);
// AddBulkReceive: one connection receives opts.bulk_bytes from a userspace
// OpenSSL client: ktls with RX in the kernel vs OpenSSL in userspace.
void AddBulkReceive(Report& report, const Options& opts);
// AddBulkReceiveNoPad: as AddBulkReceive, ktls with RX in the kernel
// only: OffloadOptions::rx_expect_no_pad off and on, from a client that does
// not pad and from one that pads every record (where the kernel must
// decrypt twice). Unavailable where the probe found no-pad unsafe (6.1).
void AddBulkReceiveNoPad(Report& report, const Options& opts);
// AddHandshakes: full and resumed handshakes per second, with offload after
// each vs the same handshake left in userspace.
void AddHandshakes(Report& report, const Options& opts);
// AddHandshakeSyscalls: the syscalls one connection's handshake makes, with
// offload and without, server and client, full and resumed, by syscall
// name (bench/handshake_syscalls.cc): strace -c of this program run as a
// worker, opts.handshakes connections over a baseline.
void AddHandshakeSyscalls(Report& report, const Options& opts);
// RunSyscallWorker: what one traced worker does (--syscall-worker SPEC):
// count connections as spec ("server,ktls,resumed") says. Throws
// BenchError.
int RunSyscallWorker(const std::string& spec, std::size_t count);
// AddIdleMemory: userspace heap, RSS (and kernel slab) per established idle
// connection, opts.idle_connections of them.
void AddIdleMemory(Report& report, const Options& opts);
// AddClientMemory: userspace heap per established idle client connection
// (opts.idle_connections), OpenSSL vs ktls with and without session
// tickets kept (bench/client_memory.cc). AddIdleMemory calls it.
void AddClientMemory(Report& report, const Options& opts);

// AddMoves: connections moved per second (Export + Import, and through an
// AF_UNIX socket), and the bytes of state one carries (bench/moves.cc).
void AddMoves(Report& report, const Options& opts);

// AfAlgSeal: the kernel's AEAD for cipher through an AF_ALG socket.
class AfAlgSeal {
 public:
  // Binds the transform ("gcm(aes)", "rfc7539(chacha20,poly1305)",
  // "ccm(aes)") and sets a random key. unavailable() says why not.
  explicit AfAlgSeal(Cipher cipher);
  const std::string& unavailable() const { return unavailable_; }
  // Seal encrypts len bytes of plaintext as records of record_len bytes
  // (each with a 5-byte TLS header as associated data and its own nonce),
  // one request per record as kTLS would do them.
  void Seal(std::span<const std::byte> plaintext, std::size_t len, std::size_t record_len);

 private:
  Cipher cipher_;
  UniqueFd tfm_;
  UniqueFd op_;
  std::string unavailable_;
};

}  // namespace ktls::bench

#endif  // KTLS_BENCH_CASES_H_
