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

}  // namespace
}  // namespace ktls::tools
