"""bench/capacity_plan.py: runs, and its per-device bytes agree with hand arithmetic."""

import importlib.util
import math
import os
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("capacity_plan", os.path.join(ROOT, "bench", "capacity_plan.py"))
cp = importlib.util.module_from_spec(_spec)
sys.modules["capacity_plan"] = cp  # dataclasses look their module up.
_spec.loader.exec_module(cp)

from bon_jax import sharding  # pylint: disable=g-import-not-at-top

MESH = (1, 8, 1)


def _plan_2b_h100():
  w = cp.Workload()
  rows = cp.plan(["gemma2_2b"], ["8x H100"], w)
  return w, {r["mesh"]: r for r in rows}


W, ROWS = _plan_2b_h100()


def test_param_and_adam_bytes_match_per_device_bytes_and_hand_arithmetic():
  params, adam = cp.abstract_states("gemma2_2b", W)
  mem = ROWS[MESH]["mem"]
  assert mem["params"] == sharding.per_device_bytes(params, sharding.param_specs(params, MESH), MESH)
  # Pure FSDP over 8: every matrix has an axis divisible by 8, vectors are replicated.
  leaves = [np.shape(x) for x in jax.tree.leaves(params)]
  elems = sum(math.prod(s) // 8 if len(s) >= 2 else math.prod(s) for s in leaves)
  assert mem["params"] == 2 * elems
  # f32 mu and nu, sharded like the params, plus Adam's int32 step count.
  assert mem["adam"] == 2 * 4 * elems + 4
  assert mem["grads"] == 4 * elems
  # Pure data parallelism: everything replicated.
  full = sum(math.prod(s) for s in leaves)
  assert ROWS[(8, 1, 1)]["mem"]["params"] == 2 * full


def test_kv_cache_bytes_follow_the_sampler_layout():
  dm = ROWS[MESH]["mem"]["dims"]
  assert cp.kv_bytes_per_token(dm, W) == 26 * 2 * 4 * 256 * 2
  tokens = W.prompts * W.prompt_len + W.prompts * W.n_prime * W.completion_len
  assert ROWS[MESH]["mem"]["kv"] == tokens * 26 * 2 * 4 * 256 * 2 // 8


def test_recommended_mesh_fits_and_remat_saves_memory():
  rec = cp.recommended(list(ROWS.values()))
  assert rec is not None and rec["mem"]["peak"] <= W.budget * cp.HARDWARE["8x H100"].hbm_bytes
  for r in ROWS.values():
    assert r["mem"]["act_remat"] < r["mem"]["act_noremat"]
  # Update FLOPs: (6 + 2 + 2) * params * tokens plus attention, so at least 10 N T.
  tm = rec["time"]
  tokens = W.rows * W.seq_len
  assert tm["update_flops"] >= 10 * rec["mem"]["dims"].params * tokens


def test_script_prints_the_tables(capsys):
  cp.main(["--models", "gemma2_2b", "--hardware", "TPU v5e-8"])
  out = capsys.readouterr().out
  assert "### gemma2_2b on TPU v5e-8" in out and "Recommended" in out and "| (1, 8, 1) |" in out
