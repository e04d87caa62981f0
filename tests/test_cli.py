"""`python -m bon_jax.main`: bad input is one line on stderr, status 2."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, cwd=ROOT):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "bon_jax.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def _error_line(proc):
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  return lines[0]


@pytest.mark.parametrize(
    "override,expected",
    [
        ("--config.train.stepz=3", "stepz"),
        ("--config.train.steps=abc", "train.steps"),
        ("--config.model.ckpt_path=/no/such/dir", "/no/such/dir"),
    ],
)
def test_bad_override_is_one_line_error(tmp_path, override, expected):
  line = _error_line(_run("--config=configs/demo.py", f"--workdir={tmp_path}/wd", override))
  assert expected in line


def test_missing_config_file_is_one_line_error(tmp_path):
  line = _error_line(_run("--config=configs/nope.py", f"--workdir={tmp_path}"))
  assert "configs/nope.py" in line


def test_workdir_that_is_a_file_is_refused_and_kept(tmp_path):
  path = tmp_path / "precious.txt"
  path.write_text("keep me")
  line = _error_line(_run("--config=configs/demo.py", f"--workdir={path}"))
  assert "not a directory" in line and path.read_text() == "keep me"
