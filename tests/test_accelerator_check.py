"""bench/accelerator_check.py --smoke: the accelerator check's code path, on CPU at reduced shape.

Its numbers mean nothing here; the test checks that every stage runs and
reports what the full run would (tokens/s, roofline fraction, speed-up, MFU,
compiled memory), and that the full mode refuses a CPU-only host.
"""

import json
import math
import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(TESTS), "bench", "accelerator_check.py")


def _run(*args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, SCRIPT, *args], env=env, capture_output=True, text=True, timeout=600)


def test_smoke_run_reports_every_stage(tmp_path):
  out = tmp_path / "smoke.json"
  proc = _run("--smoke", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  res, summary = report["results"], report["summary"]
  assert set(res) == {"sampler", "gemma_sampler", "update_lora", "update_full"}
  shape = report["shape"]
  for name in ("sampler", "gemma_sampler"):
    assert res[name]["tokens"] == shape["prompts"] * shape["samples"] * shape["new_tokens"]
    assert res[name]["tokens_per_s"] > 0
  for name in ("update_lora", "update_full"):
    assert res[name]["seconds"] > 0 and res[name]["compiled_bytes"]["temp"] > 0
    assert 0 < summary[f"{name}_mfu"] < 1.5, summary  # Against measured CPU peaks: loose.
  # Full fine-tuning counts 3 forward passes of FLOPs, LoRA 2.
  assert math.isclose(res["update_full"]["model_flops"] / res["update_lora"]["model_flops"], 1.5)
  assert res["sampler"]["compiled_bytes"]["argument"] >= res["sampler"]["param_bytes"]
  assert summary["sampler_roofline_fraction"] > 0 and summary["sampler_speedup_vs_gemma"] > 0
  assert set(summary["goals"]) == {"sampler >= 3x gm.text.Sampler", "sampler >= 50% of HBM roofline",
                                   "update (full) >= 40% of peak FLOPs", "update (LoRA) >= 40% of peak FLOPs"}
  assert "<!-- accelerator-check:begin -->" in proc.stdout and "| full fine-tuning |" in proc.stdout


def test_full_mode_refuses_a_cpu_host(tmp_path):
  proc = _run(f"--out={tmp_path / 'x.json'}")
  assert proc.returncode == 2 and "error: no GPU or TPU here" in proc.stderr
  assert not (tmp_path / "x.json").exists()
