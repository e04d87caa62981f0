"""Why the learned verifier does not select: error kinds and BCE vs BCE + ranking.

Samples the verifier stage's data once from an SFT workdir's policy (the same
prompts, keys and sizes as `config.verifier`), counts the kinds of wrong
answers on the held-out prompts, then trains one verifier per variant on the
same data and reports pooled AUC, within-prompt AUC (`verifier.within_prompt_auc`)
and Bo-k on held-out and on 256 training prompts. docs/RESULTS.md quotes it.

Usage::

  python bench/verifier_ablation.py --sft_workdir=/tmp/bon_demo \
      --variants=bce:0:600,rank1:1:600,rank4:4:600 --out=/tmp/verifier_ablation.json

A variant is name:rank_weight:steps[:synthetic[:pooling]] (`config.verifier.rank_weight`,
`.steps`; `synthetic` adds that many groups of task-made answers, see
`synthetic_data`, from training prompts the policy data does not use;
`pooling` is `config.verifier.pooling`, default "last");
the rest of `config.verifier` comes from --config (default configs/countdown_bon.py).
The SFT workdir is read, never written (it is copied to a temporary directory).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from bon_jax import experiment  # pylint: disable=g-import-not-at-top
from bon_jax import grading  # pylint: disable=g-import-not-at-top
from bon_jax import input_pipeline  # pylint: disable=g-import-not-at-top
from bon_jax import models  # pylint: disable=g-import-not-at-top
from bon_jax import pipeline  # pylint: disable=g-import-not-at-top
from bon_jax import train  # pylint: disable=g-import-not-at-top
from bon_jax import verifier as verifier_lib  # pylint: disable=g-import-not-at-top
from bon_jax.tasks import countdown  # pylint: disable=g-import-not-at-top


def _config(path: str):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def step_error_kind(p, text: str) -> str:
  """What is wrong with a "steps" completion: the first fault on the way.

  "right"; "malformed" (not a list of ``a op b = c``); "unavailable_number"
  (a number not given or already used); "false_step" / "false_last_step" (a
  written result that is not the operation's value); "unused_digits"; or
  "wrong_value" (a true chain that ends elsewhere than the target).
  """
  try:
    steps = countdown.parse_steps(text)
  except countdown.ParseError:
    return "malformed"
  pool = collections.Counter(p.digits)
  for i, (a, op, b, c) in enumerate(steps):
    for x in (a, b):
      if pool[x] <= 0:
        return "unavailable_number"
      pool[x] -= 1
    if c != {"+": a + b, "-": a - b, "*": a * b}[op]:
      return "false_last_step" if i == len(steps) - 1 else "false_step"
    pool[c] += 1
  left = list(pool.elements())
  if len(left) != 1:
    return "unused_digits"
  return "right" if left[0] == p.target else "wrong_value"


def error_kinds(task, problems, texts) -> dict[str, int]:
  """Counts right answers and the kinds of wrong ones (expression or steps format)."""
  if problems and getattr(problems[0], "solution_format", "expression") == "steps":
    return dict(collections.Counter(step_error_kind(p, t) for p, g in zip(problems, texts) for t in g))
  kinds = {"right": 0, "no_box": 0, "wrong_digits_or_syntax": 0, "wrong_value": 0}
  for p, group in zip(problems, texts):
    for t in group:
      boxed = grading.extract_boxed(t)
      if task.grade(p, t):
        kinds["right"] += 1
      elif boxed is None:
        kinds["no_box"] += 1
      elif countdown.digits_value(boxed, p.digits) is None:
        kinds["wrong_digits_or_syntax"] += 1
      else:
        kinds["wrong_value"] += 1
  return kinds


def synthetic_data(tokenizer, task, problems, rng: np.random.Generator, *, num_samples: int,
                   max_new_tokens: int) -> dict[str, np.ndarray]:
  """Graded answers made by the task instead of the policy: half right, half near misses.

  Each right answer is a random form of a solution (`countdown.sample_form`);
  each wrong one a form over the same digits making another value within 10
  of the target (the policy's dominant error: right digits, wrong value).
  Same layout as `verifier.make_verifier_data` (tokens [P, N, L], labels [P, N]).
  """
  comps = np.zeros((len(problems), num_samples, max_new_tokens), np.int32)
  labels = np.zeros((len(problems), num_samples), np.float32)
  for i, p in enumerate(problems):
    if p.solution_format == "steps":  # The task's own examples: right chains and false last steps.
      for j, (text, label) in enumerate(countdown.verifier_examples(p, rng, num_samples)):
        ids = [*tokenizer.encode(text), models.EOS_ID][:max_new_tokens]
        comps[i, j, : len(ids)], labels[i, j] = ids, label
      continue
    reach = [v for v in countdown.target_stats(p.digits) if v != p.target]
    near = [v for v in reach if abs(v - p.target) <= 10] or reach
    for j in range(num_samples):
      right = j % 2 == 0
      value = p.target if right else int(rng.choice(near))
      ids = [*tokenizer.encode(f"\\boxed{{{countdown.sample_form(p.digits, value, rng)}}}"), models.EOS_ID]
      comps[i, j, : len(ids)] = ids[:max_new_tokens]
      labels[i, j] = float(right)
    order = rng.permutation(num_samples)
    comps[i], labels[i] = comps[i, order], labels[i, order]
  prompts = input_pipeline.encode_prompts(tokenizer, [task.prompt_text(p) for p in problems])
  tokens, _ = verifier_lib.join_prompt_completion(jax.numpy.asarray(prompts), jax.numpy.asarray(comps))
  return {"tokens": np.asarray(tokens), "labels": labels}


def _concat_groups(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Stacks two grouped data sets, right-padding tokens to a common length."""
  length = max(a["tokens"].shape[-1], b["tokens"].shape[-1])
  pad = lambda t: np.pad(t, ((0, 0), (0, 0), (0, length - t.shape[-1])))  # PAD_ID is 0.
  return {"tokens": np.concatenate([pad(a["tokens"]), pad(b["tokens"])]),
          "labels": np.concatenate([a["labels"], b["labels"]])}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sft_workdir", required=True, help="a finished SFT (demo) workdir")
  ap.add_argument("--config", default="configs/countdown_bon.py")
  ap.add_argument("--variants", default="bce:0:600,rank1:1:600,rank4:4:600")
  ap.add_argument("--num_prompts", type=int, default=None, help="override config.verifier.num_prompts")
  ap.add_argument("--holdout_prompts", type=int, default=None)
  ap.add_argument("--learning_rate", type=float, default=None, help="override config.verifier.learning_rate")
  ap.add_argument("--out", default="/tmp/verifier_ablation.json")
  args = ap.parse_args()
  if not os.path.exists(os.path.join(args.sft_workdir, "config.json")):
    sys.exit(f"--sft_workdir={args.sft_workdir} holds no run (config.json); run configs/demo.py first")

  cfg = _config(args.config)
  vc = cfg.verifier
  if args.num_prompts:
    vc.num_prompts = args.num_prompts
  if args.holdout_prompts:
    vc.holdout_prompts = args.holdout_prompts
  if args.learning_rate:
    vc.learning_rate = args.learning_rate
  tok, task = experiment.load_tokenizer(cfg), experiment.make_task(cfg)
  train_set, test_set = experiment.make_task_splits(cfg.task)
  model = experiment.make_policy(cfg, tok)
  with tempfile.TemporaryDirectory() as tmp:  # train_sft only restores here: the source stays untouched.
    work = os.path.join(tmp, "sft")
    shutil.copytree(args.sft_workdir, work, ignore=shutil.ignore_patterns("rl", "verifier", "eval"))
    state = train.train_sft(cfg, work, model=model, tokenizer=tok, train_set=train_set, task=task)
  policy, backbone = pipeline._plain(model, state.params), models.base_model(model)  # pylint: disable=protected-access

  key = jax.random.key(vc.seed)
  kw = dict(tokenizer=tok, task=task, num_samples=vc.num_samples, max_new_tokens=vc.max_new_tokens,
            temperature=vc.temperature, prompts_per_batch=vc.prompts_per_batch)
  t0 = time.perf_counter()
  tr = verifier_lib.make_verifier_data(backbone, policy, problems=train_set[: vc.num_prompts],
                                       rng=jax.random.fold_in(key, 0), **kw)
  held = verifier_lib.make_verifier_data(backbone, policy, problems=test_set[: vc.holdout_prompts],
                                         rng=jax.random.fold_in(key, 1), **kw)
  out = {"sampling_s": time.perf_counter() - t0, "num_prompts": vc.num_prompts,
         "holdout_prompts": vc.holdout_prompts, "num_samples": vc.num_samples,
         "held_out_error_kinds": error_kinds(
             task, test_set, verifier_lib.decode_completions(tok, held["completions"])),
         "variants": {}}
  print(json.dumps({k: v for k, v in out.items() if k != "variants"}), flush=True)
  ks = [k for k in vc.ks if k <= vc.num_samples]
  for spec in args.variants.split(","):
    name, rank_weight, steps, *rest = spec.split(":")
    synth = int(rest[0]) if rest and rest[0] else 0
    pooling = rest[1] if len(rest) > 1 else "last"
    rank_weight, steps = float(rank_weight), int(steps)
    data = tr
    if synth:  # Extra task-made groups from training prompts the policy data does not use.
      extra = train_set[vc.num_prompts : vc.num_prompts + synth]
      if len(extra) < synth:
        sys.exit(f"{name}: only {len(extra)} training prompts left for {synth} synthetic groups")
      data = _concat_groups(tr, synthetic_data(tok, task, extra, np.random.default_rng(vc.seed),
                                               num_samples=vc.num_samples, max_new_tokens=vc.max_new_tokens))
    # The stage's init and minibatches (BCE alone: independent sequences; ranking: whole groups).
    params = verifier_lib.init_verifier(backbone, jax.random.fold_in(key, 2), backbone=policy)
    tokens, labels = data["tokens"], data["labels"]
    if not rank_weight:
      tokens, labels = tokens.reshape(-1, tokens.shape[-1]), labels.reshape(-1)
    t0 = time.perf_counter()
    params, hist = verifier_lib.train_verifier(
        backbone, params, tokens, labels, steps=steps, batch_size=vc.batch_size,
        learning_rate=vc.learning_rate, weight_decay=vc.weight_decay, warmup_steps=vc.warmup_steps,
        rank_weight=rank_weight, pooling=pooling, seed=vc.seed)
    seconds = time.perf_counter() - t0
    sub = {k: v[:256] for k, v in tr.items()}
    ev = lambda d: verifier_lib.evaluate_verifier(backbone, params, d, ks=ks, batch_size=32, pooling=pooling)
    res = {"rank_weight": rank_weight, "steps": steps, "synthetic_groups": synth, "pooling": pooling,
           "train_seconds": seconds, "held_out": ev(held), "train": ev(sub),
           "last50": {k: float(np.mean([h[k] for h in hist[-50:]])) for k in hist[-1]} if hist else {}}
    out["variants"][name] = res
    h, t = res["held_out"], res["train"]
    print(f"{name}: held-out AUC {h['auc']:.3f}, within-prompt {h['within_prompt_auc']:.3f},"
          f" Bo-{ks[-1]} {100 * h['bo@k'][-1]:.1f}% (pass@1 {100 * h['pass@k'][0]:.1f}%,"
          f" pass@{ks[-1]} {100 * h['pass@k'][-1]:.1f}%); train within-prompt {t['within_prompt_auc']:.3f}",
          flush=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
