"""Scaffolding shared by the interop scripts (echo_interop.py,
key_update_interop.py, tls12_interop.py, bad_input_interop.py): certificates
made with the openssl CLI, /proc/net/tls_stat, ports, pipes and processes
(exchange()), the server under test and its per-connection lines
(ServerProcess), and the main's skip/77 handling and "N passed, N failed"
summary.

The scripts run as `python3 tests/interop/SCRIPT.py`, so this directory is
on sys.path and they import this module by name.
"""
import collections
import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HOST = "127.0.0.1"
STEP_TIMEOUT = 20  # seconds: the limit for any one process or exchange
TLS_STAT = "/proc/net/tls_stat"

OPENSSL = ""    # the openssl command-line tool (find_openssl() sets it)

Identity = collections.namedtuple("Identity", "cert key")


# --- Certificates ------------------------------------------------------------

def find_openssl():
    """The openssl CLI in PATH ("" when there is none); run_openssl uses it."""
    global OPENSSL
    OPENSSL = shutil.which("openssl") or ""
    return OPENSSL


def openssl_version():
    return subprocess.run([OPENSSL, "version"], capture_output=True, text=True,
                          timeout=STEP_TIMEOUT).stdout.strip()


def run_openssl(*args):
    done = subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=STEP_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


P256_KEY_ARGS = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")


class PkiBase:
    """Makes CAs and leaf certificates with the openssl CLI in `directory`
    (P-256 keys by default: quick to make under UML)."""

    def __init__(self, directory):
        self.dir = directory

    def path(self, name):
        return os.path.join(self.dir, name)

    def make_ca(self, name, common_name):
        ident = Identity(self.path(name + ".pem"), self.path(name + ".key"))
        run_openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", ident.key, "-out", ident.cert, "-subj", "/CN=" + common_name, "-days", "2",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return ident

    def make_leaf(self, name, issuer, common_name, usage, *extensions, key_args=P256_KEY_ARGS):
        """A leaf certificate signed by `issuer`; key_args are openssl req's
        key options (a P-256 key unless told otherwise, e.g. ("-newkey",
        "rsa:2048"))."""
        ident = Identity(self.path(name + ".pem"), self.path(name + ".key"))
        csr = self.path(name + ".csr")
        ext = self.path(name + ".ext")
        with open(ext, "w") as f:
            f.write("\n".join(["basicConstraints=critical,CA:FALSE", "extendedKeyUsage=" + usage, *extensions]))
            f.write("\n")
        run_openssl("req", "-new", *key_args, "-nodes",
                    "-keyout", ident.key, "-out", csr, "-subj", "/CN=" + common_name)
        run_openssl("x509", "-req", "-in", csr, "-CA", issuer.cert, "-CAkey", issuer.key, "-CAcreateserial",
                    "-days", "2", "-out", ident.cert, "-extfile", ext)
        return ident


# --- Kernel counters ---------------------------------------------------------

def read_tls_stat():
    with open(TLS_STAT) as f:
        return {name: int(value) for name, value in (line.split() for line in f if line.strip())}


def ensure_tls_module():
    """Attaching the "tls" ULP once makes the kernel load the module (and
    create /proc/net/tls_stat) where it is available but not loaded yet."""
    if os.path.exists(TLS_STAT):
        return
    tcp_ulp = getattr(socket, "TCP_ULP", 31)
    with socket.create_server((HOST, 0)) as listener, \
            socket.create_connection(listener.getsockname(), timeout=5) as client:
        peer, _ = listener.accept()
        with peer:
            try:
                client.setsockopt(socket.IPPROTO_TCP, tcp_ulp, b"tls")
            except OSError:
                pass


def tls_stat_added(start_process):
    """What starting one process (start_process(): a context manager, e.g. a
    ktls-echo server and its start-up probe) adds to tls_stat, by counter."""
    before = read_tls_stat()
    with start_process():
        after = read_tls_stat()
    return {name: after[name] - before[name] for name in after if name in before}


def check_tls_stat(test, before, from_connections, num_probes, probe_cost):
    """Asserts, in unittest.TestCase `test`, what tls_stat gained since
    `before` (a read_tls_stat()), once every process of the test has exited:
    each counter in from_connections grew by that many plus num_probes times
    what one ktls-echo start-up probe adds to it (probe_cost, by counter);
    TlsDecryptError did not move; TlsCurrTxSw/TlsCurrRxSw are back."""
    after = read_tls_stat()
    delta = {name: after[name] - before.get(name, 0) for name in after}
    for name, directions in from_connections.items():
        probe = probe_cost.get(name, 0)
        expected = directions + num_probes * probe
        test.assertEqual(delta.get(name), expected,
                         f"{name} grew by {delta.get(name)}, expected {expected}: {directions} from the "
                         f"connections, {num_probes} probe(s) of {probe} each")
    test.assertEqual(delta["TlsDecryptError"], 0, "the kernel failed to decrypt a record")
    for name in ("TlsCurrTxSw", "TlsCurrRxSw"):
        test.assertEqual(after[name], before[name], f"{name}: kTLS sockets left open")


def unverified_client_context():
    """A TLS client context for servers with self-signed certificates (no
    verification) that reports a close without close_notify: a read raises
    ssl.SSLEOFError on a bare FIN instead of returning b"" as if the peer
    had sent close_notify (some Pythons, Debian's /usr/bin/python3 among
    them, turn on OP_IGNORE_UNEXPECTED_EOF by default)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    return ctx


# --- Processes ---------------------------------------------------------------

def wait_until(predicate, timeout, interval=0.01):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def is_listening(port):
    """Whether something listens on TCP `port` (read from /proc, so nothing
    connects: s_server -naccept 1 would count a test connection)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for row in f:
                    fields = row.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            pass
    return False


class Pump(threading.Thread):
    """Copies everything from a pipe into `data` until end of file."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.data = bytearray()
        self.lock = threading.Lock()

    def run(self):
        while True:
            try:
                chunk = self.pipe.read1(65536)
            except (OSError, ValueError):
                break
            if not chunk:
                break
            with self.lock:
                self.data += chunk

    def size(self):
        with self.lock:
            return len(self.data)

    def bytes(self):
        with self.lock:
            return bytes(self.data)

    def text(self):
        return self.bytes().decode(errors="replace")


def stop_process(proc, pumps=()):
    """Terminates proc (kills it if it does not go) and reaps it; then, once
    the pumps have read its output to the end, closes its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for pump in pumps:
        if pump.ident is not None:  # Started.
            pump.join(timeout=5)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass


def wait_for_exit(proc, pumps):
    """proc's exit status once it exits by itself (None: still running after
    STEP_TIMEOUT). Then the pumps have read its output to the end: a process
    that has exited can still have its last lines in the pipe, unread."""
    try:
        status = proc.wait(timeout=STEP_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None
    for pump in pumps:
        if pump.ident is not None:  # Started.
            pump.join(timeout=STEP_TIMEOUT)
    return status


class Feeder(threading.Thread):
    """Writes `data` to a pipe and leaves it open (close_pipe() closes it)."""

    def __init__(self, pipe, data):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.payload = data

    def run(self):
        try:
            self.pipe.write(self.payload)
            self.pipe.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # The peer went away; the test's checks say why.

    def close_pipe(self):
        self.join(timeout=STEP_TIMEOUT)
        try:
            self.pipe.close()
        except (BrokenPipeError, OSError):
            pass


Exchange = collections.namedtuple("Exchange", "returncode stdout stderr")


def exchange(cmd, payload, done, finish="close_stdin"):
    """Runs cmd, writes payload to its stdin and collects its stdout and
    stderr.

    Once done(stdout, stderr) is true (or its stdout hit end of file, or
    STEP_TIMEOUT passed), finishes it: "close_stdin" closes its stdin and
    waits for it to exit; "kill" kills it with SIGKILL, so its TCP connection
    ends with a FIN and no close_notify."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Pump(proc.stdout), Pump(proc.stderr)
    feeder = Feeder(proc.stdin, payload)
    try:
        for t in (out, err, feeder):
            t.start()

        def finished():
            if not out.is_alive():
                return True
            with out.lock, err.lock:
                return done(out.data, err.data)

        wait_until(finished, STEP_TIMEOUT)
        if finish == "kill":
            proc.kill()
        else:
            feeder.close_pipe()
        try:
            proc.wait(timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass  # Reported below as returncode None.
        returncode = proc.poll()
        stop_process(proc, (out, err))
        return Exchange(returncode, bytes(out.data), err.text())
    finally:
        stop_process(proc, (out, err))


def received(num_bytes):
    """An exchange() `done`: the process wrote num_bytes to its stdout."""
    return lambda out, err: len(out) >= num_bytes


def until_exit(out, err):
    """An exchange() `done` for a process that must exit by itself."""
    return False


# --- ktls-echo's output ------------------------------------------------------

class SServer:
    """`openssl s_server -quiet -naccept 1` in its default mode, which
    copies its stdin to the connection and the connection to its stdout:
    `send` is written to the client, everything the client sends lands in
    self.out. naccept=None serves one connection after another until the
    end of the `with` block (stdin stays open: at its end s_server would
    close the connection)."""

    def __init__(self, openssl, identity, *args, send=b"", naccept=1):
        self.openssl = openssl
        accept = ["-naccept", str(naccept)] if naccept is not None else []
        self.args = ["-cert", identity.cert, "-key", identity.key, *accept, "-quiet", *args]
        self.send = send
        self.proc = None

    def __enter__(self):
        # s_server -quiet does not print its port: pick a free one, and try
        # again should another process take it first.
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen([self.openssl, "s_server", "-accept", f"{HOST}:{self.port}", *self.args],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.out, self.err = Pump(self.proc.stdout), Pump(self.proc.stderr)
            self.out.start()
            self.err.start()
            if wait_until(lambda: is_listening(self.port) or self.proc.poll() is not None, STEP_TIMEOUT) \
                    and self.proc.poll() is None:
                self.feeder = Feeder(self.proc.stdin, self.send)
                self.feeder.start()
                return self
            stop_process(self.proc, (self.out, self.err))
            if "in use" not in self.err.text():
                break
        raise AssertionError(f"openssl s_server did not start: {self.err.text()}")

    def __exit__(self, *exc):
        stop_process(self.proc, (self.out, self.err))

    def wait(self):
        """Exit status once the one connection is over (None: still running).
        Its output is all in self.out and self.err by then."""
        return wait_for_exit(self.proc, (self.out, self.err))


class ServerProcess:
    """A server under test (ktls-echo, or any server that logs the same way),
    started from cmd for a `with` block. It must print "listening port=N" on
    stderr once it listens, and one "peer=HOST:PORT key=value ..." line per
    connection; its stderr is collected."""

    def __init__(self, cmd, env=None):
        self.cmd = cmd
        self.env = None if env is None else {**os.environ, **env}
        self.proc = None
        self.port = None

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=self.env)
        self.err = Pump(self.proc.stderr)
        self.err.start()
        try:
            wait_until(lambda: "listening port=" in self.err.text() or not self.err.is_alive(), STEP_TIMEOUT)
            match = re.search(r"^listening port=(\d+)$", self.err.text(), re.M)
            if not match:
                raise AssertionError(f"{os.path.basename(self.cmd[0])} did not start listening "
                                     f"({' '.join(self.cmd)}), exit status {self.proc.poll()}, "
                                     f"stderr:\n{self.err.text()}")
            self.port = int(match.group(1))
        except BaseException:
            stop_process(self.proc, (self.err,))
            raise
        return self

    def __exit__(self, *exc):
        stop_process(self.proc, (self.err,))

    def running(self):
        return self.proc.poll() is None

    def lines(self):
        """Every per-connection line so far, parsed, in the order logged."""
        return [parse_line(line) for line in raw_connection_lines(self.err.text())]

    def connection_lines(self, count):
        """The first `count` per-connection lines, parsed; waits for them."""
        wait_until(lambda: len(self.lines()) >= count, STEP_TIMEOUT)
        lines = self.lines()
        if len(lines) < count:
            raise AssertionError(f"expected {count} connection line(s) from the server, got {len(lines)}; "
                                 f"stderr:\n{self.err.text()}")
        return lines[:count]

    def line_for(self, client_port, timeout=STEP_TIMEOUT):
        """The line of the connection from client_port (the port the server
        saw: a relay's upstream port when there is a relay); waits for it."""
        peer = f"{HOST}:{client_port}"
        found = []

        def logged():
            found[:] = [line for line in self.lines() if line.get("peer") == peer]
            return bool(found)

        if not wait_until(logged, timeout):
            raise AssertionError(f"no line for peer={peer} from the server; stderr:\n{self.err.text()}")
        return found[0]


def parse_line(line):
    """ktls-echo's per-connection line as a dict of its key=value words."""
    return dict(word.partition("=")[::2] for word in line.split())


def raw_connection_lines(text):
    """ktls-echo's per-connection lines in its stderr, unparsed."""
    return [line for line in text.splitlines() if line.startswith("peer=")]


def sha(data):
    return hashlib.sha256(data).hexdigest()


# --- --privsep (serve_privsep_interop.py, proxy_privsep_interop.py) ----------

def privsep_workers(parent_pid):
    """The pids of parent_pid's children started with --privsep-worker."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == parent_pid and b"--privsep-worker" in cmdline:
            found.append(int(name))
    return sorted(found)


class Upgraded:
    """The process that took over from server (proc, err: a Pump) on
    SIGUSR2, by its log lines (ktls-serve's and ktls-proxy's alike);
    stop() stops it at the end of a test."""

    def __init__(self, server):
        self.server = server
        self.pid = None

    def wait_taken_over(self):
        match = None

        def started():
            nonlocal match
            match = re.search(r"upgrade: pid (\d+) serves now", self.server.err.text())
            return match is not None
        assert wait_until(started, STEP_TIMEOUT), "no takeover: " + self.server.err.text()
        self.pid = int(match.group(1))
        return self.pid

    def stop(self):
        """Stops the new process, even if the test failed before it took
        over (it holds the server's stdout and stderr pipes)."""
        match = re.search(r"upgrade: started \S+ as pid (\d+)", self.server.err.text())
        if self.pid is None and match:
            self.pid = int(match.group(1))
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        wait_until(lambda: not os.path.exists(f"/proc/{self.pid}") or zombie(self.pid), STEP_TIMEOUT)


def zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def gone(pid):
    """Whether pid has exited (gone, or a zombie)."""
    return not os.path.exists(f"/proc/{pid}") or zombie(pid)


def socket_holders(server_port, client_port, pids):
    """Which of pids hold the server's end of the TCP connection from
    client_port (by its socket inode in /proc/net/tcp)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):  # A kernel without IPv6.
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
                if (int(local, 16), int(remote, 16)) == (server_port, client_port):
                    inodes.add(f"socket:[{fields[9]}]")
    holders = []
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    holders.append(pid)
                    break
            except OSError:
                pass
    return holders


class PrivsepWorkers:
    """A mixin for a server class with proc and err (a Pump), run with
    --privsep --threads 2: entering waits for its two workers (and takes
    tls_stat after their start-up probes), workers() lists them."""

    def __enter__(self):
        super().__enter__()
        ready = wait_until(lambda: self.err.text().count(" as uid ") == 2 and len(self.workers()) == 2,
                           STEP_TIMEOUT)
        assert ready, "two workers: " + self.err.text()
        self.stats_before = read_tls_stat()
        return self

    def workers(self):
        return privsep_workers(self.proc.pid)


class HostileWorkers:
    """hostile_worker.c, built into directory (where the workers, as nobody,
    can load it): env() is the environment of a server whose workers hand
    back connections set to block their next holder (or, with handback
    False, as they should), none while hold() lasts, and whose first
    workers to start after stall() sleep first."""

    def __init__(self, directory):
        self.library = os.path.join(directory, "hostile_worker.so")
        stalls = os.path.join(directory, "stalls")
        os.makedirs(stalls, exist_ok=True)
        os.chmod(stalls, 0o777)  # The workers take their turns there.
        self.stall_file = os.path.join(stalls, "stall")
        self.hold_file = os.path.join(directory, "hold")
        source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostile_worker.c")
        subprocess.run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-O1", "-o", self.library, source, "-ldl"],
                       check=True)
        os.chmod(self.library, 0o755)

    def env(self, handback=True):
        # In a sanitizer build the preloaded library comes before ASan's
        # runtime, which it then must not refuse.
        asan = ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"), "verify_asan_link_order=0"]))
        return {"LD_PRELOAD": self.library, "KTLS_HOSTILE_STALL": self.stall_file, "ASAN_OPTIONS": asan,
                "KTLS_HOSTILE_HOLD": self.hold_file, "KTLS_HOSTILE_HANDBACK": "1" if handback else "0"}

    def hold(self):
        """No worker hands a connection back until release()."""
        with open(self.hold_file, "w"):
            pass

    def release(self):
        if os.path.exists(self.hold_file):
            os.remove(self.hold_file)

    def stall(self, ms, count):
        """The next count workers to start (before unstall) sleep ms first."""
        self.unstall()
        with open(self.stall_file, "w") as f:
            f.write(f"{ms} {count}\n")
        os.chmod(self.stall_file, 0o644)

    def stalled(self, count):
        """Whether count workers have begun their stall (a worker may start
        well after the process that started it serves)."""
        return all(os.path.exists(f"{self.stall_file}.{i}") for i in range(count))

    def unstall(self):
        directory = os.path.dirname(self.stall_file)
        for name in os.listdir(directory):
            os.remove(os.path.join(directory, name))


class environment:
    """Sets os.environ's values for a with block (the processes it starts
    get them), then puts back what was there."""

    def __init__(self, values):
        self.values = values

    def __enter__(self):
        self.saved = {key: os.environ.get(key) for key in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def idle_connections(port, count, get, path, rcvbuf=4096):
    """count TLS connections to port, each with a small receive buffer
    (set before connect: the window stays small) and one request answered
    (get(sock, path)), left open and unread; the caller closes them."""
    socks = []
    try:
        for _ in range(count):
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            raw.settimeout(STEP_TIMEOUT)
            raw.connect((HOST, port))
            sock = unverified_client_context().wrap_socket(raw, server_hostname="localhost")
            socks.append(sock)
            get(sock, path)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def ids(pid):
    """A process's ids from /proc: {"Uid": [real, effective, saved, fs],
    "Gid": [...], "Groups": [...]}."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                found[key] = [int(x) for x in value.split()]
    return found


class PrivsepUpgradeChecks:
    """For a test case that upgrades a server run with --privsep (a
    PrivsepWorkers whose first_workers are the old ones): what both servers'
    upgrade suites check. self.nobody: the workers' uid."""

    def assert_old_workers_gone(self, server):
        self.assertTrue(wait_until(lambda: all(gone(pid) for pid in server.first_workers), STEP_TIMEOUT),
                        server.first_workers)

    def assert_new_workers_ready(self, server, new_pid):
        # The new key holder's two workers, each past its start-up probe.
        self.assertTrue(wait_until(lambda: server.err.text().count(" as uid ") == 4 and
                                   len(privsep_workers(new_pid)) == 2, STEP_TIMEOUT), server.err.text())

    def assert_held_by_a_new_worker(self, server_port, client_port, new_pid):
        workers = privsep_workers(new_pid)
        holders = socket_holders(server_port, client_port, [new_pid, *workers])
        self.assertEqual(len(holders), 1, f"one holder among {new_pid} and its workers {workers}: {holders}")
        self.assertIn(holders[0], workers, "a new worker holds it, not the key holder")
        self.assertEqual(uids(holders[0]), [self.nobody] * 4)

    def serving_state(self, server):
        return server.workers()

    def still_serving(self, server, before):
        self.assertEqual(server.workers(), before, "the same workers")

    # How long the old workers have to hand everything back on an upgrade:
    # --drain-timeout plus --handshake-timeout, 4 s here (WorkerPool::Recall).
    RECALL_BOUND = ("--drain-timeout", "1000", "--handshake-timeout", "3000")

    def upgrade_with_a_stopped_worker(self, server, upgraded, stopped):
        """SIGSTOPs the old worker `stopped` (started with RECALL_BOUND), then
        SIGUSR2: the old key holder kills it once the recall's bound has
        passed, and exits with status 0, the other worker having handed its
        connections back. The new key holder's pid."""
        os.kill(stopped, signal.SIGSTOP)
        try:
            server.proc.send_signal(signal.SIGUSR2)
            new_pid = upgraded.wait_taken_over()
            self.assertEqual(server.proc.wait(timeout=STEP_TIMEOUT * 2), 0, server.err.text())
        finally:
            # Should the old key holder not have killed it: a stopped worker
            # holds the server's pipes (its stderr) open for good.
            if not gone(stopped):
                os.kill(stopped, signal.SIGKILL)
        self.assertRegex(server.err.text(), rf"upgrade: worker {stopped} has not handed everything back within "
                         r"4000 ms: killed; it handed back 0 connection\(s\), any it still held are lost")
        self.assert_old_workers_gone(server)
        self.assertEqual(server.err.text().count("connection(s) back for the new process"), 1, server.err.text())
        self.assert_new_workers_ready(server, new_pid)
        return new_pid


def uids(pid):
    """A process's real, effective, saved and filesystem uids."""
    return ids(pid).get("Uid", [])


def sockets_of(pid):
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def sanitized(binary):
    """Whether binary is a sanitizer build (its --privsep workers stay
    dumpable: common/privsep.h, HardenWorker)."""
    with open(binary, "rb") as f:
        return b"__asan_init" in f.read()


def can_open_as(path, uid, gid, groups=()):
    """Whether a process with these ids may open path for reading: tried in
    a child that takes them (the caller is root)."""
    child = os.fork()
    if child == 0:
        try:
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            open(path, "rb").close()
            os._exit(1)
        except PermissionError:
            os._exit(0)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 1), f"opening {path} as uid {uid}: exit {code}"
    return code == 1


# --- Main ----------------------------------------------------------------------

def fail(reason):
    """Reports a failure before any test ran; the exit status."""
    print(f"FAIL: {reason}")
    print("0 passed, 1 failed")
    return 1


def check_kernel_tls():
    """None when this kernel has kTLS (/proc/net/tls_stat, after loading the
    module if need be); otherwise reports why and returns the exit status:
    77 (skip), or 1 when KTLS_REQUIRE_KERNEL=1."""
    ensure_tls_module()
    if os.path.exists(TLS_STAT):
        return None
    reason = f"no {TLS_STAT}: this kernel has no kTLS (CONFIG_TLS off, or the tls module not loaded)"
    if os.environ.get("KTLS_REQUIRE_KERNEL") == "1":
        return fail(f"kernel required but {reason}")
    print(f"SKIP: {reason}")
    return 77


class TimedResult(unittest.TextTestResult):
    """Also records how long each test took."""

    def startTest(self, test):
        self.started = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        self.durations = getattr(self, "durations", [])
        self.durations.append((time.monotonic() - self.started, test.id().split(".", 1)[1]))


def run_tests(module, names, prefix, set_up, classes=None):
    """Calls set_up(directory) with a fresh temporary directory (named
    prefix...), then runs the tests in `module` (or only in `classes`) whose
    names contain one of `names` (all of them when there are none) and
    reports them; the exit status. A set_up that raises is a failure before
    any test ran; so is a skipped test, and names that select no test: these
    suites run where the kernel is promised, and a test that did not run
    proved nothing."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        try:
            set_up(tmp)
        except Exception as e:
            return fail(f"setting up: {e}")
        loader = unittest.TestLoader()
        loader.testNamePatterns = [f"*{name}*" for name in names] or None
        tests = (unittest.TestSuite(loader.loadTestsFromTestCase(c) for c in classes) if classes
                 else loader.loadTestsFromModule(module))
        result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=TimedResult).run(tests)
    if result.testsRun == 0:
        return fail(f"no test selected by {names}: a run that tests nothing must not pass")
    return report(result)


def echo_suite_main(module, prefix, set_up, classes=None):
    """The main of a suite that tests ktls-echo (`SCRIPT PATH/TO/ktls-echo
    [TEST_NAME_SUBSTRING...]`) against the openssl CLI and Python's ssl:
    checks the kernel, sets module.ECHO and module.OPENSSL, then
    run_tests(module, names, prefix, set_up, classes); the exit status."""
    if len(sys.argv) < 2:
        print(f"usage: {os.path.basename(module.__file__)} PATH/TO/ktls-echo [TEST_NAME_SUBSTRING...]",
              file=sys.stderr)
        return 2
    module.ECHO = os.path.abspath(sys.argv[1])
    status = check_kernel_tls()
    if status is not None:
        return status
    module.OPENSSL = find_openssl()
    if not module.OPENSSL or not os.access(module.ECHO, os.X_OK):
        return fail(f"need the openssl CLI in PATH (found: {module.OPENSSL or 'none'}) and ktls-echo at {module.ECHO}")
    print(f"kernel {os.uname().release}; {openssl_version()}; Python ssl: {ssl.OPENSSL_VERSION}", flush=True)
    return run_tests(module, sys.argv[2:], prefix, set_up, classes)


def report(result):
    """Prints the slowest tests and "N passed, N failed"; the exit status."""
    slowest = sorted(getattr(result, "durations", []), reverse=True)[:3]
    print("slowest: " + ", ".join(f"{name} {seconds:.1f}s" for seconds, name in slowest), flush=True)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses) + len(result.skipped)
    passed = result.testsRun - failed - len(result.skipped) - len(result.expectedFailures)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1
