"""Verifier quality as a dial: BoN-RL-V against verifiers of known within-prompt AUC.

From one finished SFT policy (a pipeline workdir), fine-tunes BoN-RL-V with
`verifier.noisy_grader_verifier` at each target AUC (the grader's verdict plus
noise fixed by the completion's text, so the policy can find wrong answers the
verifier over-scores), BoN-RL-S (the exact selector) and RLOO (RL for pass@1),
all with the same budget, seed and prompts as the config's `rl` section. Every
policy, and the SFT base, is then sampled once on the held-out prompts
(`config.eval`, same keys for all) and scored by the noisy verifier at every
AUC: true Bo-N (the verifier's pick, graded) and pass@k, paired per prompt
against the base. Writes ``dial.json``, ``dial.md`` and ``dial.png`` to
--out_dir; docs/RESULTS.md quotes it.

Usage::

  python bench/verifier_dial.py --sft_workdir=/tmp/bon_demo --config=configs/demo.py \
      --aucs=0.6,0.7,0.8,0.9,1.0 --out_dir=/tmp/dial_s0 --seed=0

Fine-tuning stages live in ``--out_dir/rl/<name>`` and resume; the SFT workdir
is read, never written (it is copied to a temporary directory to restore).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from bon_jax import bon  # pylint: disable=g-import-not-at-top
from bon_jax import evaluate  # pylint: disable=g-import-not-at-top
from bon_jax import experiment  # pylint: disable=g-import-not-at-top
from bon_jax import pipeline  # pylint: disable=g-import-not-at-top
from bon_jax import rl  # pylint: disable=g-import-not-at-top
from bon_jax import train  # pylint: disable=g-import-not-at-top
from bon_jax import verifier as verifier_lib  # pylint: disable=g-import-not-at-top


def _config(path: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _stages(aucs: list[float]) -> dict[str, dict]:
  """name -> rl overrides of every fine-tuning stage of the sweep."""
  out = {"rloo": dict(algorithm="rloo", verifier="grader"),
         "bon_rl_s": dict(algorithm="bon_rl_s", verifier="grader")}
  for a in aucs:
    out[f"bon_rl_v@{a:g}"] = dict(algorithm="bon_rl_v", verifier="noisy", verifier_auc=a)
  return out


def _paired(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
  """Mean of y - x over prompts and its 95% normal half-width."""
  d = np.asarray(y, float) - np.asarray(x, float)
  return float(d.mean()), float(1.96 * d.std(ddof=1) / math.sqrt(len(d)))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sft_workdir", required=True, help="a pipeline workdir whose SFT stage finished")
  ap.add_argument("--config", default="configs/demo.py", help="the config that workdir was run with")
  ap.add_argument("--aucs", default="0.6,0.7,0.8,0.9,1.0")
  ap.add_argument("--seed", type=int, default=0, help="config.rl.seed of every stage")
  ap.add_argument("--steps", type=int, default=None, help="override config.rl.steps")
  ap.add_argument("--learning_rate", type=float, default=None, help="override config.rl.learning_rate")
  ap.add_argument("--kl_coef", type=float, default=None, help="override config.rl.kl_coef")
  ap.add_argument("--out_dir", required=True)
  args = ap.parse_args()
  if not os.path.exists(os.path.join(args.sft_workdir, "config.json")):
    sys.exit(f"error: --sft_workdir={args.sft_workdir} holds no run (config.json)")
  aucs = [float(a) for a in args.aucs.split(",")]
  cfg = _config(args.config)
  cfg.rl.seed = args.seed
  for field in ("steps", "learning_rate", "kl_coef"):
    if getattr(args, field) is not None:
      cfg.rl[field] = getattr(args, field)
  tok, task = experiment.load_tokenizer(cfg), experiment.make_task(cfg)
  train_set, test_set = experiment.make_task_splits(cfg.task)
  model = experiment.make_policy(cfg, tok)
  with tempfile.TemporaryDirectory() as tmp:  # train_sft only restores here: the source stays untouched.
    work = os.path.join(tmp, "sft")
    shutil.copytree(args.sft_workdir, work, ignore=shutil.ignore_patterns("rl", "verifier", "eval"))
    base = train.train_sft(cfg, work, model=model, tokenizer=tok, train_set=train_set, task=task).params

  policies = {pipeline.BASE: base}
  for name, overrides in _stages(aucs).items():
    stage = ml_collections.ConfigDict(cfg.to_dict())
    stage.rl.update(overrides)
    t0 = time.perf_counter()
    state, _ = rl.train_rl(stage, os.path.join(args.out_dir, "rl", name), init_params=base,
                           problems=train_set, task=task)
    policies[name] = state.params
    print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)

  n_sel = cfg.rl.N
  problems = test_set[: cfg.eval.num_prompts]
  scorers = {a: verifier_lib.noisy_grader_verifier(task, target_auc=a, seed=cfg.rl.verifier_noise_seed)
             for a in aucs}
  per_prompt = {}  # policy -> metric -> float[P]
  for name, params in policies.items():
    graded = evaluate.sample_and_grade(
        model=model, params=params, tokenizer=tok, problems=problems, task=task, cfg=cfg.eval,
        rng=jax.random.fold_in(jax.random.key(cfg.seed), 0xE7A1), keep_texts=True)
    c = graded["correct"]
    row = {"pass@1": np.asarray(bon.pass_at_k(c, 1)), f"pass@{n_sel}": np.asarray(bon.pass_at_k(c, n_sel))}
    for a, fn in scorers.items():
      scores = fn(problems, graded["texts"], None)
      row[f"bo@{n_sel}@{a:g}"] = np.asarray(bon.best_of_k(c, scores, n_sel))
      row[f"auc@{a:g}"] = verifier_lib.within_prompt_auc(scores, c)
    per_prompt[name] = row
    print(f"evaluated {name}", flush=True)

  base_row = per_prompt[pipeline.BASE]
  table = {}
  for name, row in per_prompt.items():
    entry = {}
    for metric, v in row.items():
      if metric.startswith("auc@"):
        entry[metric] = v
        continue
      entry[metric] = float(np.mean(v))
      if name != pipeline.BASE:
        entry[metric + "_delta"], entry[metric + "_ci95"] = _paired(base_row[metric], v)
    table[name] = entry
  os.makedirs(args.out_dir, exist_ok=True)
  result = {"aucs": aucs, "N": n_sel, "seed": args.seed, "rl_steps": cfg.rl.steps,
            "learning_rate": cfg.rl.learning_rate, "kl_coef": cfg.rl.kl_coef,
            "num_prompts": len(problems), "num_samples": cfg.eval.num_samples,
            "temperature": cfg.eval.temperature, "table": table,
            "per_prompt": {k: {m: np.asarray(v).tolist() for m, v in r.items()} for k, r in per_prompt.items()}}
  with open(os.path.join(args.out_dir, "dial.json"), "w") as f:
    json.dump(result, f)

  lines = [f"Bo-{n_sel} selected by a noisy grader of within-prompt AUC a (true reward), Δ vs the SFT base"
           f" (paired, ±95% over {len(problems)} prompts), seed {args.seed}, {cfg.rl.steps} RL steps", "",
           "| policy | " + " | ".join(f"Bo-{n_sel} @ AUC {a:g}" for a in aucs) + f" | pass@1 | pass@{n_sel} |",
           "|---|" + "---|" * (len(aucs) + 2)]
  for name, e in table.items():
    cell = lambda m: (f"{100 * e[m]:.1f}" if name == pipeline.BASE else
                      f"{100 * e[m + '_delta']:+.1f} ±{100 * e[m + '_ci95']:.1f}")
    lines.append(f"| {name} | " + " | ".join(cell(f"bo@{n_sel}@{a:g}") for a in aucs)
                 + f" | {cell('pass@1')} | {cell(f'pass@{n_sel}')} |")
  md = "\n".join(lines) + "\n"
  with open(os.path.join(args.out_dir, "dial.md"), "w") as f:
    f.write(md)
  print(md)

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6, 4))
  own = [table[f"bon_rl_v@{a:g}"][f"bo@{n_sel}@{a:g}_delta"] for a in aucs]
  own_ci = [table[f"bon_rl_v@{a:g}"][f"bo@{n_sel}@{a:g}_ci95"] for a in aucs]
  ax.errorbar(aucs, 100 * np.array(own), 100 * np.array(own_ci), marker="o", capsize=3,
              label="BoN-RL-V trained with that verifier")
  for name, style in (("bon_rl_s", "s--"), ("rloo", "^:")):
    ax.plot(aucs, [100 * table[name][f"bo@{n_sel}@{a:g}_delta"] for a in aucs], style, label=name)
  ax.axhline(0, color="gray", lw=0.8)
  ax.set_xlabel("verifier within-prompt AUC")
  ax.set_ylabel(f"Δ true Bo-{n_sel} vs SFT (points)")
  ax.set_title(f"Verifier quality as a dial (seed {args.seed})")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out_dir, "dial.png"), dpi=120)
  print(f"wrote {args.out_dir}/dial.{{json,md,png}}")


if __name__ == "__main__":
  main()
