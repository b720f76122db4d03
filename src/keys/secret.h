// keys/secret.h: a fixed-capacity byte buffer for key material that wipes
// itself with OPENSSL_cleanse when it goes away or is overwritten.
#ifndef KTLS_SRC_KEYS_SECRET_H_
#define KTLS_SRC_KEYS_SECRET_H_

#include <openssl/crypto.h>

#include <array>
#include <cstddef>
#include <cstring>
#include <span>

namespace ktls::detail {

// Secret: up to kCapacity bytes of key material. Copyable (copies are wiped
// too), never printed. 64 bytes holds a SHA-384 traffic secret, the largest
// thing ktls keeps.
class Secret {
 public:
  static constexpr std::size_t kCapacity = 64;

  Secret() = default;
  // Precondition: bytes.size() <= kCapacity (checked by Assign's callers).
  explicit Secret(std::span<const unsigned char> bytes) { Assign(bytes); }
  Secret(const Secret& other) { Assign(other.bytes()); }
  Secret& operator=(const Secret& other) {
    if (this != &other) Assign(other.bytes());
    return *this;
  }
  ~Secret() { Wipe(); }

  // Assign replaces the contents; returns false (and stores nothing) when
  // bytes does not fit.
  bool Assign(std::span<const unsigned char> bytes) {
    Wipe();
    if (bytes.size() > kCapacity) return false;
    if (!bytes.empty()) std::memcpy(data_.data(), bytes.data(), bytes.size());
    len_ = bytes.size();
    return true;
  }

  // Resize sets the length to len bytes (contents unspecified until written);
  // returns false when len does not fit.
  bool Resize(std::size_t len) {
    if (len > kCapacity) return false;
    len_ = len;
    return true;
  }

  void Wipe() {
    OPENSSL_cleanse(data_.data(), data_.size());
    len_ = 0;
  }

  std::span<const unsigned char> bytes() const { return {data_.data(), len_}; }
  std::span<unsigned char> mutable_bytes() { return {data_.data(), len_}; }
  std::size_t size() const { return len_; }
  bool empty() const { return len_ == 0; }

 private:
  std::array<unsigned char, kCapacity> data_{};
  std::size_t len_ = 0;
};

}  // namespace ktls::detail

#endif  // KTLS_SRC_KEYS_SECRET_H_
