// common/privsep.h: --privsep for the servers (ktls-serve, ktls-proxy): a
// handshake process that holds the key and worker processes that serve,
// each connection moved from the one to the others with its descriptor
// (ktls/move.h).
//
// Each worker is a fresh image of this program (fork, then execv of
// /proc/self/exe), started as the unprivileged user, with nothing open but
// stdin, stdout, stderr and its end of an AF_UNIX socket (fd 3): it never
// held the key, the listening socket or anyone else's connection, even in
// memory. A program may give each worker one descriptor more, at
// kWorkerExtraFd (the servers: their --metrics counters in shared memory,
// shared_metrics.h).
#ifndef KTLS_TOOLS_COMMON_PRIVSEP_H_
#define KTLS_TOOLS_COMMON_PRIVSEP_H_

#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "ktls/connection.h"
#include "ktls/result.h"

namespace ktls::tools {

// kWorkerFd: where a worker finds its socket to the handshake process.
inline constexpr int kWorkerFd = 3;
// kWorkerExtraFd: where a worker finds the descriptor WorkerPool's
// StartHook gave it, if any.
inline constexpr int kWorkerExtraFd = 4;

// kHandOffQueueBytes: the send buffer (SO_SNDBUF, which Linux doubles) of
// the handshake process's socket to each worker, which bounds the
// connections queued for a worker that does not take them.
inline constexpr int kHandOffQueueBytes = 16 * 1024;
// kTakeOverRoomWait: how long a key holder that takes over on an upgrade
// waits for room in its workers' queues for a connection from the
// previous process (WorkerPool::Hand's wait_for), which hands over in a
// burst, maybe before the new workers read anything. A caller that waited
// this long in vain waits no more until a connection goes again: a stuck
// pool costs the hand-over this once, not once per connection.
inline constexpr std::chrono::milliseconds kTakeOverRoomWait{5000};

// PrivsepUser: the account workers run as. LookUpUser refuses root.
struct PrivsepUser {
  uid_t uid = 0;
  gid_t gid = 0;
  std::string name;
};
bool LookUpUser(const std::string& name, PrivsepUser& user, std::string& error);

// HardenWorker: a worker's first step. No core dumps and no ptrace by
// other processes of the same user (the worker holds its connections'
// traffic secrets): PR_SET_DUMPABLE 0, which execv had set back to 1.
// Sanitizer builds keep it dumpable: LeakSanitizer stops the world with
// ptrace, which a non-dumpable process refuses.
void HardenWorker();

// WhyNotMovable: why conn cannot move to another process (a direction in
// OpenSSL: Export needs both in the kernel), or "" when it can.
std::string WhyNotMovable(const Connection& conn);

// SendFd sends one descriptor (SCM_RIGHTS) with one byte, tag; ReceiveFd
// receives it, checking the tag (-1 on any failure, errno set; anything
// but exactly one descriptor is closed and refused). The listening socket
// goes this way to the process that takes over on SIGUSR2.
// ReceiveFd, like ReceiveConnection with untrusted_sender, makes every
// descriptor it receives non-blocking with SO_LINGER off (DistrustSocket)
// before anything else: a worker may send one set to block this process;
// and one it refuses it closes with ktls::CloseWithoutWaiting, as the
// sender may set it up again from its own copy. The one it returns is the
// caller's to close the same way (the sender still may).
bool SendFd(int sock, int fd, char tag);
int ReceiveFd(int sock, char tag);
// DistrustSocket: fd, which another process had, made non-blocking with
// SO_LINGER off, so that nothing this process writes to it or closes on it
// waits on what that process set (a key holder's rule for every socket a
// worker handed back, directly or through the previous key holder). Both
// are shared with that process's copy, which can set them again: close
// such a socket with ktls::CloseWithoutWaiting.
void DistrustSocket(int fd);

// kRecall: the byte the handshake process writes to a worker's socket when
// it upgrades (WorkerPool::Recall): hand every connection back. Never the
// first byte of a connection (SendConnection starts with a 4-byte
// big-endian length of at most kMaxConnectionStateBytes, 1 MiB: a zero).
inline constexpr char kRecall = 'U';
// kRecallSignal: sent to each worker just before kRecall, for a worker
// that stopped reading its socket (ktls-proxy at --max-connections, with
// connections queued ahead of kRecall): from then on it reads its socket
// whatever it holds, until kRecall. SIGURG: ignored by default, so a
// worker that has not set itself up for it yet, or does not need it
// (ktls-serve's read their sockets always), is not killed by it.
inline constexpr int kRecallSignal = SIGURG;
// TakeRecall (a worker, its socket readable): whether what comes next is
// kRecall rather than a connection; if so, it is read.
bool TakeRecall(int sock);
// TakeTag: whether the next byte on sock, readable now, is tag; if so, it
// is read.
bool TakeTag(int sock, char tag);

// HasRoom: whether sock, an AF_UNIX stream socket, takes num_messages
// sends of bytes in all without waiting: its queue of bytes the other end
// has not read (SIOCOUTQ, the kernel's overhead per buffer included) has
// room for them twice over, and for that overhead on each. A unit of
// several sends goes whole or not at all only so (ktls::SendConnection's
// dont_wait does this for one connection). False if it cannot be told.
bool HasRoom(int sock, std::size_t bytes, std::size_t num_messages);

// StartSelf starts path (this program's binary on disk) as program (its
// argv[0]) with args and extra appended, as a child whose fd kWorkerFd is
// child_end and that has nothing else open beyond stdio (and child_extra_fd
// at kWorkerExtraFd, unless it is -1). With user, as that user for good (a
// --privsep worker). Returns the pid, or -1 (errno set).
pid_t StartSelf(const std::string& path, const char* program, std::vector<std::string> args, const char* extra,
                int child_end, const PrivsepUser* user, int child_extra_fd = -1);

// WorkerPool: the handshake process's side.
class WorkerPool {
 public:
  // StartHook: called before each worker of slot (0 to n - 1) starts, the
  // first (restart false) and each one after a worker died (restart true;
  // the dead one has been reaped: nothing of it runs any more). Returns a
  // descriptor the worker gets at kWorkerExtraFd, or -1; the pool does not
  // take it. Called with the slot's lock held, on the pool's spawner
  // thread (below).
  using StartHook = std::function<int(std::size_t slot, bool restart)>;

  // program: the workers' argv[0] ("ktls-serve"); args: this program's
  // arguments (without argv[0]); a worker gets them with --privsep-worker
  // added. Every worker is forked on one thread the pool starts here, with
  // every signal blocked, and joins when it goes away: a worker's
  // PR_SET_PDEATHSIG fires when the thread that forked it ends, not the
  // process, so no worker may come from a thread that ends sooner (a
  // worker started again from ktls-proxy's hand-over thread would be sent
  // SIGTERM when the hand-over is done).
  WorkerPool(const char* program, PrivsepUser user, std::vector<std::string> args, StartHook start_hook = {});
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Start starts n workers.
  bool Start(std::size_t n, std::string& error);
  // Hand moves conn to the next worker (round robin), never waiting: a
  // worker that is behind (kHandOffQueueBytes of connections it has not
  // taken yet) is passed over for the next. A worker that is gone is started
  // again, once, and the move retried. On failure the error says why (kIo,
  // EAGAIN: every worker is behind), and conn is still this process's if
  // nothing was sent (after Recall: always, a kUsage error).
  // wait_for: when every worker is behind, how long to wait for room
  // (poll: POLLOUT on their sockets) and try again, before that EAGAIN.
  // 0, for a fresh connection: not at all; kTakeOverRoomWait for one from
  // the previous process on an upgrade, which come in a burst.
  Result<void> Hand(Connection& conn, std::chrono::milliseconds wait_for = {});
  // HandWith: Hand for something other than one connection (ktls-proxy:
  // a relaying connection with its backend, moved on an upgrade). send
  // sends it over a worker's socket, never waiting for the start of it;
  // kept says, after a failure, whether it is still this process's
  // (nothing of it was sent): then the next worker is tried, as Hand does.
  using Sender = std::function<Result<void>(int sock)>;
  Result<void> HandWith(const Sender& send, const std::function<bool()>& kept,
                        std::chrono::milliseconds wait_for = {});
  // RestartExited starts again every worker that has exited (reaping it),
  // without waiting for a connection to find it gone. False (and error)
  // if one could not start: the next connection for its slot tries again.
  // After Recall: none.
  bool RestartExited(std::string& error);
  // Relay: what Recall does with each connection a worker hands back (or
  // with the error receiving one, to log). Called on one thread per worker.
  using Relay = std::function<void(Result<Connection>)>;
  // TakeBack: what RecallWith does with a worker's socket, once per
  // thing handed back: receives one whole unit from sock and relays it.
  // False when that worker is done (end of stream) or its stream is out
  // of step or broken: then nothing more is read from it.
  using TakeBack = std::function<bool(int sock)>;
  // Recall (an upgrade): sends kRecallSignal and kRecall to every worker,
  // which hands each of its connections back over its socket (idle ones
  // at once, busy ones once quiet, within its --drain-timeout) and exits.
  // Gives each to relay, until every worker has closed its socket: done,
  // or dead (a worker that dies loses its own connections, no others).
  // timeout bounds it all, from the first kRecall: a worker that has not
  // closed its socket by then (stopped, stuck, or hostile: any process of
  // its user may stop it) is killed (SIGKILL), what it still held is lost,
  // and the log says so with what it had handed back. A worker whose
  // stream is out of step ends only its own part. From the first kRecall
  // on, Hand refuses and no worker starts again. Blocks until then: call
  // it on a thread of its own.
  void Recall(const Relay& relay, std::chrono::milliseconds timeout);
  // RecallWith: Recall, each unit handed back received by take_back
  // (which must not block on anything but sock for long: only sock is
  // shut at the timeout).
  void RecallWith(const TakeBack& take_back, std::chrono::milliseconds timeout);
  bool recalled() const { return recalled_; }
  // Stop asks every worker to drain (SIGTERM) and waits up to timeout, then
  // kills what is left.
  void Stop(std::chrono::milliseconds timeout);
  std::vector<pid_t> pids();

 private:
  struct Slot;
  // Spawn starts slot index's worker on the spawner thread, waiting for it
  // (the caller holds the slot's lock); SpawnHere is what that thread does.
  bool Spawn(std::size_t index, std::string& error);
  bool SpawnHere(std::size_t index, std::string& error);
  void RunSpawner();
  Result<void> HandTo(std::size_t index, const Sender& send, const std::function<bool()>& kept);
  // WaitForRoom: until a worker's socket says it has room (POLLOUT), at
  // most `at_most`.
  void WaitForRoom(std::chrono::milliseconds at_most);

  const char* program_;
  PrivsepUser user_;
  std::vector<std::string> args_;
  StartHook start_hook_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::mutex next_mu_;
  std::size_t next_ = 0;
  std::atomic<bool> recalled_ = false;  // Set by Recall before its first kRecall.
  // The spawner thread's work: one Spawn at a time (spawn_job_), the n-th
  // asked done once spawns_done_ reaches n.
  std::mutex spawn_mu_;
  std::condition_variable spawn_cv_;
  const std::function<void()>* spawn_job_ = nullptr;
  std::uint64_t spawns_asked_ = 0, spawns_done_ = 0;
  bool spawner_ending_ = false;
  std::thread spawner_;
};

// StartPrivsep: the handshake process's first step, as root and before
// it reads the key: checks that it runs as root and that user_name is not
// root, then starts num_workers workers as that user (program, args: see
// WorkerPool). 0, or the exit code (2: a usage error) with `error`.
int StartPrivsep(const char* program, const std::string& user_name, std::vector<std::string> args,
                 std::size_t num_workers, std::optional<WorkerPool>& pool, std::string& error,
                 WorkerPool::StartHook start_hook = {});

}  // namespace ktls::tools

#endif  // KTLS_TOOLS_COMMON_PRIVSEP_H_
