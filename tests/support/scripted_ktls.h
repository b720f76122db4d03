// tests/support/scripted_ktls.h: the kernel's side of a kTLS socket, played
// from a script through the syscall seam's stand-ins, so that host tests
// and fuzzers can feed a Connection whose directions are "in the kernel"
// any sequence of records, control messages and errors.
#ifndef KTLS_TESTS_SUPPORT_SCRIPTED_KTLS_H_
#define KTLS_TESTS_SUPPORT_SCRIPTED_KTLS_H_

#include <sys/socket.h>
#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <span>
#include <vector>

namespace ktls::testing {

// ScriptedKtlsRx answers recvmsg the way kTLS RX does (net/tls/tls_sw.c,
// tls_sw_recvmsg):
//  - each call returns bytes of one record type only; consecutive
//    application-data records may be merged, other records never are;
//  - a record longer than the buffer is returned in pieces, each with its
//    type again; the call that returns a control record's last byte sets
//    MSG_EOR (an empty control record: 0 bytes, its type, MSG_EOR);
//  - an empty application-data record is skipped, except right before a
//    control record: then the call returns 0 bytes of type application
//    data;
//  - the type comes as a SOL_TLS/TLS_GET_RECORD_TYPE control message; a
//    non-data record for a caller with no room for it is EIO;
//  - nothing queued: EAGAIN; a queued error is returned once, except end of
//    stream (0), which stays.
class ScriptedKtlsRx {
 public:
  void QueueRecord(std::uint8_t type, std::span<const std::uint8_t> payload);
  // QueueError: the recvmsg that reaches it returns -err; err 0 is the
  // peer's FIN (recvmsg returns 0 from then on).
  void QueueError(int err);
  // RecvMsg is the recv_msg stand-in's body: the result, >= 0 or -errno.
  ssize_t RecvMsg(msghdr* msg);

 private:
  struct Event {
    bool is_error = false;
    int err = 0;
    std::uint8_t type = 0;
    std::vector<std::uint8_t> bytes;
    std::size_t offset = 0;
  };
  std::deque<Event> events_;
};

// SentRecord: one sendmsg on a socket whose TX is "in the kernel": the
// record type (TLS_SET_RECORD_TYPE, application data without one) and the
// plaintext.
struct SentRecord {
  std::uint8_t type = 0;
  std::vector<std::uint8_t> bytes;
};

// ParseSentRecord reads a sendmsg's record type and gathers its iovecs.
SentRecord ParseSentRecord(const msghdr* msg);

}  // namespace ktls::testing

#endif  // KTLS_TESTS_SUPPORT_SCRIPTED_KTLS_H_
