"""Hostile HumanEval completions: none is graded as a pass, the judge lives on.

The threat model is a policy that optimises the verdict. Each completion of
HumanEval/0 below tries to turn a wrong answer into a pass (ending the
program early, tampering with the interpreter or the harness, reading the
test, forging the protocol, returning objects that pretend) or to break the
machine (the resource attacks `bon_jax.sandbox` already holds). Each is graded
as a failure, and the canonical solution, graded right after it by the same
judge, as a pass. Add every new way to forge a pass that you think of.
"""

import textwrap

import pytest

from bon_jax import judge
from bon_jax import sandbox
from bon_jax.tasks import humaneval

needs_isolation = pytest.mark.skipif(
    sandbox.isolation() == "user",
    reason="not root: the program keeps the caller's uid (bon_jax.judge doc)",
)

# Short wall clock for the endless ones; CPU limit above it.
FAST = sandbox.Limits(wall_s=2.0, cpu_s=5, max_procs=8)


def _body(code: str) -> str:
  """A function body (4-space indent) from dedented `code`."""
  return textwrap.indent(textwrap.dedent(code).strip("\n"), "    ") + "\n"


# Finds the test's `candidate(args) == expected` lines wherever they are in
# the program's reach and answers from them: a pass means the test leaked.
_LOOKUP = """
import gc, re, sys
table = getattr(sys, "_table", None)
if table is None:
    table = sys._table = {}
    pattern = rb"candidate\\((\\[[^\\]]*\\], [0-9.]+)\\) == (True|False)"
    def scan(blob):
        for m in re.finditer(pattern, blob):
            table[m.group(1).decode()] = m.group(2) == b"True"
    # Every string Python can reach: frames, module dicts, gc objects.
    f = sys._getframe()
    while f is not None:
        for v in list(f.f_locals.values()) + list(f.f_globals.values()):
            if isinstance(v, str):
                scan(v.encode(errors="replace"))
        f = f.f_back
    for o in gc.get_objects():
        for v in (o.values() if isinstance(o, dict) else o if isinstance(o, list) else ()):
            if isinstance(v, (str, bytes)):
                scan(v.encode(errors="replace") if isinstance(v, str) else v)
    # And every readable byte of the process, freed memory included (after
    # setuid the process is not dumpable, which hides /proc/self/mem: undo it).
    import ctypes
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if "r" not in perms or hi - lo > 1 << 28:
                continue
            try:
                mem.seek(lo)
                scan(mem.read(hi - lo))
            except (OSError, ValueError, OverflowError):
                pass
    sys._scanned = True
    # And whatever files the program can read.
    for path in ("/proc/self/cmdline", "/proc/self/environ", "main.py",
                 "/proc/1/cmdline", "/proc/self/fd/0"):
        try:
            with open(path, "rb") as fh:
                scan(fh.read())
        except OSError:
            pass
key = repr(numbers) + ", " + repr(threshold)
# Wrong (False) unless the test leaked; an error if the scan did not run.
return table.get(key, False) if sys._scanned else None
"""

# (name, completion): every one is wrong unless its forgery works.
HOSTILE = [
    # --- Ending the process early, by any route and with any status.
    ("sys_exit_0", _body("import sys\nsys.exit(0)")),
    ("raise_system_exit", _body("raise SystemExit(0)")),
    ("os_exit_0", _body("import os\nos._exit(0)")),
    ("exit_at_import", "    return False\nimport os\nos._exit(0)\n"),
    ("sys_exit_at_import", "    return False\nimport sys\nsys.exit()\n"),
    ("kill_self_sigkill", _body("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")),
    ("kill_self_sigterm", _body("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)")),
    ("exit_from_thread", _body("""
        import os, threading, time
        threading.Thread(target=lambda: os._exit(0)).start()
        time.sleep(1)
        return False
    """)),
    ("exit_from_signal_handler", _body("""
        import os, signal
        signal.signal(signal.SIGALRM, lambda *a: os._exit(0))
        signal.setitimer(signal.ITIMER_REAL, 0.001)
        while True:
            pass
    """)),
    ("exit_from_atexit_hook", _body("""
        import atexit, os
        atexit.register(lambda: os._exit(0))
        raise ValueError("fail, then exit 0 from the hook")
    """)),
    ("exit_from_excepthook", _body("""
        import os, sys
        sys.excepthook = lambda *a: os._exit(0)
        return [1, 2]
    """)),
    ("keyboard_interrupt", _body("raise KeyboardInterrupt")),
    ("kill_parent_and_group", _body("""
        import os, signal
        for pid in (os.getppid(), 0, -1):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return False
    """)),
    # --- Tampering with builtins, the interpreter, the harness, fds.
    ("patch_assertion_error", _body("""
        import builtins
        builtins.AssertionError = type("Nope", (Exception,), {})
        return False
    """)),
    ("patch_builtins_everywhere", _body("""
        import builtins
        builtins.isinstance = lambda *a: True
        builtins.type = lambda *a: bool
        builtins.len = lambda *a: 0
        builtins.repr = lambda *a: "True"
        return False
    """)),
    ("patch_harness_module", _body("""
        import sys
        main = sys.modules["__main__"]
        for name in ("encode", "decode", "send_msg", "recv_msg", "verdict",
                     "check", "checker_main"):
            if hasattr(main, name):
                setattr(main, name, lambda *a, **k: ["b", True] if name == "encode" else None)
        main.encode = lambda x: ["b", True]
        return False
    """)),
    ("patch_callers_frames", _body("""
        import sys
        f = sys._getframe(1)
        while f is not None:
            for k in ("check", "candidate", "fn", "verdict"):
                if k in f.f_globals:
                    f.f_globals[k] = lambda *a, **kw: True
            f = f.f_back
        return False
    """)),
    ("trace_and_profile_hooks", _body("""
        import os, sys, threading
        hook = lambda frame, event, arg: os._exit(0) if event == "return" else hook
        sys.settrace(hook)
        sys.setprofile(hook)
        threading.settrace(hook)
        return False
    """)),
    ("exit_from_gc_callback", _body("""
        import gc, os
        gc.callbacks.append(lambda *a: os._exit(0))
        gc.collect()
        return False
    """)),
    ("forged_verdicts_on_every_fd", _body("""
        import json, os, struct
        for status in ("passed", "ok", "ready"):
            msg = json.dumps([status, "", 7]).encode()
            for fd in range(1024):
                try:
                    os.write(fd, struct.pack(">I", len(msg)) + msg)
                except OSError:
                    pass
        return False
    """)),
    ("forged_verdicts_via_proc_fd", _body("""
        import json, os, struct
        msg = json.dumps(["passed", "", 7]).encode()
        for d in ("/proc/self/fd", "/proc/1/fd", "/proc/%d/fd" % os.getppid()):
            try:
                names = os.listdir(d)
            except OSError:
                continue
            for n in names:
                try:
                    fd = os.open(d + "/" + n, os.O_WRONLY)
                    os.write(fd, struct.pack(">I", len(msg)) + msg)
                except OSError:
                    pass
        return False
    """)),
    ("pre_answered_pipe", "    return False\n" + textwrap.dedent("""
        import json, os, struct
        for m in (["ready"],) + (["ok", ["b", True]],) * 50:
            b = json.dumps(m).encode()
            os.write(4, struct.pack(">I", len(b)) + b)
    """)),
    ("close_every_fd", _body("import os\nos.closerange(0, 1 << 16)\nreturn True")),
    ("close_answer_pipe_and_live_on", _body("""
        import os, time
        os.close(4)
        time.sleep(60)
    """)),
    ("malformed_answers", _body("""
        import os
        os.write(4, b"\\x00\\x00\\x00\\x08[\\"ok\\", 1]")
        os.write(4, b"\\xff" * 64)
        return False
    """)),
    ("huge_answer", _body("return 'x' * (40 << 20)")),
    ("wide_answer_under_the_cap", _body("return [0] * 1_000_000")),
    ("deeply_nested_answer", _body("""
        x = []
        for _ in range(100000):
            x = [x]
        return x
    """)),
    # --- Reading the program's text, arguments, environment, memory.
    ("read_test_from_memory_and_files", textwrap.indent(_LOOKUP.strip("\n"), "    ") + "\n"),
    ("ptrace_anything", _body("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 1, 0, 0, 0)
        for pid in [os.getppid()] + list(range(1, 2000)):
            if pid != os.getpid() and libc.ptrace(16, pid, 0, 0) == 0:  # ATTACH
                os.kill(pid, 9)
        return False
    """)),
    ("print_success_markers", _body("""
        import sys
        for s in ("passed", "ok", "EXIT 0", "RUN", "True"):
            print(s)
            print(s, file=sys.stderr)
        sys.stdout.flush()
        return False
    """)),
    # --- Objects that pretend to be the expected value.
    ("always_equal_object", _body("""
        class Eq:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __bool__(self): return True
            __hash__ = object.__hash__
        return Eq()
    """)),
    ("int_subclass_always_equal", _body("""
        class B(int):
            def __eq__(self, other): return True
            __hash__ = int.__hash__
        return B(1)
    """)),
    ("str_subclass_always_equal", _body("""
        class S(str):
            def __eq__(self, other): return True
            __hash__ = str.__hash__
        return S("True")
    """)),
    ("list_holding_impostor", _body("""
        class Eq:
            def __eq__(self, other): return True
        return [Eq()]
    """)),
    ("generator_result", _body("return (x for x in [True])")),
    ("patched_bool_type_via_ctypes", _body("""
        import ctypes
        # Turn Python's False into True inside this process only.
        ctypes.c_long.from_address(id(False) + 8 * 3).value = 1
        return False
    """)),
    # --- Resource attacks (held by the sandbox).
    ("infinite_loop", _body("while True:\n    pass")),
    ("sleep_past_wall", _body("import time\ntime.sleep(60)\nreturn True")),
    ("fork_bomb", _body("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)),
    ("memory_bomb", _body("x = bytearray(2 ** 40)\nreturn True")),
    ("output_flood", _body("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)")),
    ("background_process_left_behind", _body("""
        import os, time
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        return False
    """)),
    ("network_connect", _body("""
        import socket
        s = socket.create_connection(("127.0.0.1", 22), timeout=1)
        return True
    """)),
    ("disk_fill", _body("""
        with open("big", "wb") as f:
            while True:
                f.write(b"x" * (1 << 20))
    """)),
]

# Why each is not a pass (a status that says the attack ran as intended).
EXPECTED = {
    "sys_exit_0": "error",
    "raise_system_exit": "error",
    "os_exit_0": "error",
    "exit_at_import": "error",
    "sys_exit_at_import": "error",
    "kill_self_sigkill": "failed",
    "kill_self_sigterm": "failed",
    "exit_from_thread": "error",
    "exit_from_signal_handler": "error",
    "exit_from_atexit_hook": "error",
    "exit_from_excepthook": "failed",
    "keyboard_interrupt": "error",
    "kill_parent_and_group": "failed",
    "patch_assertion_error": "failed",
    "patch_builtins_everywhere": "error",
    "patch_harness_module": "error",
    "patch_callers_frames": "failed",
    "trace_and_profile_hooks": "error",
    "exit_from_gc_callback": "error",
    "forged_verdicts_on_every_fd": "error",
    "forged_verdicts_via_proc_fd": "failed",
    "pre_answered_pipe": "failed",
    "close_every_fd": "error",
    "close_answer_pipe_and_live_on": "error",
    "malformed_answers": "error",
    "huge_answer": "error",
    "wide_answer_under_the_cap": "failed",
    "deeply_nested_answer": "error",
    "read_test_from_memory_and_files": "failed",
    "ptrace_anything": "failed",
    "print_success_markers": "failed",
    "always_equal_object": "error",
    "int_subclass_always_equal": "error",
    "str_subclass_always_equal": "error",
    "list_holding_impostor": "error",
    "generator_result": "error",
    "patched_bool_type_via_ctypes": "failed",
    "infinite_loop": "timeout",
    "sleep_past_wall": "timeout",
    "fork_bomb": "timeout",
    "memory_bomb": "error",
    "output_flood": "timeout",
    "background_process_left_behind": "failed",
    "network_connect": "error",
    "disk_fill": "error",
}
# Without a PID namespace a program can kill itself (it is not PID 1 there)
# and the network is the host's: these end otherwise, but never as a pass.
NAMESPACE_DEPENDENT = {"kill_self_sigkill", "kill_self_sigterm",
                       "kill_parent_and_group", "network_connect"}


@pytest.fixture(scope="module")
def problem():
  return humaneval.load_humaneval()[0]


def test_the_suite_is_large_and_unique():
  names = [n for n, _ in HOSTILE]
  assert len(names) >= 25 and len(set(names)) == len(names)
  assert sorted(EXPECTED) == sorted(names)


@needs_isolation
@pytest.mark.parametrize("name,completion", HOSTILE, ids=[n for n, _ in HOSTILE])
def test_hostile_completion_fails_and_the_next_one_passes(problem, name, completion):
  # One worker: the canonical solution is judged by the same zygote, after.
  hostile, canonical = humaneval.evaluate(
      [problem], [[completion, problem["canonical_solution"]]],
      limits=FAST, workers=1)[0]
  assert not hostile.passed, hostile
  if name not in NAMESPACE_DEPENDENT or sandbox.isolation() == "namespaces":
    assert hostile.status == EXPECTED[name], hostile
  assert canonical.passed, canonical


def test_old_exit_status_verdict_would_have_passed_an_early_exit(problem):
  # Why exit codes are no verdict: the program the reference harness runs
  # ends with status 0 before `check` when the body calls os._exit(0).
  program = humaneval.program_for(problem, _body("import os\nos._exit(0)"))
  assert sandbox.run_python(program, limits=FAST).status == "ok"
  [[verdict]] = humaneval.evaluate([problem], [[_body("import os\nos._exit(0)")]],
                                   limits=FAST)
  assert verdict.status == "error" and "before answering" in verdict.output


@needs_isolation
def test_the_lookup_attack_finds_a_test_that_is_in_reach(problem):
  # The memory/file scan above is a real attack: given the test text in its
  # process (as in the reference harness's program) it answers every check.
  program = humaneval.program_for(problem, dict(HOSTILE)["read_test_from_memory_and_files"])
  result = sandbox.run_python(program, limits=sandbox.Limits(wall_s=20.0, cpu_s=20))
  assert result.status == "ok", result.stderr[-500:]


def test_exact_types_and_float_semantics_cross_the_pipe():
  # Plain values round-trip exactly (tuple vs list, bool vs int, -0.0, nan,
  # big ints, sets, nested dicts), and comparisons behave as in-process.
  test = textwrap.dedent("""
      import math
      def check(candidate):
          assert candidate(0) == (1, [2.5, -0.0], {"a": {3}}, frozenset({b"x"}), None)
          assert type(candidate(0)) is tuple and type(candidate(0)[1]) is list
          assert candidate(1) is True and type(candidate(1)) is bool
          assert candidate(2) == 2 ** 20000 + 1
          assert math.isnan(candidate(3)) and candidate(4) == complex(1, -2)
          assert abs(candidate(5) - 0.1 * 3) < 1e-12 and candidate(5) != 0.3
          assert candidate(6, key="k") == "k" and candidate(7) == 7
  """)
  program = textwrap.dedent("""
      def f(i, key=None):
          return [(1, [2.5, -0.0], {"a": {3}}, frozenset({b"x"}), None), True,
                  2 ** 20000 + 1, float("nan"), complex(1, -2), 0.1 * 3,
                  key, 7][i]
  """)
  ok = judge.judge(judge.Job(program=program, entry_point="f", test=test), limits=FAST)
  assert ok.status == "passed" and ok.calls == 12, ok
  # The same test on a function returning a list where a tuple is expected.
  wrong = program.replace("[(1, [2.5", "[[1, [2.5").replace("None), True", "None], True")
  bad = judge.judge(judge.Job(program=wrong, entry_point="f", test=test), limits=FAST)
  assert bad.status == "failed" and bad.calls >= 1, bad


@pytest.mark.skipif(sandbox.isolation() != "namespaces",
                    reason="private /tmp and IPC per job need namespaces")
def test_no_channel_from_one_sample_to_the_next(problem):
  # A policy could copy a correct sibling's code through the file system: one
  # sample stashes a solution, the next one (same zygote, same uid) runs it.
  source = problem["prompt"] + problem["canonical_solution"]
  dirs = '("/tmp", "/var/tmp", "/dev/shm", "/run/lock", os.getcwd(), os.path.expanduser("~"))'
  writer = problem["canonical_solution"] + textwrap.dedent(f"""
      import os
      for d in {dirs}:
          try:
              with open(os.path.join(d, "stash.py"), "w") as f:
                  f.write({source!r})
          except OSError:
              pass
  """)
  reader = _body(f"""
      import os
      for d in {dirs}:
          p = os.path.join(d, "stash.py")
          if os.path.exists(p):
              ns = {{}}
              exec(open(p).read(), ns)
              return ns["has_close_elements"](numbers, threshold)
      return False
  """)
  wrote, read = humaneval.evaluate([problem], [[writer, reader]], limits=FAST, workers=1)[0]
  assert wrote.passed, wrote
  assert read.status == "failed", read
