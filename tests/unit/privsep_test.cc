// tools/common/privsep: what a process StartSelf starts has open: stdio,
// its socket at kWorkerFd, the extra descriptor (if any) at
// kWorkerExtraFd, and nothing else. (The workers themselves, as another
// user, are the interop tests' job, in the kernels.)
#include "common/privsep.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace ktls::tools {
namespace {

// ExitStatus starts /bin/sh -c script through StartSelf and returns its exit
// status (-1 if it did not exit). A descriptor open here without
// close-on-exec must not reach it either (exit 6).
int ExitStatus(const std::string& script, int extra_fd) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) return -1;
  const int stray = ::open("/dev/null", O_RDONLY);
  const std::string stray_check = "[ -e /proc/$$/fd/" + std::to_string(stray) + " ] && exit 6; ";
  const pid_t pid = StartSelf("/bin/sh", "sh", {"-c", stray_check + script}, "sh", pair[1], nullptr, extra_fd);
  ::close(stray);
  ::close(pair[0]);
  ::close(pair[1]);
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

TEST(Privsep, StartSelfGivesTheSocketAndNothingElse) {
  EXPECT_EQ(ExitStatus("case $(readlink /proc/$$/fd/3) in socket:*) ;; *) exit 3;; esac; "
                       "[ -e /proc/$$/fd/4 ] && exit 4; exit 0",
                       -1),
            0);
}

TEST(Privsep, StartSelfGivesTheExtraDescriptorAtFour) {
  const int extra = ::open("/dev/zero", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(extra, 0);
  EXPECT_EQ(ExitStatus("case $(readlink /proc/$$/fd/3) in socket:*) ;; *) exit 3;; esac; "
                       "[ \"$(readlink /proc/$$/fd/4)\" = /dev/zero ] || exit 4; "
                       "[ -e /proc/$$/fd/5 ] && exit 5; exit 0",
                       extra),
            0);
  ::close(extra);
}

// TakeRecall reads kRecall and nothing else: a connection's first byte
// (its length's, a zero) stays for ReceiveConnection.
TEST(Privsep, TakeRecallTakesOnlyTheRecallByte) {
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  EXPECT_FALSE(TakeRecall(pair[1]));  // Nothing yet.
  const char connection_start[4] = {0, 0, 1, 0};
  ASSERT_EQ(::send(pair[0], connection_start, sizeof(connection_start), 0), 4);
  EXPECT_FALSE(TakeRecall(pair[1]));
  char got[4] = {};
  ASSERT_EQ(::recv(pair[1], got, sizeof(got), 0), 4);
  EXPECT_EQ(std::string(got, 4), std::string(connection_start, 4));
  ASSERT_EQ(::send(pair[0], &kRecall, 1, 0), 1);
  EXPECT_TRUE(TakeRecall(pair[1]));
  EXPECT_FALSE(TakeRecall(pair[1]));  // Read.
  ::close(pair[0]);
  ::close(pair[1]);
}

// HasRoom: a unit of several sends goes to a worker only when its queue
// can take all of them without waiting; one that has not read is soon
// passed over.
TEST(Privsep, HasRoomOnlyWhileTheQueueTakesAWholeUnit) {
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
  const int queue = kHandOffQueueBytes;
  ASSERT_EQ(::setsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &queue, sizeof(queue)), 0);
  EXPECT_TRUE(HasRoom(pair[0], 600, 4)) << "an empty queue";
  EXPECT_FALSE(HasRoom(pair[0], kHandOffQueueBytes, 4)) << "more than the queue ever takes whole";
  // Units of 600 bytes in 4 sends each, as long as HasRoom says so: none
  // of them waits, and the queue (unread) fills.
  std::vector<char> part(150, 'x');
  int units = 0;
  while (HasRoom(pair[0], 600, 4) && units < 1000) {
    for (int i = 0; i < 4; ++i) {
      ASSERT_EQ(::send(pair[0], part.data(), part.size(), MSG_DONTWAIT), static_cast<ssize_t>(part.size()))
          << "unit " << units << " waited";
    }
    ++units;
  }
  EXPECT_GT(units, 0);
  EXPECT_LT(units, 1000) << "an unread queue fills";
  EXPECT_FALSE(HasRoom(pair[0], 600, 4));
  // Read, it has room again.
  std::vector<char> sink(1 << 16);
  while (::recv(pair[1], sink.data(), sink.size(), MSG_DONTWAIT) > 0) {
  }
  EXPECT_TRUE(HasRoom(pair[0], 600, 4));
  ::close(pair[0]);
  ::close(pair[1]);
}

}  // namespace
}  // namespace ktls::tools
