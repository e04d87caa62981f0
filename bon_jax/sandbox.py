"""Runs untrusted Python programs (generated code) in a sandboxed subprocess.

Untrusted code never runs in this process: every program gets its own
interpreter (``python -I -S -B``, so only the standard library is importable),
started by a small launcher (`_LAUNCHER`) that sets up isolation, forks the
program and reports how it ended on a private status pipe.

Isolation, strongest first (`isolation()` says which one is in use):

* ``"namespaces"`` (root with CAP_SYS_ADMIN, the usual case here and in CI VMs):
  new network, mount, PID and IPC namespaces. The network namespace has only a
  loopback that is down, so no connection can be made, not even to this
  machine's 127.0.0.1. ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run/lock``
  are replaced by private size-capped tmpfs mounts (the program's working
  directory is a fresh ``/tmp/work``), so nothing it writes reaches the real
  disk and nothing it deletes is shared. The program runs as PID 1 of its own
  PID namespace with a fresh ``/proc``: when it ends, the kernel kills every
  process it left behind, and it cannot see or signal outside processes.
  It runs under an unprivileged uid unique to this run (see below), so it can
  read the system (to import the standard library) but write nothing of it.
  Interpreter directories unreadable to that uid (e.g. a pyenv under a 0700
  ``/root``) are bind-mounted back onto a tmpfs that hides the rest.
* ``"uid"`` (root, namespaces not permitted, e.g. an unprivileged container):
  the same unique uid and limits in a fresh temporary directory, the process
  group plus every process of that uid killed at the end. No network
  isolation, and world-writable directories such as /tmp stay writable.
  The interpreter must be readable by the uid (a RuntimeError says so if not).
* ``"user"`` (not root): resource limits and a fresh directory only; the
  program keeps the caller's uid, so RLIMIT_NPROC counts all of the caller's
  processes, and files, network and signals are as open as for the caller.
  A warning is logged once.

In every mode: a wall-clock limit (the whole process group is SIGKILLed at the
end), RLIMIT_CPU / _AS / _FSIZE / _NPROC / _NOFILE, no core dumps, stdin from
/dev/null, a minimal environment, and stdout/stderr read in chunks up to
``Limits.output_bytes`` each: a program printing more is killed.

Root's RLIMIT_NPROC is not enforced, hence the uid drop. Each concurrent run
gets its own uid ``_UID_BASE + 64 * pid + slot`` (no passwd entry needed), so
one run's fork bomb cannot use up another run's process budget, and "kill
every process of this uid" only ever hits that run.

Example::

  result = sandbox.run_python("print(1 + 1)")
  assert result.status == "ok" and result.stdout == "2\\n"
  results = sandbox.run_many(programs, limits=sandbox.Limits(wall_s=3.0))

An exit status is no verdict on untrusted code: a program can exit 0 before
its tests run. To grade generated functions (HumanEval) use `bon_jax.judge`,
which runs the tests in a trusted process under this isolation.

Known gap: memory is limited per process (RLIMIT_AS); a program that forks
can hold up to ``max_procs * memory_bytes`` of address space in total (plus
``tmp_bytes`` of tmpfs) until the wall-clock kill.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

from absl import logging

_KIB = 1024
_MIB = 1024 * 1024

# Uids for sandboxed programs: far above any real account's uid.
_UID_BASE = 1_000_000_000
_MAX_SLOTS = 64  # concurrent runs per process (uids per process)

STATUSES = ("ok", "error", "timeout", "killed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
  """Resource limits for one program.

  Attributes:
    wall_s: wall-clock seconds from start (interpreter start-up included)
      before the whole process tree is killed (status "timeout").
    cpu_s: CPU seconds per process (RLIMIT_CPU; SIGXCPU, then SIGKILL).
    memory_bytes: address space per process (RLIMIT_AS).
    file_bytes: largest file a process may write (RLIMIT_FSIZE).
    max_procs: processes and threads of the program's uid (RLIMIT_NPROC).
    output_bytes: stdout and stderr are each kept up to this size; more
      output kills the program (status "killed", `truncated`).
    tmp_bytes: size of the private /tmp (namespaces mode only).
  """

  wall_s: float = 5.0
  cpu_s: int = 5
  memory_bytes: int = 512 * _MIB
  file_bytes: int = 1 * _MIB
  max_procs: int = 32
  output_bytes: int = 64 * _KIB
  tmp_bytes: int = 16 * _MIB

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value <= 0:
        raise ValueError(f"Limits.{field.name} must be positive, got {value}")
    if self.memory_bytes < 64 * _MIB:
      raise ValueError(
          f"Limits.memory_bytes={self.memory_bytes} is below the 64 MiB a"
          " Python interpreter needs to start"
      )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunResult:
  """How one program ended.

  Attributes:
    status: "ok" (exit code 0), "error" (non-zero exit code), "timeout"
      (killed at `Limits.wall_s`) or "killed" (ended by a signal, e.g. the CPU
      limit, or killed for exceeding `Limits.output_bytes`).
    returncode: the exit code, -signal when killed by a signal, None when the
      sandbox killed it (timeout or output cap).
    stdout: captured standard output (UTF-8, undecodable bytes replaced).
    stderr: captured standard error.
    wall_s: wall-clock seconds of the run.
    truncated: whether output was cut at `Limits.output_bytes`.
  """

  status: str
  returncode: int | None
  stdout: str
  stderr: str
  wall_s: float
  truncated: bool = False


# Isolation helpers shared by the launcher and `bon_jax.judge`'s zygote.
_ISOLATION_SRC = r"""
import ctypes, json, os, resource, signal, sys

CLONE_NEWNS, CLONE_NEWIPC = 0x00020000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                       ctypes.c_ulong, ctypes.c_char_p]

def check(ret, what):
  if ret != 0:
    err = ctypes.get_errno()
    raise OSError(err, what + ": " + os.strerror(err))

def mount(src, dst, fstype, flags, data=None):
  enc = lambda s: None if s is None else s.encode()
  check(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)),
        "mount " + dst)

def blocked_ancestor(path):
  # The topmost directory on `path` that other users cannot traverse.
  parts = path.strip("/").split("/")
  for i in range(1, len(parts) + 1):
    d = "/" + "/".join(parts[:i])
    if not os.stat(d).st_mode & 0o001:
      return d
  return None

def isolate(prefix, tmp_bytes):
  # Only ever called right after a successful unshare(CLONE_NEWNS), and the
  # mounts below start by making every mount private: nothing here can
  # reach the real mount table.
  prefix_fd = os.open(prefix, os.O_PATH | os.O_DIRECTORY)
  blocked = blocked_ancestor(prefix)
  mount(None, "/", None, MS_REC | MS_PRIVATE)
  covered = []
  for d, size in (("/tmp", tmp_bytes), ("/var/tmp", 1 << 20),
                  ("/dev/shm", 1 << 20), ("/run/lock", 1 << 16)):
    if os.path.isdir(d) and not os.path.islink(d):
      mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV,
            "size=%d,nr_inodes=4096,mode=1777" % size)
      covered.append(d)
  under_covered = any(prefix.startswith(d + "/") for d in covered)
  if blocked is not None and not any(
      blocked.startswith(d + "/") for d in covered):
    mount("tmpfs", blocked, "tmpfs", MS_NOSUID | MS_NODEV,
          "size=65536,mode=0755")
  if blocked is not None or under_covered:
    os.makedirs(prefix, 0o755, exist_ok=True)
    mount("/proc/self/fd/%d" % prefix_fd, prefix, None, MS_BIND | MS_REC)
  os.close(prefix_fd)
  os.mkdir("/tmp/work", 0o700)
  return "/tmp/work"
"""

# The launcher runs as `python -I -S -B -c _LAUNCHER <json config>`, as the
# caller's user, single-threaded (so no preexec_fn in our threaded process).
# It reads the program from stdin, sets up isolation, forks the program and
# writes "RUN", then "EXIT <code>" or "SIGNAL <n>" (or "ERR <why>" when setup
# failed) to the status pipe, which the program never inherits: a program
# cannot fake a sandbox failure.
_LAUNCHER = _ISOLATION_SRC + r"""
cfg = json.loads(sys.argv[1])
status_fd = cfg["status_fd"]
os.set_inheritable(status_fd, False)

def report(msg):
  os.write(status_fd, (msg + "\n").encode())

# SIGTERM (from the caller), SIGALRM (a backstop wall clock) and the caller's
# death all kill the program; the launcher then reaps it, so no zombie is left
# to count against the uid's RLIMIT_NPROC.
child = None
terminated = False
def kill_child(signum, frame):
  global terminated
  terminated = True
  if child is not None:
    os.kill(child, signal.SIGKILL)
signal.signal(signal.SIGTERM, kill_child)
signal.signal(signal.SIGALRM, kill_child)
signal.alarm(cfg["alarm_s"])
check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0), "prctl")
if os.getppid() != cfg["parent"]:
  os._exit(1)

try:
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
  os.umask(0o022)
  source = sys.stdin.buffer.read()
  uid = cfg["uid"]
  if cfg["namespaces"]:
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID
                       | CLONE_NEWIPC), "unshare")
    workdir = isolate(cfg["prefix"], cfg["tmp_bytes"])
  else:
    workdir = cfg["workdir"]
  with open(os.path.join(workdir, "main.py"), "wb") as f:
    f.write(source)
  if uid is not None:
    os.chown(workdir, uid, uid)
except Exception as e:
  report("ERR %s: %s" % (type(e).__name__, e))
  os._exit(1)

if terminated:
  os._exit(1)
err_r, err_w = os.pipe()  # close-on-exec: EOF without data = exec succeeded
pid = os.fork()
if pid == 0:
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  try:
    os.close(err_r)
    if cfg["namespaces"]:  # PID 1 of the new PID namespace: its own /proc
      mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for name, soft, hard in cfg["rlimits"]:
      resource.setrlimit(getattr(resource, name), (soft, hard))
    if uid is not None:
      os.setgroups([])
      os.setgid(uid)
      os.setuid(uid)
    # Set after setuid, which clears it: dies with the launcher even if it
    # leaves the launcher's process group.
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    os.chdir(workdir)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir,
           "TMPDIR": workdir, "LANG": "C.UTF-8"}
    python = cfg["python"]
    os.execve(python, [python, "-I", "-S", "-B", "main.py"], env)
  except BaseException as e:
    os.write(err_w, ("%s: %s" % (type(e).__name__, e)).encode())
  os._exit(127)
child = pid
if terminated:  # the signal came between fork and `child = pid`
  os.kill(child, signal.SIGKILL)
os.close(err_w)
err = b""
while True:
  chunk = os.read(err_r, 4096)
  if not chunk:
    break
  err += chunk
if err:
  report("ERR program setup: " + err.decode(errors="replace"))
  os.waitpid(pid, 0)
  os._exit(1)
report("RUN")
_, st = os.waitpid(pid, 0)
if os.WIFSIGNALED(st):
  report("SIGNAL %d" % os.WTERMSIG(st))
else:
  report("EXIT %d" % os.WEXITSTATUS(st))
"""


def _interpreter() -> tuple[str, str]:
  """The real (non-venv) interpreter and its prefix; programs use only stdlib."""
  python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
  prefix = os.path.realpath(sys.base_prefix)
  if not python.startswith(prefix + os.sep):
    python = os.path.realpath(sys.executable)
  return python, prefix


class _Slots:
  """Hands out per-run uids: one per concurrent run, unique on the machine."""

  def __init__(self):
    self._cond = threading.Condition()
    self._free = list(range(_MAX_SLOTS))

  @contextlib.contextmanager
  def uid(self):
    with self._cond:
      self._cond.wait_for(lambda: self._free)
      slot = self._free.pop()
    try:
      # PIDs are unique among live processes, so concurrent evaluators (other
      # pytest workers, other jobs) never share a uid.
      yield _UID_BASE + _MAX_SLOTS * os.getpid() + slot
    finally:
      with self._cond:
        self._free.append(slot)
        self._cond.notify()


_SLOTS = _Slots()


def _launch(
    source: str,
    *,
    limits: Limits,
    namespaces: bool,
    uid: int | None,
) -> RunResult:
  """Runs `source` once through the launcher; RuntimeError on setup failure."""
  python, prefix = _interpreter()
  workdir = None
  if not namespaces:
    workdir = tempfile.mkdtemp(prefix="bon_sandbox_")
  max_procs = limits.max_procs
  if uid is None:
    # The caller's own uid: RLIMIT_NPROC counts its existing tasks too (and
    # an exec over the limit fails), so allow max_procs on top of them.
    max_procs += _count_tasks(os.geteuid())
  rlimits = [
      ("RLIMIT_CORE", 0, 0),
      ("RLIMIT_CPU", limits.cpu_s, limits.cpu_s + 1),
      ("RLIMIT_AS", limits.memory_bytes, limits.memory_bytes),
      ("RLIMIT_FSIZE", limits.file_bytes, limits.file_bytes),
      ("RLIMIT_NPROC", max_procs, max_procs),
      ("RLIMIT_NOFILE", 256, 256),
  ]
  status_r, status_w = os.pipe()
  cfg = dict(
      status_fd=status_w,
      namespaces=namespaces,
      uid=uid,
      workdir=workdir,
      prefix=prefix,
      python=python,
      rlimits=rlimits,
      tmp_bytes=limits.tmp_bytes,
      parent=os.getpid(),
      alarm_s=int(limits.wall_s) + 2,
  )
  start = time.monotonic()
  try:
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", "-c", _LAUNCHER, json.dumps(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(status_w,),
        start_new_session=True,  # own process group: killpg reaches it all
        cwd="/",
        env={},
    )
  finally:
    os.close(status_w)
  try:
    try:
      proc.stdin.write(source.encode(errors="replace"))
      proc.stdin.close()
    except BrokenPipeError:
      pass  # the launcher failed early; its status says why
    out, err, truncated, timed_out = _collect(
        proc, deadline=start + limits.wall_s, cap=limits.output_bytes
    )
  finally:
    _kill(proc, uid if not namespaces else None)
    if workdir is not None:
      shutil.rmtree(workdir, ignore_errors=True)
  wall = time.monotonic() - start
  os.set_blocking(status_r, False)
  try:
    status_text = os.read(status_r, 65536).decode(errors="replace")
  except BlockingIOError:
    status_text = ""
  finally:
    os.close(status_r)
  lines = status_text.splitlines()
  if lines and lines[0].startswith("ERR"):
    raise RuntimeError(f"sandbox setup failed: {lines[0][4:]}")
  stdout = out.decode(errors="replace")
  stderr = err.decode(errors="replace")
  if timed_out:
    return RunResult(status="timeout", returncode=None, stdout=stdout,
                     stderr=stderr, wall_s=wall, truncated=truncated)
  if truncated:
    return RunResult(status="killed", returncode=None, stdout=stdout,
                     stderr=stderr, wall_s=wall, truncated=True)
  if len(lines) < 2 or lines[0] != "RUN":
    raise RuntimeError(
        f"sandbox launcher died (exit {proc.returncode}): {stderr[-500:]!r}"
    )
  kind, value = lines[1].split()
  if kind == "SIGNAL":
    return RunResult(status="killed", returncode=-int(value), stdout=stdout,
                     stderr=stderr, wall_s=wall)
  code = int(value)
  return RunResult(status="ok" if code == 0 else "error", returncode=code,
                   stdout=stdout, stderr=stderr, wall_s=wall)


def _collect(
    proc: subprocess.Popen, *, deadline: float, cap: int
) -> tuple[bytes, bytes, bool, bool]:
  """Reads stdout/stderr until EOF, the deadline, or more than `cap` bytes.

  Returns (stdout, stderr, truncated, timed_out); each stream keeps at most
  `cap` bytes, so a program printing gigabytes costs neither memory nor disk.
  """
  out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
  bufs = {out_fd: bytearray(), err_fd: bytearray()}
  truncated = timed_out = False
  exited_at = None
  with selectors.DefaultSelector() as sel:
    for fd in bufs:
      sel.register(fd, selectors.EVENT_READ)
    while sel.get_map() and not truncated:
      now = time.monotonic()
      if now >= deadline:
        timed_out = True
        break
      if exited_at is None and _exited(proc.pid):
        exited_at = now
      if exited_at is not None and now - exited_at > 0.2:
        break  # only escaped descendants (non-namespace modes) hold the pipes
      for key, _ in sel.select(timeout=min(0.1, deadline - now)):
        chunk = os.read(key.fd, 65536)
        if not chunk:
          sel.unregister(key.fd)
          continue
        buf = bufs[key.fd]
        if len(buf) + len(chunk) > cap:
          truncated = True
        buf += chunk[: cap - len(buf)]
  out, err = bytes(bufs[out_fd]), bytes(bufs[err_fd])
  proc.stdout.close()
  proc.stderr.close()
  return out, err, truncated, timed_out


def _kill(proc: subprocess.Popen, uid: int | None) -> None:
  """Ends the launcher, its program and everything they started; reaps it.

  The launcher is asked first (SIGTERM: it kills and reaps the program, so no
  zombie outlives the run), then its process group is SIGKILLed. The group is
  signalled before the launcher is reaped, so its id cannot have been reused.
  With `uid`, every process of that uid is killed too (escapees that left the
  group; needed without a PID namespace).
  """
  if not _exited(proc.pid):
    with contextlib.suppress(ProcessLookupError):
      os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 1.0
    while not _exited(proc.pid) and time.monotonic() < deadline:
      time.sleep(0.005)
  with contextlib.suppress(ProcessLookupError, PermissionError):
    os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  if uid is None:
    return
  for _ in range(100):  # bounded by RLIMIT_NPROC; each pass kills all found
    pids = []
    for name in os.listdir("/proc"):
      if name.isdigit():
        with contextlib.suppress(OSError):
          if os.stat(f"/proc/{name}").st_uid == uid and not _zombie(name):
            pids.append(int(name))
    if not pids:
      return
    for pid in pids:
      with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.01)
  logging.warning("sandbox: processes of uid %d survived 100 kill passes", uid)


def _count_tasks(uid: int) -> int:
  """Processes and threads (what RLIMIT_NPROC counts) owned by `uid`."""
  count = 0
  for name in os.listdir("/proc"):
    if name.isdigit():
      with contextlib.suppress(OSError):
        if os.stat(f"/proc/{name}").st_uid == uid:
          count += len(os.listdir(f"/proc/{name}/task"))
  return count


def _zombie(pid: str) -> bool:
  with open(f"/proc/{pid}/stat") as f:
    return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def _exited(pid: int) -> bool:
  """Whether child `pid` has exited, without reaping it (its pid stays ours)."""
  info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
  return info is not None


@functools.cache
def isolation() -> str:
  """The isolation mode in use: "namespaces", "uid" or "user" (module doc)."""
  if os.geteuid() != 0:
    logging.warning(
        "sandbox: not running as root, so programs keep this user's uid: no"
        " process-count, file-system, network or signal isolation beyond"
        " resource limits"
    )
    return "user"
  try:
    with _SLOTS.uid() as uid:
      probe = _launch("pass", limits=Limits(), namespaces=True, uid=uid)
    if probe.status == "ok":
      return "namespaces"
    reason = f"probe {probe.status}: {probe.stderr[-300:]}"
  except RuntimeError as e:
    reason = str(e)
  logging.warning(
      "sandbox: namespaces unavailable (%s); falling back to a dropped uid"
      " without network isolation",
      reason,
  )
  return "uid"


def _check_interpreter_readable() -> None:
  """In "uid" mode the dropped uid must be able to run the interpreter."""
  _, prefix = _interpreter()
  path = "/"
  for part in prefix.strip("/").split("/"):
    path = os.path.join(path, part)
    if not os.stat(path).st_mode & stat.S_IXOTH:
      raise RuntimeError(
          f"sandbox: {path} is not readable by other users, so the sandboxed"
          f" uid cannot run the interpreter under {prefix} (and namespaces,"
          " which would work around it, are not permitted); use a Python"
          " installed outside it, e.g. /usr or /usr/local"
      )


def run_python(source: str, *, limits: Limits = Limits()) -> RunResult:
  """Runs the Python program `source` in the sandbox and returns its result.

  Example::

    r = run_python("import sys; sys.exit(3)")
    assert (r.status, r.returncode) == ("error", 3)
  """
  mode = isolation()
  if mode == "user":
    return _launch(source, limits=limits, namespaces=False, uid=None)
  if mode == "uid":
    _check_interpreter_readable()
  with _SLOTS.uid() as uid:
    return _launch(source, limits=limits, namespaces=mode == "namespaces",
                   uid=uid)


def run_many(
    sources: Sequence[str],
    *,
    limits: Limits = Limits(),
    workers: int | None = None,
) -> list[RunResult]:
  """Runs each program with `run_python`, `workers` at a time (default: CPUs).

  Returns the results in the order of `sources`.
  """
  workers = workers or os.cpu_count() or 1
  if not 1 <= workers <= _MAX_SLOTS:
    raise ValueError(f"workers must be in [1, {_MAX_SLOTS}], got {workers}")
  isolation()  # probe once, outside the threads
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    return list(pool.map(lambda s: run_python(s, limits=limits), sources))
