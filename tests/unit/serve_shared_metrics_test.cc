// ktls-serve's counts across processes (--privsep --metrics): a region of
// shared memory seen through two mappings, as the key holder and a worker
// see it, and the key holder's sum over a worker that died and was started
// again. (That the sum follows real connections through real workers is
// tests/interop/serve_privsep_interop.py's job, in the kernels.)
#include "ktls-serve/shared_metrics.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <sstream>
#include <string>

namespace ktls::serve {
namespace {

// SampleValue: the value of the one sample line "name{labels} value", or -1.
long long SampleValue(const std::string& text, const std::string& name_and_labels) {
  std::istringstream lines(text);
  std::string line;
  long long found = -1;
  while (std::getline(lines, line)) {
    if (line.rfind(name_and_labels + " ", 0) == 0) {
      if (found != -1) return -2;  // Twice.
      found = std::stoll(line.substr(name_and_labels.size() + 1));
    }
  }
  return found;
}

constexpr const char* kKernelKernel = "ktls_connections_total{tx=\"kernel\",rx=\"kernel\"}";
constexpr const char* kOk = "ktls_requests_total{code=\"200\"}";
constexpr const char* kOpen = "ktls_open_connections";

TEST(SharedMetrics, ARegionsCountsAreSeenThroughEveryMapping) {
  std::string error;
  auto holder = MetricsRegion::Create(error);
  ASSERT_TRUE(holder) << error;
  auto worker = MetricsRegion::Map(::fcntl(holder->fd(), F_DUPFD_CLOEXEC, 0), error);
  ASSERT_TRUE(worker) << error;
  worker->metrics().Adopted();
  worker->metrics().Request(200);
  const std::string text = holder->metrics().Render(KernelTlsStats{});
  EXPECT_EQ(SampleValue(text, kOpen), 1);
  EXPECT_EQ(SampleValue(text, kOk), 1);
  holder->Reset();
  EXPECT_EQ(SampleValue(worker->metrics().Render(KernelTlsStats{}), kOk), 0);
}

TEST(SharedMetrics, ARegionCannotBeResized) {
  std::string error;
  auto holder = MetricsRegion::Create(error);
  ASSERT_TRUE(holder) << error;
  // A worker shrinking it would make the key holder's reads fault.
  EXPECT_EQ(::ftruncate(holder->fd(), 0), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::ftruncate(holder->fd(), 1 << 20), -1);
  EXPECT_EQ(errno, EPERM);
}

TEST(SharedMetrics, MapRefusesADescriptorOfAnotherSize) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  ::close(pipe_fds[1]);
  std::string error;
  EXPECT_FALSE(MetricsRegion::Map(pipe_fds[0], error));  // Map takes it, and closes it.
  EXPECT_NE(error.find("not a metrics region"), std::string::npos) << error;
}

TEST(SharedMetrics, SumKeepsADeadWorkersCountsButNotItsOpenConnections) {
  Metrics own;
  own.Handshaken(Offload::kKernel, Offload::kKernel);
  own.Handshaken(Offload::kKernel, Offload::kKernel);
  own.Closed();  // Moved to a worker.
  own.Closed();
  PrivsepMetrics sum(own);
  std::string error;
  ASSERT_TRUE(sum.Create(2, error)) << error;
  std::optional<MetricsRegion> workers[2];
  for (std::size_t slot = 0; slot < 2; ++slot) {
    const int fd = sum.WorkerStarting(slot, false);
    ASSERT_GE(fd, 0);
    workers[slot] = MetricsRegion::Map(::fcntl(fd, F_DUPFD_CLOEXEC, 0), error);
    ASSERT_TRUE(workers[slot]) << error;
    workers[slot]->metrics().Adopted();
    workers[slot]->metrics().Request(200);
    workers[slot]->metrics().Request(200);
  }
  std::string text = sum.Render(KernelTlsStats{});
  EXPECT_EQ(SampleValue(text, kKernelKernel), 2);
  EXPECT_EQ(SampleValue(text, kOpen), 2);
  EXPECT_EQ(SampleValue(text, kOk), 4);

  // Slot 0's worker died holding its connection; a new one starts there.
  const int fd = sum.WorkerStarting(0, true);
  workers[0] = MetricsRegion::Map(::fcntl(fd, F_DUPFD_CLOEXEC, 0), error);
  ASSERT_TRUE(workers[0]) << error;
  text = sum.Render(KernelTlsStats{});
  EXPECT_EQ(SampleValue(text, kKernelKernel), 2);
  EXPECT_EQ(SampleValue(text, kOpen), 1);
  EXPECT_EQ(SampleValue(text, kOk), 4) << "a dead worker's counts are kept";
  EXPECT_EQ(SampleValue(workers[0]->metrics().Render(KernelTlsStats{}), kOk), 0) << "the new worker starts at 0";
  workers[0]->metrics().Request(200);
  EXPECT_EQ(SampleValue(sum.Render(KernelTlsStats{}), kOk), 5);
  EXPECT_EQ(sum.WorkerStarting(2, false), -1) << "no such slot";
}

}  // namespace
}  // namespace ktls::serve
