// common/shared_metrics.h, the --privsep workers' counts in shared memory,
// with a metrics type of the test's own: a region seen through two
// mappings (as the key holder and a worker see it), sealed against
// resizing, refused at another size, and the key holder's sum over a
// worker that died and was started again. (Each program's own metrics
// through it: serve_metrics_test.cc, proxy_metrics_test.cc.)
#include "common/shared_metrics.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <optional>
#include <string>

namespace ktls::tools {
namespace {

// Counts: the smallest metrics type: one counter, one open gauge.
struct Counts {
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::int64_t> open{0};
  void Add(const Counts& from, bool with_open) noexcept {
    requests += from.requests.load();
    if (with_open) open += from.open.load();
  }
};

using Region = MetricsRegion<Counts>;

// WorkerMapping: the region as a worker maps it (its own descriptor).
std::optional<Region> WorkerMapping(int fd, std::string& error) {
  return Region::Map(::fcntl(fd, F_DUPFD_CLOEXEC, 0), error);
}

TEST(SharedMetrics, ARegionsCountsAreSeenThroughEveryMapping) {
  std::string error;
  auto holder = Region::Create("test-metrics", error);
  ASSERT_TRUE(holder) << error;
  auto worker = WorkerMapping(holder->fd(), error);
  ASSERT_TRUE(worker) << error;
  worker->metrics().requests += 3;
  worker->metrics().open += 1;
  EXPECT_EQ(holder->metrics().requests.load(), 3u);
  EXPECT_EQ(holder->metrics().open.load(), 1);
  holder->Reset();
  EXPECT_EQ(worker->metrics().requests.load(), 0u);
  EXPECT_EQ(worker->metrics().open.load(), 0);
}

TEST(SharedMetrics, ARegionIsSealedAgainstResizingAndNewSeals) {
  std::string error;
  auto holder = Region::Create("test-metrics", error);
  ASSERT_TRUE(holder) << error;
  EXPECT_EQ(::fcntl(holder->fd(), F_GET_SEALS), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  // A worker shrinking it would make the key holder's reads fault.
  EXPECT_EQ(::ftruncate(holder->fd(), 0), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::ftruncate(holder->fd(), 1 << 20), -1);
  EXPECT_EQ(errno, EPERM);
  // Nor can it seal writes away under the key holder's Reset.
  EXPECT_EQ(::fcntl(holder->fd(), F_ADD_SEALS, F_SEAL_WRITE), -1);
  EXPECT_EQ(errno, EPERM);
}

TEST(SharedMetrics, MapRefusesADescriptorOfAnotherSize) {
  std::string error;
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  ::close(pipe_fds[1]);
  EXPECT_FALSE(Region::Map(pipe_fds[0], error));  // Map takes it, and closes it.
  EXPECT_NE(error.find("not a metrics region"), std::string::npos) << error;
  EXPECT_EQ(::fcntl(pipe_fds[0], F_GETFD), -1) << "not closed";

  // Another program's (or version's) region: a memfd of another size.
  struct Other {
    std::atomic<std::uint64_t> counts[3];
  };
  auto other = MetricsRegion<Other>::Create("test-other", error);
  ASSERT_TRUE(other) << error;
  error.clear();
  EXPECT_FALSE(WorkerMapping(other->fd(), error));
  EXPECT_NE(error.find("is not a metrics region of " + std::to_string(sizeof(Counts)) + " bytes"),
            std::string::npos) << error;
}

TEST(SharedMetrics, SumKeepsADeadWorkersCountsButNotItsOpenConnections) {
  Counts own;
  own.requests = 1;
  own.open = 1;
  PrivsepMetrics<Counts> sum(own, "test-metrics");
  std::string error;
  ASSERT_TRUE(sum.Create(2, error)) << error;
  std::optional<Region> workers[2];
  for (std::size_t slot = 0; slot < 2; ++slot) {
    workers[slot] = WorkerMapping(sum.WorkerStarting(slot, false), error);
    ASSERT_TRUE(workers[slot]) << error;
    workers[slot]->metrics().requests += 10;
    workers[slot]->metrics().open += 2;
  }
  const auto total = [&sum](std::uint64_t& requests, std::int64_t& open) {
    Counts counts;
    sum.Sum(counts);
    requests = counts.requests.load();
    open = counts.open.load();
  };
  std::uint64_t requests = 0;
  std::int64_t open = 0;
  total(requests, open);
  EXPECT_EQ(requests, 21u);
  EXPECT_EQ(open, 5);

  // Slot 0's worker died holding its two connections; a new one starts
  // there, on the same region, zeroed.
  workers[0] = WorkerMapping(sum.WorkerStarting(0, true), error);
  ASSERT_TRUE(workers[0]) << error;
  EXPECT_EQ(workers[0]->metrics().requests.load(), 0u) << "the new worker starts at 0";
  total(requests, open);
  EXPECT_EQ(requests, 21u) << "a dead worker's counts are kept";
  EXPECT_EQ(open, 3) << "its connections died with it";
  workers[0]->metrics().requests += 1;
  workers[0]->metrics().open += 1;
  total(requests, open);
  EXPECT_EQ(requests, 22u);
  EXPECT_EQ(open, 4);
  // A second death of the same slot: both dead workers' counts kept.
  workers[0] = WorkerMapping(sum.WorkerStarting(0, true), error);
  ASSERT_TRUE(workers[0]) << error;
  total(requests, open);
  EXPECT_EQ(requests, 22u);
  EXPECT_EQ(open, 3);
  EXPECT_EQ(sum.WorkerStarting(2, false), -1) << "no such slot";
}

}  // namespace
}  // namespace ktls::tools
