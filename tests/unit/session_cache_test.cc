// tests/unit/session_cache_test.cc: ktls::SessionCache's rules: TLS 1.3
// sessions used once, TLS 1.2 ones kept, bounds per server and overall,
// expiry, and verified-only lookups.
#include "ktls/session_cache.h"

#include <openssl/ssl.h>

#include <gtest/gtest.h>

#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "core/openssl_ptr.h"

namespace ktls::testing {
namespace {

using detail::UniqueSession;

// MakeSession: a resumable session (it has an ID) of the given version,
// told apart by id_byte, created `age` seconds ago with a 300 s lifetime.
UniqueSession MakeSession(int version, unsigned char id_byte, long age = 0) {
  UniqueSession session(SSL_SESSION_new());
  const unsigned char id[8] = {id_byte, 1, 2, 3, 4, 5, 6, 7};
  if (!session || SSL_SESSION_set1_id(session.get(), id, sizeof(id)) != 1 ||
      SSL_SESSION_set_protocol_version(session.get(), version) != 1) {
    return nullptr;
  }
  SSL_SESSION_set_time(session.get(), static_cast<long>(std::time(nullptr)) - age);
  SSL_SESSION_set_timeout(session.get(), 300);
  return session;
}

unsigned char IdByte(SSL_SESSION* session) {
  unsigned int len = 0;
  const unsigned char* id = SSL_SESSION_get_id(session, &len);
  return len > 0 ? id[0] : 0;
}

// TakeId takes a session and returns its id byte (0: none), freeing it.
unsigned char TakeId(SessionCache& cache, const std::string& host, std::uint16_t port, bool only_verified = false) {
  UniqueSession taken(cache.Take(host, port, only_verified));
  return taken ? IdByte(taken.get()) : 0;
}

TEST(SessionCache, Tls13SessionsAreUsedOnceNewestFirst) {
  SessionCache cache;
  auto a = MakeSession(TLS1_3_VERSION, 'a');
  auto b = MakeSession(TLS1_3_VERSION, 'b');
  cache.Put("example.org", 443, a.get());
  cache.Put("example.org", 443, b.get());
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(TakeId(cache, "example.org", 443), 'b');
  EXPECT_EQ(TakeId(cache, "example.org", 443), 'a');
  EXPECT_EQ(TakeId(cache, "example.org", 443), 0);
  EXPECT_EQ(cache.size(), 0u);
}

TEST(SessionCache, Tls12SessionsStayForTheNextConnection) {
  SessionCache cache;
  auto s = MakeSession(TLS1_2_VERSION, 's');
  cache.Put("example.org", 443, s.get());
  EXPECT_EQ(TakeId(cache, "example.org", 443), 's');
  EXPECT_EQ(TakeId(cache, "example.org", 443), 's');
  EXPECT_EQ(cache.size(), 1u);
}

TEST(SessionCache, ServersAreKeptApartByHostAndPort) {
  SessionCache cache;
  auto a = MakeSession(TLS1_3_VERSION, 'a');
  cache.Put("example.org", 443, a.get());
  EXPECT_EQ(TakeId(cache, "example.org", 8443), 0);
  EXPECT_EQ(TakeId(cache, "example.net", 443), 0);
  EXPECT_EQ(TakeId(cache, "example.org", 443), 'a');
}

TEST(SessionCache, BoundedPerServerOldestDroppedFirst) {
  SessionCache cache(/*max_servers=*/8, /*max_per_server=*/2);
  for (unsigned char id : {'a', 'b', 'c'}) {
    auto s = MakeSession(TLS1_3_VERSION, id);
    cache.Put("h", 1, s.get());
  }
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(TakeId(cache, "h", 1), 'c');
  EXPECT_EQ(TakeId(cache, "h", 1), 'b');
  EXPECT_EQ(TakeId(cache, "h", 1), 0);
}

TEST(SessionCache, BoundedInServersLeastRecentlyUsedDroppedFirst) {
  SessionCache cache(/*max_servers=*/2, /*max_per_server=*/4);
  auto s1 = MakeSession(TLS1_2_VERSION, '1');
  auto s2 = MakeSession(TLS1_2_VERSION, '2');
  auto s3 = MakeSession(TLS1_2_VERSION, '3');
  cache.Put("one", 1, s1.get());
  cache.Put("two", 2, s2.get());
  EXPECT_EQ(TakeId(cache, "one", 1), '1');  // TLS 1.2: stays, and "one" is now the most recent.
  cache.Put("one", 1, s1.get());            // Touch "one" again.
  cache.Put("three", 3, s3.get());          // Evicts "two".
  EXPECT_EQ(TakeId(cache, "two", 2), 0);
  EXPECT_EQ(TakeId(cache, "one", 1), '1');
  EXPECT_EQ(TakeId(cache, "three", 3), '3');
}

TEST(SessionCache, ExpiredAndUnresumableSessionsAreNeverHandedOut) {
  SessionCache cache;
  auto old = MakeSession(TLS1_3_VERSION, 'o', /*age=*/301);
  cache.Put("h", 1, old.get());
  EXPECT_EQ(cache.size(), 0u);
  UniqueSession no_id(SSL_SESSION_new());
  SSL_SESSION_set_protocol_version(no_id.get(), TLS1_3_VERSION);
  cache.Put("h", 1, no_id.get());
  EXPECT_EQ(cache.size(), 0u);
  // One that expires while cached.
  auto soon = MakeSession(TLS1_2_VERSION, 's', /*age=*/0);
  cache.Put("h", 1, soon.get());
  SSL_SESSION_set_time(soon.get(), static_cast<long>(std::time(nullptr)) - 400);
  EXPECT_EQ(TakeId(cache, "h", 1), 0);
  EXPECT_EQ(cache.size(), 0u);
}

TEST(SessionCache, OnlyVerifiedSkipsSessionsFromUnverifiedHandshakes) {
  SessionCache cache;
  auto verified = MakeSession(TLS1_3_VERSION, 'v');
  auto unverified = MakeSession(TLS1_3_VERSION, 'u');
  cache.Put("h", 1, verified.get(), /*verified=*/true);
  cache.Put("h", 1, unverified.get(), /*verified=*/false);
  EXPECT_EQ(TakeId(cache, "h", 1, /*only_verified=*/true), 'v');
  EXPECT_EQ(TakeId(cache, "h", 1, /*only_verified=*/true), 0);
  EXPECT_EQ(TakeId(cache, "h", 1), 'u');
}

TEST(SessionCache, ConcurrentPutsAndTakesKeepEverySessionOnce) {
  SessionCache cache(/*max_servers=*/1024, /*max_per_server=*/1000);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 200;
  std::vector<std::thread> threads;
  std::vector<int> taken(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&cache, &taken, t] {
      for (int i = 0; i < kPerThread; ++i) {
        auto s = MakeSession(TLS1_3_VERSION, static_cast<unsigned char>(i));
        cache.Put("h", static_cast<std::uint16_t>(t % 2), s.get());
        if (UniqueSession got{cache.Take("h", static_cast<std::uint16_t>(t % 2))}) ++taken[t];
      }
    });
  }
  for (auto& thread : threads) thread.join();
  int total = 0;
  for (int n : taken) total += n;
  // Every Take found at least its own thread's Put: nothing lost, nothing twice.
  EXPECT_EQ(total, kThreads * kPerThread);
  EXPECT_EQ(cache.size(), 0u);
}

}  // namespace
}  // namespace ktls::testing
