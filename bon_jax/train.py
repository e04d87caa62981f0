"""Training driver: `train_and_evaluate(config, workdir)`.

Stage 1 (this module today) is supervised fine-tuning of the policy on the
task's reference solutions, followed by the Best-of-N evaluation of
`bon_jax.evaluate`. Checkpoints (Orbax) are written every
`train.checkpoint_every` steps and a rerun with the same `--workdir` resumes
from the latest one, with the same result as an uninterrupted run: batches are
a pure function of `(seed, step)`.

Workdir layout::

  config.json            the config of the first run (identity check on resume)
  runs.jsonl             one line per launch
  checkpoints/<step>/    Orbax TrainState {step, params, opt_state}
  metrics.jsonl          one JSON object per logged step
  events.out.tfevents.*  the same metrics for TensorBoard
  eval/step_<s>.{json,png}  pass@k / Bo-k / maj@k curves of the policy at step s
"""

from __future__ import annotations

import functools
import json
import logging as pylogging
import os
import re
import time
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from bon_jax import config_lib
from bon_jax import defaults
from bon_jax import evaluate
from bon_jax import input_pipeline
from bon_jax import models
from bon_jax import optim
from bon_jax import sharding
from bon_jax import tokenizer as tokenizer_lib
from bon_jax.tasks import countdown
from bon_jax.tasks import registry


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warm-up then cosine decay, after global-norm clipping."""
  return _optimizer(cfg.learning_rate, cfg.warmup_steps, cfg.steps, cfg.weight_decay, cfg.grad_clip_norm)


@functools.lru_cache(maxsize=8)
def _optimizer(learning_rate: float, warmup_steps: int, steps: int, weight_decay: float,
               grad_clip_norm: float) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=learning_rate,
      warmup_steps=warmup_steps,
      decay_steps=max(steps, warmup_steps + 1),
      end_value=0.1 * learning_rate,
  )
  # No weight decay on norm scales (vectors): decaying them towards 0 would
  # shrink activations rather than regularise.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  return optax.chain(
      optax.clip_by_global_norm(grad_clip_norm),
      optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask),
  )


def sft_loss(model: Any, params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean negative log-likelihood of the answer tokens (prompt tokens masked)."""
  logp = models.token_logprobs(model, params, batch["tokens"])
  mask = batch["loss_mask"]
  ntok = jnp.maximum(mask.sum(), 1.0)
  loss = -(logp * mask).sum() / ntok
  return loss, {"loss": loss, "answer_tokens": mask.sum()}


def make_sft_step(model: Any, optimizer: optax.GradientTransformation, *, mesh: jax.sharding.Mesh | None = None):
  """Returns the jitted update `(state, batch) -> (state, metrics)`.

  With a `bon_jax.sharding` mesh it is jitted with explicit shardings: the
  state by `sharding.state_specs` (donated), the batch's leading dimension
  over `sharding.BATCH_AXES`, metrics replicated.

  Cached per (model, optimizer), so that runs in one process (tests, sweeps,
  notebooks) share one compilation.
  """
  return _cached_sft_step(model, optimizer, mesh)


@functools.lru_cache(maxsize=8)
def _cached_sft_step(model: Any, optimizer: optax.GradientTransformation, mesh: Any = None):

  def step(state: TrainState, batch: dict[str, jax.Array]):
    grad_fn = jax.value_and_grad(lambda p: sft_loss(model, p, batch), has_aux=True)
    (_, metrics), grads = grad_fn(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  if mesh is not None:
    return sharding.jit_sharded(step, mesh, ("state", "batch"), ("state", "replicated"), donate_argnums=0)
  return jax.jit(step, donate_argnums=0)


def load_tokenizer(config: ml_collections.ConfigDict) -> Any:
  if config.tokenizer.kind == "task":
    return tokenizer_lib.task_tokenizer()
  try:
    return tokenizer_lib.load_tokenizer(config.tokenizer.path)
  except (FileNotFoundError, ValueError) as e:
    raise config_lib.UserError(str(e)) from None


def make_task_splits(cfg: ml_collections.ConfigDict,
                     tfds_dir: str | None = None) -> tuple[list[Any], list[Any]]:
  """Train and test problems of `config.task` (a bad option is a `UserError`).

  `tfds_dir`: read through the task's tensorflow-datasets builder, prepared
  there (`bon_jax.tfds_builders`); the pipeline uses ``<workdir>/tfds``.
  """
  try:
    return registry.load_splits(cfg, tfds_dir=tfds_dir)
  except (TypeError, ValueError, FileNotFoundError) as e:
    raise config_lib.UserError(f"config.task: {e}") from None


def make_task(config: ml_collections.ConfigDict) -> Any:
  """The task object of ``config.task`` (`bon_jax.tasks.registry`)."""
  try:
    return registry.make_task(config.task)
  except ValueError as e:
    raise config_lib.UserError(str(e)) from None


def make_policy(config: ml_collections.ConfigDict, tokenizer: Any) -> Any:
  """The policy `Transformer` of ``config.model`` (LoRA-wrapped when lora_rank > 0)."""
  try:
    return models.policy_from_config(config.model, tokenizer.vocab_size)
  except ValueError as e:  # E.g. a tokenizer whose vocabulary does not fit the preset.
    raise config_lib.UserError(str(e)) from None


def policy_optimizer(cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict):
  """AdamW of `cfg`, adapters-only under LoRA, moments in ``model.opt_state_dtype``."""
  return optim.for_config(make_optimizer(cfg), model_cfg)


def initial_params(config: ml_collections.ConfigDict, model: Any, mesh: Any = None) -> Any:
  """The starting policy: ``config.model.ckpt_path``'s params, else a seeded init.

  A checkpoint is restored in ``config.model.dtype`` straight into `mesh`'s
  shardings (each device reads its shard; `models.load_params`).
  """
  if config.model.ckpt_path:
    try:
      params = models.load_params(
          config.model.ckpt_path, preset=config.model.preset,
          vocab_size=models.base_model(model).config.num_embed,
          dtype=config.model.dtype, mesh=mesh)
    except (FileNotFoundError, models.CheckpointError) as e:
      raise config_lib.UserError(str(e)) from None
  else:
    params = models.init_params(models.base_model(model), jax.random.key(config.seed))
  return models.ensure_adapters(model, params, jax.random.fold_in(jax.random.key(config.seed), 1))


class JsonlWriter:
  """Appends one JSON object per step; readers keep the last line of a step."""

  def __init__(self, path: str):
    self._f = open(path, "a")

  def write(self, step: int, metrics: dict[str, float]) -> None:
    self._f.write(json.dumps({"step": step, **metrics}) + "\n")
    self._f.flush()

  def close(self) -> None:
    self._f.close()


def checkpoint_manager(workdir: str, cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(
          save_interval_steps=cfg.checkpoint_every,
          max_to_keep=cfg.keep_checkpoints,
          create=True,
      ),
      # Named handler so `item_metadata` can read shapes before a restore.
      item_handlers=ocp.StandardCheckpointHandler(),
  )


def restore_or_init(
    mngr: ocp.CheckpointManager, state: TrainState
) -> TrainState:
  """The latest checkpoint, or `state` when there is none.

  A checkpoint whose shapes differ from `state` (another model) is a one-line
  `UserError`, checked from metadata before anything is restored. So is one
  that cannot be read (corrupted on disk): it names the step and file, and
  whether an earlier checkpoint restores and how to resume from it; nothing in
  the workdir is changed.
  """
  step = mngr.latest_step()
  if step is None:
    return state
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  try:
    meta = mngr.item_metadata(step)
    saved = jax.tree.map(lambda m: tuple(m.shape), meta["params"])
  except Exception as e:  # pylint: disable=broad-except  (Orbax raises many kinds)
    raise _unreadable_checkpoint(mngr, step, e, abstract) from None
  want = jax.tree.map(lambda x: tuple(x.shape), state.params)
  if jax.tree.structure(saved) != jax.tree.structure(want) or jax.tree.leaves(saved) != jax.tree.leaves(want):
    raise config_lib.UserError(
        f"checkpoint {mngr.directory}/{step} holds parameters of another model shape;"
        " use a new --workdir or the config that wrote it"
    )
  logging.info("Resuming from checkpoint step %d", step)
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # pylint: disable=broad-except
    raise _unreadable_checkpoint(mngr, step, e, abstract) from None


# Orbax's JSON metadata files of a step, relative to its directory.
_CHECKPOINT_JSON = ("_CHECKPOINT_METADATA", "default/_METADATA", "default/_sharding",
                    "default/array_metadatas/process_0")


def _unreadable_checkpoint(
    mngr: ocp.CheckpointManager, step: int, error: Exception, abstract: Any
) -> config_lib.UserError:
  """The one-line error for a checkpoint that does not restore."""
  # Orbax's read futures of the failed restore fail again when collected, each
  # logging its error through asyncio: the one line below says it all.
  pylogging.getLogger("asyncio").setLevel(pylogging.CRITICAL)
  step_dir = os.path.join(str(mngr.directory), str(step))
  culprit = None
  for name in _CHECKPOINT_JSON:  # A damaged metadata file is named by trying it.
    path = os.path.join(step_dir, name)
    try:
      with open(path) as f:
        json.load(f)
    except FileNotFoundError:
      continue
    except (OSError, ValueError):
      culprit = path
      break
  causes, e = [], error
  while e is not None and len(causes) < 8:
    causes.append(e)
    e = e.__cause__
  if culprit is None:  # Tensorstore names the array and its database.
    for e in causes:
      if m := re.search(r'reading "([^"]+)" in \S+ database at local file "([^"]+)"', str(e)):
        culprit = f"{m.group(2).rstrip('/')} (array {m.group(1)})"
        break
  root = causes[-1]
  reason = f"{type(root).__name__}: {' '.join(str(root).split())[:160]}"
  what = f"checkpoint step {step} ({culprit or step_dir}) cannot be read: {reason}."
  aside = os.path.join(os.path.dirname(str(mngr.directory)), f"corrupt_checkpoint_{step}")
  move = f"mv {step_dir} {aside}"
  for earlier in sorted((s for s in mngr.all_steps() if s < step), reverse=True):
    try:
      mngr.restore(earlier, args=ocp.args.StandardRestore(abstract))
    except Exception:  # pylint: disable=broad-except
      continue
    return config_lib.UserError(
        f"{what} Step {earlier} is intact: move the bad one aside ({move}) and rerun the"
        f" same command to resume from step {earlier}. Nothing was changed.")
  return config_lib.UserError(
      f"{what} No earlier checkpoint of this stage is intact: move it aside ({move}) and"
      " rerun to start the stage over, or use a new --workdir. Nothing was changed.")


def train_sft(
    config: ml_collections.ConfigDict, workdir: str, *, model: Any, tokenizer: Any, train_set: list[Any],
    task: Any = countdown,
) -> TrainState:
  """Stage 1: supervised fine-tuning on the task's reference solutions.

  Resumes from `workdir/checkpoints`; returns the state after
  ``config.train.steps`` steps (the initial params when steps = 0).
  """
  tok = tokenizer
  optimizer = policy_optimizer(config.train, config.model)
  mesh = sharding.mesh_for_run(config)
  params = initial_params(config, model, mesh)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))
  # config.mesh: shard the state before restoring, so Orbax restores each array straight
  # into its target sharding (a checkpoint written on another mesh shape reshards).
  if mesh is not None:
    state = sharding.shard(state, mesh, sharding.state_specs(state, mesh))
  logging.info("Policy: %s preset, %d parameters", config.model.preset, models.num_params(params))

  mngr = checkpoint_manager(workdir, config.train)
  state = restore_or_init(mngr, state)
  start = int(state.step)

  length = config.train.max_len or input_pipeline.sft_length(
      train_set, tokenizer=tok, prompt_fn=task.prompt_text, target_fn=task.sft_targets
  )
  train_step = make_sft_step(model, optimizer, mesh=mesh)
  jsonl = JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TensorFlow)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  bar = tqdm.tqdm(total=config.train.steps, initial=start, desc="sft", unit="step", dynamic_ncols=True)
  t_last, s_last = time.perf_counter(), start
  try:
    for step in range(start, config.train.steps):
      batch = input_pipeline.sft_batch(
          train_set,
          tokenizer=tok,
          prompt_fn=task.prompt_text,
          target_fn=task.sft_targets,
          batch_size=config.train.batch_size,
          length=length,
          seed=config.seed,
          step=step,
      )
      state, metrics = train_step(state, batch)
      done = step + 1
      mngr.save(done, args=ocp.args.StandardSave(state))
      if done % config.train.log_every == 0 or done == config.train.steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        metrics["steps_per_s"] = (done - s_last) / (now - t_last)
        t_last, s_last = now, done
        writer.write_scalars(done, metrics)
        jsonl.write(done, metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", steps_s=f"{metrics['steps_per_s']:.2f}")
      bar.update(1)
  finally:
    # On an interrupt, let the checkpoint being written finish, so the next
    # run resumes from it.
    mngr.wait_until_finished()
  bar.close()
  final = config.train.steps
  if start < final and mngr.latest_step() != final:
    mngr.save(final, args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()
  writer.flush()
  jsonl.close()
  mngr.close()
  return state


BASE = "base"  # The SFT policy in the pipeline's results and tables.


# The workdir's tensorflow-datasets data dir: the task's records the stages read.
TFDS_DIR = "tfds"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The whole job, resuming every stage from `workdir`.

  1. SFT (`train_sft`) of the policy: the base of every later stage.
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
  from bon_jax import rl  # pylint: disable=g-import-not-at-top  (rl builds on this module)
  from bon_jax import verifier as verifier_lib  # pylint: disable=g-import-not-at-top

  config_lib.validate(config)
  tok = load_tokenizer(config)  # Before the workdir: a bad tokenizer leaves nothing behind.
  config_lib.prepare_workdir(config, workdir)
  task = make_task(config)
  train_set, test_set = make_task_splits(config.task, os.path.join(workdir, TFDS_DIR))
  model = make_policy(config, tok)
  state = train_sft(config, workdir, model=model, tokenizer=tok, train_set=train_set, task=task)
  base_params, final = state.params, config.train.steps
  del state

  learned = None
  if config.verifier.steps > 0:
    vparams = _verifier_stage(config, workdir, model, base_params, tok, train_set, test_set, task)
    learned = verifier_lib.learned_verifier(models.base_model(model), vparams, tokenizer=tok, task=task,
                                            pooling=config.verifier.pooling)

  results = {BASE: _evaluate_all(config, workdir, model, base_params, tok, test_set, final, learned, task)}
  for name in config.algorithms:
    stage = stage_config(config, name)
    stage_dir = os.path.join(workdir, "rl", name)
    # The pipeline's verifier unless the stage names its own checkpoint.
    sel = learned if stage.rl.verifier == "learned" and not stage.rl.verifier_ckpt else None
    print(f"\nFine-tuning {name!r} ({stage.rl.algorithm}, N'={stage.rl.N_prime}, N={stage.rl.N},"
          f" {stage.rl.steps} steps) in {stage_dir}")
    rl_state, _ = rl.train_rl(stage, stage_dir, init_params=base_params, problems=train_set,
                              task=task, verifier=sel)
    results[name] = _evaluate_all(config, stage_dir, model, rl_state.params, tok, test_set,
                                  stage.rl.steps, learned, task)
    del rl_state
  if config.algorithms:
    write_comparison(results, workdir, temperature=config.eval.temperature)
  return results


def stage_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The config of fine-tuning stage `name`: ``rl`` + ``rl_overrides.<name>``.

  `name` is an algorithm of `bon.WEIGHT_FNS`, or any label whose overrides
  set ``algorithm`` (e.g. ``rl_overrides.rloo_n1 = {"algorithm": "rloo", ...}``).
  """
  stage = ml_collections.ConfigDict(config.to_dict())
  overrides = config.rl_overrides.get(name)
  rl_cfg = stage.rl
  if overrides is None or "algorithm" not in overrides:
    rl_cfg.algorithm = name
  if overrides is not None:
    rl_cfg.update(overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides))
  return stage


def _plain(model: Any, params: Any) -> Any:
  """Params of the plain Transformer (LoRA adapters folded in), e.g. for the verifier's backbone."""
  return models.merge_lora(model, params) if models.is_lora(model) else params


def _verifier_stage(config, workdir, model, base_params, tok, train_set, test_set, task) -> Any:
  """Trains the verifier once per workdir; a rerun loads it (same config) or refuses."""
  from bon_jax import verifier as verifier_lib  # pylint: disable=g-import-not-at-top

  out_dir = os.path.join(workdir, "verifier")
  report_path = os.path.join(out_dir, "report.json")
  want = json.loads(json.dumps({"verifier": config.verifier.to_dict(), "train_steps": config.train.steps}))
  if os.path.exists(report_path):
    with open(report_path) as f:
      saved = json.load(f)
    if "verifier" in saved.get("config", {}):
      # Fields added to config.verifier after the stage ran count at their defaults.
      defaults = json.loads(json.dumps(defaults.verifier_config().to_dict()))
      saved["config"]["verifier"] = {**defaults, **saved["config"]["verifier"]}
    if saved.get("config") != want:
      raise config_lib.UserError(
          f"{out_dir} holds a verifier trained with another config.verifier or SFT length;"
          " use a new --workdir or the original settings")
    print(f"\nLearned verifier: loaded from {out_dir} (held-out AUC {saved['report']['auc']:.3f})")
    return verifier_lib.load_verifier(os.path.join(out_dir, "verifier"), models.base_model(model))
  print(f"\nTraining the verifier ({config.verifier.steps} steps on"
        f" {config.verifier.num_prompts} x {config.verifier.num_samples} SFT samples)")
  t0 = time.perf_counter()
  vparams, report = verifier_lib.run_verifier_stage(
      config.verifier, model=models.base_model(model), policy_params=_plain(model, base_params),
      tokenizer=tok, task=task,
      train_problems=train_set, test_problems=test_set, out_dir=out_dir)
  report["seconds"] = time.perf_counter() - t0
  with open(report_path, "w") as f:
    json.dump({"config": want, "report": report}, f, indent=1)
  ks = report["ks"]
  print(f"Verifier: held-out AUC {report['auc']:.3f} (within prompts {report['within_prompt_auc']:.3f}); Bo-k "
        + ", ".join(f"k={k}: {100 * v:.1f}%" for k, v in zip(ks, report["bo@k"]))
        + " (pass@k " + ", ".join(f"{100 * v:.1f}%" for v in report["pass@k"]) + ")")
  return vparams


def _evaluate_all(config, workdir, model, params, tok, test_set, step, verifier, task) -> dict[str, Any]:
  """`_evaluate_once` at eval.temperature and at each extra temperature."""
  results = _evaluate_once(config, workdir, model, params, tok, test_set, step, verifier, task=task)
  for t in config.eval.extra_temperatures:
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.eval.temperature = float(t)
    _evaluate_once(cfg, workdir, model, params, tok, test_set, step, verifier, task=task, suffix=f"_T{t:g}")
  return results


def write_comparison(results: dict[str, dict[str, Any]], workdir: str, *, temperature: float) -> str:
  """The table (markdown) and plot comparing every policy of the pipeline.

  Columns: pass@1, pass@N, Bo-N (learned verifier if present, else grader),
  maj@N at N = eval.num_samples, each with its 95% interval over prompts, and
  the paired difference of pass@N against `BASE` (same prompts and keys, so
  the per-prompt differences give a much tighter interval).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  base = results[BASE]
  ks, n = base["ks"], base["num_samples"]
  bo = evaluate.VERIFIER_CURVE if evaluate.VERIFIER_CURVE in base["overall"] else "bo@k"
  cols = [("pass@k", 1), ("pass@k", n), (bo, n), ("maj@k", n)]
  head = ("| policy | " + " | ".join(f"{c.replace('@k', '@' + str(k))}" for c, k in cols)
          + f" | Δpass@{n} vs {BASE} (paired) |")
  lines = [f"Held-out evaluation, T={temperature:g}, {base['overall']['num_prompts']} prompts, n={n} samples each.", "",
           head, "|" + "---|" * (len(cols) + 2)]
  for name, res in results.items():
    cells = []
    for c, k in cols:
      i = ks.index(k)
      cells.append(f"{100 * res['overall'][c][i]:.1f} ± {100 * res['overall'][c + '_ci95'][i]:.1f}")
    d = np.asarray(res["per_prompt"]["pass@k"])[:, -1] - np.asarray(base["per_prompt"]["pass@k"])[:, -1]
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
    cells.append("—" if name == BASE else f"{100 * d.mean():+.1f} ± {100 * half:.1f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  table = "\n".join(lines)

  payload = {"temperature": temperature, "table": table,
             "results": {k: {m: v["overall"][m] for m in evaluate.curve_names(v)} | {"ks": ks}
                         for k, v in results.items()}}
  name = "compare"
  path = os.path.join(workdir, name + ".json")
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) == json.loads(json.dumps(payload)):
        print("\n" + table + f"\n\n(already in {os.path.join(workdir, name)}.{{md,json,png}})")
        return table
    name = f"compare_{int(time.time())}"  # Never overwrite an earlier comparison.
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, curve in zip(axes, ("pass@k", bo)):
    for policy, res in results.items():
      mean = 100 * np.asarray(res["overall"][curve])
      ax.plot(ks, mean, marker="o", label=policy, linestyle="--" if policy == BASE else "-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples)")
    ax.set_title(curve + (" (learned verifier)" if curve == evaluate.VERIFIER_CURVE else ""))
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("accuracy on held-out prompts (%)")
  axes[1].legend(fontsize=8)
  fig.tight_layout()

  with open(os.path.join(workdir, name + ".json"), "w") as f:
    json.dump(payload, f, indent=1)
  with open(os.path.join(workdir, name + ".md"), "w") as f:
    f.write(table + "\n")
  fig.savefig(os.path.join(workdir, name + ".png"), dpi=120)
  plt.close(fig)
  print("\n" + table + f"\n\nWrote {os.path.join(workdir, name)}.{{md,json,png}}")
  return table


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
                   task: Any = countdown, suffix: str = "") -> dict[str, Any]:
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
  )
  results = evaluate.summarize(graded, problems)
  results["eval_config"] = config.eval.to_dict()
  results["verifier"] = "learned" if verifier is not None else None
  results["step"] = step
  json_path, png_path = evaluate.write_report(results, out_dir, name)
  print(f"\nHeld-out evaluation of {workdir} at step {step} (T={config.eval.temperature}):")
  print(evaluate.format_table(results))
  print(f"\nWrote {json_path} and {png_path}")
  return results
