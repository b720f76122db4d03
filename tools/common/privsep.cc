// common/privsep.cc: the worker processes of --privsep (privsep.h).
#include "common/privsep.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <thread>

#include "ktls/move.h"
#include "ktls/probe.h"

namespace ktls::tools {

struct WorkerPool::Slot {
  std::mutex mu;  // One move at a time through the socket.
  pid_t pid = -1;
  int sock = -1;
  bool started = false;  // A worker has started in this slot before.
};

bool LookUpUser(const std::string& name, PrivsepUser& user, std::string& error) {
  errno = 0;
  const passwd* pw = ::getpwnam(name.c_str());
  if (pw == nullptr) {
    error = "--user " + name + ": no such user";
    return false;
  }
  if (pw->pw_uid == 0 || pw->pw_gid == 0) {
    error = "--user " + name + ": workers must not run as root (uid or gid 0)";
    return false;
  }
  user = PrivsepUser{pw->pw_uid, pw->pw_gid, name};
  return true;
}

#if defined(__SANITIZE_ADDRESS__)
#define KTLS_TOOLS_LEAK_CHECKED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(leak_sanitizer)
#define KTLS_TOOLS_LEAK_CHECKED 1
#endif
#endif

void HardenWorker() {
#ifndef KTLS_TOOLS_LEAK_CHECKED
  ::prctl(PR_SET_DUMPABLE, 0);
#endif
}

pid_t StartSelf(const std::string& path, const char* program, std::vector<std::string> args, const char* extra,
                int child_end, const PrivsepUser* user, int child_extra_fd) {
  // Everything the child needs is made before fork: after it, only calls
  // that are safe in a child of a threaded process.
  args.insert(args.begin(), program);
  args.push_back(extra);
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const uid_t uid = user != nullptr ? user->uid : 0;
  const gid_t gid = user != nullptr ? user->gid : 0;
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  // The child: its socket at fd 3 (and the extra descriptor at 4), nothing
  // else open beyond stdio, then (for a worker) the user's identity for
  // good, then a fresh image. An extra descriptor at 3 moves out of the
  // socket's way first.
  if (child_extra_fd == kWorkerFd && (child_extra_fd = ::fcntl(child_extra_fd, F_DUPFD, kWorkerExtraFd + 1)) < 0) {
    ::_exit(126);
  }
  if (::dup2(child_end, kWorkerFd) != kWorkerFd) ::_exit(126);
  if (child_extra_fd >= 0 && ::dup2(child_extra_fd, kWorkerExtraFd) != kWorkerExtraFd) ::_exit(126);
  // dup2 onto the descriptor's own number leaves its close-on-exec set.
  if (::fcntl(kWorkerFd, F_SETFD, 0) != 0) ::_exit(126);
  if (child_extra_fd >= 0 && ::fcntl(kWorkerExtraFd, F_SETFD, 0) != 0) ::_exit(126);
  const unsigned first_closed = child_extra_fd >= 0 ? kWorkerExtraFd + 1 : kWorkerFd + 1;
  if (::syscall(SYS_close_range, first_closed, ~0U, 0) != 0) ::_exit(126);
  if (user != nullptr) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0) ::_exit(126);
    if (::setuid(0) == 0) ::_exit(126);  // Root must be gone for good.
    // Dies with the handshake process (strictly: with the thread that
    // forked it, WorkerPool's spawner, which lasts as long as the pool).
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    // A fresh mask: the spawner blocks every signal, and a mask survives
    // execv.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
  }
  ::execv(path.c_str(), argv.data());
  ::_exit(127);
}

std::string WhyNotMovable(const Connection& conn) {
  if (conn.tx() != Offload::kKernel) return "TX is in OpenSSL";
  if (conn.rx() != Offload::kKernel) {
    return std::string("RX is in OpenSSL") +
           (!CachedCapabilities().rekey ? " (this kernel keeps TLS 1.3 RX in userspace unless --rx)" : "");
  }
  return "";
}

bool SendFd(int sock, int fd, char tag) {
  iovec iov{&tag, 1};
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
  ssize_t n;
  while ((n = ::sendmsg(sock, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR) {
  }
  return n == 1;
}

int ReceiveFd(int sock, char tag) {
  char got = 0;
  iovec iov{&got, 1};
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(4 * sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  while ((n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {
  }
  std::vector<int> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); n >= 0 && c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    for (std::size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      DistrustSocket(fd);  // Before any close below, too.
      fds.push_back(fd);
    }
  }
  if (n == 1 && got == tag && fds.size() == 1 && (msg.msg_flags & MSG_CTRUNC) == 0) return fds[0];
  // The sender may have set them up again since DistrustSocket, from its
  // own copy: a plain close could wait.
  for (int fd : fds) CloseWithoutWaiting(fd);
  errno = n < 0 ? errno : EPROTO;
  return -1;
}

void DistrustSocket(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0 && (flags & O_NONBLOCK) == 0) (void)::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  const linger off{0, 0};
  (void)::setsockopt(fd, SOL_SOCKET, SO_LINGER, &off, sizeof(off));
}

bool HasRoom(int sock, std::size_t bytes, std::size_t num_messages) {
  // The kernel's cost of one buffer (struct sk_buff and its shared info,
  // the allocation rounded up), with room to spare.
  constexpr std::size_t kOverheadPerMessage = 1024;
  int sndbuf = 0;
  socklen_t len = sizeof(sndbuf);
  int unsent = 0;
  if (::getsockopt(sock, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) != 0 || sndbuf <= 0 ||
      ::ioctl(sock, SIOCOUTQ, &unsent) != 0 || unsent < 0) {
    return false;
  }
  return static_cast<std::size_t>(unsent) + 2 * bytes + num_messages * kOverheadPerMessage <
         static_cast<std::size_t>(sndbuf);
}

bool TakeRecall(int sock) { return TakeTag(sock, kRecall); }

bool TakeTag(int sock, char tag) {
  char byte = 0;
  ssize_t n;
  while ((n = ::recv(sock, &byte, 1, MSG_PEEK | MSG_DONTWAIT)) < 0 && errno == EINTR) {
  }
  if (n != 1 || byte != tag) return false;
  while ((n = ::recv(sock, &byte, 1, MSG_DONTWAIT)) < 0 && errno == EINTR) {
  }
  return n == 1;
}

WorkerPool::WorkerPool(const char* program, PrivsepUser user, std::vector<std::string> args, StartHook start_hook)
    : program_(program), user_(std::move(user)), args_(std::move(args)), start_hook_(std::move(start_hook)) {
  // Every signal blocked on the spawner: the program's own threads take
  // theirs (sigwait), and a worker sets its mask afresh (StartSelf).
  sigset_t all, before;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &before);
  spawner_ = std::thread([this] { RunSpawner(); });
  pthread_sigmask(SIG_SETMASK, &before, nullptr);
}

WorkerPool::~WorkerPool() {
  Stop(std::chrono::milliseconds(0));
  {
    std::lock_guard lock(spawn_mu_);
    spawner_ending_ = true;
  }
  spawn_cv_.notify_all();
  spawner_.join();
}

void WorkerPool::RunSpawner() {
  std::unique_lock lock(spawn_mu_);
  for (;;) {
    spawn_cv_.wait(lock, [this] { return spawner_ending_ || spawn_job_ != nullptr; });
    if (spawn_job_ == nullptr) return;  // Ending, nothing asked.
    const std::function<void()>* job = std::exchange(spawn_job_, nullptr);
    lock.unlock();
    (*job)();
    lock.lock();
    ++spawns_done_;
    spawn_cv_.notify_all();
  }
}

bool WorkerPool::Spawn(std::size_t index, std::string& error) {
  bool started = false;
  const std::function<void()> job = [&] { started = SpawnHere(index, error); };
  std::unique_lock lock(spawn_mu_);
  // One job at a time: wait for the one before to be taken.
  spawn_cv_.wait(lock, [this] { return spawn_job_ == nullptr; });
  spawn_job_ = &job;
  const std::uint64_t mine = ++spawns_asked_;
  spawn_cv_.notify_all();
  spawn_cv_.wait(lock, [this, mine] { return spawns_done_ >= mine; });
  return started;
}

bool WorkerPool::Start(std::size_t n, std::string& error) {
  for (std::size_t i = 0; i < n; ++i) {
    slots_.push_back(std::make_unique<Slot>());
    std::lock_guard lock(slots_.back()->mu);
    if (!Spawn(slots_.size() - 1, error)) return false;
  }
  return true;
}

// SpawnHere starts slot index's worker, on the spawner thread, the slot's
// lock held by the thread that asked (Spawn).
bool WorkerPool::SpawnHere(std::size_t index, std::string& error) {
  Slot& slot = *slots_[index];
  if (slot.sock >= 0) ::close(slot.sock);
  if (slot.pid > 0) {
    // The one before is gone (its socket closed, so it exited or is
    // exiting): make sure, and reap it, before the hook looks at what it
    // left (it must not count on after that).
    ::kill(slot.pid, SIGKILL);
    while (::waitpid(slot.pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  slot.sock = -1;
  slot.pid = -1;
  const int extra_fd = start_hook_ ? start_hook_(index, slot.started) : -1;
  slot.started = true;
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    error = std::string("socketpair: ") + std::strerror(errno);
    return false;
  }
  const pid_t pid = StartSelf("/proc/self/exe", program_, args_, "--privsep-worker", pair[1], &user_, extra_fd);
  if (pid < 0) {
    error = std::string("starting a worker: ") + std::strerror(errno);
    ::close(pair[0]);
    ::close(pair[1]);
    return false;
  }
  ::close(pair[1]);
  // The queue of connections handed to this worker and not yet taken is
  // bounded by this buffer (a few dozen states): enough for any burst a
  // running worker drains, small enough that a stuck one is soon passed over.
  const int queue = kHandOffQueueBytes;
  (void)::setsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &queue, sizeof(queue));
  slot.pid = pid;
  slot.sock = pair[0];
  return true;
}

Result<void> WorkerPool::Hand(Connection& conn, std::chrono::milliseconds wait_for) {
  // The worker may set the socket up to make this process's close of its
  // copy wait (having closed its own first): untrusted_receiver.
  return HandWith(
      [&conn](int sock) { return SendConnection(sock, conn, {.dont_wait = true, .untrusted_receiver = true}); },
      [&conn] { return conn.fd() >= 0; }, wait_for);
}

Result<void> WorkerPool::HandWith(const Sender& send, const std::function<bool()>& kept,
                                  std::chrono::milliseconds wait_for) {
  const auto give_up = std::chrono::steady_clock::now() + wait_for;
  for (;;) {
    std::size_t first;
    {
      std::lock_guard lock(next_mu_);
      first = next_++ % slots_.size();
    }
    // A worker that is behind (its queue to take full: stopped, or stuck)
    // is passed over for the next, never waited for while another has
    // room: this process handshakes for everyone.
    for (std::size_t k = 0; k < slots_.size(); ++k) {
      auto sent = HandTo((first + k) % slots_.size(), send, kept);
      if (sent.ok() || !kept() || sent.error().sys_errno != EAGAIN) return sent;
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(give_up - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    WaitForRoom(left);
  }
  return Error{ErrorCategory::kIo, EAGAIN,
               "every worker is behind (" + std::to_string(slots_.size()) + " queues of connections full" +
                   (wait_for.count() > 0 ? " for " + std::to_string(wait_for.count()) + " ms" : "") + ")",
               -1};
}

void WorkerPool::WaitForRoom(std::chrono::milliseconds at_most) {
  std::vector<pollfd> socks;
  for (auto& slot : slots_) {
    std::lock_guard lock(slot->mu);
    if (slot->sock >= 0) socks.push_back(pollfd{slot->sock, POLLOUT, 0});
  }
  // In slices: a socket may be replaced meanwhile (a worker started
  // again), and POLLOUT (a quarter of the queue free) may still be too
  // little for a large state, so the caller tries again, a little later.
  const int slice = static_cast<int>(std::min<long long>(at_most.count(), 50));
  int ready;
  while ((ready = ::poll(socks.data(), socks.size(), slice)) < 0 && errno == EINTR) {
  }
  if (ready > 0) std::this_thread::sleep_for(std::chrono::milliseconds(std::min<long long>(at_most.count(), 5)));
}

Result<void> WorkerPool::HandTo(std::size_t i, const Sender& send, const std::function<bool()>& kept) {
  if (recalled_) return Error{ErrorCategory::kUsage, 0, "the workers are handing over to a new process", -1};
  Slot& slot = *slots_[i];
  std::lock_guard lock(slot.mu);
  // Checked again with the slot's lock held: Recall takes each slot's
  // lock after setting it, so no connection follows kRecall on the socket
  // (the worker would not read it).
  if (recalled_) return Error{ErrorCategory::kUsage, 0, "the workers are handing over to a new process", -1};
  if (slot.sock >= 0) {
    auto sent = send(slot.sock);
    if (sent.ok() || !kept() || (sent.error().sys_errno != EPIPE && sent.error().sys_errno != ECONNRESET)) {
      return sent;
    }
  }
  // The worker is gone (its connections with it), or could not start last
  // time: a new one takes this.
  std::string error;
  if (!Spawn(i, error)) return Error{ErrorCategory::kIo, 0, "starting a worker again: " + error, -1};
  return send(slot.sock);
}

bool WorkerPool::RestartExited(std::string& error) {
  bool ok = true;
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    Slot& slot = *slots_[i];
    std::lock_guard lock(slot.mu);
    if (recalled_) return ok;  // A worker that exited after handing over stays gone.
    if (slot.pid <= 0 || ::waitpid(slot.pid, nullptr, WNOHANG) != slot.pid) continue;
    slot.pid = -1;  // Reaped.
    if (!Spawn(i, error)) ok = false;
  }
  return ok;
}

void WorkerPool::Recall(const Relay& relay, std::chrono::milliseconds timeout) {
  RecallWith([&relay](int sock) {
    // The socket's credentials are its creator's (this process), as in
    // the worker (privsep_worker receives with peer_uid 0); only this
    // process and that worker hold it.
    // A worker's socket may be set to make this process wait: distrusted.
    auto conn = ReceiveConnection(sock, {.peer_uid = ::getuid(), .untrusted_sender = true});
    if (!conn.ok() && conn.error().category == ErrorCategory::kClosed) return false;  // The worker is done.
    // Out of step, or gone: what the worker still sends fails there.
    const bool broken = !conn.ok() && (conn.error().category == ErrorCategory::kIo ||
                                       conn.error().category == ErrorCategory::kUsage);
    relay(std::move(conn));
    return !broken;
  }, timeout);
}

void WorkerPool::RecallWith(const TakeBack& take_back, std::chrono::milliseconds timeout) {
  recalled_ = true;
  struct Recalled {
    int sock;
    pid_t pid;
    std::size_t num_taken = 0;  // Units take_back took (some may have failed to import).
    bool done = false;
  };
  std::vector<Recalled> workers;
  for (auto& slot : slots_) {
    // With the slot's lock: a Hand under way finishes first, and none
    // starts after (recalled_), so kRecall follows every connection sent.
    // The pid stays this slot's worker (alive or a zombie) until Stop
    // reaps it: no worker starts again after recalled_.
    std::lock_guard lock(slot->mu);
    if (slot->sock >= 0) workers.push_back({slot->sock, slot->pid});
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::mutex mu;  // Guards each Recalled's num_taken and done, and num_done.
  std::condition_variable finished;
  std::size_t num_done = 0;
  // One thread per worker: each hands back at its own pace (a busy one
  // after its slowest response), and none waits on another's socket (nor
  // does a Hand: kRecall goes without the slot's lock, and waits, on this
  // thread only, if the worker's queue is full).
  std::vector<std::thread> threads;
  for (Recalled& worker : workers) {
    // Before kRecall: a worker that stopped reading (its queue may be
    // full) reads again.
    if (worker.pid > 0) (void)::kill(worker.pid, kRecallSignal);
    threads.emplace_back([&worker, &take_back, &mu, &finished, &num_done] {
      if (::send(worker.sock, &kRecall, 1, MSG_NOSIGNAL) == 1) {
        while (take_back(worker.sock)) {
          std::lock_guard lock(mu);
          ++worker.num_taken;
        }
      }
      // Done, gone (with its own), or out of step: what the worker still
      // sends fails there.
      ::shutdown(worker.sock, SHUT_RDWR);
      std::lock_guard lock(mu);
      worker.done = true;
      ++num_done;
      finished.notify_all();
    });
  }
  {
    std::unique_lock lock(mu);
    if (!finished.wait_until(lock, deadline, [&] { return num_done == workers.size(); })) {
      for (Recalled& worker : workers) {
        if (worker.done) continue;
        std::fprintf(stderr,
                     "%s: upgrade: worker %d has not handed everything back within %lld ms: killed; it handed back "
                     "%zu connection(s), any it still held are lost\n",
                     program_, static_cast<int>(worker.pid), static_cast<long long>(timeout.count()),
                     worker.num_taken);
        if (worker.pid > 0) (void)::kill(worker.pid, SIGKILL);
        // Wakes its thread, wherever it waits on the socket (another
        // process of the worker's user may hold the worker's end).
        ::shutdown(worker.sock, SHUT_RDWR);
      }
    }
  }
  for (auto& thread : threads) thread.join();
}

void WorkerPool::Stop(std::chrono::milliseconds timeout) {
  for (auto& slot : slots_) {
    if (slot->pid > 0) ::kill(slot->pid, SIGTERM);
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (auto& slot : slots_) {
    while (slot->pid > 0) {
      const pid_t done = ::waitpid(slot->pid, nullptr, WNOHANG);
      if (done == slot->pid || (done < 0 && errno != EINTR)) {
        slot->pid = -1;
      } else if (std::chrono::steady_clock::now() >= deadline) {
        ::kill(slot->pid, SIGKILL);
        ::waitpid(slot->pid, nullptr, 0);
        slot->pid = -1;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
    if (slot->sock >= 0) ::close(std::exchange(slot->sock, -1));
  }
}

std::vector<pid_t> WorkerPool::pids() {
  std::vector<pid_t> out;
  for (auto& slot : slots_) out.push_back(slot->pid);
  return out;
}

int StartPrivsep(const char* program, const std::string& user_name, std::vector<std::string> args,
                 std::size_t num_workers, std::optional<WorkerPool>& pool, std::string& error,
                 WorkerPool::StartHook start_hook) {
  PrivsepUser user;
  if (::geteuid() != 0) {
    error = "--privsep must start as root (to start the workers as another user)";
    return 2;
  }
  if (!LookUpUser(user_name, user, error)) return 2;
  pool.emplace(program, user, std::move(args), std::move(start_hook));
  if (!pool->Start(num_workers, error)) {
    error = "--privsep: " + error;
    return 1;
  }
  return 0;
}

}  // namespace ktls::tools
