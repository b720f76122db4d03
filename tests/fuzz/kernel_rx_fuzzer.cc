// kernel_rx_fuzzer: what a Connection does with the records and errors kTLS
// RX hands it after offload. The fuzzer's input is a script; the kernel's
// side is played through the syscall seam (tests/support/scripted_ktls.h):
// recvmsg returns the scripted records with their TLS_GET_RECORD_TYPE
// control message, or the scripted errors; sendmsg and the TLS_TX/TLS_RX
// setsockopts of a key update are taken and checked. Connection::Read runs
// on a connection with both directions "in the kernel".
//
// Input format (every field is optional at the end of the input):
//   config: one byte
//     bit 0    the connection is the server (else the client)
//     bit 1    TLS 1.2 (else TLS 1.3)
//     bit 2    the kernel can install new keys (Linux 6.14+)
//     bits 3-4 the cipher (ktls::Cipher, in order)
//     bit 5    setsockopt(TLS_TX/TLS_RX) with a new key fails
//     bit 6    sendmsg fails (EPIPE)
//     bit 7    a TX key update after 4 records (else never)
//   then steps, each an op byte; op & 3 says which, op >> 2 is its parameter:
//     0  queue a record: type (1 byte), length (2 bytes, big-endian), payload
//     1  queue an error: kErrors[param % size]; 0 is the peer's FIN
//     2  Read into a buffer of kReadSizes[param % size] bytes
//     3  param 0-60: Write (param + 1) * 700 bytes; 61: Shutdown;
//        62: UpdateKeys(false); 63: UpdateKeys(true)
//   and at the end, Read until it would block, ends or fails.
//
// What must hold, whatever the input: no crash or sanitizer report; what
// Read delivers is a prefix of the application data queued, in order;
// nothing queued after a fatal event (an alert record other than a warning
// OpenSSL ignores, a record of an unknown type, an error other than EAGAIN
// and a resumable EKEYEXPIRED) is ever delivered; after Read
// reported an error or the end of the stream it delivers nothing more;
// every record ktls sends is data, a 2-byte alert or a KeyUpdate, and
// nothing follows a fatal alert or close_notify.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "conn/connection_impl.h"
#include "conn/traffic_keys.h"
#include "core/unique_fd.h"
#include "kernel/crypto_info.h"
#include "kernel/tls_uapi.h"
#include "keys/secret.h"
#include "keys/tls13_key_schedule.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/fuzz_connection.h"
#include "tests/support/fault_syscalls.h"
#include "tests/support/scripted_ktls.h"

namespace ktls::testing {
namespace {

namespace uapi = detail::uapi;

constexpr std::array<int, 7> kErrors = {0, EAGAIN, EBADMSG, EKEYEXPIRED, EMSGSIZE, ECONNRESET, EIO};
constexpr std::array<std::size_t, 16> kReadSizes = {1,   2,    3,    4,     5,     7,     16,    64,
                                                     100, 1000, 4096, 16383, 16384, 16385, 65536, 100000};
void Run(std::span<const std::uint8_t> data) {
  FuzzInput input(data);
  std::uint8_t config = 0;
  (void)input.Byte(&config);

  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return;
  detail::UniqueFd peer(fds[1]);
  detail::ConnectionImpl conn(detail::UniqueFd(fds[0]), detail::UniqueSsl(), (config & 1) != 0);
  conn.tx = Offload::kKernel;
  conn.rx = Offload::kKernel;
  conn.version = (config & 2) != 0 ? TlsVersion::kTls12 : TlsVersion::kTls13;
  conn.cipher = static_cast<Cipher>((config >> 3) & 3);
  conn.kernel_rekey = (config & 4) != 0 && conn.version == TlsVersion::kTls13;
  conn.key_update_threshold = (config & 0x80) != 0 ? 4 : 0;
  if (conn.kernel_rekey) {
    // Any secret of the suite's hash length: the kernel here checks sizes,
    // not keys.
    const std::vector<unsigned char> secret(detail::Tls13Params(conn.cipher).secret_len, 0x5a);
    (void)conn.tx_secret.Assign(secret);
    (void)conn.rx_secret.Assign(secret);
  }

  ScriptedKtlsRx rx;
  KernelTx tx;
  tx.cipher = conn.cipher;
  tx.set_key_fails = (config & 0x20) != 0;
  tx.sendmsg_fails = (config & 0x40) != 0;
  StandIns stand_ins;
  stand_ins.recv_msg = [&rx](int, msghdr* msg, int) -> std::optional<ssize_t> { return rx.RecvMsg(msg); };
  stand_ins.send_msg = [&tx](int, const msghdr* msg, int) { return tx.SendMsg(msg); };
  stand_ins.set_sock_opt = [&tx](int, int level, int name, const void* value, socklen_t len) -> std::optional<int> {
    FUZZ_CHECK(level == uapi::kSolTls);
    return tx.SetKey(name, value, len, /*initial=*/false);
  };
  stand_ins.get_sock_opt = [&tx](int, int level, int name, void* value, socklen_t* len) {
    return tx.GetSockOpt(level, name, value, len);
  };
  SetStandIns(std::move(stand_ins));

  ReadModel model;
  std::vector<std::byte> buf;
  const auto read = [&](std::size_t len) {
    buf.assign(len, std::byte{0});
    auto got = conn.Read(buf);
    model.Check(got, buf);
    return got;
  };
  std::uint8_t op = 0;
  while (input.Byte(&op)) {
    const unsigned param = op >> 2;
    switch (op & 3) {
      case 0: {
        std::uint8_t type = 0, len_hi = 0, len_lo = 0;
        if (!input.Byte(&type) || !input.Byte(&len_hi) || !input.Byte(&len_lo)) break;
        const auto payload = input.Bytes(std::size_t{len_hi} << 8 | len_lo);
        rx.QueueRecord(type, payload);
        if (type == uapi::kRecordApplicationData) {
          model.data.insert(model.data.end(), payload.begin(), payload.end());
        } else if (type == uapi::kRecordAlert) {
          // Warnings OpenSSL ignores (TLS 1.3: user_canceled; TLS 1.2: any
          // warning but no_renegotiation) may let data after them through;
          // every other alert record ends the connection.
          const bool ignorable =
              payload.size() == 2 && payload[1] != 0 &&
              (conn.version == TlsVersion::kTls13 ? payload[1] == 90 : payload[0] == 1 && payload[1] != 100);
          if (!ignorable) model.Fatal();
        } else if (type != uapi::kRecordHandshake) {
          model.Fatal();
        }
        break;
      }
      case 1: {
        const int err = kErrors[param % kErrors.size()];
        rx.QueueError(err);
        // EKEYEXPIRED where the kernel can rekey: RX resumes under the same
        // key (the pause came from a fragment).
        if (err != EAGAIN && !(err == EKEYEXPIRED && conn.kernel_rekey)) model.Fatal();
        break;
      }
      case 2:
        (void)read(kReadSizes[param % kReadSizes.size()]);
        break;
      default:
        if (param <= 60) {
          const std::vector<std::byte> out((param + 1) * 700, std::byte{'w'});
          (void)conn.Write(out);
        } else if (param == 61) {
          (void)conn.Shutdown();
        } else {
          (void)conn.UpdateKeys(param == 63);
        }
        break;
    }
  }
  for (int i = 0; i < 64; ++i) {
    auto got = read(16384);
    if (!got.ok() || got->would_block || got->end_of_stream) break;
  }
  // A second look after the end: still nothing.
  if (model.ended) (void)read(16384);
  ClearFaults();
}

}  // namespace
}  // namespace ktls::testing

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ktls::testing::Run(std::span(data, size));
  return 0;
}
