r"""Pools pipeline workdirs (one per seed) into paired, multi-seed tables.

  python -m bon_jax.report /tmp/bon_repro/seed0 /tmp/bon_repro/seed1 /tmp/bon_repro/seed2 \
      --out=/tmp/bon_repro/report.md

Every workdir is one run of `pipeline.train_and_evaluate` with its own seed
(SFT base, verifier, the fine-tuning stages); all were evaluated on the same
held-out prompts. For each policy, temperature and metric (pass@1, pass@N,
Bo-N with the learned verifier when present, maj@N) the report gives:

* the mean over seeds and the per-seed means;
* the paired difference to the seed's own starting policy (`config_lib.BASE`):
  per prompt, averaged over seeds, with a 95% normal interval over prompts
  (the paired interval), and a 95% t-interval over the per-seed mean
  differences (what another seed would show); a difference is marked
  significant (*) when both intervals exclude 0;
* the same differences split by difficulty (the number of distinct valid
  answers of a prompt) and by level;
* the co-scaling law pass@N(T) ~ exp(a(T) N^b(T)) fitted to the starting
  policy's curves at each evaluated temperature, with the temperature it
  recommends per N.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.stats

from bon_jax import config_lib

BASE = config_lib.BASE
DIFFICULTY = ((1, 1, "1 answer"), (2, 3, "2-3 answers"), (4, 7, "4-7 answers"), (8, 10**9, "8+ answers"))


# ----------------------------------------------------------------------------
# The co-scaling law of Chow et al.: pass@N(T) ~ exp(a(T) * N^b(T)).


def fit_pass_at_n_law(ns, pass_at_n) -> tuple[float, float]:
  """Fits ``pass@N ~ exp(a * N^b)`` at one temperature; returns ``(a, b)``.

  ``log(-log pass@N) = log(-a) + b log N`` is linear in ``log N``, so (a, b)
  come from least squares on that line over the N with 0 < pass@N < 1 (at
  least two needed). A curve rising towards 1 has a < 0 and b < 0.

  Example: ``a, b = fit_pass_at_n_law([1, 2, 4, 8], [0.1, 0.19, 0.33, 0.52])``.
  """
  ns, p = np.asarray(ns, np.float64), np.asarray(pass_at_n, np.float64)
  ok = (p > 0) & (p < 1)
  if ok.sum() < 2:
    raise ValueError(f"need >= 2 values of pass@N strictly between 0 and 1, got {p.tolist()}")
  slope, intercept = np.polyfit(np.log(ns[ok]), np.log(-np.log(p[ok])), 1)
  return -float(np.exp(intercept)), float(slope)


def pass_at_n_law(a: float, b: float, n) -> np.ndarray:
  """The fitted law's pass@N: ``exp(a * N^b)``."""
  return np.exp(a * np.asarray(n, np.float64) ** b)


def _evals(eval_dir: str) -> dict[float, dict[str, Any]]:
  """The latest evaluation per temperature in `eval_dir` (final step only)."""
  out: dict[float, tuple[int, float, dict[str, Any]]] = {}
  for path in glob.glob(os.path.join(eval_dir, "step_*.json")):
    with open(path) as f:
      res = json.load(f)
    if "per_prompt" not in res:
      continue  # Written before per-prompt curves were kept.
    t = float(res["eval_config"]["temperature"])
    key = (int(res.get("step", 0)), os.path.getmtime(path))
    if t not in out or key > out[t][:2]:
      out[t] = (*key, res)
  return {t: v[2] for t, v in out.items()}


def load_workdir(workdir: str) -> dict[str, dict[float, dict[str, Any]]]:
  """{policy: {temperature: evaluation results}} of one pipeline workdir."""
  runs = {BASE: _evals(os.path.join(workdir, "eval"))}
  for stage in sorted(glob.glob(os.path.join(workdir, "rl", "*"))):
    evals = _evals(os.path.join(stage, "eval"))
    if evals:
      runs[os.path.basename(stage)] = evals
  if not runs[BASE]:
    raise FileNotFoundError(f"{workdir} has no evaluation of the starting policy (eval/step_*.json)")
  return runs


def metric_columns(res: dict[str, Any], target: int | None = None) -> list[tuple[str, str, int]]:
  """(label, curve, index into ks) of the reported metrics.

  pass@1, then pass@k and Bo-k at the fine-tuning target k = `target`
  (``rl.N``) when it is one of the evaluated ks, and at k = n, then maj@n.
  """
  ks, n = res["ks"], res["num_samples"]
  bo = "bo@k_verifier" if "bo@k_verifier" in res["per_prompt"] else "bo@k"
  tag = " (verifier)" if bo == "bo@k_verifier" else " (grader)"
  kk = [k for k in dict.fromkeys((target, n)) if k in ks and k != 1]
  return ([("pass@1", "pass@k", ks.index(1))] + [(f"pass@{k}", "pass@k", ks.index(k)) for k in kk]
          + [(f"Bo-{k}{tag}", bo, ks.index(k)) for k in kk] + [(f"maj@{n}", "maj@k", ks.index(n))])


def _target(workdir: str) -> int | None:
  """The fine-tuning target N (rl.N of the stages' config.json), if recorded."""
  for path in sorted(glob.glob(os.path.join(workdir, "rl", "*", "config.json"))):
    try:
      with open(path) as f:
        return int(json.load(f)["rl"]["N"])
    except (OSError, KeyError, TypeError, ValueError):
      continue
  return None


def paired(values: np.ndarray, base: np.ndarray) -> dict[str, float]:
  """Paired stats of per-(seed, prompt) values [S, P] against base [S, P]."""
  d = values - base
  s, p = d.shape
  per_prompt = d.mean(0)
  half_prompts = 1.96 * per_prompt.std(ddof=1) / math.sqrt(p) if p > 1 else float("nan")
  seed_means = d.mean(1)
  half_seeds = (scipy.stats.t.ppf(0.975, s - 1) * seed_means.std(ddof=1) / math.sqrt(s)) if s > 1 else float("nan")
  mean = float(per_prompt.mean())
  # One seed: significance over prompts only (there is no interval over seeds).
  sig = (abs(mean) > half_prompts) and (s == 1 or abs(mean) > half_seeds)
  return {"mean": mean, "ci_prompts": float(half_prompts), "ci_seeds": float(half_seeds),
          "seed_means": seed_means.tolist(), "significant": bool(sig)}


def _fmt_delta(st: dict[str, float]) -> str:
  seeds = "" if math.isnan(st["ci_seeds"]) else f" (seeds ±{100 * st['ci_seeds']:.1f})"
  return f"{100 * st['mean']:+.1f} ±{100 * st['ci_prompts']:.1f}{seeds}" + (" *" if st["significant"] else "")


def build(workdirs: Sequence[str]) -> str:
  """The markdown report of `workdirs` (one per seed)."""
  runs = [load_workdir(w) for w in workdirs]
  policies = [p for p in runs[0] if all(p in r for r in runs)]
  temps = sorted(set.intersection(*[set(r[BASE]) for r in runs]))
  lines = [f"Seeds (workdirs): {', '.join(workdirs)}", ""]
  for t in temps:
    base0 = runs[0][BASE][t]
    ids = base0["prompt_ids"]
    for r in runs:
      for p in policies:
        if t in r[p] and r[p][t]["prompt_ids"] != ids:
          raise ValueError(f"policy {p!r} at T={t} was evaluated on other prompts; cannot pair")
    cols = metric_columns(base0, _target(workdirs[0]))
    legend = ("Mean over seeds (per-seed means in brackets); Δ = paired difference to the seed's own"
              f" `{BASE}` policy, ± 95% interval over prompts (seeds: t-interval over seeds); * = both exclude 0."
              if len(runs) > 1 else
              f"One seed; Δ = paired difference to its `{BASE}` policy, ± 95% interval over prompts;"
              " * = the interval excludes 0.")
    lines += [f"### T = {t:g}: {len(ids)} held-out prompts, n = {base0['num_samples']} samples each", "",
              legend,
              "", "| policy | " + " | ".join(f"{c[0]} | Δ{c[0].split(' ')[0]}" for c in cols) + " |",
              "|---|" + "---|---|" * len(cols)]
    stacks = {}
    for p in policies:
      if not all(t in r[p] for r in runs):
        continue
      cells = []
      for label, curve, i in cols:
        v = np.stack([np.asarray(r[p][t]["per_prompt"][curve])[:, i] for r in runs])
        b = np.stack([np.asarray(r[BASE][t]["per_prompt"][curve])[:, i] for r in runs])
        stacks[(p, label)] = (v, b)
        seeds = ", ".join(f"{100 * x:.1f}" for x in v.mean(1))
        cells.append(f"{100 * v.mean():.1f} [{seeds}]")
        cells.append("—" if p == BASE else _fmt_delta(paired(v, b)))
      lines.append(f"| {p} | " + " | ".join(cells) + " |")
    lines.append("")
    # Difficulty split of pass@N (and Bo-N) differences.
    sols = np.asarray(base0["num_solutions"])
    levels = np.asarray(base0["levels"])
    groups = [(lab, (sols >= lo) & (sols <= hi)) for lo, hi, lab in DIFFICULTY if sols.max() > 0]
    groups += [(f"level {l}", levels == l) for l in sorted(set(levels.tolist()))]
    for label in [c[0] for c in cols if c[0].startswith(("pass@", "Bo-")) and c[0] != "pass@1"]:
      lines += [f"Δ{label} by difficulty (T = {t:g}; prompts per group in the header):", "",
                "| policy | " + " | ".join(f"{g} ({int(m.sum())})" for g, m in groups) + " |",
                "|---|" + "---|" * len(groups)]
      for p in policies:
        if p == BASE or (p, label) not in stacks:
          continue
        v, b = stacks[(p, label)]
        cells = [_fmt_delta(paired(v[:, m], b[:, m])) if m.sum() > 1 else "—" for _, m in groups]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
      lines.append("")
  lines += coscaling_section(runs, temps)
  return "\n".join(lines)


def coscaling_section(runs, temps) -> list[str]:
  """Fits exp(a(T) N^b(T)) to the starting policy's pass@N curve per T (seed-averaged)."""
  if len(temps) < 2:
    return []
  fits, ks = {}, runs[0][BASE][temps[0]]["ks"]
  for t in temps:
    curve = np.mean([np.asarray(r[BASE][t]["overall"]["pass@k"]) for r in runs], axis=0)
    try:
      fits[t] = (*fit_pass_at_n_law(ks, curve), curve)
    except ValueError:
      continue
  ns = [1, 2, 4, 8, 16, 32, 64, 128, 256]
  lines = ["### Co-scaling law of the starting policy: pass@N(T) ≈ exp(a(T)·N^b(T))", "",
           "| T | a | b | max abs. residual (pts) over N ≤ " + str(ks[-1]) + " |", "|---|---|---|---|"]
  for t, (a, b, curve) in fits.items():
    resid = np.max(np.abs(pass_at_n_law(a, b, ks) - curve))
    lines.append(f"| {t:g} | {a:.3f} | {b:.3f} | {100 * resid:.1f} |")
  lines += ["", "Temperature the fitted laws recommend per N (N > " + str(ks[-1]) + " extrapolated):", "",
            "| N | " + " | ".join(str(n) for n in ns) + " |", "|---|" + "---|" * len(ns)]
  best = [max(fits, key=lambda t: pass_at_n_law(fits[t][0], fits[t][1], n)) for n in ns]
  lines.append("| best T | " + " | ".join(f"{t:g}" for t in best) + " |")
  return lines + [""]


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Pool pipeline workdirs (one per seed) into a paired report.")
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--out", default="", help="also write the markdown here (refuses to overwrite)")
  args = parser.parse_args(argv)
  try:
    text = build(args.workdirs)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(text)
  if args.out:
    if os.path.exists(args.out):
      print(f"error: --out={args.out} exists; choose a new path", file=sys.stderr)
      sys.exit(2)
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
