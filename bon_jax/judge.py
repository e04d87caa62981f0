"""Grades generated functions by calling them, with verdicts a program cannot forge.

`bon_jax.sandbox` answers "how did this program end?"; under RL that is the
wrong question: a policy that optimises the reward finds that ``exit(0)``
before the tests counts as a pass. Here the verdict never depends on what the
untrusted program says about itself. Each job is split in two processes:

* the **candidate** (untrusted): ``program`` (e.g. prompt + completion) runs
  sandboxed, as in `bon_jax.sandbox` (namespaces: no network, private /tmp,
  own PID namespace; a uid of its own; CPU, memory, file, process limits). It
  only ever answers calls: it reads the arguments of one call of
  ``entry_point`` from a pipe, calls the function, and writes back the return
  value as *plain data* (None, bool, int, float, complex, str, bytes, and
  lists, tuples, dicts, sets and frozensets of them — exact types only: a
  subclass or any other object is an error, not a value).
* the **checker** (trusted, outside the candidate's reach): runs ``helpers``
  (e.g. the prompt's helper functions) and ``test`` — never the candidate's
  code — and calls ``check(candidate)`` with a stub that forwards each call to
  the candidate process and rebuilds the answer from the plain data with its
  own constructors. The job passes if and only if ``check`` returns.

The guarantee (namespaces and uid isolation): **a job passes only if every
statement of ``check`` ran, in order, in the checker, and every assertion held
on plain values that the candidate process sent as the results of exactly the
calls ``check`` made.** Nothing the program does in its own process can change
that: it cannot end the check early (exit codes, signals, ``atexit``,
threads, hooks are all in its process; the checker treats a missing answer
as a failure), cannot patch builtins, ``AssertionError``, ``check`` or the
helpers (they live in the checker), cannot reach the checker (another uid,
another PID namespace, no shared file descriptors but the two call pipes),
cannot read the test (the checker reads it only after the candidate is
forked, from a file descriptor the candidate closes first, and the zygote the
candidate is forked from never reads any job, so its memory holds neither
tests nor other samples' code), and cannot return objects that pretend to be
equal to anything (only plain data crosses the pipe). The candidate learns the
arguments of each call and nothing else of the test. Values cross exactly
(floats by their hex form, ints of any size, tuple vs list, bool vs int), so
honest code is judged as in-process: comparisons and floating-point
tolerances behave as in the reference harness.

Known limits, all failing closed (an honest program can fail, never a
dishonest one pass):

* the candidate is called in its own process, so a test that relies on the
  candidate mutating its arguments in place, on identity (``is``) between an
  argument and the result (None/True/False are fine), or on the candidate
  returning a function, generator or other non-plain object grades it as a
  failure; an exception of the candidate reaches the test as a
  `CandidateError` (a BaseException), not as its own type. HumanEval's 164
  tests do none of these (the canonical solutions pass 164/164);
* the program's stdout/stderr are discarded (as the reference harness does);
  the verdict's ``detail`` carries the traceback of what went wrong;
* the candidate may keep state between the calls of one job (as in-process),
  and sees each call's arguments, i.e. the tests' inputs;
* ``helpers`` and ``test`` are trusted (they run unsandboxed in the checker);
  answers are plain data, but a test could still do unbounded work on them
  (the wall clock ends it as a timeout).

Isolation modes (`sandbox.isolation()`): with ``"namespaces"`` every job has
its own /tmp, IPC and PID namespace, and all jobs of a zygote share one
network namespace without a usable interface, so nothing passes from one
sample to the next. With ``"uid"`` the verdict is as safe, but /tmp is shared
between jobs, so a sample could leave code for a later one. With ``"user"``
(not root) the candidate keeps the caller's uid and could reach the checker's
file descriptors through /proc: verdicts are not forgery-proof (a warning is
logged).

Speed: ``workers`` pre-started zygote interpreters (stdlib only, common
modules imported) fork one checker per job, which forks the candidate; no
interpreter start per job.

Example::

  job = judge.Job(program="def f(x):\\n  return x + 1\\n", entry_point="f",
                  test="def check(c):\\n  assert c(1) == 2\\n")
  [verdict] = judge.judge_many([job])
  assert verdict.status == "passed"
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

from absl import logging

from bon_jax import sandbox

# "passed" is the only success. "failed": an assertion of the test failed;
# "error": the program raised, returned a non-plain value or ended without
# answering; "timeout": the wall clock; "killed": a signal (a resource limit).
STATUSES = ("passed", "failed", "error", "timeout", "killed")

_MAX_MESSAGE = 16 << 20  # bytes of one call's arguments or answer
_MAX_DETAIL = 2000  # characters of a verdict's `detail`


@dataclasses.dataclass(frozen=True, kw_only=True)
class Job:
  """One program and the test of its function.

  Attributes:
    program: untrusted source defining ``entry_point`` (run sandboxed).
    entry_point: the function that ``check`` receives as ``candidate``.
    test: trusted source defining ``check(candidate)``.
    helpers: trusted source run before ``test`` in the checker (e.g. the
      prompt, whose helper functions the test may call).
    check_name: the test function's name.
  """

  program: str
  entry_point: str
  test: str
  helpers: str = ""
  check_name: str = "check"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Verdict:
  """The outcome of one job.

  Attributes:
    status: one of `STATUSES`.
    detail: why it did not pass (a traceback tail), at most 2000 characters.
    calls: calls of the candidate that were answered.
    wall_s: seconds from fork to verdict.
  """

  status: str
  detail: str
  calls: int
  wall_s: float

  @property
  def passed(self) -> bool:
    return self.status == "passed"


# The zygote: `python -I -S -B -c _ZYGOTE <socket fd> <json config>`, as the
# caller's user. Per job it receives a small header and two memfds (program,
# helpers + test) over a SOCK_SEQPACKET socket, forks the checker, waits for
# its verdict (or kills it at the deadline) and sends the verdict back. The
# zygote never reads job contents, so no fork of it carries earlier jobs' text.
_ZYGOTE = sandbox._ISOLATION_SRC + r"""
import builtins, fcntl, select, shutil, socket, struct, tempfile, time, traceback
# Warm imports for the programs (no secrets: the zygote holds no job data).
import bisect, collections, copy, fractions, functools, hashlib, heapq, itertools
import math, random, re, statistics, string, typing

zcfg = json.loads(sys.argv[2])
sock = socket.socket(fileno=int(sys.argv[1]))
MAX_MESSAGE = zcfg["max_message"]
MAX_DETAIL = zcfg["max_detail"]

def read_fd(fd):
  chunks = []
  while True:
    b = os.read(fd, 1 << 20)
    if not b:
      return b"".join(chunks)
    chunks.append(b)

def send_msg(fd, obj):
  data = json.dumps(obj).encode()
  data = struct.pack(">I", len(data)) + data
  while data:
    data = data[os.write(fd, data):]

class Timeout(Exception):
  pass

def recv_exact(fd, n, deadline):
  buf = bytearray()
  while len(buf) < n:
    if deadline is not None:
      left = deadline - time.monotonic()
      if left <= 0:
        raise Timeout()
      r, _, _ = select.select([fd], [], [], left)
      if not r:
        continue
    b = os.read(fd, min(n - len(buf), 1 << 20))
    if not b:
      raise EOFError()
    buf += b
  return bytes(buf)

def recv_msg(fd, deadline):
  (n,) = struct.unpack(">I", recv_exact(fd, 4, deadline))
  if n > MAX_MESSAGE:
    raise ValueError("message of %d bytes is over the cap" % n)
  return json.loads(recv_exact(fd, n, deadline))

# ---- plain data <-> JSON. Exact types only: no subclass, no other object.

def encode(x):
  t = type(x)
  if x is None:
    return ["n"]
  if t is bool:
    return ["b", x]
  if t is int:
    return ["i", hex(x)]  # hex: no int-to-str digit limit
  if t is float:
    return ["f", x.hex()]
  if t is complex:
    return ["c", x.real.hex(), x.imag.hex()]
  if t is str:
    return ["s", x]
  if t is bytes:
    return ["y", x.hex()]
  if t is list:
    return ["l", [encode(v) for v in x]]
  if t is tuple:
    return ["t", [encode(v) for v in x]]
  if t is dict:
    return ["d", [[encode(k), encode(v)] for k, v in x.items()]]
  if t is set:
    return ["S", [encode(v) for v in x]]
  if t is frozenset:
    return ["F", [encode(v) for v in x]]
  raise TypeError("not plain data: %s" % t.__qualname__)

_str, _list, _len, _type = str, list, len, type

def decode(m):
  # Runs on untrusted input in the checker: every shape is validated.
  if _type(m) is not _list or not m or _type(m[0]) is not _str:
    raise ValueError("malformed value")
  tag, n = m[0], _len(m)
  if tag == "n" and n == 1:
    return None
  if tag == "b" and n == 2 and _type(m[1]) is bool:
    return m[1]
  if tag == "i" and n == 2 and _type(m[1]) is _str:
    return int(m[1], 16)
  if tag == "f" and n == 2 and _type(m[1]) is _str:
    return float.fromhex(m[1])
  if tag == "c" and n == 3 and _type(m[1]) is _str and _type(m[2]) is _str:
    return complex(float.fromhex(m[1]), float.fromhex(m[2]))
  if tag == "s" and n == 2 and _type(m[1]) is _str:
    return m[1]
  if tag == "y" and n == 2 and _type(m[1]) is _str:
    return bytes.fromhex(m[1])
  if n == 2 and _type(m[1]) is _list:
    if tag == "l":
      return [decode(v) for v in m[1]]
    if tag == "t":
      return tuple(decode(v) for v in m[1])
    if tag == "S":
      return set(decode(v) for v in m[1])
    if tag == "F":
      return frozenset(decode(v) for v in m[1])
    if tag == "d":
      out = {}
      for kv in m[1]:
        if _type(kv) is not _list or _len(kv) != 2:
          raise ValueError("malformed dict item")
        out[decode(kv[0])] = decode(kv[1])
      return out
  raise ValueError("malformed value")

def tail(text):
  return text[-MAX_DETAIL:]

# ---- the candidate (untrusted after `exec`).

def candidate_main(job, req_fd, resp_fd, err_fd, workdir):
  try:
    # Only the two call pipes survive, as fds 3 and 4 (and the setup-error
    # pipe, 5, until setup is done): the memfds (the test), the zygote's
    # socket and the checker's verdict pipe are closed.
    fds = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in (req_fd, resp_fd, err_fd)]
    null = os.open("/dev/null", os.O_RDWR)
    for new, fd in zip((0, 1, 2, 3, 4, 5), [null] * 3 + fds):
      os.dup2(fd, new)
    os.closerange(6, 1 << 20)
  except BaseException as e:
    os.write(err_fd, ("%s: %s" % (type(e).__name__, e)).encode())
    os._exit(126)
  try:
    candidate_setup(job, workdir)
  except BaseException as e:
    os.write(5, ("%s: %s" % (type(e).__name__, e)).encode())
    os._exit(126)
  os.close(5)  # setup done: EOF on the checker's setup-error pipe
  candidate_run(job)

def candidate_setup(job, workdir):
  if job["namespaces"]:  # PID 1 of the new PID namespace: its own /proc
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
  for name, soft, hard in job["rlimits"]:
    resource.setrlimit(getattr(resource, name), (soft, hard))
  uid = job["uid"]
  if uid is not None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
  check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
  os.setpgid(0, 0)  # its own group: the checker kills it whole at the end
  os.chdir(workdir)
  os.environ.clear()
  os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir,
                     "TMPDIR": workdir, "LANG": "C.UTF-8"})
  sys.argv[:] = ["main.py"]
  for s in (signal.SIGTERM, signal.SIGALRM):
    signal.signal(s, signal.SIG_DFL)
  signal.alarm(0)

def candidate_run(job):
  source, entry = job["program"], job["entry_point"]
  del job
  ns = {"__name__": "__main__", "__builtins__": builtins}
  try:
    exec(compile(source, "main.py", "exec"), ns)
    fn = ns[entry]
    send_msg(4, ["ready"])
  except BaseException:
    send_msg(4, ["raise", tail(traceback.format_exc())])
    os._exit(1)
  while True:
    try:
      args, kwargs = recv_msg(3, None)
    except EOFError:
      os._exit(0)
    try:
      args, kwargs = decode(args), decode(kwargs)
      reply = ["ok", encode(fn(*args, **kwargs))]
    except BaseException:
      reply = ["raise", tail(traceback.format_exc())]
    send_msg(4, reply)

# ---- the checker (trusted; runs the test, never the program).

class CandidateError(BaseException):
  # BaseException: a test's `except Exception` cannot swallow it.
  pass

def checker_main(job, prog_fd, test_fd, verdict_fd, workdir):
  gc.disable()  # short-lived and trusted: no collections, fewer page copies
  start = time.monotonic()
  deadline = start + job["wall_s"]
  calls = 0
  pid = None
  def verdict(status, detail=""):
    if pid is not None:
      # Reaping PID 1 of the candidate's namespace waits until every process
      # in it is gone, so the next job starts clean.
      for kill in (os.killpg, os.kill):
        try:
          kill(pid, signal.SIGKILL)
        except OSError:
          pass
      try:
        os.waitpid(pid, 0)
      except ChildProcessError:
        pass
    send_msg(verdict_fd, [status, tail(detail), calls])
    os._exit(0)
  try:
    job.update(json.loads(read_fd(prog_fd)))
    os.close(prog_fd)
    if job["namespaces"]:
      # The network namespace is the zygote's (see below).
      check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
      workdir = isolate(zcfg["prefix"], job["tmp_bytes"])
    if job["uid"] is not None:
      os.chown(workdir, job["uid"], job["uid"])
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    err_r, err_w = os.pipe()
  except Exception as e:
    verdict("setup", "%s: %s" % (type(e).__name__, e))
  child = os.fork()
  if child == 0:
    try:
      candidate_main(job, req_r, resp_w, err_w, workdir)
    finally:
      os._exit(126)
  pid = child
  # Answers are bounded (MAX_MESSAGE), and so is what decoding them may take.
  resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
  os.close(req_r)
  os.close(resp_w)
  os.close(err_w)
  entry = job["entry_point"]
  del job["program"]
  # Read only now: the candidate's memory never held the test.
  test = json.loads(read_fd(test_fd))
  os.close(test_fd)

  def ended():
    # The candidate's answer pipe closed: how did it end? (If it lives on
    # without the pipe, `verdict` kills it.)
    nonlocal pid
    for _ in range(50):
      got, st = os.waitpid(pid, os.WNOHANG)
      if got:
        break
      time.sleep(0.002)
    else:
      return "error", "the program closed its answer pipe"
    pid = None
    if os.WIFSIGNALED(st):
      return "killed", "killed by signal %d" % os.WTERMSIG(st)
    return "error", "the program ended (exit status %d) before answering" % (
        os.WEXITSTATUS(st))

  def answer():
    try:
      m = recv_msg(resp_r, deadline)
    except Timeout:
      verdict("timeout", "no answer within %.1f s" % job["wall_s"])
    except EOFError:
      verdict(*ended())
    except Exception as e:
      verdict("error", "malformed answer: %s" % type(e).__name__)
    return m

  # Setup errors come on a pipe that the program never holds.
  err = read_fd(err_r)
  os.close(err_r)
  if err:
    verdict("setup", "candidate: " + err.decode(errors="replace"))
  first = answer()
  if first != ["ready"]:
    if _type(first) is _list and _len(first) == 2 and first[0] == "raise":
      verdict("error", _str(first[1]))
    verdict("error", "malformed answer")

  def candidate(*args, **kwargs):
    nonlocal calls
    try:
      send_msg(req_w, [encode(args), encode(kwargs)])
    except BrokenPipeError:
      verdict(*ended())
    m = answer()
    if _type(m) is _list and _len(m) == 2 and m[0] == "ok":
      try:
        value = decode(m[1])
      except Exception as e:
        verdict("error", "malformed answer: %s" % e)
      calls += 1
      return value
    if _type(m) is _list and _len(m) == 2 and m[0] == "raise":
      raise CandidateError(_str(m[1]))
    verdict("error", "malformed answer")

  ns = {"__name__": "__check__", "__builtins__": builtins}
  try:
    exec(compile(test["helpers"], "<helpers>", "exec"), ns)
    # As in-process: the test (HumanEval/33) may call the function by name.
    ns[entry] = candidate
    exec(compile(test["test"], "<test>", "exec"), ns)
    ns[test["check_name"]](candidate)
  except CandidateError as e:
    verdict("error", e.args[0])
  except AssertionError:
    verdict("failed", traceback.format_exc())
  except BaseException:
    verdict("error", traceback.format_exc())
  verdict("passed")

def sweep(uid):
  # Kills every process of `uid` (escapees without a PID namespace).
  for _ in range(100):
    pids = []
    for name in os.listdir("/proc"):
      if name.isdigit():
        try:
          if os.stat("/proc/" + name).st_uid == uid:
            pids.append(int(name))
        except OSError:
          pass
    if not pids:
      return
    for p in pids:
      try:
        os.kill(p, signal.SIGKILL)
      except OSError:
        pass
    time.sleep(0.005)

VERDICT = bytearray(1 << 16)

def serve_one(job, fds):
  # Never reads the memfds: only the forked checker does.
  prog_fd, test_fd = fds
  workdir = None
  if not job["namespaces"]:
    workdir = tempfile.mkdtemp(prefix="bon_judge_")
  r, w = os.pipe()
  start = time.monotonic()
  pid = os.fork()
  if pid == 0:
    try:
      signal.signal(signal.SIGCHLD, signal.SIG_DFL)
      os.close(r)
      sock.close()
      signal.alarm(int(job["wall_s"]) + 3)  # backstop: SIGALRM ends the checker
      checker_main(job, prog_fd, test_fd, w, workdir)
    finally:
      os._exit(125)
  # Checkers are reaped by the kernel (SIGCHLD ignored), so the zygote never
  # waits for a namespace's teardown; the pidfd kills the right process.
  try:
    pidfd = os.pidfd_open(pid)
  except ProcessLookupError:
    pidfd = None
  os.close(w)
  os.close(prog_fd)
  os.close(test_fd)
  deadline = start + job["wall_s"] + 1.0
  view = memoryview(VERDICT)
  n = 0
  timed_out = False
  while True:
    left = deadline - time.monotonic()
    if left <= 0:
      timed_out = True
      break
    ready, _, _ = select.select([r], [], [], left)
    if ready:
      if n == len(VERDICT):
        break
      # Into a fixed buffer that is zeroed after use: the zygote's memory,
      # which every later program inherits, keeps no verdict text.
      got = os.readv(r, [view[n:]])
      if not got:
        break
      n += got
      if n >= 4 and n - 4 >= struct.unpack(">I", view[:4])[0]:
        break  # the whole verdict: no need to wait for the checker's exit
  os.close(r)
  if pidfd is not None:
    if timed_out:
      signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    os.close(pidfd)
  if job["uid"] is not None and (timed_out or not job["namespaces"]):
    sweep(job["uid"])
  if workdir is not None:
    shutil.rmtree(workdir, ignore_errors=True)
  wall = time.monotonic() - start
  if timed_out:
    return ["timeout", "no verdict within the wall clock", 0, wall]
  if n < 4 or struct.unpack(">I", view[:4])[0] != n - 4:
    return ["error", "the checker ended without a verdict", 0, wall]
  return view[4:n], wall

if zcfg["namespaces"]:
  # One network namespace per zygote, its loopback down: no job can connect
  # anywhere, and none can leave a socket to a later one (every process of a
  # job is gone before the next starts). A new one per job costs more CPU
  # (its teardown runs in the kernel's workqueue).
  check(libc.unshare(CLONE_NEWNET), "unshare")
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
# Forks share the zygote's pages until written: keep the collector from
# writing every object header in each fork (copy-on-write faults).
import gc
gc.freeze()
while True:
  try:
    msg, fds, _, _ = socket.recv_fds(sock, 65536, 2)
  except OSError:
    break
  if not msg:
    break
  try:
    out = serve_one(json.loads(msg), fds)
  except Exception as e:
    out = ["setup", "zygote: %s: %s" % (type(e).__name__, e), 0, 0.0]
  if type(out) is tuple:  # the checker's own message, forwarded as is
    payload, wall = out
    sock.sendmsg([("%r " % wall).encode(), payload])
    VERDICT[:] = bytes(len(VERDICT))
  else:
    sock.sendall(b"0 " + json.dumps(out).encode())
"""


class _Zygote:
  """One pre-started zygote and its socket; runs one job at a time."""

  def __init__(self, uid: int | None, namespaces: bool):
    self.uid = uid
    python, prefix = sandbox._interpreter()  # pylint: disable=protected-access
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    cfg = dict(prefix=prefix, namespaces=namespaces, max_message=_MAX_MESSAGE,
               max_detail=_MAX_DETAIL)
    try:
      self.proc = subprocess.Popen(
          [python, "-I", "-S", "-B", "-c", _ZYGOTE, str(theirs.fileno()),
           json.dumps(cfg)],
          stdin=subprocess.DEVNULL,
          stdout=subprocess.DEVNULL,
          pass_fds=(theirs.fileno(),),
          start_new_session=True,
          cwd="/",
          env={},
      )
    finally:
      theirs.close()
    self.sock = ours

  def run(self, job: Job, limits: sandbox.Limits, namespaces: bool) -> list:
    max_procs = limits.max_procs
    if self.uid is None:
      max_procs += sandbox._count_tasks(os.geteuid())  # pylint: disable=protected-access
    rlimits = [
        ("RLIMIT_CORE", 0, 0),
        ("RLIMIT_CPU", limits.cpu_s, limits.cpu_s + 1),
        ("RLIMIT_AS", limits.memory_bytes, limits.memory_bytes),
        ("RLIMIT_FSIZE", limits.file_bytes, limits.file_bytes),
        ("RLIMIT_NPROC", max_procs, max_procs),
        ("RLIMIT_NOFILE", 256, 256),
    ]
    hdr = dict(wall_s=limits.wall_s, tmp_bytes=limits.tmp_bytes, uid=self.uid,
               namespaces=namespaces, rlimits=rlimits)
    prog = json.dumps(dict(program=job.program, entry_point=job.entry_point))
    test = json.dumps(dict(helpers=job.helpers, test=job.test,
                           check_name=job.check_name))
    fds = []
    try:
      for name, text in (("program", prog), ("test", test)):
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        fds.append(fd)
        data = text.encode(errors="replace")
        while data:
          data = data[os.write(fd, data):]
        os.lseek(fd, 0, os.SEEK_SET)
      socket.send_fds(self.sock, [json.dumps(hdr).encode()], fds)
    finally:
      for fd in fds:
        os.close(fd)
    self.sock.settimeout(limits.wall_s + 30.0)
    reply = self.sock.recv(1 << 20)
    if not reply:
      raise RuntimeError(f"judge zygote died (exit {self.proc.poll()})")
    wall, payload = reply.split(b" ", 1)
    out = json.loads(payload)
    if len(out) == 3:  # the checker's [status, detail, calls]
      out.append(float(wall))
    return out

  def close(self):
    self.sock.close()
    try:
      self.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()


class _Pool:
  """Zygotes kept warm across calls, each holding one sandbox uid slot."""

  def __init__(self):
    self._lock = threading.Lock()
    self._idle: queue.LifoQueue[_Zygote] = queue.LifoQueue()
    self._count = 0
    self._stack = contextlib.ExitStack()
    self._zygotes: list[_Zygote] = []

  def _start(self, replaces: _Zygote | None = None) -> _Zygote:
    mode = sandbox.isolation()
    uid = None
    if replaces is not None:
      uid = replaces.uid  # its slot, so crashes never use up the uids
      self._zygotes.remove(replaces)
    elif mode != "user":
      uid = self._stack.enter_context(sandbox._SLOTS.uid())  # pylint: disable=protected-access
    z = _Zygote(uid, mode == "namespaces")
    self._zygotes.append(z)
    return z

  @contextlib.contextmanager
  def zygote(self, limit: int):
    with self._lock:
      try:
        z = self._idle.get_nowait()
      except queue.Empty:
        z = None
      if z is None and self._count < limit:
        self._count += 1
        z = self._start()
    if z is None:
      z = self._idle.get()
    if z.proc.poll() is not None:  # died while idle (e.g. killed): replace it
      z.sock.close()
      with self._lock:
        z = self._start(replaces=z)
    broken = False
    try:
      yield z
    except BaseException:
      broken = True
      raise
    finally:
      if broken:  # a zygote in an unknown state is replaced
        z.proc.kill()
        z.proc.wait()
        z.sock.close()
        with self._lock:
          z = self._start(replaces=z)
      self._idle.put(z)

  def close(self):
    for z in self._zygotes:
      with contextlib.suppress(Exception):
        z.close()
    self._stack.close()


_POOL = _Pool()
atexit.register(_POOL.close)
_WARNED = []


def judge(job: Job, *, limits: sandbox.Limits = sandbox.Limits(),
          workers: int = 1) -> Verdict:
  """The verdict of one job (see `judge_many`)."""
  return judge_many([job], limits=limits, workers=workers)[0]


def judge_many(
    jobs: Sequence[Job],
    *,
    limits: sandbox.Limits = sandbox.Limits(),
    workers: int | None = None,
) -> list[Verdict]:
  """Judges every job, `workers` at a time (default: 2 per CPU), in order.

  `limits` apply to the candidate process (`sandbox.Limits`; ``wall_s`` is
  the whole job's wall clock, ``output_bytes`` is unused: the program's
  output is discarded, as the reference HumanEval harness does). The zygotes
  stay warm for later calls.
  """
  # Twice the CPUs: a job spends part of its time waiting on the kernel
  # (namespace set-up, pipes), so one worker per CPU leaves CPUs idle.
  workers = workers or min(2 * (os.cpu_count() or 1), 16)
  if not 1 <= workers <= sandbox._MAX_SLOTS:  # pylint: disable=protected-access
    raise ValueError(f"workers must be in [1, {sandbox._MAX_SLOTS}], got {workers}")  # pylint: disable=protected-access
  mode = sandbox.isolation()
  if mode == "uid":
    sandbox._check_interpreter_readable()  # pylint: disable=protected-access
  if mode == "user" and not _WARNED:
    _WARNED.append(True)
    logging.warning("judge: not root, so the program keeps this uid and could"
                    " reach the checker: verdicts are not forgery-proof")

  def one(job: Job) -> Verdict:
    for attempt in range(2):  # a zygote that died is replaced, the job rerun
      try:
        with _POOL.zygote(workers) as z:
          status, detail, calls, wall = z.run(job, limits, mode == "namespaces")
        break
      except (OSError, RuntimeError, ValueError) as e:
        if attempt:
          raise RuntimeError(f"judge failed: {e}") from e
        logging.warning("judge: zygote failed (%s); retrying on a new one", e)
    if status == "setup":
      raise RuntimeError(f"judge setup failed: {detail}")
    return Verdict(status=status, detail=detail, calls=calls, wall_s=wall)

  if len(jobs) == 1:
    return [one(jobs[0])]
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    return list(pool.map(one, jobs))
