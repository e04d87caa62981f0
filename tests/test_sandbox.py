"""The sandbox contains hostile programs and reports them as failures.

Every hostile program runs only through `sandbox.run_python`, with limits
small enough that a containment bug stays bounded (few processes, short wall
clock). The process-count limit is pinned by a benign test first.
"""

import os
import signal
import socket
import textwrap
import uuid

import pytest

from bon_jax import sandbox

needs_uid_isolation = pytest.mark.skipif(
    sandbox.isolation() == "user",
    reason="runs as a normal user: the program keeps this uid (module doc)",
)
needs_namespaces = pytest.mark.skipif(
    sandbox.isolation() != "namespaces",
    reason="network and /tmp isolation need namespaces (module doc)",
)

SMALL = sandbox.Limits(wall_s=3.0, cpu_s=3, max_procs=8)


def _run(source: str, limits: sandbox.Limits = SMALL) -> sandbox.RunResult:
  return sandbox.run_python(textwrap.dedent(source), limits=limits)


def _own_sandbox_processes() -> list[int]:
  """PIDs of processes running under a uid this process's sandbox hands out."""
  lo = sandbox._UID_BASE + sandbox._MAX_SLOTS * os.getpid()
  pids = []
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        if lo <= os.stat(f"/proc/{name}").st_uid < lo + sandbox._MAX_SLOTS:
          pids.append(int(name))
      except OSError:
        pass
  return pids


def test_exit_code_and_output_are_reported():
  ok = _run("import sys; print('out'); print('err', file=sys.stderr)")
  assert (ok.status, ok.returncode) == ("ok", 0)
  assert (ok.stdout, ok.stderr) == ("out\n", "err\n")
  bad = _run("raise ValueError('boom')")
  assert (bad.status, bad.returncode) == ("error", 1)
  assert "ValueError: boom" in bad.stderr


def test_program_gets_a_fresh_writable_working_directory():
  source = """
      import os
      print(sorted(os.listdir(".")))
      with open("scratch.txt", "w") as f:
        f.write("x")
      print(sorted(os.listdir(".")))
  """
  first, second = _run(source), _run(source)
  assert first.stdout == second.stdout == "['main.py']\n['main.py', 'scratch.txt']\n"


@needs_uid_isolation
def test_process_count_is_capped_at_max_procs():
  result = _run("""
      import subprocess
      procs = []
      try:
        for _ in range(100):
          procs.append(subprocess.Popen(["sleep", "1"]))
        print("spawned", len(procs))
      except OSError:
        print("stopped", len(procs))
  """)
  # The program itself is one of the max_procs processes of its uid.
  assert result.stdout == f"stopped {SMALL.max_procs - 1}\n"


def test_infinite_loop_times_out_at_the_wall_clock():
  result = _run("while True: pass", sandbox.Limits(wall_s=1.0, cpu_s=10))
  assert result.status == "timeout"
  assert 1.0 <= result.wall_s < 2.0


def test_cpu_limit_kills_a_busy_program():
  result = _run("while True: pass", sandbox.Limits(wall_s=10.0, cpu_s=1))
  assert result.status == "killed"
  assert result.returncode in (-signal.SIGXCPU, -signal.SIGKILL)


def test_memory_bomb_fails_with_memory_error():
  result = _run("""
      blocks = []
      while True:
        blocks.append(bytearray(16 * 1024 * 1024))
  """, sandbox.Limits(memory_bytes=256 * 1024 * 1024))
  assert result.status == "error"
  assert "MemoryError" in result.stderr


def test_printing_gigabytes_is_cut_at_the_output_cap():
  limits = sandbox.Limits(output_bytes=4096)
  result = _run("""
      import sys
      while True:
        sys.stdout.write("x" * 65536)
        sys.stderr.write("y" * 65536)
  """, limits)
  assert result.status == "killed" and result.truncated
  assert len(result.stdout) <= 4096 and len(result.stderr) <= 4096
  assert result.wall_s < limits.wall_s


def test_large_files_are_refused():
  result = _run("""
      with open("big", "wb") as f:
        f.write(b"z" * (2 * 1024 * 1024))
  """, sandbox.Limits(file_bytes=1024 * 1024))
  assert result.status == "error"
  assert "File too large" in result.stderr


@needs_uid_isolation
def test_files_outside_the_working_directory_are_untouched(tmp_path):
  victim = tmp_path / "victim.txt"
  victim.write_text("keep me")
  this_file = os.path.abspath(__file__)
  before = os.stat(this_file)
  result = _run(f"""
      import os
      def attempt(name, fn):
        try:
          fn()
          print(name, "done")
        except OSError as e:
          print(name, "refused")
      attempt("delete", lambda: os.remove({str(victim)!r}))
      attempt("overwrite", lambda: open({str(victim)!r}, "w").close())
      attempt("append", lambda: os.close(os.open({this_file!r}, os.O_WRONLY | os.O_APPEND)))
      attempt("create", lambda: open({str(tmp_path / 'new.txt')!r}, "w").close())
      attempt("local", lambda: open("local.txt", "w").close())
  """)
  assert result.stdout.split("\n")[:-1] == [
      "delete refused", "overwrite refused", "append refused",
      "create refused", "local done",
  ]
  assert victim.read_text() == "keep me"
  assert not (tmp_path / "new.txt").exists()
  assert os.stat(this_file).st_mtime_ns == before.st_mtime_ns


@needs_namespaces
def test_shared_tmp_is_private_to_the_program():
  name = f"/tmp/bon_sandbox_escape_{uuid.uuid4().hex}"
  result = _run(f"open({name!r}, 'w').write('x'); print('wrote')")
  assert result.stdout == "wrote\n"  # into its private /tmp...
  assert not os.path.exists(name)  # ...which is not ours


@needs_namespaces
def test_network_connections_fail_and_never_reach_the_host():
  listener = socket.socket()
  listener.bind(("127.0.0.1", 0))
  listener.listen(1)
  listener.settimeout(0.2)
  port = listener.getsockname()[1]
  try:
    result = _run(f"""
        import socket
        try:
          socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
          print("connected")
        except OSError as e:
          print("refused")
    """)
    with pytest.raises(socket.timeout):
      listener.accept()
  finally:
    listener.close()
  assert result.stdout == "refused\n"


@needs_uid_isolation
def test_signals_to_the_parent_are_contained():
  received = []
  old = signal.signal(signal.SIGUSR1, lambda *_: received.append(1))
  try:
    result = _run(f"""
        import os, signal
        try:
          os.kill({os.getpid()}, signal.SIGUSR1)
        except OSError:
          pass
        try:
          os.kill(-1, signal.SIGKILL)  # all it may signal, except itself
        except OSError:
          pass
        print("survived")
    """)
  finally:
    signal.signal(signal.SIGUSR1, old)
  assert not received
  assert result.stdout == "survived\n"


@needs_uid_isolation
def test_detached_children_die_with_the_program():
  result = _run("""
      import subprocess
      subprocess.Popen(["sleep", "30"], start_new_session=True)
      print("spawned")
  """)
  assert result.stdout == "spawned\n"
  assert not _own_sandbox_processes()


@needs_uid_isolation
def test_fork_bomb_is_contained_and_cleaned_up():
  result = _run("""
      import os
      while True:
        try:
          os.fork()
        except OSError:
          pass
  """, sandbox.Limits(wall_s=1.5, cpu_s=2, max_procs=8))
  assert result.status in ("timeout", "killed")
  assert result.wall_s < 3.0
  assert not _own_sandbox_processes()


def test_run_many_keeps_order_and_goes_on_after_hostile_programs():
  sources = [
      "while True: pass",
      "import sys\nwhile True: sys.stdout.write('x' * 65536)",
      "x = bytearray(2**40)",
      "print('next')",
  ]
  results = sandbox.run_many(
      sources, limits=sandbox.Limits(wall_s=1.0, cpu_s=2), workers=2
  )
  assert [r.status for r in results] == ["timeout", "killed", "error", "ok"]
  assert results[-1].stdout == "next\n"


def test_bad_limits_are_rejected():
  with pytest.raises(ValueError, match="wall_s"):
    sandbox.Limits(wall_s=0)
  with pytest.raises(ValueError, match="memory_bytes"):
    sandbox.Limits(memory_bytes=1024)
