"""bon_jax.report: pooling seed workdirs into paired multi-seed tables."""

import json
import math
import os

import numpy as np
import pytest
import scipy.stats

from bon_jax import report


def _write_eval(path, per_prompt_pass, *, temperature=1.0, ids=None, step=10):
  """A minimal evaluation JSON: per-prompt pass@k at ks = [1, 2]."""
  pp = np.asarray(per_prompt_pass, float)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  res = {
      "ks": [1, 2], "num_samples": 2, "step": step,
      "eval_config": {"temperature": temperature},
      "prompt_ids": ids or [f"p{i}" for i in range(len(pp))],
      "num_solutions": [1, 2, 5, 9][: len(pp)], "levels": [1, 1, 2, 2][: len(pp)],
      "overall": {"pass@k": pp.mean(0).tolist()},
      "per_prompt": {"pass@k": pp.tolist(), "bo@k": pp.tolist(), "maj@k": pp.tolist()},
  }
  with open(path, "w") as f:
    json.dump(res, f)


def _seed(tmp_path, name, base, tuned):
  wd = tmp_path / name
  _write_eval(str(wd / "eval" / "step_10.json"), base)
  _write_eval(str(wd / "rl" / "bon_rl_s" / "eval" / "step_10.json"), tuned)
  return str(wd)


def test_paired_difference_and_intervals_match_a_direct_computation():
  rng = np.random.default_rng(0)
  base = rng.random((3, 40))
  tuned = base + 0.05 + 0.02 * rng.standard_normal((3, 40))
  st = report.paired(tuned, base)
  d = tuned - base
  assert st["mean"] == pytest.approx(d.mean())
  assert st["ci_prompts"] == pytest.approx(1.96 * d.mean(0).std(ddof=1) / math.sqrt(40))
  assert st["ci_seeds"] == pytest.approx(scipy.stats.t.ppf(0.975, 2) * d.mean(1).std(ddof=1) / math.sqrt(3))
  assert st["significant"]
  assert not report.paired(base + 0.02 * rng.standard_normal((3, 40)), base)["significant"]


def test_report_pools_seeds_per_policy_and_difficulty(tmp_path):
  base = [[[0.2, 0.5], [0.0, 0.0], [0.6, 1.0], [0.4, 0.5]], [[0.1, 0.5], [0.0, 0.5], [0.5, 1.0], [0.4, 0.5]]]
  tuned = [[[0.3, 0.5], [0.1, 0.5], [0.6, 1.0], [0.5, 1.0]], [[0.1, 1.0], [0.0, 0.5], [0.7, 1.0], [0.4, 1.0]]]
  wds = [_seed(tmp_path, f"s{i}", base[i], tuned[i]) for i in range(2)]
  text = report.build(wds)
  row = next(l for l in text.splitlines() if l.startswith("| bon_rl_s |"))
  # Mean pass@2 over seeds and prompts, and its paired difference, by hand.
  b2 = np.array([[r[1] for r in s] for s in base])
  t2 = np.array([[r[1] for r in s] for s in tuned])
  assert f"{100 * t2.mean():.1f} [" in row and f"{100 * (t2 - b2).mean():+.1f}" in row
  assert "1 answer (1)" in text and "8+ answers (1)" in text and "level 2 (2)" in text


def test_one_seed_is_judged_over_prompts_and_prints_no_seed_interval(tmp_path):
  base = [[0.2, 0.5], [0.0, 0.0], [0.6, 1.0], [0.4, 0.5]]
  tuned = [[0.9, 1.0], [0.8, 1.0], [1.0, 1.0], [0.9, 1.0]]
  st = report.paired(np.array([[r[0] for r in tuned]]), np.array([[r[0] for r in base]]))
  assert math.isnan(st["ci_seeds"]) and st["significant"]
  text = report.build([_seed(tmp_path, "s0", base, tuned)])
  row = next(l for l in text.splitlines() if l.startswith("| bon_rl_s |"))
  assert "nan" not in text and "seeds ±" not in row and " *" in row
  assert "One seed" in text


def test_report_refuses_policies_evaluated_on_other_prompts(tmp_path):
  wd = _seed(tmp_path, "s0", [[0.1, 0.2]] * 2, [[0.1, 0.2]] * 2)
  _write_eval(os.path.join(wd, "rl", "bon_rl_s", "eval", "step_10.json"), [[0.1, 0.2]] * 2, ids=["x", "y"])
  with pytest.raises(ValueError, match="other prompts"):
    report.build([wd])


def test_coscaling_section_recommends_the_temperature_with_the_higher_fitted_curve(tmp_path):
  wd = tmp_path / "s0"
  ks = [1, 2, 4, 8]
  for t, (a, b) in {0.5: (-1.0, -0.1), 1.0: (-2.5, -0.6)}.items():
    curve = np.exp(a * np.asarray(ks, float) ** b)
    res = {"ks": ks, "num_samples": 8, "step": 1, "eval_config": {"temperature": t},
           "prompt_ids": ["p0"], "num_solutions": [1], "levels": [1],
           "overall": {"pass@k": curve.tolist()},
           "per_prompt": {"pass@k": [curve.tolist()], "bo@k": [curve.tolist()], "maj@k": [curve.tolist()]}}
    os.makedirs(wd / "eval", exist_ok=True)
    with open(wd / "eval" / f"step_1_T{t}.json", "w") as f:
      json.dump(res, f)
  lines = report.coscaling_section([report.load_workdir(str(wd))], [0.5, 1.0])
  best = next(l for l in lines if l.startswith("| best T"))
  # exp(-1.0 N^-0.1) vs exp(-2.5 N^-0.6): T=0.5 wins at N=1, T=1 from N=8 on (by hand).
  cells = [c.strip() for c in best.split("|")[2:-1]]
  assert cells[0] == "0.5" and all(c == "1" for c in cells[3:])
