// tests/unit/connection_move_test.cc: the state a moved connection carries
// (src/conn/connection_move.h) and what Import and ReceiveConnection refuse,
// on any kernel. Moving real kTLS connections, within a process and to
// another one, is tests/kernel/move_kernel_test.cc.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <poll.h>

#include <chrono>
#include <cstddef>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "conn/connection_move.h"
#include "ktls/move.h"
#include "tests/support/sockets.h"

namespace ktls {
namespace {

using detail::MovedState;
using detail::ParseMovedState;
using detail::SerializeMovedState;

// AllFieldsSet: a state in which every field differs from its default, so a
// field the format forgot cannot round-trip by luck.
MovedState AllFieldsSet() {
  MovedState s;
  s.is_server = true;
  s.version = TlsVersion::kTls13;
  s.cipher = Cipher::kAes256Gcm;
  s.kernel_rekey = true;
  s.peer_closed = true;
  s.sent_close = true;
  s.peer_eof = true;
  s.tx_update_pending = true;
  s.tx_update_request_peer = true;
  s.discard_handshake_record = true;
  s.sent_fin = true;
  s.key_update_threshold = 1ULL << 40;
  s.tx_open_record = 1000;
  s.handshake_record_len = 77;
  s.tx_key_updates = 3;
  s.rx_key_updates = 4;
  s.tickets_relayed = 5;
  s.tickets_dropped = 6;
  s.renegotiations_refused = 7;
  s.tx_warning_pending = 100;
  s.warning_alerts_in_a_row = 2;
  std::vector<unsigned char> tx(48), rx(48);
  for (std::size_t i = 0; i < tx.size(); ++i) {
    tx[i] = static_cast<unsigned char>(i);
    rx[i] = static_cast<unsigned char>(255 - i);
  }
  s.tx_secret.Assign(tx);
  s.rx_secret.Assign(rx);
  for (char c : std::string("early plaintext")) s.early_plaintext.push_back(static_cast<std::byte>(c));
  for (char c : std::string("held")) s.splice_rx_held.push_back(static_cast<std::byte>(c));
  s.handshake_bytes = {4, 0, 0};
  s.alert_bytes = {1};
  s.session.protocol = "TLSv1.3";
  s.session.cipher_suite = "TLS_AES_256_GCM_SHA384";
  s.session.alpn = "h2";
  s.session.sni = "example.com";
  s.session.resumed = true;
  s.session.peer_certificates = {{0x30, 0x01, 0x02}, std::vector<unsigned char>(3000, 0xab)};
  s.linger.time = std::chrono::milliseconds(1234);
  s.linger.max_bytes = 4321;
  return s;
}

void ExpectSame(const MovedState& a, const MovedState& b) {
  EXPECT_EQ(a.is_server, b.is_server);
  EXPECT_EQ(a.version, b.version);
  EXPECT_EQ(a.cipher, b.cipher);
  EXPECT_EQ(a.kernel_rekey, b.kernel_rekey);
  EXPECT_EQ(a.peer_closed, b.peer_closed);
  EXPECT_EQ(a.sent_close, b.sent_close);
  EXPECT_EQ(a.peer_eof, b.peer_eof);
  EXPECT_EQ(a.tx_update_pending, b.tx_update_pending);
  EXPECT_EQ(a.tx_update_request_peer, b.tx_update_request_peer);
  EXPECT_EQ(a.discard_handshake_record, b.discard_handshake_record);
  EXPECT_EQ(a.sent_fin, b.sent_fin);
  EXPECT_EQ(a.key_update_threshold, b.key_update_threshold);
  EXPECT_EQ(a.tx_open_record, b.tx_open_record);
  EXPECT_EQ(a.handshake_record_len, b.handshake_record_len);
  EXPECT_EQ(a.tx_key_updates, b.tx_key_updates);
  EXPECT_EQ(a.rx_key_updates, b.rx_key_updates);
  EXPECT_EQ(a.tickets_relayed, b.tickets_relayed);
  EXPECT_EQ(a.tickets_dropped, b.tickets_dropped);
  EXPECT_EQ(a.renegotiations_refused, b.renegotiations_refused);
  EXPECT_EQ(a.tx_warning_pending, b.tx_warning_pending);
  EXPECT_EQ(a.warning_alerts_in_a_row, b.warning_alerts_in_a_row);
  EXPECT_TRUE(std::ranges::equal(a.tx_secret.bytes(), b.tx_secret.bytes()));
  EXPECT_TRUE(std::ranges::equal(a.rx_secret.bytes(), b.rx_secret.bytes()));
  EXPECT_EQ(a.early_plaintext, b.early_plaintext);
  EXPECT_EQ(a.splice_rx_held, b.splice_rx_held);
  EXPECT_EQ(a.handshake_bytes, b.handshake_bytes);
  EXPECT_EQ(a.alert_bytes, b.alert_bytes);
  EXPECT_EQ(a.session.protocol, b.session.protocol);
  EXPECT_EQ(a.session.cipher_suite, b.session.cipher_suite);
  EXPECT_EQ(a.session.alpn, b.session.alpn);
  EXPECT_EQ(a.session.sni, b.session.sni);
  EXPECT_EQ(a.session.resumed, b.session.resumed);
  EXPECT_EQ(a.session.peer_certificates, b.session.peer_certificates);
  EXPECT_EQ(a.linger.time, b.linger.time);
  EXPECT_EQ(a.linger.max_bytes, b.linger.max_bytes);
}

TEST(MovedStateFormat, EveryFieldRoundTrips) {
  const MovedState original = AllFieldsSet();
  const auto bytes = SerializeMovedState(original);
  auto parsed = ParseMovedState(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  ExpectSame(original, *parsed);
  EXPECT_EQ(SerializeMovedState(*parsed), bytes);
}

// The longest linger OffloadOptions accept (kMaxLingerTime) moves; one
// millisecond more, which ValidateOffloadOptions refuses (options_test.cc),
// is refused here too: what can be exported can be imported.
TEST(MovedStateFormat, TheLongestLingerTheOptionsAcceptMoves) {
  MovedState s = AllFieldsSet();
  s.linger.time = kMaxLingerTime;
  auto parsed = ParseMovedState(SerializeMovedState(s));
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  EXPECT_EQ(parsed->linger.time, kMaxLingerTime);
  s.linger.time += std::chrono::milliseconds(1);
  auto longer = ParseMovedState(SerializeMovedState(s));
  ASSERT_FALSE(longer.ok());
  EXPECT_EQ(longer.error().category, ErrorCategory::kUsage);
  EXPECT_NE(longer.error().detail.find("linger time of more than a day"), std::string::npos) << longer.error().detail;
}

TEST(MovedStateFormat, EveryTruncationIsANamedUsageError) {
  const auto bytes = SerializeMovedState(AllFieldsSet());
  for (std::size_t len = 0; len < bytes.size(); ++len) {
    auto parsed = ParseMovedState(std::span(bytes).first(len));
    ASSERT_FALSE(parsed.ok()) << "a state cut to " << len << " bytes parsed";
    EXPECT_EQ(parsed.error().category, ErrorCategory::kUsage);
    EXPECT_EQ(parsed.error().detail.rfind("Import: the state ", 0), 0u) << parsed.error().detail;
  }
  // The header's length covers the rest exactly: a byte more is refused too.
  auto longer = bytes;
  longer.push_back(std::byte{0});
  EXPECT_FALSE(ParseMovedState(longer).ok());
}

// Every single-byte change either fails to parse or parses to a state that
// serializes back to the changed bytes: nothing outside the format gets in.
TEST(MovedStateFormat, EveryByteChangedIsRefusedOrExact) {
  const auto bytes = SerializeMovedState(AllFieldsSet());
  std::size_t refused = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    for (unsigned char x : {0x01, 0x80, 0xff}) {
      auto changed = bytes;
      changed[i] ^= static_cast<std::byte>(x);
      auto parsed = ParseMovedState(changed);
      if (!parsed.ok()) {
        ++refused;
        EXPECT_EQ(parsed.error().category, ErrorCategory::kUsage);
        continue;
      }
      EXPECT_EQ(SerializeMovedState(*parsed), changed) << "byte " << i;
    }
  }
  EXPECT_GT(refused, 0u);
}

TEST(MovedStateFormat, RefusesWhatNoExportMakes) {
  auto refused = [](MovedState s, const char* want) {
    auto parsed = ParseMovedState(SerializeMovedState(s));
    ASSERT_FALSE(parsed.ok()) << want;
    EXPECT_NE(parsed.error().detail.find(want), std::string::npos) << parsed.error().detail;
  };
  {
    MovedState s = AllFieldsSet();
    s.version = TlsVersion::kTls12;
    refused(std::move(s), "key updates for TLS 1.2");
  }
  {
    MovedState s = AllFieldsSet();
    s.cipher = Cipher::kAes128Gcm;  // SHA-256: 32-byte secrets, not 48.
    refused(std::move(s), "wrong length");
  }
  {
    MovedState s = AllFieldsSet();
    s.kernel_rekey = false;  // No key updates: no secret may travel.
    refused(std::move(s), "wrong length");
  }
  {
    MovedState s = AllFieldsSet();
    s.key_update_threshold = 1;
    refused(std::move(s), "threshold of 1");
  }
  {
    MovedState s = AllFieldsSet();
    s.alert_bytes = {1, 2};
    refused(std::move(s), "partial alert");
  }
  {
    MovedState s = AllFieldsSet();
    s.linger.time = std::chrono::hours(25);
    refused(std::move(s), "linger time");
  }
  auto bytes = SerializeMovedState(AllFieldsSet());
  bytes[9] = std::byte{2};  // Format version 2.
  auto future = ParseMovedState(bytes);
  ASSERT_FALSE(future.ok());
  EXPECT_NE(future.error().detail.find("format version 2"), std::string::npos) << future.error().detail;
  bytes[0] = std::byte{'X'};
  auto foreign = ParseMovedState(bytes);
  ASSERT_FALSE(foreign.ok());
  EXPECT_NE(foreign.error().detail.find("not a ktls connection state"), std::string::npos);
}

bool IsOpen(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

// Why Import refuses: what is wrong with the socket, or, in a library built
// without kernel TLS, that (every state refused, kUnsupported).
std::string ImportRefusal(const char* with_kernel_tls) {
  return KTLS_KERNEL_TLS ? with_kernel_tls : "built without kernel TLS";
}
constexpr ErrorCategory kBadSocket = KTLS_KERNEL_TLS ? ErrorCategory::kUsage : ErrorCategory::kUnsupported;

// A state that parses, on sockets that are not its connection: each refused
// for what it is, and the descriptor stays the caller's.
TEST(ImportConnection, RefusesASocketThatIsNotTheStatesConnection) {
  MovedState s;  // TLS 1.3, AES-128-GCM, no key updates.
  const auto state = SerializeMovedState(s);
  int unix_pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, unix_pair), 0);
  auto not_tcp = Connection::Import(unix_pair[0], state);
  ASSERT_FALSE(not_tcp.ok());
  EXPECT_EQ(not_tcp.error().category, kBadSocket);
  EXPECT_NE(not_tcp.error().detail.find(ImportRefusal("not a TCP socket")), std::string::npos)
      << not_tcp.error().detail;
  EXPECT_TRUE(IsOpen(unix_pair[0]));
  ::close(unix_pair[0]);
  ::close(unix_pair[1]);

  auto tcp = testing::LoopbackTcpPair();
  auto plain = Connection::Import(tcp.server.get(), state);
  ASSERT_FALSE(plain.ok());
  EXPECT_NE(plain.error().detail.find(ImportRefusal("no tls ULP")), std::string::npos) << plain.error().detail;
  EXPECT_TRUE(IsOpen(tcp.server.get()));

  const int unconnected = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(unconnected, 0);
  auto lone = Connection::Import(unconnected, state);
  ASSERT_FALSE(lone.ok());
  EXPECT_NE(lone.error().detail.find(ImportRefusal("not connected")), std::string::npos) << lone.error().detail;
  ::close(unconnected);

  auto garbled = state;
  garbled[20] ^= std::byte{0xff};
  EXPECT_FALSE(Connection::Import(tcp.server.get(), garbled).ok());
  EXPECT_TRUE(IsOpen(tcp.server.get()));
}

// SendRaw sends bytes with n copies of fd attached, as a hostile or broken
// sender might.
void SendRaw(int sock, std::span<const std::byte> bytes, int fd, int n) {
  iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(8 * sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (n > 0) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(static_cast<std::size_t>(n) * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(static_cast<std::size_t>(n) * sizeof(int));
    for (int i = 0; i < n; ++i) std::memcpy(CMSG_DATA(c) + i * sizeof(int), &fd, sizeof(int));
  }
  ASSERT_EQ(::sendmsg(sock, &msg, 0), static_cast<ssize_t>(bytes.size()));
}

std::vector<std::byte> Framed(std::span<const std::byte> state) {
  std::vector<std::byte> out;
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<std::byte>(state.size() >> (8 * i)));
  out.insert(out.end(), state.begin(), state.end());
  return out;
}

int OpenFds() {
  int n = 0;
  for (int fd = 0; fd < 1024; ++fd) n += IsOpen(fd) ? 1 : 0;
  return n;
}

TEST(ReceiveConnection, RefusesWrongSendersAndBadMessagesAndClosesWhatCame) {
  auto tcp = testing::LoopbackTcpPair();
  const auto state = Framed(SerializeMovedState(MovedState{}));
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
  const int before = OpenFds();

  // Another user sent it.
  auto wrong_uid = ReceiveConnection(pair[1], {.peer_uid = ::getuid() + 1});
  ASSERT_FALSE(wrong_uid.ok());
  EXPECT_NE(wrong_uid.error().detail.find("runs as uid"), std::string::npos) << wrong_uid.error().detail;

  // Two descriptors: both closed, nothing imported.
  SendRaw(pair[0], state, tcp.server.get(), 2);
  auto two = ReceiveConnection(pair[1]);
  ASSERT_FALSE(two.ok());
  EXPECT_NE(two.error().detail.find("expected one descriptor, got 2"), std::string::npos) << two.error().detail;
  EXPECT_EQ(OpenFds(), before);

  // A descriptor that is not the state's connection: closed.
  SendRaw(pair[0], state, tcp.server.get(), 1);
  auto plain = ReceiveConnection(pair[1], {.peer_uid = ::getuid()});
  ASSERT_FALSE(plain.ok());
  EXPECT_NE(plain.error().detail.find(ImportRefusal("no tls ULP")), std::string::npos) << plain.error().detail;
  EXPECT_EQ(OpenFds(), before);

  // A length beyond any state.
  const std::vector<std::byte> huge = {std::byte{0x7f}, std::byte{0xff}, std::byte{0xff}, std::byte{0xff}};
  SendRaw(pair[0], huge, tcp.server.get(), 1);
  auto too_big = ReceiveConnection(pair[1]);
  ASSERT_FALSE(too_big.ok());
  EXPECT_NE(too_big.error().detail.find("too large"), std::string::npos) << too_big.error().detail;
  EXPECT_EQ(OpenFds(), before);

  // The sender goes away.
  ::close(pair[0]);
  auto closed = ReceiveConnection(pair[1]);
  ASSERT_FALSE(closed.ok());
  EXPECT_EQ(closed.error().category, ErrorCategory::kClosed);
  ::close(pair[1]);

  // Not an AF_UNIX stream.
  auto not_unix = ReceiveConnection(tcp.client.get());
  ASSERT_FALSE(not_unix.ok());
  EXPECT_EQ(not_unix.error().category, ErrorCategory::kUsage);
}

// A sender that undoes DistrustSocket from its own copy of the socket, as
// a hostile worker can (reproduced from a review): it sends the socket with
// only the state's length, waits until the receiver has made it
// non-blocking with SO_LINGER off, sets SO_LINGER to 30 s again, fills the
// send buffer (the peer never reads), closes its copy (the receiver's is
// now the last), then sends a state that is refused. A plain close of the
// refused socket would wait the 30 s in the kernel, O_NONBLOCK or not;
// ReceiveConnection must not wait for it, and must still close it (the
// peer gets a reset: the refused connection is given up).
TEST(ReceiveConnection, AnUntrustedSenderCannotMakeTheCloseOfARefusedSocketWait) {
  auto tcp = testing::LoopbackTcpPair();
  const int small = 4096;
  ASSERT_EQ(::setsockopt(tcp.server.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
  ASSERT_EQ(::setsockopt(tcp.client.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
  const int senders_copy = tcp.client.release();
  constexpr int kLingerSeconds = 30;
  std::thread sender([&] {
    const std::vector<std::byte> length = {std::byte{0}, std::byte{0}, std::byte{0}, std::byte{16}};
    SendRaw(pair[0], length, senders_copy, 1);
    // O_NONBLOCK is in the open file description both copies share.
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while ((::fcntl(senders_copy, F_GETFL) & O_NONBLOCK) == 0 && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    const linger lingering{1, kLingerSeconds};
    EXPECT_EQ(::setsockopt(senders_copy, SOL_SOCKET, SO_LINGER, &lingering, sizeof(lingering)), 0);
    std::vector<char> junk(4096, 'x');
    while (::send(senders_copy, junk.data(), junk.size(), MSG_DONTWAIT | MSG_NOSIGNAL) > 0) {
    }
    EXPECT_EQ(errno, EAGAIN) << "the send buffer should be full";
    ::close(senders_copy);
    const std::vector<std::byte> not_a_state(16, std::byte{'j'});
    EXPECT_EQ(::send(pair[0], not_a_state.data(), not_a_state.size(), MSG_NOSIGNAL), 16);
  });
  const auto start = std::chrono::steady_clock::now();
  auto refused = ReceiveConnection(pair[1], {.untrusted_sender = true});
  const auto took = std::chrono::steady_clock::now() - start;
  sender.join();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().category, kBadSocket) << refused.error().ToString();
  // Generous: a loaded machine is slow, but nowhere near the linger.
  EXPECT_LT(took, std::chrono::seconds(10)) << "ReceiveConnection waited for the sender's SO_LINGER";
  // Closed, abortively: the peer sees the reset (not the FIN a linger
  // would queue behind the full buffer).
  // No events asked: what it has unread does not count, a hang-up does.
  pollfd peer{tcp.server.get(), 0, 0};
  ASSERT_EQ(::poll(&peer, 1, 10'000), 1) << "the peer saw no reset: the refused socket is still open";
  EXPECT_NE(peer.revents & POLLERR, 0) << "a reset, not a FIN: revents " << peer.revents;
  ::close(pair[0]);
  ::close(pair[1]);
}

}  // namespace
}  // namespace ktls
