"""Best-of-N evaluation: sample n completions per test prompt, grade, curve.

For k = 1, 2, 4, ..., n it reports, averaged over prompts, the unbiased
estimators of `bon_jax.bon` computed from the same n samples:

* ``pass@k``: some of k samples is correct.
* ``bo@k``: the exact grader's pick among k samples is correct (it equals
  pass@k; kept so tables line up with the paper's Bo-k columns).
* ``bo@k_verifier``: the learned verifier's pick is correct (only when a
  verifier is passed: the paper's Bo-N).
* ``bo@k_logprob``: the policy's mean token log-prob (T=1) picks, a weak
  learned-free selector that shows what an imperfect verifier does.
* ``maj@k``: the most frequent final answer among k samples is correct.

Example::

  graded = evaluate.sample_and_grade(model=model, params=params, tokenizer=tok,
                                     problems=test, task=registry.COUNTDOWN, cfg=config.eval,
                                     rng=jax.random.key(0))
  results = evaluate.summarize(graded, test)
  print(evaluate.format_table(results))
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bon_jax import bon
from bon_jax import input_pipeline
from bon_jax import sampling
from bon_jax import sharding
from bon_jax.tasks import base as task_lib

CURVES = ("pass@k", "bo@k", "bo@k_logprob", "maj@k")
VERIFIER_CURVE = "bo@k_verifier"


def curve_names(results: dict[str, Any]) -> list[str]:
  """The curves present in `summarize` output (bo@k_verifier only with a verifier)."""
  return [c for c in (*CURVES, VERIFIER_CURVE) if c in results["overall"]]


def ks_for(n: int) -> list[int]:
  """1, 2, 4, ... up to n, and n itself."""
  ks = [2**i for i in range(int(math.log2(n)) + 1)]
  return ks if ks[-1] == n else ks + [n]


def sample_and_grade(
    *,
    model: Any,
    params: Any,
    tokenizer: Any,
    problems: Sequence[Any],
    task: Any,
    cfg: ml_collections.ConfigDict,
    rng: jax.Array,
    verifier: Any = None,
    keep_texts: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, np.ndarray]:
  """Samples `cfg.num_samples` completions per problem and grades them.

  Returns per-sample arrays of shape [num_problems, n]: `correct` (0/1),
  `answer_id` (equal ids = equal final answers; -1 = no valid answer),
  `mean_logprob` (mean token log-prob at T=1), `length` (tokens),
  `verifier_score` when `verifier` (a `bon_jax.verifier.Verifier`) is given,
  and `texts` (the decoded completions, a list of lists) with `keep_texts`,
  e.g. to score the same samples with other verifiers.

  With a `bon_jax.sharding` mesh the sampler runs on it, each batch split over
  its batch axes (``cfg.prompts_per_batch`` x ``cfg.num_samples`` rows); the
  samples come back to every host for grading.
  """
  n = cfg.num_samples
  prompts_all = [task.prompt_text(p) for p in problems]
  prompt_len = int(input_pipeline.encode_prompts(tokenizer, prompts_all).shape[1])
  correct, answer_id, mean_lp, lengths, vscores, all_texts = [], [], [], [], [], []
  for start in range(0, len(problems), cfg.prompts_per_batch):
    chunk = problems[start : start + cfg.prompts_per_batch]
    prompts = prompts_all[start : start + cfg.prompts_per_batch]
    # Pad the last chunk to the full batch so every call hits the same compiled shape.
    pad = cfg.prompts_per_batch - len(chunk)
    tokens = input_pipeline.device_prompts(tokenizer, prompts + prompts[:1] * pad, prompt_len, mesh)
    out = sampling.sample(
        model,
        params,
        tokens,
        jax.random.fold_in(rng, start),
        num_samples=n,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k or None,
        top_p=cfg.top_p if cfg.top_p < 1 else None,
        mesh=mesh,
    )
    toks, lens, lp = (x[: len(chunk)] for x in sharding.to_host((out.tokens, out.lengths, out.logprobs_t1)))
    lp = lp.sum(-1) / np.maximum(lens, 1)
    texts = [[tokenizer.decode(toks[b, i, : lens[b, i]].tolist()) for i in range(n)]
             for b in range(len(chunk))]
    chunk_c, chunk_a = task_lib.grade_completions(task, chunk, texts)  # The chunk's samples together.
    correct += chunk_c.tolist()
    answer_id += chunk_a.tolist()
    if verifier is not None:
      vscores.append(np.asarray(verifier(chunk, texts, toks), np.float32))
    all_texts += texts
    mean_lp.append(lp)
    lengths.append(lens)
  out = {
      "correct": np.asarray(correct, np.float32),
      "answer_id": np.asarray(answer_id, np.int32),
      "mean_logprob": np.concatenate(mean_lp).astype(np.float32),
      "length": np.concatenate(lengths).astype(np.int32),
  }
  if verifier is not None:
    out["verifier_score"] = np.concatenate(vscores)
  if keep_texts:
    out["texts"] = all_texts
  return out


def curves(graded: dict[str, np.ndarray], ks: Sequence[int]) -> dict[str, np.ndarray]:
  """Per-prompt curves: each value is float[num_problems, len(ks)]."""
  c = graded["correct"]
  with_verifier = "verifier_score" in graded
  out = {name: [] for name in (*CURVES, VERIFIER_CURVE)[: len(CURVES) + with_verifier]}
  for k in ks:
    out["pass@k"].append(np.asarray(bon.pass_at_k(c, k)))
    out["bo@k"].append(np.asarray(bon.best_of_k(c, c, k)))
    out["bo@k_logprob"].append(np.asarray(bon.best_of_k(c, graded["mean_logprob"], k)))
    out["maj@k"].append(np.asarray(bon.maj_at_k(graded["answer_id"], c, k)))
    if with_verifier:
      out[VERIFIER_CURVE].append(np.asarray(bon.best_of_k(c, graded["verifier_score"], k)))
  return {name: np.stack(v, axis=-1) for name, v in out.items()}


def summarize(
    graded: dict[str, np.ndarray], problems: Sequence[Any]
) -> dict[str, Any]:
  """Means and 95% normal intervals over prompts, overall and per level.

  Also keeps the per-prompt curves (``per_prompt[curve]``: [num_problems][len(ks)])
  so runs evaluated on the same prompts can be compared paired
  (`bon_jax.report`).
  """
  n = graded["correct"].shape[1]
  ks = ks_for(n)
  per_prompt = curves(graded, ks)
  levels = np.asarray([p.level for p in problems])

  def stats(mask: np.ndarray) -> dict[str, Any]:
    res = {"num_prompts": int(mask.sum())}
    for name, v in per_prompt.items():
      v = v[mask]
      res[name] = v.mean(0).tolist()
      res[name + "_ci95"] = (1.96 * v.std(0, ddof=1) / math.sqrt(len(v))).tolist() if len(v) > 1 else [0.0] * len(ks)
    return res

  return {
      "ks": ks,
      "num_samples": n,
      "overall": stats(np.ones(len(problems), bool)),
      "by_level": {int(l): stats(levels == l) for l in np.unique(levels)},
      "mean_length": float(graded["length"].mean()),
      "per_prompt_correct": graded["correct"].sum(1).astype(int).tolist(),
      "per_prompt": {name: np.round(v, 6).tolist() for name, v in per_prompt.items()},
      "levels": levels.tolist(),
      # Difficulty by how many distinct valid answers a prompt has (countdown).
      "num_solutions": [int(getattr(p, "num_solutions", 0) or 0) for p in problems],
      "prompt_ids": [str(getattr(p, "id", i)) for i, p in enumerate(problems)],
  }


def format_table(results: dict[str, Any]) -> str:
  """A plain-text table of the overall curves (rows: metric, columns: k)."""
  ks = results["ks"]
  head = f"{'metric':<14}" + "".join(f"{'k=' + str(k):>8}" for k in ks)
  rows = [head, "-" * len(head)]
  for name in curve_names(results):
    vals = results["overall"][name]
    rows.append(f"{name:<14}" + "".join(f"{100 * v:>7.1f}%" for v in vals))
  return "\n".join(rows)


def write_report(results: dict[str, Any], out_dir: str, name: str) -> tuple[str, str]:
  """Writes `<name>.json` and `<name>.png` (the curves) into `out_dir`."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, name + ".json")
  with open(json_path, "w") as f:
    json.dump(results, f, indent=1)
  fig, ax = plt.subplots(figsize=(6, 4))
  ks = results["ks"]
  for curve in curve_names(results):
    mean = np.asarray(results["overall"][curve])
    ci = np.asarray(results["overall"][curve + "_ci95"])
    # With the grader as verifier bo@k equals pass@k: dash it so both show.
    label = "bo@k (grader verifier)" if curve == "bo@k" else curve
    ax.plot(ks, 100 * mean, marker="o", label=label, linestyle="--" if curve == "bo@k" else "-")
    ax.fill_between(ks, 100 * (mean - ci), 100 * (mean + ci), alpha=0.15)
  ax.set_xscale("log", base=2)
  ax.set_xticks(ks, [str(k) for k in ks])
  ax.set_xlabel("k (samples)")
  ax.set_ylabel("accuracy on held-out prompts (%)")
  ax.set_title(f"{name}: {results['overall']['num_prompts']} prompts, n={results['num_samples']}")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  png_path = os.path.join(out_dir, name + ".png")
  fig.savefig(png_path, dpi=120)
  plt.close(fig)
  return json_path, png_path
