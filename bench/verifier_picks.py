"""Which wrong answers does a pipeline's learned verifier pick? (step-format Countdown)

Reads a finished demo workdir (its SFT checkpoint and `verifier/`; nothing is
written there), samples the SFT policy on held-out prompts, lets the verifier
pick one of N per prompt, and counts the kinds of its picks
(`verifier_ablation.step_error_kind`: right, unavailable_number,
false_last_step, false_step, wrong_value, unused_digits, malformed) — overall
and on the prompts where a right answer was among the N. Then, for each kind,
the Bo-N the same scores would give if every answer of that kind were ranked
last: which check the verifier misses costs the most.

Usage::

  python bench/verifier_picks.py --workdir=/tmp/bon_demo [--config=configs/demo.py] [--num_samples=8]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from bon_jax import evaluate  # pylint: disable=g-import-not-at-top
from bon_jax import experiment  # pylint: disable=g-import-not-at-top
from bon_jax import models  # pylint: disable=g-import-not-at-top
from bon_jax import train  # pylint: disable=g-import-not-at-top
from bon_jax import verifier as verifier_lib  # pylint: disable=g-import-not-at-top
import verifier_ablation  # pylint: disable=g-import-not-at-top

KINDS = ("unavailable_number", "false_last_step", "false_step", "wrong_value", "unused_digits", "malformed")


def picks(workdir: str, config, *, num_prompts: int, num_samples: int, seed: int) -> dict:
  tok = experiment.load_tokenizer(config)
  task = experiment.make_task(config)
  train_set, test_set = experiment.make_task_splits(config.task, os.path.join(workdir, experiment.TFDS_DIR))
  model = experiment.make_policy(config, tok)
  with tempfile.TemporaryDirectory() as tmp:  # Restores the SFT state without touching the workdir.
    shutil.copytree(os.path.join(workdir, "checkpoints"), os.path.join(tmp, "checkpoints"))
    state = train.train_sft(config, tmp, model=model, tokenizer=tok, train_set=train_set, task=task)
  vparams = verifier_lib.load_verifier(os.path.join(workdir, "verifier", "verifier"), models.base_model(model))
  ver = verifier_lib.learned_verifier(models.base_model(model), vparams, tokenizer=tok, task=task,
                                      pooling=config.verifier.pooling)
  cfg = config.eval
  cfg.num_samples = num_samples
  problems = test_set[:num_prompts]
  g = evaluate.sample_and_grade(model=model, params=state.params, tokenizer=tok, problems=problems, task=task,
                                cfg=cfg, rng=jax.random.key(seed), verifier=ver, keep_texts=True)
  correct, scores = g["correct"], g["verifier_score"]
  kinds = [[verifier_ablation.step_error_kind(p, t) for t in group] for p, group in zip(problems, g["texts"])]
  rows = np.arange(len(problems))
  pick = scores.argmax(1)
  has_right = correct.max(1) > 0
  out = {"prompts": len(problems), "N": num_samples, "pass@1": float(correct.mean()),
         "pass@N": float(has_right.mean()), "Bo-N": float(correct[rows, pick].mean()),
         "samples": dict(collections.Counter(k for ks in kinds for k in ks)),
         "picks": dict(collections.Counter(ks[j] for ks, j in zip(kinds, pick))),
         "wrong_picks_with_a_right_answer": dict(collections.Counter(
             ks[j] for ks, j, h in zip(kinds, pick, has_right) if h and ks[j] != "right")),
         "prompts_with_a_right_answer": int(has_right.sum()), "Bo-N_if_ranked_last": {}}
  kind_of = np.asarray(kinds)  # [prompts, N] strings
  for kind in KINDS:
    demoted = np.where(kind_of == kind, -np.inf, scores)
    out["Bo-N_if_ranked_last"][kind] = float(correct[rows, demoted.argmax(1)].mean())
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a finished pipeline workdir (SFT + verifier)")
  parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py"))
  parser.add_argument("--seed", type=int, default=0, help="the workdir's config.seed")
  parser.add_argument("--num_prompts", type=int, default=256)
  parser.add_argument("--num_samples", type=int, default=8)
  parser.add_argument("--sample_seed", type=int, default=1234, help="key of the fresh samples")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  for path in (os.path.join(args.workdir, "checkpoints"), os.path.join(args.workdir, "verifier", "verifier")):
    if not os.path.isdir(path):
      parser.exit(2, f"error: {path} is missing; pass the workdir of a finished pipeline run (SFT and verifier)\n")
  config = verifier_ablation._config(args.config)  # pylint: disable=protected-access
  config.seed = args.seed
  res = picks(args.workdir, config, num_prompts=args.num_prompts, num_samples=args.num_samples,
              seed=args.sample_seed)
  print(json.dumps(res, indent=1))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
