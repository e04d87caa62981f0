"""A paper config end to end at Gemma 2 2B's real width and vocabulary (2 of its 26 layers).

`python -m bon_jax.main --config=configs/math_pass32.py` from a random checkpoint in
the released Orbax layout (`models.write_random_checkpoint`), a stand-in tokenizer with
Gemma's 256128 pieces and MATH fixture files (bench/paper_configs_e2e.py's), only the
counts shrunk: restore, SFT (none: the checkpoint is the base), sampling, BoN-aware RL
with LoRA and microbatching, checkpoints, evaluation, the comparison; then a rerun of
the same command resumes and redoes nothing. bench/paper_configs_e2e.py runs every
paper config this way (BENCHMARKS.md). The run peaks at ~10-11 GiB of RSS (the 256k-entry
table's float32 copies on XLA:CPU and the compiles).
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
  spec = importlib.util.spec_from_file_location("paper_configs_e2e", os.path.join(ROOT, "bench",
                                                                                   "paper_configs_e2e.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
  return _bench().write_fixtures(str(tmp_path_factory.mktemp("paper_fixtures")))


def _main(args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # One device, whatever the host has.
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", "bon_jax.main", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)


def test_math_pass32_runs_end_to_end_at_gemma2_width_and_resumes(fixtures, tmp_path):
  bench = _bench()
  workdir = tmp_path / "run"
  args = ["--config=configs/math_pass32.py", f"--workdir={workdir}",
          *bench.overrides("math_pass32", fixtures, lora_rank=16, dtype="bfloat16", devices=1),
          "--config.task.num_shots=0", "--config.rl.N_prime=2", "--config.rl.N=2",
          # A random policy solves nothing (every BoN weight 0): the entropy bonus gives the
          # update a gradient, so the step really trains the adapters.
          "--config.rl.entropy_coef=0.01"]
  first = _main(args)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  stages = [line.split(":")[0] for line in first.stdout.splitlines() if line.startswith("stage ")]
  assert stages == ["stage sft", "stage evaluation base", "stage rl bon_rl_s", "stage evaluation bon_rl_s"]
  compare = json.loads((workdir / "compare.json").read_text())
  assert sorted(compare["results"]) == ["base", "bon_rl_s"], compare.keys()
  metrics = [json.loads(line) for line in open(workdir / "rl" / "bon_rl_s" / "metrics.jsonl")]
  steps = [m["step"] for m in metrics]
  assert steps == [1, 2] and all(m["grad_norm"] > 0 for m in metrics), metrics
  again = _main(args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads((workdir / "compare.json").read_text()) == compare
  assert "bon_rl_s:   0%" not in again.stderr  # Nothing retrained.
  assert [json.loads(line)["step"] for line in open(workdir / "rl" / "bon_rl_s" / "metrics.jsonl")] == steps
