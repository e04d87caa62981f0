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
import os
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
from bon_jax import evaluate
from bon_jax import input_pipeline
from bon_jax import models
from bon_jax import sharding
from bon_jax import tokenizer as tokenizer_lib
from bon_jax.tasks import countdown


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
  except FileNotFoundError as e:
    raise config_lib.UserError(str(e)) from None


def make_task_splits(cfg: ml_collections.ConfigDict) -> tuple[list[Any], list[Any]]:
  """Train and test problems of `config.task` (a bad option is a `UserError`)."""
  options = {k: v for k, v in cfg.to_dict().items() if k != "name"}
  options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
  try:
    return countdown.make_splits(**options)
  except (TypeError, ValueError) as e:
    raise config_lib.UserError(f"config.task: {e}") from None


def initial_params(config: ml_collections.ConfigDict, model: Any) -> Any:
  if config.model.ckpt_path:
    try:
      return models.load_params(config.model.ckpt_path, preset=config.model.preset)
    except FileNotFoundError as e:
      raise config_lib.UserError(str(e)) from None
  return models.init_params(model, jax.random.key(config.seed))


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
  `UserError`, checked from metadata before anything is restored.
  """
  step = mngr.latest_step()
  if step is None:
    return state
  meta = mngr.item_metadata(step)
  saved = jax.tree.map(lambda m: tuple(m.shape), meta["params"])
  want = jax.tree.map(lambda x: tuple(x.shape), state.params)
  if jax.tree.structure(saved) != jax.tree.structure(want) or jax.tree.leaves(saved) != jax.tree.leaves(want):
    raise config_lib.UserError(
        f"checkpoint {mngr.directory}/{step} holds parameters of another model shape;"
        " use a new --workdir or the config that wrote it"
    )
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  logging.info("Resuming from checkpoint step %d", step)
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs SFT (resuming from `workdir`) and evaluates the final policy.

  Returns the evaluation results (see `evaluate.summarize`).
  """
  config_lib.validate(config)
  config_lib.prepare_workdir(config, workdir)
  tok = load_tokenizer(config)
  train_set, test_set = make_task_splits(config.task)
  model = models.make_model(
      preset=config.model.preset, vocab_size=tok.vocab_size, dtype=jnp.dtype(config.model.dtype)
  )
  optimizer = make_optimizer(config.train)
  params = initial_params(config, model)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))
  # config.mesh: shard the state before restoring, so Orbax restores each array straight
  # into its target sharding (a checkpoint written on another mesh shape reshards).
  mesh = sharding.mesh_for_run(config)
  if mesh is not None:
    state = sharding.shard(state, mesh, sharding.state_specs(state, mesh))
  logging.info("Policy: %s preset, %d parameters", config.model.preset, models.num_params(params))

  mngr = checkpoint_manager(workdir, config.train)
  state = restore_or_init(mngr, state)
  start = int(state.step)

  length = config.train.max_len or input_pipeline.sft_length(
      train_set, tokenizer=tok, prompt_fn=countdown.prompt_text, target_fn=countdown.sft_targets
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
          prompt_fn=countdown.prompt_text,
          target_fn=countdown.sft_targets,
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

  results = _evaluate_once(config, workdir, model, state.params, tok, test_set, final)
  writer.write_scalars(final, {f"eval/{m}@{k}": v for m in evaluate.CURVES
                               for k, v in zip(results["ks"], results["overall"][m])})
  writer.flush()
  jsonl.close()
  mngr.close()
  return results


def _evaluate_once(config, workdir, model, params, tok, test_set, step) -> dict[str, Any]:
  """Evaluates at `step` unless `eval/step_<step>.json` already has this eval config."""
  out_dir = os.path.join(workdir, "eval")
  name = f"step_{step}"
  path = os.path.join(out_dir, name + ".json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved.get("eval_config") == config.eval.to_dict():
      logging.info("Evaluation of step %d already in %s", step, path)
      print(evaluate.format_table(saved))
      return saved
    name = f"step_{step}_{int(time.time())}"  # Never overwrite an earlier evaluation.
  problems = test_set[: config.eval.num_prompts]
  graded = evaluate.sample_and_grade(
      model=model,
      params=params,
      tokenizer=tok,
      problems=problems,
      task=countdown,
      cfg=config.eval,
      rng=jax.random.fold_in(jax.random.key(config.seed), step),
  )
  results = evaluate.summarize(graded, problems)
  results["eval_config"] = config.eval.to_dict()
  results["step"] = step
  json_path, png_path = evaluate.write_report(results, out_dir, name)
  print(f"\nHeld-out evaluation of the policy at step {step} (T={config.eval.temperature}):")
  print(evaluate.format_table(results))
  print(f"\nWrote {json_path} and {png_path}")
  return results
