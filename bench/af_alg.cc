// bench/af_alg.cc: the ceiling for bulk send, the kernel's own AEAD
// through an AF_ALG "aead" socket, one request per TLS record.
//
// kTLS encrypts with the same crypto API transform ("gcm(aes)" and so on),
// so this is what the kernel's cipher code alone can do on this machine:
// kTLS can only approach it (it adds TCP and copies, AF_ALG adds two
// syscalls and two copies per record).
#include <linux/if_alg.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <vector>

#include "cases.h"

#ifndef SOL_ALG
#define SOL_ALG 279
#endif

namespace ktls::bench {
namespace {

constexpr std::size_t kTagLen = 16;
constexpr std::size_t kTlsHeaderLen = 5;  // The associated data of a TLS 1.3 record.

struct AlgParams {
  const char* name;
  std::size_t key_len;
  std::size_t iv_len;  // The transform's IV: 12, or 16 for CCM (B0 flags byte first).
};

AlgParams ParamsFor(Cipher cipher) {
  switch (cipher) {
    case Cipher::kAes128Gcm: return {"gcm(aes)", 16, 12};
    case Cipher::kAes256Gcm: return {"gcm(aes)", 32, 12};
    case Cipher::kChaCha20Poly1305: return {"rfc7539(chacha20,poly1305)", 32, 12};
    case Cipher::kAes128Ccm: return {"ccm(aes)", 16, 16};
  }
  return {"gcm(aes)", 16, 12};
}

}  // namespace

AfAlgSeal::AfAlgSeal(Cipher cipher) : cipher_(cipher) {
  const AlgParams params = ParamsFor(cipher);
  tfm_ = UniqueFd(::socket(AF_ALG, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!tfm_) {
    unavailable_ = std::string("socket(AF_ALG): ") + std::strerror(errno);
    return;
  }
  sockaddr_alg addr{};
  addr.salg_family = AF_ALG;
  std::strncpy(reinterpret_cast<char*>(addr.salg_type), "aead", sizeof(addr.salg_type) - 1);
  std::strncpy(reinterpret_cast<char*>(addr.salg_name), params.name, sizeof(addr.salg_name) - 1);
  if (::bind(tfm_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    unavailable_ = std::string("AF_ALG aead \"") + params.name + "\": " + std::strerror(errno);
    return;
  }
  const std::vector<std::byte> key = RandomBytes(params.key_len);
  if (::setsockopt(tfm_.get(), SOL_ALG, ALG_SET_KEY, key.data(), static_cast<socklen_t>(key.size())) != 0 ||
      ::setsockopt(tfm_.get(), SOL_ALG, ALG_SET_AEAD_AUTHSIZE, nullptr, kTagLen) != 0) {
    unavailable_ = std::string("AF_ALG key/authsize: ") + std::strerror(errno);
    return;
  }
  op_ = UniqueFd(::accept4(tfm_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!op_) unavailable_ = std::string("AF_ALG accept: ") + std::strerror(errno);
}

void AfAlgSeal::Seal(std::span<const std::byte> plaintext, std::size_t len, std::size_t record_len) {
  const AlgParams params = ParamsFor(cipher_);
  const std::vector<std::byte> static_iv = RandomBytes(12);
  std::array<unsigned char, kTlsHeaderLen> header = {23, 3, 3, 0, 0};
  std::vector<std::byte> out(kTlsHeaderLen + record_len + kTagLen);

  // The control messages: encrypt, this record's IV, the AAD length.
  constexpr std::size_t kMaxIv = 16;
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(std::uint32_t)) * 2 +
                                         CMSG_SPACE(sizeof(af_alg_iv) + kMaxIv)] = {};
  for (std::size_t done = 0, seq = 0; done < len; ++seq) {
    const std::size_t n = std::min(record_len, len - done);
    const std::size_t at = done % plaintext.size();
    const std::size_t take = std::min(n, plaintext.size() - at);  // plaintext is a repeating pattern.
    header[3] = static_cast<unsigned char>((n + kTagLen) >> 8);
    header[4] = static_cast<unsigned char>(n + kTagLen);
    iovec iov[2] = {{header.data(), header.size()}, {const_cast<std::byte*>(plaintext.data() + at), take}};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);

    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_ALG;
    cmsg->cmsg_type = ALG_SET_OP;
    cmsg->cmsg_len = CMSG_LEN(sizeof(std::uint32_t));
    const std::uint32_t op = ALG_OP_ENCRYPT;
    std::memcpy(CMSG_DATA(cmsg), &op, sizeof(op));

    cmsg = CMSG_NXTHDR(&msg, cmsg);
    cmsg->cmsg_level = SOL_ALG;
    cmsg->cmsg_type = ALG_SET_IV;
    cmsg->cmsg_len = CMSG_LEN(sizeof(af_alg_iv) + params.iv_len);
    unsigned char iv[kMaxIv] = {};
    // The TLS 1.3 nonce: the static IV XOR the sequence number; CCM's
    // transform wants it behind a flags byte (L' = 2), as kTLS passes it.
    unsigned char* nonce = params.iv_len == 16 ? iv + 1 : iv;
    if (params.iv_len == 16) iv[0] = 2;
    std::memcpy(nonce, static_iv.data(), 12);
    for (int i = 0; i < 8; ++i) nonce[11 - i] ^= static_cast<unsigned char>(seq >> (8 * i));
    const std::uint32_t iv_len = static_cast<std::uint32_t>(params.iv_len);
    std::memcpy(CMSG_DATA(cmsg), &iv_len, sizeof(iv_len));
    std::memcpy(CMSG_DATA(cmsg) + sizeof(af_alg_iv), iv, params.iv_len);

    cmsg = CMSG_NXTHDR(&msg, cmsg);
    cmsg->cmsg_level = SOL_ALG;
    cmsg->cmsg_type = ALG_SET_AEAD_ASSOCLEN;
    cmsg->cmsg_len = CMSG_LEN(sizeof(std::uint32_t));
    const std::uint32_t assoc_len = kTlsHeaderLen;
    std::memcpy(CMSG_DATA(cmsg), &assoc_len, sizeof(assoc_len));

    const ssize_t sent = ::sendmsg(op_.get(), &msg, 0);
    if (sent != static_cast<ssize_t>(kTlsHeaderLen + take)) {
      throw BenchError(std::string("AF_ALG sendmsg: ") + (sent < 0 ? std::strerror(errno) : "short"));
    }
    const std::size_t want = kTlsHeaderLen + take + kTagLen;
    const ssize_t got = ::read(op_.get(), out.data(), want);
    if (got != static_cast<ssize_t>(want)) {
      throw BenchError(std::string("AF_ALG read: ") + (got < 0 ? std::strerror(errno) : "short"));
    }
    done += take;
  }
}

}  // namespace ktls::bench
