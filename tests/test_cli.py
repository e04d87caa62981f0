"""`python -m bon_jax.main`: bad input is one line on stderr, status 2."""

import os
import re
import shutil
import subprocess
import sys

import orbax.checkpoint as ocp
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


@pytest.mark.parametrize("override", ["--config.model.lora_rank=16", "--config.model.opt_state_dtype=float32"])
def test_every_model_field_is_declared_so_any_config_overrides_it(override):
  # Declared once in bon_jax.defaults: the demo (which sets neither) accepts both.
  proc = _run("--config=configs/demo.py", "--dry_run", override)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "unknown config field" not in proc.stderr


def test_bad_lora_rank_is_one_line_error():
  line = _error_line(_run("--config=configs/demo.py", "--dry_run", "--config.model.lora_rank=-1"))
  assert "lora_rank must be" in line and "-1" in line


def test_missing_config_file_is_one_line_error(tmp_path):
  line = _error_line(_run("--config=configs/nope.py", f"--workdir={tmp_path}"))
  assert "no such config file 'configs/nope.py'" in line and "earlier failure" not in line


@pytest.mark.parametrize("override", [(), ("--config.train.steps=3",)])
def test_get_config_that_returns_no_config_dict_is_named(tmp_path, override):
  cfg = tmp_path / "bad_config.py"
  cfg.write_text("def get_config():\n  return 3\n")
  line = _error_line(_run(f"--config={cfg}", f"--workdir={tmp_path}/wd", *override))
  assert "get_config() must return an ml_collections.ConfigDict, got int" in line
  assert "unknown config field" not in line


def test_workdir_that_cannot_be_created_is_one_line_error():
  line = _error_line(_run("--config=configs/demo.py", "--workdir=/proc/bon_jax_test/wd"))
  assert "--workdir=/proc/bon_jax_test/wd cannot be created" in line


def test_url_workdir_is_refused_in_one_line_not_written_locally(tmp_path):
  proc = _run(f"--config={os.path.join(ROOT, 'configs/demo.py')}", "--workdir=gs://bucket/run", cwd=tmp_path)
  line = _error_line(proc)
  assert "--workdir=gs://bucket/run: URLs are not supported; mount the bucket" in line
  assert not (tmp_path / "gs:").exists()


def test_tokenizer_that_is_not_sentencepiece_is_one_line_error_and_leaves_no_workdir(tmp_path):
  bad = tmp_path / "tokenizer.model"
  bad.write_text("this is not a sentencepiece model\n")
  line = _error_line(_run("--config=configs/demo.py", f"--workdir={tmp_path}/wd",
                          "--config.tokenizer.kind=sentencepiece", f"--config.tokenizer.path={bad}"))
  assert f"tokenizer '{bad}': not a SentencePiece model" in line
  assert not (tmp_path / "wd").exists()


def test_no_tensorflow_log_lines_before_the_error():
  # Without TF_CPP_MIN_LOG_LEVEL: TensorFlow's C++ start-up lines ignore it anyway.
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  proc = subprocess.run([sys.executable, "-m", "bon_jax.main", "--config=configs/demo.py",
                         "--workdir=/proc/bon_jax_test/wd"], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=dict(env, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2
  assert proc.stderr.splitlines()[0].startswith("error: "), proc.stderr[-2000:]
  assert "oneDNN" not in proc.stderr and "cuda drivers" not in proc.stderr and not proc.stdout


# A pipeline of two SFT checkpoints (steps 2 and 4) that stops after a tiny evaluation.
_TINY = ("--config=configs/demo.py", "--config.model.preset=micro", "--config.task.num_train=64",
         "--config.task.num_test=8", "--config.train.steps=4", "--config.train.batch_size=4",
         "--config.train.checkpoint_every=2", "--config.train.keep_checkpoints=3",
         "--config.verifier.steps=0", "--config.algorithms=()", "--config.eval.num_prompts=2",
         "--config.eval.num_samples=2", "--config.eval.prompts_per_batch=2",
         "--config.eval.max_new_tokens=4")


@pytest.fixture(scope="module")
def finished_workdir(tmp_path_factory):
  wd = tmp_path_factory.mktemp("ckpt") / "wd"
  proc = _run(*_TINY, f"--workdir={wd}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert {"2", "4"} <= set(os.listdir(wd / "checkpoints"))
  assert (wd / "tfds" / "bon_countdown").is_dir()  # The stages read the task through TFDS.
  return wd


def _corrupt(wd, kind):
  step4 = wd / "checkpoints" / "4" / "default"
  if kind == "metadata":
    path = step4 / "_METADATA"
    path.write_text("{ not json")
    return path
  data = max((step4 / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)
  with open(data, "r+b") as f:
    f.truncate(100)
  return step4


@pytest.mark.parametrize("kind", ["metadata", "array_data"])
def test_corrupted_checkpoint_names_step_and_file_and_the_intact_one(finished_workdir, tmp_path, kind):
  wd = tmp_path / "wd"
  shutil.copytree(finished_workdir, wd)
  culprit = _corrupt(wd, kind)
  before = {p: p.stat().st_mtime_ns for p in wd.rglob("*") if p.is_file() and p.name != "runs.jsonl"}
  line = _error_line(_run(*_TINY, f"--workdir={wd}"))
  assert f"checkpoint step 4 ({culprit}" in line and "Step 2 is intact" in line, line
  # Nothing changed, and the advice works: with step 4 moved aside, step 2 is the latest and restores.
  assert before == {p: p.stat().st_mtime_ns for p in wd.rglob("*") if p.is_file() and p.name != "runs.jsonl"}
  move = re.search(r"\(mv (\S+) (\S+)\)", line)
  assert move and move.group(1) == str(wd / "checkpoints" / "4")
  shutil.move(move.group(1), move.group(2))
  mngr = ocp.CheckpointManager(wd / "checkpoints", item_handlers=ocp.StandardCheckpointHandler())
  assert mngr.latest_step() == 2
  assert int(mngr.restore(2)["step"]) == 2


def test_workdir_that_is_a_file_is_refused_and_kept(tmp_path):
  path = tmp_path / "precious.txt"
  path.write_text("keep me")
  line = _error_line(_run("--config=configs/demo.py", f"--workdir={path}"))
  assert "not a directory" in line and path.read_text() == "keep me"
