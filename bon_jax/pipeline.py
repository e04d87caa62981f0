"""The whole job: `train_and_evaluate(config, workdir)`, every stage resumable.

1. SFT of the policy (`bon_jax.train`), the base of every later stage;
2. the learned verifier (`bon_jax.verifier`) on its graded samples, when
   ``config.verifier.steps > 0``;
3. each of ``config.algorithms`` fine-tuned from the SFT policy through the
   one loop of `bon_jax.rl` (``<workdir>/rl/<name>``);
4. every policy evaluated on the same held-out prompts with the same keys
   (`bon_jax.evaluate`), and one comparison (`bon_jax.compare`).

A rerun with the same `--workdir` resumes each stage from its checkpoints and
reuses finished stages and evaluations: batches, prompts and sampling keys are
pure functions of `(seed, step)`, so the result equals an uninterrupted run.

Workdir layout::

  config.json            the config of the first run (identity check on resume)
  runs.jsonl             one line per launch
  tfds/                  the task's records (`bon_jax.tfds_builders`)
  checkpoints/<step>/    the SFT policy's Orbax TrainState {step, params, opt_state}
  metrics.jsonl          one JSON object per logged SFT step
  events.out.tfevents.*  the same metrics for TensorBoard
  eval/step_<s>.{json,png}  pass@k / Bo-k / maj@k curves of the policy at step s
  verifier/              the learned verifier and its report
  rl/<name>/             each fine-tuning stage: the same layout
  compare.{json,md,png}  the comparison of every policy
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import sys
import time
from typing import Any

from absl import logging
import jax
import ml_collections

from bon_jax import compare
from bon_jax import config_lib
from bon_jax import defaults
from bon_jax import evaluate
from bon_jax import experiment
from bon_jax import models
from bon_jax import multihost
from bon_jax import rl
from bon_jax import sharding
from bon_jax import train
from bon_jax import validation
from bon_jax import verifier as verifier_lib

BASE = config_lib.BASE  # The SFT policy in the pipeline's results and tables.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The whole job, resuming every stage from `workdir`.

  1. SFT (`train.train_sft`) of the policy: the base of every later stage.
  2. The learned verifier (`verifier.run_verifier_stage`) on the SFT policy's
     graded samples, when ``config.verifier.steps > 0``.
  3. Each of ``config.algorithms`` fine-tuned from the SFT policy through the
     one loop of `bon_jax.rl.train_rl` (``workdir/rl/<algorithm>``).
  4. Every policy evaluated on the same held-out prompts with the same keys
     (pass@k, Bo-k with the grader and the learned verifier, maj@k), at
     ``eval.temperature`` and each of ``eval.extra_temperatures``, and one
     comparison table + plot (``workdir/compare.{json,md,png}``).

  Returns {policy name: evaluation results at eval.temperature}, where
  `BASE` is the SFT policy every stage starts from.
  """
  validation.validate(config)
  tok = experiment.load_tokenizer(config)  # Before the workdir: a bad tokenizer leaves nothing behind.
  config_lib.prepare_workdir(config, workdir)
  task = experiment.make_task(config)
  train_set, test_set = experiment.make_task_splits(config.task, os.path.join(workdir, experiment.TFDS_DIR))
  model = experiment.make_policy(config, tok)
  # One mesh for every stage (None on one device): SFT, the verifier's sampling,
  # each RL stage and every evaluation run on it.
  mesh = sharding.mesh_for_run(config)
  with _stage("sft"):
    state = train.train_sft(config, workdir, model=model, tokenizer=tok, train_set=train_set, task=task,
                            mesh=mesh)
  base_params, final = state.params, config.train.steps
  del state

  learned = None
  if config.verifier.steps > 0:
    with _stage("verifier"):
      vparams = _verifier_stage(config, workdir, model, base_params, tok, train_set, test_set, task, mesh)
    learned = verifier_lib.learned_verifier(models.base_model(model), vparams, tokenizer=tok, task=task,
                                            pooling=config.verifier.pooling, mesh=mesh)

  with _stage(f"evaluation {BASE}"):
    results = {BASE: _evaluate_all(config, workdir, model, base_params, tok, test_set, final, learned, task,
                                   mesh)}
  for name in config.algorithms:
    stage = config_lib.stage_config(config, name)
    stage_dir = os.path.join(workdir, "rl", name)
    # The pipeline's verifier unless the stage names its own checkpoint.
    sel = learned if stage.rl.verifier == "learned" and not stage.rl.verifier_ckpt else None
    print(f"\nFine-tuning {name!r} ({stage.rl.algorithm}, N'={stage.rl.N_prime}, N={stage.rl.N},"
          f" {stage.rl.steps} steps) in {stage_dir}")
    with _stage(f"rl {name}"):
      rl_state, _ = rl.train_rl(stage, stage_dir, init_params=base_params, problems=train_set,
                                task=task, verifier=sel, mesh=mesh)
    with _stage(f"evaluation {name}"):
      results[name] = _evaluate_all(config, stage_dir, model, rl_state.params, tok, test_set,
                                    stage.rl.steps, learned, task, mesh)
    del rl_state
  if config.algorithms:
    compare.write_comparison(results, workdir, temperature=config.eval.temperature)
  return results


@contextlib.contextmanager
def _stage(name: str):
  """Prints the stage's wall time and the process's peak RSS so far (bench/paper_configs_e2e.py reads it)."""
  t0 = time.perf_counter()
  yield
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
  print(f"stage {name}: {time.perf_counter() - t0:.1f} s, peak RSS so far {peak / 2**30:.2f} GiB", flush=True)


def _plain(model: Any, params: Any) -> Any:
  """Params of the plain Transformer (LoRA adapters folded in), e.g. for the verifier's backbone."""
  return models.merge_lora(model, params) if models.is_lora(model) else params


def _verifier_stage(config, workdir, model, base_params, tok, train_set, test_set, task, mesh) -> Any:
  """Trains the verifier once per workdir; a rerun resumes or loads it (same config) or refuses."""
  out_dir = os.path.join(workdir, "verifier")
  report_path = os.path.join(out_dir, "report.json")
  config_path = os.path.join(out_dir, "config.json")
  want = _verifier_stage_config(config.to_dict()["verifier"], config.train.steps)
  refuse = config_lib.UserError(
      f"{out_dir} holds a verifier trained with another config.verifier or SFT length;"
      " use a new --workdir or the original settings")
  # Process 0 checks (and starts the stage's files) before the others look: one branch for all.
  with multihost.writer_first(f"check {out_dir}"):
    finished = os.path.exists(report_path)
    if finished:
      with open(report_path) as f:
        saved = json.load(f)
      saved_cfg = saved.get("config", {})
      if _verifier_stage_config(saved_cfg.get("verifier"), saved_cfg.get("train_steps")) != want:
        raise refuse
    elif os.path.exists(config_path):  # Stopped part-way: resume only the same stage.
      with open(config_path) as f:
        saved = json.load(f)
      if _verifier_stage_config(saved.get("verifier"), saved.get("train_steps")) != want:
        raise refuse
    elif multihost.is_writer():
      os.makedirs(out_dir, exist_ok=True)
      with open(config_path, "w") as f:
        json.dump(want, f, indent=1)
  if finished:
    print(f"\nLearned verifier: loaded from {out_dir} (held-out AUC {saved['report']['auc']:.3f})")
    return verifier_lib.load_verifier(os.path.join(out_dir, "verifier"), models.base_model(model), mesh)
  print(f"\nTraining the verifier ({config.verifier.steps} steps on"
        f" {config.verifier.num_prompts} x {config.verifier.num_samples} SFT samples)")
  t0 = time.perf_counter()
  vparams, report = verifier_lib.run_verifier_stage(
      config.verifier, model=models.base_model(model), policy_params=_plain(model, base_params),
      tokenizer=tok, task=task,
      train_problems=train_set, test_problems=test_set, out_dir=out_dir, mesh=mesh)
  report["seconds"] = time.perf_counter() - t0
  if multihost.is_writer():
    with open(report_path, "w") as f:
      json.dump({"config": want, "report": report}, f, indent=1)
  ks = report["ks"]
  print(f"Verifier: held-out AUC {report['auc']:.3f} (within prompts {report['within_prompt_auc']:.3f}); Bo-k "
        + ", ".join(f"k={k}: {100 * v:.1f}%" for k, v in zip(ks, report["bo@k"]))
        + " (pass@k " + ", ".join(f"{100 * v:.1f}%" for v in report["pass@k"]) + ")")
  return vparams


# config.verifier fields that change how the stage runs, not what it trains.
_VERIFIER_RUN_ONLY_FIELDS = ("checkpoint_every", "keep_checkpoints", "microbatch_groups")


def _verifier_stage_config(verifier: dict[str, Any] | None, train_steps: Any) -> dict[str, Any] | None:
  """What a verifier stage trained, as saved in its JSON files (fields added later at their defaults)."""
  if verifier is None:
    return None
  current = json.loads(json.dumps(defaults.verifier_config().to_dict()))
  merged = {**current, **json.loads(json.dumps(verifier))}
  return {"verifier": {k: v for k, v in merged.items() if k not in _VERIFIER_RUN_ONLY_FIELDS},
          "train_steps": train_steps}


def _evaluate_all(config, workdir, model, params, tok, test_set, step, verifier, task, mesh) -> dict[str, Any]:
  """`_evaluate_once` at eval.temperature and at each extra temperature."""
  results = _evaluate_once(config, workdir, model, params, tok, test_set, step, verifier, task=task, mesh=mesh)
  for t in config.eval.extra_temperatures:
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.eval.temperature = float(t)
    _evaluate_once(cfg, workdir, model, params, tok, test_set, step, verifier, task=task, mesh=mesh,
                   suffix=f"_T{t:g}")
  return results


# Settings of the whole evaluation stage, not of one evaluation: they do not
# invalidate a saved one.
_STAGE_ONLY_EVAL_FIELDS = ("extra_temperatures",)


def _saved_evaluation(out_dir: str, name: str, eval_cfg: ml_collections.ConfigDict,
                      learned: bool) -> dict[str, Any] | None:
  """A saved `name.json` or `name_<time>.json` made with `eval_cfg` and the same verifier kind."""
  if not os.path.isdir(out_dir):
    return None
  pattern = re.compile(re.escape(name) + r"(_\d+)?\.json")
  want = {k: v for k, v in json.loads(json.dumps(eval_cfg.to_dict())).items() if k not in _STAGE_ONLY_EVAL_FIELDS}
  for fname in sorted(os.listdir(out_dir)):
    if not pattern.fullmatch(fname):
      continue
    with open(os.path.join(out_dir, fname)) as f:
      saved = json.load(f)
    got = {k: v for k, v in saved.get("eval_config", {}).items() if k not in _STAGE_ONLY_EVAL_FIELDS}
    if got == want and saved.get("verifier") == ("learned" if learned else None):
      logging.info("Evaluation already in %s", os.path.join(out_dir, fname))
      return saved
  return None


def _evaluate_once(config, workdir, model, params, tok, test_set, step, verifier=None, *,
                   task: Any, mesh: Any = None, suffix: str = "") -> dict[str, Any]:
  """Evaluates at `step` unless an `eval/step_<step><suffix>[_<time>].json` has this eval config."""
  out_dir = os.path.join(workdir, "eval")
  name = f"step_{step}{suffix}"
  path = os.path.join(out_dir, name + ".json")
  saved = _saved_evaluation(out_dir, name, config.eval, verifier is not None)
  if saved is not None:
    print(evaluate.format_table(saved))
    return saved
  if os.path.exists(path):
    name = f"step_{step}{suffix}_{int(time.time())}"  # Never overwrite an earlier evaluation.
  problems = test_set[: config.eval.num_prompts]
  graded = evaluate.sample_and_grade(
      model=model,
      params=params,
      tokenizer=tok,
      problems=problems,
      task=task,
      cfg=config.eval,
      # The same key for every policy and stage: paired comparisons on common samples.
      rng=jax.random.fold_in(jax.random.key(config.seed), 0xE7A1),
      verifier=verifier,
      mesh=mesh,
  )
  results = evaluate.summarize(graded, problems)
  results["eval_config"] = config.eval.to_dict()
  results["verifier"] = "learned" if verifier is not None else None
  results["step"] = step
  print(f"\nHeld-out evaluation of {workdir} at step {step} (T={config.eval.temperature}):")
  print(evaluate.format_table(results))
  if multihost.is_writer():
    json_path, png_path = evaluate.write_report(results, out_dir, name)
    print(f"\nWrote {json_path} and {png_path}")
  return results
