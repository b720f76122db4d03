/* hostile_worker.c: an LD_PRELOAD library that makes a --privsep worker
 * (any process of it not running as root) behave as a compromised one
 * might, for the upgrade suites (serve_upgrade_interop.py,
 * proxy_upgrade_interop.py). Root processes (the key holders) are left
 * alone. Built by the suites with the system's C compiler.
 *
 * KTLS_HOSTILE_HANDBACK=1: every TCP socket the worker sends away
 * (SCM_RIGHTS: the connections it hands back on an upgrade) is first set
 * to block its next holder: O_NONBLOCK off, SO_LINGER for a day, the
 * smallest send buffer, filled (with application data through kTLS) as far
 * as the peer's window lets it.
 *
 * KTLS_HOSTILE_HOLD=PATH: a worker sends nothing with a descriptor (hands
 * no connection back) while PATH exists.
 *
 * KTLS_HOSTILE_STALL=PATH: PATH holds "MS COUNT": the first COUNT workers
 * that start while it exists (each takes one of PATH.0 to PATH.COUNT-1,
 * created with O_EXCL: PATH's directory must be writable by the workers)
 * sleep MS milliseconds before they run (a new worker that is slow to take
 * its first connections, or stuck). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void make_hostile(int fd) {
  int domain = 0;
  socklen_t len = sizeof(domain);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || (domain != AF_INET && domain != AF_INET6)) {
    return;
  }
  const int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  const struct linger day = {1, 24 * 60 * 60};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &day, sizeof(day));
  const int smallest = 1;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &smallest, sizeof(smallest));
  static char junk[4096];
  size_t total = 0;
  while (total < (size_t)8 << 20) {
    const ssize_t n = send(fd, junk, sizeof(junk), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n <= 0) break;
    total += (size_t)n;
  }
}

ssize_t sendmsg(int sock, const struct msghdr* msg, int flags) {
  static ssize_t (*real_sendmsg)(int, const struct msghdr*, int);
  if (real_sendmsg == NULL) real_sendmsg = (ssize_t(*)(int, const struct msghdr*, int))dlsym(RTLD_NEXT, "sendmsg");
  const char* handback = getenv("KTLS_HOSTILE_HANDBACK");
  const char* hold = getenv("KTLS_HOSTILE_HOLD");
  if (getuid() != 0) {
    for (struct cmsghdr* c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR((struct msghdr*)msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const struct timespec tick = {0, 10 * 1000 * 1000};
      while (hold != NULL && access(hold, F_OK) == 0) nanosleep(&tick, NULL);
      if (handback == NULL || strcmp(handback, "1") != 0) continue;
      for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++i) {
        int fd;
        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        make_hostile(fd);
      }
    }
  }
  return real_sendmsg(sock, msg, flags);
}

__attribute__((constructor)) static void stall(void) {
  const char* path = getenv("KTLS_HOSTILE_STALL");
  if (getuid() == 0 || path == NULL) return;
  FILE* f = fopen(path, "r");
  if (f == NULL) return;
  long ms = 0, count = 0;
  if (fscanf(f, "%ld %ld", &ms, &count) != 2) count = 0;
  fclose(f);
  long i = 0;
  for (; i < count; ++i) {
    char taken[4096];
    snprintf(taken, sizeof(taken), "%s.%ld", path, i);
    const int fd = open(taken, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) {
      close(fd);
      break;
    }
  }
  if (i == count) return;
  const struct timespec pause = {ms / 1000, (ms % 1000) * 1000000};
  nanosleep(&pause, NULL);
}
