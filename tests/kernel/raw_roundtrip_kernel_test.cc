// tests/kernel/raw_roundtrip_kernel_test.cc: kernel TLS driven by hand
// through the syscall seam, checked against the reference record codec.
//
// No handshake here: keys come from the TLS 1.3 key schedule (random traffic
// secrets) or, for TLS 1.2, are random, and PackCryptoInfo packs them. For
// every version and cipher the kernel must
//  a. write records the reference codec opens, at the sequence numbers and
//     (TLS 1.2 AES) explicit nonces we expect, with control records in place;
//  b. read records the reference codec sealed, reporting each record's type
//     in a TLS_GET_RECORD_TYPE cmsg and never mixing types in one recvmsg;
//     refuse a control record to a read without a cmsg buffer (EIO); and
//     refuse a record with one flipped bit (EBADMSG);
//  c. talk to itself both ways at once;
//  d. count every socket it took over in /proc/net/tls_stat (TlsTxSw,
//     TlsRxSw): with a-c, proof that the kernel's software kTLS carried the
//     data.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "conn/kernel_io.h"
#include "kernel/crypto_info.h"
#include "kernel/syscalls.h"
#include "kernel/tls_uapi.h"
#include "keys/tls13_key_schedule.h"
#include "tests/support/kernel_env.h"
#include "tests/support/record_codec.h"
#include "tests/support/sockets.h"

namespace ktls::testing {
namespace {

namespace sys = ::ktls::detail::sys;
namespace uapi = ::ktls::detail::uapi;
using ::ktls::detail::KernelRecv;
using Bytes = std::vector<std::uint8_t>;

// A test that goes wrong fails with EAGAIN after this long instead of hanging.
constexpr std::chrono::seconds kIoTimeout{60};
constexpr std::size_t kOneMiB = 1024 * 1024;
// Starting sequence numbers: zero, and one just below 2^32 so each run
// crosses the point where a 32-bit counter would wrap.
constexpr std::array<std::uint64_t, 2> kStartSeqs = {0, (std::uint64_t{1} << 32) - 20};
// Odd write sizes: smaller than, equal to and larger than one record.
constexpr std::array<std::size_t, 8> kWriteSizes = {1, 777, 16385, 4093, 65537, 13, 33333, 16384};

std::string ErrnoText(long long rc) {
  return rc < 0 ? std::string(std::strerror(static_cast<int>(-rc))) : std::string("no error");
}

struct Suite {
  TlsVersion version;
  Cipher cipher;
};

// PrintTo: how gtest shows a Suite in failure messages.
void PrintTo(const Suite& suite, std::ostream* out) {
  *out << "TLS " << TlsVersionName(suite.version) << " " << CipherName(suite.cipher);
}

std::string SuiteName(const ::testing::TestParamInfo<Suite>& info) {
  std::string name = info.param.version == TlsVersion::kTls13 ? "Tls13_" : "Tls12_";
  for (char c : CipherName(info.param.cipher)) name.push_back(c);
  return name;
}

std::vector<Suite> AllSuites() {
  std::vector<Suite> suites;
  for (TlsVersion version : kAllVersions) {
    for (Cipher cipher : kAllCiphers) suites.push_back({version, cipher});
  }
  return suites;
}

// DirectionKeys: one direction's key and 12-byte IV.
struct DirectionKeys {
  Bytes key;
  Bytes iv;
};

// NewKeys: TLS 1.3 keys from the key schedule applied to a random traffic
// secret; TLS 1.2 keys at random (the TLS 1.2 PRF comes later). For TLS 1.2
// AES the IV is salt(4) || first explicit nonce(8), as PackCryptoInfo takes it.
void NewKeys(const Suite& suite, DirectionKeys* out) {
  if (suite.version == TlsVersion::kTls13) {
    const Bytes secret = RandomBytes(detail::Tls13Params(suite.cipher).secret_len);
    auto keys = detail::DeriveTls13TrafficKeys(suite.cipher, secret);
    ASSERT_TRUE(keys.ok()) << "DeriveTls13TrafficKeys: " << keys.error().ToString();
    out->key.assign(keys->key.bytes().begin(), keys->key.bytes().end());
    out->iv.assign(keys->iv.bytes().begin(), keys->iv.bytes().end());
  } else {
    out->key = RandomBytes(detail::KeyLength(suite.cipher));
    out->iv = RandomBytes(detail::kNonceLen);
  }
  ASSERT_EQ(out->iv.size(), kAeadNonceLen);
}

void AttachTlsUlp(int fd) {
  const int rc = sys::SetSockOpt(fd, uapi::kSolTcp, uapi::kTcpUlp, uapi::kTlsUlpName,
                                 sizeof(uapi::kTlsUlpName) - 1);
  ASSERT_EQ(rc, 0) << "setsockopt(TCP_ULP, \"tls\") on an established socket should succeed: "
                   << ErrnoText(rc);
}

// InstallKeys packs keys with PackCryptoInfo and hands them to the kernel
// for one direction (uapi::kTlsTx or uapi::kTlsRx).
void InstallKeys(int fd, int direction, const Suite& suite, const DirectionKeys& keys,
                 std::uint64_t rec_seq) {
  auto info = detail::PackCryptoInfo(suite.version, suite.cipher, keys.key, keys.iv, rec_seq);
  ASSERT_TRUE(info.ok()) << "PackCryptoInfo: " << info.error().ToString();
  const int rc = sys::SetSockOpt(fd, uapi::kSolTls, direction, info->data(), info->size());
  ASSERT_EQ(rc, 0) << "setsockopt(SOL_TLS, " << (direction == uapi::kTlsTx ? "TLS_TX" : "TLS_RX")
                   << ") should accept the packed crypto_info: " << ErrnoText(rc);
}

RecordKeys ReferenceKeys(const Suite& suite, const DirectionKeys& keys, std::uint64_t rec_seq) {
  return MakeRecordKeys(suite.version, suite.cipher, keys.key, keys.iv, rec_seq);
}

// RecvWithRecordType: one recvmsg on a TLS_RX socket with room for a cmsg,
// through the library's own (conn/kernel_io.h).
KernelRecv RecvWithRecordType(int fd, std::span<std::uint8_t> buffer) {
  return detail::RecvKernelRecord(fd, std::as_writable_bytes(buffer), 0);
}

// HandshakeBytes: random handshake-record content that does not start with
// 24. Linux 6.14 and later take a handshake record starting with 24
// (KeyUpdate) as a key update and fail every later read with EKEYEXPIRED
// until TLS_RX is set again; 7.2 does so for TLS 1.2 sockets too. These
// tests are not about rekeying, so they start with 4 (new_session_ticket).
Bytes HandshakeBytes(std::size_t len) {
  Bytes bytes = RandomBytes(len);
  if (!bytes.empty()) bytes[0] = 4;
  return bytes;
}

// CounterDelta: how much a /proc/net/tls_stat counter moved.
long long CounterDelta(const std::map<std::string, long long>& before,
                       const std::map<std::string, long long>& after, const std::string& name) {
  const auto b = before.find(name);
  const auto a = after.find(name);
  if (b == before.end() || a == after.end()) return -1;
  return a->second - b->second;
}

void ExpectCountersMoved(const std::map<std::string, long long>& before, long long tx_sw, long long rx_sw) {
  const auto after = ReadTlsStat();
  ASSERT_TRUE(after.count("TlsTxSw") && after.count("TlsRxSw"))
      << "/proc/net/tls_stat should list TlsTxSw and TlsRxSw where kTLS is available";
  EXPECT_EQ(CounterDelta(before, after, "TlsTxSw"), tx_sw)
      << "TlsTxSw counts sockets that got software kTLS TX";
  EXPECT_EQ(CounterDelta(before, after, "TlsRxSw"), rx_sw)
      << "TlsRxSw counts sockets that got software kTLS RX";
}

std::uint64_t BigEndian64(std::span<const std::uint8_t> bytes) {
  std::uint64_t value = 0;
  for (std::uint8_t b : bytes.first(8)) value = (value << 8) | b;
  return value;
}

class RawRoundTripKernelTest : public ::testing::TestWithParam<Suite> {
 protected:
  void KernelTxToReference(std::uint64_t start_seq);
  void ReferenceToKernelRx(std::uint64_t start_seq);
};

// --- a. Kernel TX -> reference codec -----------------------------------------

void RawRoundTripKernelTest::KernelTxToReference(std::uint64_t start_seq) {
  const Suite suite = GetParam();
  const auto stats_before = ReadTlsStat();
  SocketPair pair = LoopbackTcpPair();
  const int tls_fd = pair.client.get();
  const int raw_fd = pair.server.get();
  ASSERT_TRUE(SetIoTimeout(tls_fd, kIoTimeout) && SetIoTimeout(raw_fd, kIoTimeout));
  DirectionKeys keys;
  ASSERT_NO_FATAL_FAILURE(NewKeys(suite, &keys));
  ASSERT_NO_FATAL_FAILURE(AttachTlsUlp(tls_fd));
  ASSERT_NO_FATAL_FAILURE(InstallKeys(tls_fd, uapi::kTlsTx, suite, keys, start_seq));

  const Bytes data = RandomBytes(kOneMiB);
  const Bytes handshake_payload = HandshakeBytes(37);
  const std::size_t handshake_at = data.size() / 2;  // App-data bytes sent before it.

  // 1 MiB is more than the socket buffers hold: read the raw side meanwhile.
  Bytes wire;
  int read_errno = 0;
  std::thread reader([&] {
    std::vector<std::uint8_t> buffer(64 * 1024);
    for (;;) {
      const ssize_t n = ::read(raw_fd, buffer.data(), buffer.size());
      if (n > 0) {
        wire.insert(wire.end(), buffer.begin(), buffer.begin() + n);
      } else if (n == 0) {
        break;
      } else if (errno != EINTR) {
        read_errno = errno;
        break;
      }
    }
  });

  // Failures are noted, not asserted, until the reader has been joined.
  ssize_t write_failure = 0;
  ssize_t handshake_rc = 0;
  std::size_t handshake_sent_at = 0;
  bool handshake_sent = false;
  std::size_t offset = 0;
  for (std::size_t i = 0; offset < data.size() && write_failure == 0; ++i) {
    if (!handshake_sent && offset >= handshake_at) {
      handshake_rc = detail::SendControlRecord(tls_fd, kContentHandshake, handshake_payload, MSG_NOSIGNAL);
      handshake_sent = true;
      handshake_sent_at = offset;
    }
    const std::size_t len = std::min(kWriteSizes[i % kWriteSizes.size()], data.size() - offset);
    const ssize_t rc = sys::Write(tls_fd, data.data() + offset, len);
    if (rc <= 0) {
      write_failure = rc == 0 ? -EIO : rc;
      break;
    }
    offset += static_cast<std::size_t>(rc);
  }
  ::shutdown(tls_fd, SHUT_WR);  // FIN after the last record: the reader's EOF.
  reader.join();

  ASSERT_EQ(write_failure, 0) << "sys::Write on the TLS_TX socket should succeed: " << ErrnoText(write_failure);
  ASSERT_TRUE(handshake_sent);
  ASSERT_EQ(handshake_rc, static_cast<ssize_t>(handshake_payload.size()))
      << "sendmsg with TLS_SET_RECORD_TYPE 22 should send the whole payload: " << ErrnoText(handshake_rc);
  ASSERT_EQ(read_errno, 0) << "reading the raw side should end in EOF: " << std::strerror(read_errno);

  RecordSplitter splitter;
  splitter.Feed(wire);
  RecordKeys reference = ReferenceKeys(suite, keys, start_seq);
  const std::uint64_t first_explicit_nonce = BigEndian64(std::span(keys.iv).subspan(4));
  Bytes app_data;
  std::size_t num_records = 0;
  std::size_t num_handshake_records = 0;
  while (auto record = splitter.Pop()) {
    SCOPED_TRACE("record " + std::to_string(num_records) + " at seq " + std::to_string(reference.seq));
    if (suite.version == TlsVersion::kTls13) {
      EXPECT_EQ((*record)[0], kContentApplicationData) << "TLS 1.3 records are all outer type 23";
    }
    const auto opened = OpenRecord(reference, *record);
    ASSERT_TRUE(opened.has_value()) << "the reference codec should open the kernel's record "
                                    << "(key, IV, sequence number and AAD must agree)";
    if (HasExplicitNonce(suite.version, suite.cipher)) {
      // The kernel puts crypto_info.iv (PackCryptoInfo: iv[4..12]) in the
      // first record and counts up from there (tls_advance_record_sn).
      EXPECT_EQ(opened->explicit_nonce, first_explicit_nonce + num_records)
          << "TLS 1.2 explicit nonce = iv[4..12] + records sent";
    }
    if (opened->content_type == kContentApplicationData) {
      EXPECT_LE(opened->plaintext.size(), kMaxPlaintextLen) << "no record carries more than 2^14 bytes";
      EXPECT_FALSE(opened->plaintext.empty()) << "the kernel should not send empty data records";
      app_data.insert(app_data.end(), opened->plaintext.begin(), opened->plaintext.end());
    } else {
      EXPECT_EQ(opened->content_type, kContentHandshake) << "only data and the one handshake record were sent";
      EXPECT_EQ(opened->plaintext, handshake_payload) << "the handshake record carries exactly its payload";
      EXPECT_EQ(app_data.size(), handshake_sent_at) << "the handshake record sits where it was sent";
      ++num_handshake_records;
    }
    ++num_records;
  }
  EXPECT_EQ(splitter.buffered_len(), 0u) << "the stream should end on a record boundary";
  EXPECT_EQ(num_handshake_records, 1u);
  EXPECT_EQ(reference.seq, start_seq + num_records) << "one sequence number per record";
  EXPECT_EQ(app_data.size(), data.size());
  EXPECT_EQ(Sha256Hex(app_data), Sha256Hex(data)) << "SHA-256 of the decrypted application data";
  ExpectCountersMoved(stats_before, /*tx_sw=*/1, /*rx_sw=*/0);
}

TEST_P(RawRoundTripKernelTest, KernelTxOpensWithReferenceCodec) {
  KTLS_REQUIRE_CIPHER_OR_SKIP(GetParam().version, GetParam().cipher);
  for (std::uint64_t start_seq : kStartSeqs) {
    SCOPED_TRACE("starting sequence number " + std::to_string(start_seq));
    ASSERT_NO_FATAL_FAILURE(KernelTxToReference(start_seq));
  }
}

// --- b. Reference codec -> kernel RX --------------------------------------------

// PlannedRecord: one record the reference codec seals.
struct PlannedRecord {
  std::uint8_t content_type;
  std::size_t len;
  std::size_t tls13_padding_len = 0;
};

void RawRoundTripKernelTest::ReferenceToKernelRx(std::uint64_t start_seq) {
  const Suite suite = GetParam();
  const auto stats_before = ReadTlsStat();
  SocketPair pair = LoopbackTcpPair();
  const int tls_fd = pair.client.get();
  const int raw_fd = pair.server.get();
  ASSERT_TRUE(SetIoTimeout(tls_fd, kIoTimeout) && SetIoTimeout(raw_fd, kIoTimeout));
  DirectionKeys keys;
  ASSERT_NO_FATAL_FAILURE(NewKeys(suite, &keys));
  ASSERT_NO_FATAL_FAILURE(AttachTlsUlp(tls_fd));
  ASSERT_NO_FATAL_FAILURE(InstallKeys(tls_fd, uapi::kTlsRx, suite, keys, start_seq));

  const std::size_t padding = suite.version == TlsVersion::kTls13 ? 200 : 0;
  const std::vector<PlannedRecord> plan = {
      {kContentApplicationData, 1},     {kContentApplicationData, kMaxPlaintextLen},
      {kContentApplicationData, 777},   {kContentApplicationData, 100, padding},
      {kContentHandshake, 29},          {kContentApplicationData, 16383},
      {kContentAlert, 2},               {kContentHandshake, 5},
      {kContentHandshake, 300, padding}, {kContentApplicationData, 3},
      {kContentApplicationData, 4093},
  };

  // Seal everything; group consecutive records of one type, since the kernel
  // may hand those out together (and must never hand out two types at once).
  struct Group {
    std::uint8_t content_type;
    Bytes bytes;
  };
  std::vector<Group> groups;
  RecordKeys reference = ReferenceKeys(suite, keys, start_seq);
  Bytes wire;
  for (const PlannedRecord& planned : plan) {
    const Bytes plaintext = planned.content_type == kContentHandshake ? HandshakeBytes(planned.len)
                                                                      : RandomBytes(planned.len);
    const Bytes record = SealRecord(reference, planned.content_type, plaintext, planned.tls13_padding_len);
    wire.insert(wire.end(), record.begin(), record.end());
    if (groups.empty() || groups.back().content_type != planned.content_type) {
      groups.push_back({planned.content_type, {}});
    }
    groups.back().bytes.insert(groups.back().bytes.end(), plaintext.begin(), plaintext.end());
  }
  std::size_t total_len = 0;
  for (const Group& group : groups) total_len += group.bytes.size();

  bool write_ok = false;
  int write_errno = 0;
  std::thread writer([&] {
    write_ok = WriteAll(raw_fd, wire);
    write_errno = errno;
  });

  std::vector<std::uint8_t> buffer(64 * 1024);
  std::size_t group_index = 0;
  std::size_t group_offset = 0;
  std::size_t received_len = 0;
  KernelRecv failed_read;
  bool mismatch = false;
  while (received_len < total_len && !mismatch) {
    const KernelRecv read = RecvWithRecordType(tls_fd, buffer);
    if (read.n <= 0) {
      failed_read = read;
      break;
    }
    const Group& group = groups[group_index];
    const auto len = static_cast<std::size_t>(read.n);
    EXPECT_TRUE(read.typed) << "every recvmsg with a cmsg buffer gets TLS_GET_RECORD_TYPE";
    EXPECT_EQ(read.msg_flags & MSG_CTRUNC, 0) << "the cmsg should fit";
    EXPECT_EQ(read.type, group.content_type) << "record type of the bytes at offset " << received_len;
    if (group_offset + len > group.bytes.size() ||
        !std::equal(buffer.begin(), buffer.begin() + read.n,
                    group.bytes.begin() + static_cast<std::ptrdiff_t>(group_offset))) {
      ADD_FAILURE() << "recvmsg returned " << len << " bytes at offset " << received_len
                    << " that are not the sealed plaintext of one record type (mixed types or wrong data)";
      mismatch = true;
    }
    group_offset += len;
    received_len += len;
    if (group_offset == group.bytes.size()) {
      ++group_index;
      group_offset = 0;
    }
  }
  writer.join();
  ASSERT_TRUE(write_ok) << "writing the sealed records to the raw socket: " << std::strerror(write_errno);
  ASSERT_EQ(failed_read.n, 0) << "recvmsg on the TLS_RX socket should deliver every record: "
                              << ErrnoText(failed_read.n);
  EXPECT_EQ(received_len, total_len);
  EXPECT_EQ(group_index, groups.size()) << "every record type group should have been delivered";
  ExpectCountersMoved(stats_before, /*tx_sw=*/0, /*rx_sw=*/1);
}

TEST_P(RawRoundTripKernelTest, KernelRxReadsReferenceRecordsWithTheirTypes) {
  KTLS_REQUIRE_CIPHER_OR_SKIP(GetParam().version, GetParam().cipher);
  for (std::uint64_t start_seq : kStartSeqs) {
    SCOPED_TRACE("starting sequence number " + std::to_string(start_seq));
    ASSERT_NO_FATAL_FAILURE(ReferenceToKernelRx(start_seq));
  }
}

TEST_P(RawRoundTripKernelTest, KernelRxWithoutCmsgBufferRefusesControlRecordWithEio) {
  KTLS_REQUIRE_CIPHER_OR_SKIP(GetParam().version, GetParam().cipher);
  const Suite suite = GetParam();
  SocketPair pair = LoopbackTcpPair();
  const int tls_fd = pair.client.get();
  const int raw_fd = pair.server.get();
  ASSERT_TRUE(SetIoTimeout(tls_fd, kIoTimeout) && SetIoTimeout(raw_fd, kIoTimeout));
  DirectionKeys keys;
  ASSERT_NO_FATAL_FAILURE(NewKeys(suite, &keys));
  ASSERT_NO_FATAL_FAILURE(AttachTlsUlp(tls_fd));
  ASSERT_NO_FATAL_FAILURE(InstallKeys(tls_fd, uapi::kTlsRx, suite, keys, 0));

  RecordKeys reference = ReferenceKeys(suite, keys, 0);
  const Bytes data = RandomBytes(50);
  const Bytes handshake = HandshakeBytes(20);
  Bytes wire = SealRecord(reference, kContentApplicationData, data);
  const Bytes control = SealRecord(reference, kContentHandshake, handshake);
  wire.insert(wire.end(), control.begin(), control.end());
  ASSERT_TRUE(WriteAll(raw_fd, wire));

  // Data records need no cmsg buffer; a plain read stops at the type change.
  Bytes buffer(4096);
  Bytes got;
  while (got.size() < data.size()) {
    const ssize_t rc = sys::Read(tls_fd, buffer.data(), buffer.size());
    ASSERT_GT(rc, 0) << "read of the data record: " << ErrnoText(rc);
    got.insert(got.end(), buffer.begin(), buffer.begin() + rc);
  }
  EXPECT_EQ(got, data) << "read() should return exactly the data record, not the handshake record after it";
  // tls.rst: a control record is only handed to a recvmsg with a cmsg buffer.
  const ssize_t rc = sys::Read(tls_fd, buffer.data(), buffer.size());
  EXPECT_EQ(rc, -EIO) << "read() of a control record without a cmsg buffer should fail with errno EIO, got "
                      << (rc >= 0 ? std::to_string(rc) + " bytes" : ErrnoText(rc));
  // The record stays queued: a recvmsg with a cmsg buffer gets it.
  const KernelRecv typed = RecvWithRecordType(tls_fd, buffer);
  ASSERT_EQ(typed.n, static_cast<ssize_t>(handshake.size()))
      << "recvmsg with a cmsg buffer should then return the handshake record: " << ErrnoText(typed.n);
  EXPECT_TRUE(typed.typed);
  EXPECT_EQ(typed.type, kContentHandshake);
  EXPECT_TRUE(std::equal(handshake.begin(), handshake.end(), buffer.begin()));
}

TEST_P(RawRoundTripKernelTest, KernelRxRefusesFlippedBitWithEbadmsg) {
  KTLS_REQUIRE_CIPHER_OR_SKIP(GetParam().version, GetParam().cipher);
  const Suite suite = GetParam();
  const auto stats_before = ReadTlsStat();
  SocketPair pair = LoopbackTcpPair();
  const int tls_fd = pair.client.get();
  const int raw_fd = pair.server.get();
  ASSERT_TRUE(SetIoTimeout(tls_fd, kIoTimeout) && SetIoTimeout(raw_fd, kIoTimeout));
  DirectionKeys keys;
  ASSERT_NO_FATAL_FAILURE(NewKeys(suite, &keys));
  ASSERT_NO_FATAL_FAILURE(AttachTlsUlp(tls_fd));
  ASSERT_NO_FATAL_FAILURE(InstallKeys(tls_fd, uapi::kTlsRx, suite, keys, 0));

  RecordKeys reference = ReferenceKeys(suite, keys, 0);
  const Bytes good = RandomBytes(100);
  const Bytes doomed = RandomBytes(1000);
  Bytes wire = SealRecord(reference, kContentApplicationData, good);
  Bytes corrupt = SealRecord(reference, kContentApplicationData, doomed);
  corrupt[kRecordHeaderLen + 500] ^= 0x10;  // One bit in the middle of the ciphertext.
  wire.insert(wire.end(), corrupt.begin(), corrupt.end());
  ASSERT_TRUE(WriteAll(raw_fd, wire));

  // Read until the error. The good record's bytes come first; nothing of the
  // bad one may be delivered. (Seen on 6.1 and 7.2: the first recvmsg returns
  // the good record and has already failed on the bad one; every later
  // recvmsg retries it and fails again. For TLS 1.2 the kernel decrypts
  // straight into the caller's buffer, so the bad record's unauthenticated
  // plaintext lands there, past the returned count: only the count is
  // trustworthy.)
  Bytes buffer(64 * 1024);
  Bytes delivered;
  KernelRecv read;
  for (int i = 0; i < 10; ++i) {
    read = RecvWithRecordType(tls_fd, buffer);
    if (read.n <= 0) break;
    delivered.insert(delivered.end(), buffer.begin(), buffer.begin() + read.n);
  }
  EXPECT_EQ(read.n, -EBADMSG) << "recvmsg of a record with a flipped bit should fail with errno EBADMSG, got "
                              << (read.n >= 0 ? std::to_string(read.n) + " bytes" : ErrnoText(read.n));
  EXPECT_EQ(delivered, good) << "only the intact record's plaintext may be delivered";
  const KernelRecv again = RecvWithRecordType(tls_fd, buffer);
  EXPECT_EQ(again.n, -EBADMSG) << "the failure is sticky: the next recvmsg should fail with errno EBADMSG too, got "
                               << (again.n >= 0 ? std::to_string(again.n) + " bytes" : ErrnoText(again.n));

  const auto after = ReadTlsStat();
  ASSERT_TRUE(after.count("TlsDecryptError")) << "/proc/net/tls_stat should list TlsDecryptError";
  // One count per decryption attempt, and the kernel retries the record on
  // every recvmsg, so only "at least one" is a contract.
  EXPECT_GE(CounterDelta(stats_before, after, "TlsDecryptError"), 1) << "TlsDecryptError counts the refused record";
}

// --- c. Kernel <-> kernel, both directions at once ---------------------------

TEST_P(RawRoundTripKernelTest, KernelToKernelBothWaysAtOnce) {
  KTLS_REQUIRE_CIPHER_OR_SKIP(GetParam().version, GetParam().cipher);
  const Suite suite = GetParam();
  constexpr std::size_t kLen = 4 * kOneMiB;
  const auto stats_before = ReadTlsStat();
  SocketPair pair = LoopbackTcpPair();
  const int fd_a = pair.client.get();
  const int fd_b = pair.server.get();
  ASSERT_TRUE(SetIoTimeout(fd_a, kIoTimeout) && SetIoTimeout(fd_b, kIoTimeout));
  DirectionKeys a_to_b;
  DirectionKeys b_to_a;
  ASSERT_NO_FATAL_FAILURE(NewKeys(suite, &a_to_b));
  ASSERT_NO_FATAL_FAILURE(NewKeys(suite, &b_to_a));
  const std::uint64_t a_to_b_seq = kStartSeqs[0];
  const std::uint64_t b_to_a_seq = kStartSeqs[1];
  ASSERT_NO_FATAL_FAILURE(AttachTlsUlp(fd_a));
  ASSERT_NO_FATAL_FAILURE(AttachTlsUlp(fd_b));
  ASSERT_NO_FATAL_FAILURE(InstallKeys(fd_a, uapi::kTlsTx, suite, a_to_b, a_to_b_seq));
  ASSERT_NO_FATAL_FAILURE(InstallKeys(fd_a, uapi::kTlsRx, suite, b_to_a, b_to_a_seq));
  ASSERT_NO_FATAL_FAILURE(InstallKeys(fd_b, uapi::kTlsTx, suite, b_to_a, b_to_a_seq));
  ASSERT_NO_FATAL_FAILURE(InstallKeys(fd_b, uapi::kTlsRx, suite, a_to_b, a_to_b_seq));

  const Bytes data_a = RandomBytes(kLen);
  const Bytes data_b = RandomBytes(kLen);

  struct Outcome {
    ssize_t rc = 0;  // First failure (-errno), 0 if none.
    Bytes received;
  };
  auto write_all = [](int fd, const Bytes& data, Outcome* out) {
    std::size_t offset = 0;
    for (std::size_t i = 0; offset < data.size(); ++i) {
      const std::size_t len = std::min(kWriteSizes[i % kWriteSizes.size()], data.size() - offset);
      const ssize_t rc = sys::Write(fd, data.data() + offset, len);
      if (rc <= 0) {
        out->rc = rc == 0 ? -EIO : rc;
        return;
      }
      offset += static_cast<std::size_t>(rc);
    }
  };
  auto read_all = [](int fd, std::size_t len, Outcome* out) {
    std::vector<std::uint8_t> buffer(64 * 1024);
    while (out->received.size() < len) {
      const ssize_t rc = sys::Read(fd, buffer.data(), std::min(buffer.size(), len - out->received.size()));
      if (rc <= 0) {
        out->rc = rc == 0 ? -ECONNRESET : rc;
        return;
      }
      out->received.insert(out->received.end(), buffer.begin(), buffer.begin() + rc);
    }
  };
  Outcome write_a, write_b, read_a, read_b;
  std::thread writer_a(write_all, fd_a, std::cref(data_a), &write_a);
  std::thread writer_b(write_all, fd_b, std::cref(data_b), &write_b);
  std::thread reader_a(read_all, fd_a, kLen, &read_a);
  std::thread reader_b(read_all, fd_b, kLen, &read_b);
  writer_a.join();
  writer_b.join();
  reader_a.join();
  reader_b.join();

  EXPECT_EQ(write_a.rc, 0) << "A's writes through TLS_TX: " << ErrnoText(write_a.rc);
  EXPECT_EQ(write_b.rc, 0) << "B's writes through TLS_TX: " << ErrnoText(write_b.rc);
  EXPECT_EQ(read_a.rc, 0) << "A's reads through TLS_RX: " << ErrnoText(read_a.rc);
  EXPECT_EQ(read_b.rc, 0) << "B's reads through TLS_RX: " << ErrnoText(read_b.rc);
  EXPECT_EQ(Sha256Hex(read_b.received), Sha256Hex(data_a)) << "SHA-256 of what B read = what A wrote";
  EXPECT_EQ(Sha256Hex(read_a.received), Sha256Hex(data_b)) << "SHA-256 of what A read = what B wrote";
  ExpectCountersMoved(stats_before, /*tx_sw=*/2, /*rx_sw=*/2);
}

INSTANTIATE_TEST_SUITE_P(AllSuites, RawRoundTripKernelTest, ::testing::ValuesIn(AllSuites()), SuiteName);

}  // namespace
}  // namespace ktls::testing
