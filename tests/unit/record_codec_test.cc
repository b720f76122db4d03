// tests/unit/record_codec_test.cc: the reference record codec against
// published vectors, then its own invariants.
//
// Vectors, and where they come from:
//  - RFC 8448 section 3 ("Simple 1-RTT Handshake", TLS_AES_128_GCM_SHA256):
//    the traffic keys/IVs and the "complete record" of the client Finished,
//    the server NewSessionTicket, both sides' application_data and both
//    close_notify alerts, byte for byte.
//  - TLS 1.2 AES-128-GCM: the record test of miTLS (project-everest/
//    mitls-fstar, src/tls/test/MiTLS.TestRecord.fst, test_aead TLS_1p2
//    AES_128_GCM): key, 4-byte salt, an HTTP GET, and the resulting
//    explicit_nonce || ciphertext || tag, written at sequence number 0 with
//    explicit nonce 0. An earlier revision of the same test (TestRecord.fst)
//    wrote it at sequence number 1, which pins the sequence number into the
//    AAD independently of the explicit nonce.
//  - The bare AEADs with the TLS nonce and tag sizes: RFC 8439 2.8.2
//    (ChaCha20-Poly1305), the GCM specification's test case 16 (AES-256-GCM,
//    McGrew and Viega; NIST), and Wycheproof aes_ccm_test.json tcId 1, 2 and
//    34 (AES-128-CCM, 12-byte nonce, 16-byte tag).
#include "tests/support/record_codec.h"

#include <gtest/gtest.h>

#include <cctype>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace ktls::testing {
namespace {

using Bytes = std::vector<std::uint8_t>;

// FromHex parses hex digits, ignoring spaces and line breaks.
Bytes FromHex(std::string_view text) {
  Bytes out;
  int high = -1;
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c))) continue;
    const int digit = std::isdigit(static_cast<unsigned char>(c)) ? c - '0'
                                                                  : std::tolower(static_cast<unsigned char>(c)) - 'a' + 10;
    if (high < 0) {
      high = digit;
    } else {
      out.push_back(static_cast<std::uint8_t>(high * 16 + digit));
      high = -1;
    }
  }
  return out;
}

std::string ToHex(const Bytes& bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (std::uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0x0f]);
  }
  return out;
}

Bytes Iota(std::size_t len) {
  Bytes out(len);
  for (std::size_t i = 0; i < len; ++i) out[i] = static_cast<std::uint8_t>(i);
  return out;
}

// Pattern: deterministic, not all-zero, different per record.
Bytes Pattern(std::size_t len, std::uint8_t salt) {
  Bytes out(len);
  for (std::size_t i = 0; i < len; ++i) out[i] = static_cast<std::uint8_t>(i * 31 + salt + 1);
  return out;
}

// --- RFC 8448 section 3 -------------------------------------------------------

constexpr std::string_view kClientHandshakeKey = "dbfaa693d1762c5b666af5d950258d01";
constexpr std::string_view kClientHandshakeIv = "5bd3c71b836e0b76bb73265f";
constexpr std::string_view kClientApplicationKey = "17422dda596ed5d9acd890e3c63f5051";
constexpr std::string_view kClientApplicationIv = "5b78923dee08579033e523d9";
constexpr std::string_view kServerApplicationKey = "9f02283b6c9c07efc26bb9f2ac92e356";
constexpr std::string_view kServerApplicationIv = "cf782b88dd83549aadf1e984";

// {client} send handshake record: the client Finished, under the client
// handshake traffic keys, sequence number 0.
constexpr std::string_view kClientFinishedPayload =
    "14 00 00 20 a8 ec 43 6d 67 76 34 ae 52 5a c1 fc eb e1 1a 03 9e c1 76 94"
    "fa c6 e9 85 27 b6 42 f2 ed d5 ce 61";
constexpr std::string_view kClientFinishedRecord =
    "17 03 03 00 35 75 ec 4d c2 38 cc e6 0b 29 80 44 a7 1e 21 9c 56 cc 77 b0"
    "51 7f e9 b9 3c 7a 4b fc 44 d8 7f 38 f8 03 38 ac 98 fc 46 de b3 84 bd 1c"
    "ae ac ab 68 67 d7 26 c4 05 46";

// {server} send handshake record: NewSessionTicket, the first record under
// the server application traffic keys (sequence number 0).
constexpr std::string_view kServerTicketRecord =
    "17 03 03 00 de 3a 6b 8f 90 41 4a 97 d6 95 9c 34 87 68 0d e5 13 4a 2b 24"
    "0e 6c ff ac 11 6e 95 d4 1d 6a f8 f6 b5 80 dc f3 d1 1d 63 c7 58 db 28 9a"
    "01 59 40 25 2f 55 71 3e 06 1d c1 3e 07 88 91 a3 8e fb cf 57 53 ad 8e f1"
    "70 ad 3c 73 53 d1 6d 9d a7 73 b9 ca 7f 2b 9f a1 b6 c0 d4 a3 d0 3f 75 e0"
    "9c 30 ba 1e 62 97 2a c4 6f 75 f7 b9 81 be 63 43 9b 29 99 ce 13 06 46 15"
    "13 98 91 d5 e4 c5 b4 06 f1 6e 3f c1 81 a7 7c a4 75 84 00 25 db 2f 0a 77"
    "f8 1b 5a b0 5b 94 c0 13 46 75 5f 69 23 2c 86 51 9d 86 cb ee ac 87 aa c3"
    "47 d1 43 f9 60 5d 64 f6 50 db 4d 02 3e 70 e9 52 ca 49 fe 51 37 12 1c 74"
    "bc 26 97 68 7e 24 87 46 d6 df 35 30 05 f3 bc e1 86 96 12 9c 81 53 55 6b"
    "3b 6c 67 79 b3 7b f1 59 85 68 4f";
// The NewSessionTicket message starts with type 4 and a 24-bit length of
// 0xc9, then ticket_lifetime 0x1e, ticket_age_add fad6aac5 (RFC 8448).
constexpr std::string_view kServerTicketPrefix = "04 00 00 c9 00 00 00 1e fa d6 aa c5";

// {client} send application_data record (client application keys, seq 0)
// and {server} send application_data record (server application keys, seq 1,
// after the ticket); both carry the 50 bytes 00 01 .. 31.
constexpr std::string_view kClientApplicationRecord =
    "17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28 ba 55 cb ef ac ea"
    "42 f9 14 aa 66 bc ab 3f 2b 98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b"
    "62 97 4e 1f 5a 62 92 a2 97 70 14 bd 1e 3d ea e6 3a ee bb 21 69 49 15 e4";
constexpr std::string_view kServerApplicationRecord =
    "17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4 a4 69 32 fc"
    "32 25 d0 5f 82 aa 1b 36 e3 0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8"
    "fc c4 9c 4b f2 e5 f0 a2 1c 00 47 c2 ab f3 32 54 0d d0 32 e1 67 c2 95 5d";
constexpr std::size_t kApplicationPayloadLen = 50;

// {client} / {server} send alert record: close_notify (01 00), client seq 1,
// server seq 2.
constexpr std::string_view kClientAlertRecord = "17 03 03 00 13 c9 87 27 60 65 56 66 b7 4d 7f f1 15 3e fd 6d b6 d0 b0 e3";
constexpr std::string_view kServerAlertRecord = "17 03 03 00 13 b5 8f d6 71 66 eb f5 99 d2 47 20 cf be 7e fa 7a 88 64 a9";
constexpr std::string_view kCloseNotify = "01 00";

RecordKeys Rfc8448Keys(std::string_view key, std::string_view iv, std::uint64_t seq) {
  return MakeRecordKeys(TlsVersion::kTls13, Cipher::kAes128Gcm, FromHex(key), FromHex(iv), seq);
}

struct PublishedTls13Record {
  const char* name;
  std::string_view key;
  std::string_view iv;
  std::uint64_t seq;
  std::uint8_t content_type;
  Bytes payload;
  std::string_view record;
};

std::vector<PublishedTls13Record> Rfc8448Records() {
  return {
      {"client Finished", kClientHandshakeKey, kClientHandshakeIv, 0, kContentHandshake,
       FromHex(kClientFinishedPayload), kClientFinishedRecord},
      {"client application_data", kClientApplicationKey, kClientApplicationIv, 0, kContentApplicationData,
       Iota(kApplicationPayloadLen), kClientApplicationRecord},
      {"client close_notify", kClientApplicationKey, kClientApplicationIv, 1, kContentAlert,
       FromHex(kCloseNotify), kClientAlertRecord},
      {"server application_data", kServerApplicationKey, kServerApplicationIv, 1, kContentApplicationData,
       Iota(kApplicationPayloadLen), kServerApplicationRecord},
      {"server close_notify", kServerApplicationKey, kServerApplicationIv, 2, kContentAlert,
       FromHex(kCloseNotify), kServerAlertRecord},
  };
}

TEST(RecordCodecRfc8448Test, SealReproducesThePublishedRecords) {
  for (const PublishedTls13Record& v : Rfc8448Records()) {
    SCOPED_TRACE(v.name);
    RecordKeys keys = Rfc8448Keys(v.key, v.iv, v.seq);
    const Bytes record = SealRecord(keys, v.content_type, v.payload);
    EXPECT_EQ(ToHex(record), ToHex(FromHex(v.record))) << "sealed record should equal RFC 8448's bytes";
    EXPECT_EQ(keys.seq, v.seq + 1) << "sealing should advance the sequence number by one";
  }
}

TEST(RecordCodecRfc8448Test, OpenRecoversThePublishedPlaintext) {
  for (const PublishedTls13Record& v : Rfc8448Records()) {
    SCOPED_TRACE(v.name);
    RecordKeys keys = Rfc8448Keys(v.key, v.iv, v.seq);
    const auto opened = OpenRecord(keys, FromHex(v.record));
    ASSERT_TRUE(opened.has_value()) << "RFC 8448 record should authenticate at seq " << v.seq;
    EXPECT_EQ(opened->content_type, v.content_type) << "inner content type";
    EXPECT_EQ(ToHex(opened->plaintext), ToHex(v.payload)) << "plaintext should equal RFC 8448's payload";
    EXPECT_EQ(keys.seq, v.seq + 1) << "opening should advance the sequence number by one";
  }
}

TEST(RecordCodecRfc8448Test, OpensTheServerApplicationStreamInOrder) {
  // The server's application-key records in the order the RFC sends them:
  // NewSessionTicket (seq 0), application_data (1), close_notify (2).
  RecordKeys keys = Rfc8448Keys(kServerApplicationKey, kServerApplicationIv, 0);
  RecordSplitter splitter;
  Bytes stream = FromHex(kServerTicketRecord);
  for (std::string_view r : {kServerApplicationRecord, kServerAlertRecord}) {
    const Bytes bytes = FromHex(r);
    stream.insert(stream.end(), bytes.begin(), bytes.end());
  }
  splitter.Feed(stream);

  auto record = splitter.Pop();
  ASSERT_TRUE(record.has_value()) << "splitter should yield the NewSessionTicket record";
  auto ticket = OpenRecord(keys, *record);
  ASSERT_TRUE(ticket.has_value()) << "NewSessionTicket record should authenticate at seq 0";
  EXPECT_EQ(ticket->content_type, kContentHandshake);
  ASSERT_EQ(ticket->plaintext.size(), 4u + 0xc9) << "NewSessionTicket: 4-byte header + 0xc9 body";
  const Bytes prefix = FromHex(kServerTicketPrefix);
  EXPECT_EQ(ToHex(Bytes(ticket->plaintext.begin(), ticket->plaintext.begin() + static_cast<std::ptrdiff_t>(prefix.size()))),
            ToHex(prefix));

  record = splitter.Pop();
  ASSERT_TRUE(record.has_value());
  auto data = OpenRecord(keys, *record);
  ASSERT_TRUE(data.has_value()) << "application_data should authenticate at seq 1";
  EXPECT_EQ(data->content_type, kContentApplicationData);
  EXPECT_EQ(data->plaintext, Iota(kApplicationPayloadLen));

  record = splitter.Pop();
  ASSERT_TRUE(record.has_value());
  auto alert = OpenRecord(keys, *record);
  ASSERT_TRUE(alert.has_value()) << "close_notify should authenticate at seq 2";
  EXPECT_EQ(alert->content_type, kContentAlert);
  EXPECT_EQ(alert->plaintext, FromHex(kCloseNotify));

  EXPECT_FALSE(splitter.Pop().has_value()) << "nothing after the three records";
  EXPECT_EQ(splitter.buffered_len(), 0u);
}

TEST(RecordCodecRfc8448Test, WrongSequenceNumberFailsToOpen) {
  RecordKeys keys = Rfc8448Keys(kClientApplicationKey, kClientApplicationIv, 1);
  EXPECT_FALSE(OpenRecord(keys, FromHex(kClientApplicationRecord)).has_value())
      << "the seq 0 record must not authenticate at seq 1 (nonce = iv XOR seq)";
  EXPECT_EQ(keys.seq, 1u) << "a failed open must not advance the sequence number";
}

// --- TLS 1.2 AES-128-GCM (miTLS) -------------------------------------------

constexpr std::string_view kMitlsKey = "152300c2dc44c8f695d4fb1471791659";
constexpr std::string_view kMitlsSalt = "b56bf932";
// "GET / HTTP/1.1\r\nHost: undefined\r\n\r\n"
constexpr std::string_view kMitlsPlaintext =
    "474554202f20485454502f312e310d0a486f73743a20756e646566696e65640d0a0d0a";
// explicit_nonce || ciphertext || tag, the record's fragment. The header
// (17 03 03 00 3b) is not in the vector; it follows from RFC 5246 6.2.
constexpr std::string_view kMitlsFragmentSeq0 =
    "0000000000000000ed3ca96c8bd2fbb376c2dc417f3ec249e8ab550dab1c421293f0e642a0c152b43a546a"
    "a26bbe62e8651214d28ab90e70217b3d";
constexpr std::string_view kMitlsFragmentSeq1 =
    "0000000000000000ed3ca96c8bd2fbb376c2dc417f3ec249e8ab550dab1c421293f0e642a0c152b43a546a"
    "8b49b6128ee6e23454b7e580423ba985";

RecordKeys MitlsKeys(std::uint64_t seq) {
  Bytes iv = FromHex(kMitlsSalt);
  iv.resize(kAeadNonceLen, 0);  // First explicit nonce: 0.
  return MakeRecordKeys(TlsVersion::kTls12, Cipher::kAes128Gcm, FromHex(kMitlsKey), iv, seq);
}

Bytes MitlsRecord(std::string_view fragment) {
  Bytes record = FromHex("17 03 03 00 3b");
  const Bytes body = FromHex(fragment);
  record.insert(record.end(), body.begin(), body.end());
  return record;
}

TEST(RecordCodecTls12VectorTest, SealReproducesMitlsAes128GcmRecord) {
  for (const auto& [seq, fragment] : {std::pair{std::uint64_t{0}, kMitlsFragmentSeq0},
                                      std::pair{std::uint64_t{1}, kMitlsFragmentSeq1}}) {
    SCOPED_TRACE("seq " + std::to_string(seq));
    RecordKeys keys = MitlsKeys(seq);
    const Bytes record = SealRecord(keys, kContentApplicationData, FromHex(kMitlsPlaintext));
    EXPECT_EQ(ToHex(record), ToHex(MitlsRecord(fragment))) << "sealed record should equal miTLS's bytes";
    EXPECT_EQ(keys.seq, seq + 1);
    EXPECT_EQ(keys.explicit_nonce, 1u) << "explicit nonce goes up by one per sealed record";
  }
}

TEST(RecordCodecTls12VectorTest, OpenRecoversMitlsPlaintext) {
  for (const auto& [seq, fragment] : {std::pair{std::uint64_t{0}, kMitlsFragmentSeq0},
                                      std::pair{std::uint64_t{1}, kMitlsFragmentSeq1}}) {
    SCOPED_TRACE("seq " + std::to_string(seq));
    RecordKeys keys = MitlsKeys(seq);
    const auto opened = OpenRecord(keys, MitlsRecord(fragment));
    ASSERT_TRUE(opened.has_value()) << "miTLS record should authenticate at seq " << seq;
    EXPECT_EQ(opened->content_type, kContentApplicationData);
    EXPECT_EQ(ToHex(opened->plaintext), std::string(kMitlsPlaintext));
    EXPECT_EQ(opened->explicit_nonce, 0u) << "explicit nonce read from the record";
    // The same bytes at the other sequence number must fail: the sequence
    // number is in the AAD, not the nonce.
    RecordKeys other = MitlsKeys(1 - seq);
    EXPECT_FALSE(OpenRecord(other, MitlsRecord(fragment)).has_value())
        << "record written at seq " << seq << " must not authenticate at seq " << (1 - seq);
  }
}

// --- The bare AEADs -------------------------------------------------------------

struct AeadVector {
  const char* name;
  Cipher cipher;
  std::string_view key;
  std::string_view nonce;
  std::string_view aad;
  std::string_view plaintext;
  std::string_view ciphertext_and_tag;
};

std::vector<AeadVector> PublishedAeadVectors() {
  return {
      {"RFC 8439 2.8.2", Cipher::kChaCha20Poly1305,
       "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f", "070000004041424344454647",
       "50515253c0c1c2c3c4c5c6c7",
       // "Ladies and Gentlemen of the class of '99: If I could offer you only
       // one tip for the future, sunscreen would be it."
       "4c616469657320616e642047656e746c656d656e206f662074686520636c617373206f66202739393a204966"
       "204920636f756c64206f6666657220796f75206f6e6c79206f6e652074697020666f7220746865206675747572"
       "652c2073756e73637265656e20776f756c642062652069742e",
       "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92"
       "728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b"
       "4831d7bc3ff4def08e4b7a9de576d26586cec64b6116"
       "1ae10b594f09e26a7e902ecbd0600691"},
      {"GCM test case 16", Cipher::kAes256Gcm,
       "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888",
       "feedfacedeadbeeffeedfacedeadbeefabaddad2",
       "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525"
       "b16aedf5aa0de657ba637b39",
       "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838"
       "c5f61e6393ba7a0abcc9f662"
       "76fc6ece0f4e1768cddf8853bb2d551b"},
      {"Wycheproof aes_ccm tcId 1", Cipher::kAes128Ccm, "bedcfb5a011ebc84600fcb296c15af0d",
       "438a547a94ea88dce46c6c85", "", "", "25d1a38495a7dea45bda049705627d10"},
      {"Wycheproof aes_ccm tcId 2", Cipher::kAes128Ccm, "384ea416ac3c2f51a76e7d8226346d4e",
       "b30c084727ad1c592ac21d12", "", "35", "d7" "6be3fd13b7065afc19e3b8a3b96b39fb"},
      {"Wycheproof aes_ccm tcId 34", Cipher::kAes128Ccm, "875b0b4a84150524eb1f50f9d8de1388",
       "fdc5014ed1ad706129d57322", "35a6d9829c8449c4402e385cc5c6fe98", "2f575dfb2dbe9d238de576fc63e4ac32",
       "3469c3ff738aa32aacc1ac48d89b1d75" "fa68720a3171a54c4b3690bffde7b610"},
  };
}

TEST(RecordCodecAeadTest, MatchesPublishedVectors) {
  for (const AeadVector& v : PublishedAeadVectors()) {
    SCOPED_TRACE(v.name);
    const Bytes sealed = AeadSeal(v.cipher, FromHex(v.key), FromHex(v.nonce), FromHex(v.aad), FromHex(v.plaintext));
    EXPECT_EQ(ToHex(sealed), ToHex(FromHex(v.ciphertext_and_tag))) << "ciphertext || tag";
    const auto opened = AeadOpen(v.cipher, FromHex(v.key), FromHex(v.nonce), FromHex(v.aad),
                                 FromHex(v.ciphertext_and_tag));
    ASSERT_TRUE(opened.has_value()) << "the published ciphertext should authenticate";
    EXPECT_EQ(ToHex(*opened), ToHex(FromHex(v.plaintext)));
    Bytes tampered = FromHex(v.ciphertext_and_tag);
    tampered.back() ^= 0x01;
    EXPECT_FALSE(AeadOpen(v.cipher, FromHex(v.key), FromHex(v.nonce), FromHex(v.aad), tampered).has_value())
        << "a flipped tag bit must fail authentication";
  }
}

// --- Every version x cipher ----------------------------------------------------

struct Suite {
  TlsVersion version;
  Cipher cipher;
};

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

class RecordCodecSuiteTest : public ::testing::TestWithParam<Suite> {
 protected:
  std::size_t KeyLen() const {
    const Cipher cipher = GetParam().cipher;
    return cipher == Cipher::kAes128Gcm || cipher == Cipher::kAes128Ccm ? 16 : 32;
  }
  RecordKeys Keys(std::uint64_t seq, std::uint8_t iv_fill = 0x5a) const {
    const Bytes key = Pattern(KeyLen(), 7);
    Bytes iv(kAeadNonceLen, iv_fill);
    return MakeRecordKeys(GetParam().version, GetParam().cipher, key, iv, seq);
  }
};

TEST_P(RecordCodecSuiteTest, RoundTripsRecordsOfEverySize) {
  const std::vector<std::size_t> sizes = {0, 1, 15, 16, 17, 255, 4093, 16383, kMaxPlaintextLen};
  RecordKeys sender = Keys(3);
  RecordKeys receiver = Keys(3);
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    SCOPED_TRACE("plaintext of " + std::to_string(sizes[i]) + " bytes");
    const std::uint8_t type = i % 3 == 2 ? kContentHandshake : kContentApplicationData;
    const Bytes plaintext = Pattern(sizes[i], static_cast<std::uint8_t>(i));
    const Bytes record = SealRecord(sender, type, plaintext);
    ASSERT_EQ(record.size(), plaintext.size() + RecordOverhead(GetParam().version, GetParam().cipher))
        << "record size = plaintext + overhead";
    EXPECT_EQ(record[0], GetParam().version == TlsVersion::kTls13 ? kContentApplicationData : type)
        << "outer content type (TLS 1.3 always 23)";
    EXPECT_EQ(record[1], 0x03);
    EXPECT_EQ(record[2], 0x03) << "legacy record version 0x0303";
    const auto opened = OpenRecord(receiver, record);
    ASSERT_TRUE(opened.has_value()) << "own record should authenticate";
    EXPECT_EQ(opened->content_type, type);
    EXPECT_EQ(opened->plaintext, plaintext);
  }
  EXPECT_EQ(sender.seq, 3 + sizes.size());
  EXPECT_EQ(receiver.seq, 3 + sizes.size());
}

TEST_P(RecordCodecSuiteTest, RejectsOversizedPlaintext) {
  RecordKeys keys = Keys(0);
  EXPECT_THROW(SealRecord(keys, kContentApplicationData, Bytes(kMaxPlaintextLen + 1)), std::runtime_error)
      << "2^14 + 1 bytes of plaintext is not a legal record";
}

TEST_P(RecordCodecSuiteTest, EveryFlippedBitFailsToOpen) {
  RecordKeys sender = Keys(0);
  const Bytes record = SealRecord(sender, kContentApplicationData, Pattern(40, 1));
  // Every byte of the record, header included, is authenticated (the TLS 1.2
  // header through the AAD, the explicit nonce through the nonce).
  for (std::size_t i = 0; i < record.size(); ++i) {
    Bytes tampered = record;
    tampered[i] ^= static_cast<std::uint8_t>(1u << (i % 8));
    RecordKeys receiver = Keys(0);
    EXPECT_FALSE(OpenRecord(receiver, tampered).has_value()) << "flipped bit in byte " << i << " should fail";
    EXPECT_EQ(receiver.seq, 0u) << "a failed open must not advance the sequence number";
  }
}

TEST_P(RecordCodecSuiteTest, TruncatedOrExtendedRecordFailsToOpen) {
  RecordKeys sender = Keys(0);
  const Bytes record = SealRecord(sender, kContentApplicationData, Pattern(40, 1));
  RecordKeys receiver = Keys(0);
  EXPECT_FALSE(OpenRecord(receiver, std::span(record).first(record.size() - 1)).has_value())
      << "header length and record size disagree";
  Bytes longer = record;
  longer.push_back(0);
  EXPECT_FALSE(OpenRecord(receiver, longer).has_value());
  EXPECT_FALSE(OpenRecord(receiver, std::span(record).first(3)).has_value()) << "shorter than a header";
}

TEST_P(RecordCodecSuiteTest, SequenceNumberIsBoundIntoEachRecord) {
  RecordKeys sender = Keys(41);
  const Bytes first = SealRecord(sender, kContentApplicationData, Pattern(10, 1));
  const Bytes second = SealRecord(sender, kContentApplicationData, Pattern(10, 1));
  EXPECT_NE(first, second) << "the same plaintext at the next seq must encrypt differently";

  RecordKeys receiver = Keys(41);
  EXPECT_FALSE(OpenRecord(receiver, second).has_value()) << "seq 42's record must not open at seq 41";
  ASSERT_TRUE(OpenRecord(receiver, first).has_value());
  EXPECT_FALSE(OpenRecord(receiver, first).has_value()) << "a replayed record must not open at seq 42";
  ASSERT_TRUE(OpenRecord(receiver, second).has_value());
  EXPECT_EQ(receiver.seq, 43u);
}

TEST_P(RecordCodecSuiteTest, LargeSequenceNumbersRoundTrip) {
  // Crosses the 2^32 boundary, where a 32-bit counter would wrap.
  const std::uint64_t start = (std::uint64_t{1} << 32) - 2;
  RecordKeys sender = Keys(start);
  RecordKeys receiver = Keys(start);
  for (int i = 0; i < 4; ++i) {
    const auto opened = OpenRecord(receiver, SealRecord(sender, kContentApplicationData, Pattern(33, 2)));
    ASSERT_TRUE(opened.has_value()) << "record at seq " << (start + static_cast<std::uint64_t>(i));
  }
}

TEST_P(RecordCodecSuiteTest, SplitterYieldsWholeRecordsFromAByteStream) {
  RecordKeys sender = Keys(0);
  Bytes stream;
  std::vector<Bytes> plaintexts;
  for (std::size_t len : {5u, 0u, 16384u, 700u}) {
    plaintexts.push_back(Pattern(len, static_cast<std::uint8_t>(len)));
    const Bytes record = SealRecord(sender, kContentApplicationData, plaintexts.back());
    stream.insert(stream.end(), record.begin(), record.end());
  }
  RecordSplitter splitter;
  RecordKeys receiver = Keys(0);
  std::size_t num_records = 0;
  // Feed in awkward pieces: 1 byte, then 4 (a header split), then 3333.
  std::size_t offset = 0;
  const std::size_t pieces[] = {1, 4, 3333};
  for (std::size_t i = 0; offset < stream.size(); ++i) {
    const std::size_t len = std::min(pieces[i % 3], stream.size() - offset);
    splitter.Feed(std::span(stream).subspan(offset, len));
    offset += len;
    while (auto record = splitter.Pop()) {
      ASSERT_LT(num_records, plaintexts.size());
      const auto opened = OpenRecord(receiver, *record);
      ASSERT_TRUE(opened.has_value()) << "record " << num_records;
      EXPECT_EQ(opened->plaintext, plaintexts[num_records]);
      ++num_records;
    }
  }
  EXPECT_EQ(num_records, plaintexts.size());
  EXPECT_EQ(splitter.buffered_len(), 0u);
}

TEST_P(RecordCodecSuiteTest, ExplicitNonceStartsAtIvTailAndCountsUp) {
  const Suite suite = GetParam();
  // iv[4..12] = 00 00 00 00 00 00 ff fe: the third record carries a carry
  // into the next byte.
  Bytes iv = FromHex("a1a2a3a4 000000000000fffe");
  const Bytes key = Pattern(KeyLen(), 9);
  RecordKeys sender = MakeRecordKeys(suite.version, suite.cipher, key, iv, 0);
  RecordKeys receiver = MakeRecordKeys(suite.version, suite.cipher, key, iv, 0);
  const std::uint64_t expected[] = {0xfffe, 0xffff, 0x10000};
  for (std::uint64_t want : expected) {
    const Bytes record = SealRecord(sender, kContentApplicationData, Pattern(3, 3));
    const auto opened = OpenRecord(receiver, record);
    ASSERT_TRUE(opened.has_value());
    if (HasExplicitNonce(suite.version, suite.cipher)) {
      EXPECT_EQ(opened->explicit_nonce, want) << "explicit nonce on the wire (iv tail + records sent)";
      Bytes want_on_wire(8);
      for (std::size_t i = 0; i < 8; ++i) want_on_wire[7 - i] = static_cast<std::uint8_t>(want >> (8 * i));
      const Bytes on_wire(record.begin() + kRecordHeaderLen,
                          record.begin() + kRecordHeaderLen + kTls12ExplicitNonceLen);
      EXPECT_EQ(ToHex(on_wire), ToHex(want_on_wire)) << "explicit nonce is the first 8 fragment bytes";
    } else {
      EXPECT_EQ(record.size(), kRecordHeaderLen + 3 + (suite.version == TlsVersion::kTls13 ? 1 : 0) + kAeadTagLen)
          << "no explicit nonce in this record format";
    }
  }
}

TEST_P(RecordCodecSuiteTest, Tls13PaddingIsStrippedAndTls12HasNone) {
  const TlsVersion version = GetParam().version;
  RecordKeys sender = Keys(0);
  RecordKeys receiver = Keys(0);
  const Bytes plaintext = Pattern(12, 4);
  const Bytes record = SealRecord(sender, kContentAlert, plaintext, /*tls13_padding_len=*/100);
  const std::size_t padding_len = version == TlsVersion::kTls13 ? 100 : 0;
  EXPECT_EQ(record.size(), plaintext.size() + padding_len + RecordOverhead(version, GetParam().cipher))
      << "TLS 1.3 carries the 100 padding bytes; TLS 1.2 has no padding and ignores the argument";
  const auto opened = OpenRecord(receiver, record);
  ASSERT_TRUE(opened.has_value());
  EXPECT_EQ(opened->content_type, kContentAlert) << "TLS 1.3: the type is the last non-zero byte";
  EXPECT_EQ(opened->plaintext, plaintext) << "the zero padding is not plaintext";
}

INSTANTIATE_TEST_SUITE_P(AllSuites, RecordCodecSuiteTest, ::testing::ValuesIn(AllSuites()), SuiteName);

}  // namespace
}  // namespace ktls::testing
