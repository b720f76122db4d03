// Buffers that hold key material wipe themselves: Secret (traffic secrets,
// keys, IVs) and KernelCryptoInfo (what setsockopt(TLS_TX/TLS_RX) gets).
// Each object is built in storage the test owns, so the bytes can be read
// after its destructor ran. The offload path itself: tests/kernel/
// secrets_kernel_test.cc.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <new>
#include <vector>

#include "kernel/crypto_info.h"
#include "keys/secret.h"

namespace ktls::detail {
namespace {

template <typename T>
struct Storage {
  alignas(T) std::array<unsigned char, sizeof(T)> bytes{};
  bool Holds(unsigned char pattern, std::size_t run) const {
    const std::vector<unsigned char> needle(run, pattern);
    return std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end()) != bytes.end();
  }
};

TEST(Secrets, SecretWipesItselfWhenDestroyed) {
  Storage<Secret> storage;
  const std::vector<unsigned char> key(Secret::kCapacity, 0xa5);
  auto* secret = new (storage.bytes.data()) Secret(key);
  ASSERT_TRUE(storage.Holds(0xa5, key.size()));
  secret->~Secret();
  EXPECT_FALSE(storage.Holds(0xa5, 1));
}

TEST(Secrets, SecretWipesWhatItHeldBeforeAShorterValue) {
  Storage<Secret> storage;
  auto* secret = new (storage.bytes.data()) Secret(std::vector<unsigned char>(48, 0xa5));
  ASSERT_TRUE(secret->Assign(std::vector<unsigned char>(16, 0x3c)));
  EXPECT_FALSE(storage.Holds(0xa5, 1)) << "the old tail must not outlive the new value";
  EXPECT_FALSE(secret->Assign(std::vector<unsigned char>(Secret::kCapacity + 1, 0x77)));
  EXPECT_FALSE(storage.Holds(0x3c, 1)) << "a refused value still wipes the old one";
  EXPECT_FALSE(storage.Holds(0x77, 1));
  secret->~Secret();
}

TEST(Secrets, CryptoInfoWipesItselfWhenDestroyedAndWhenMovedFrom) {
  const std::vector<unsigned char> key(32, 0xa5);
  const std::vector<unsigned char> iv(kNonceLen, 0x3c);
  Storage<KernelCryptoInfo> from, to;
  auto* packed = new (from.bytes.data())
      KernelCryptoInfo(std::move(PackCryptoInfo(TlsVersion::kTls13, Cipher::kAes256Gcm, key, iv, 7).value()));
  ASSERT_TRUE(from.Holds(0xa5, key.size()));
  auto* moved = new (to.bytes.data()) KernelCryptoInfo(std::move(*packed));
  EXPECT_FALSE(from.Holds(0xa5, 1)) << "moved-from";
  EXPECT_FALSE(from.Holds(0x3c, 1)) << "moved-from";
  ASSERT_TRUE(to.Holds(0xa5, key.size()));
  *moved = KernelCryptoInfo();  // How offload drops it after setsockopt.
  EXPECT_FALSE(to.Holds(0xa5, 1)) << "assigned over";
  moved->~KernelCryptoInfo();
  packed->~KernelCryptoInfo();
  auto* again = new (to.bytes.data())
      KernelCryptoInfo(std::move(PackCryptoInfo(TlsVersion::kTls13, Cipher::kAes256Gcm, key, iv, 7).value()));
  ASSERT_TRUE(to.Holds(0xa5, key.size()));
  again->~KernelCryptoInfo();
  EXPECT_FALSE(to.Holds(0xa5, 1)) << "destroyed";
  EXPECT_FALSE(to.Holds(0x3c, 1)) << "destroyed";
}

}  // namespace
}  // namespace ktls::detail
