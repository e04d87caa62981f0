"""What every trainer shares: state, optimizer, checkpoints, metric files, the loop.

`TrainState` is what the SFT and RL trainers checkpoint (Orbax, one directory
per step under ``<workdir>/checkpoints``); `restore_or_init` resumes it and
turns an unreadable or mismatched checkpoint into one `config_lib.UserError`
line. `train_loop` runs their steps: resumable, metrics to ``metrics.jsonl``
and TensorBoard, a progress bar on process 0, and a stop with one error line
on a non-finite loss or gradient that keeps the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging as pylogging
import os
import math
import re
import sys
import tempfile
import time
import types
from collections.abc import Callable
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp
import tqdm

from bon_jax import config_lib
from bon_jax import multihost
from bon_jax import optim
from bon_jax import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def make_optimizer(cfg: ml_collections.ConfigDict, *,
                   decay_vectors: bool = False) -> optax.GradientTransformation:
  """AdamW with linear warm-up then cosine decay, after global-norm clipping.

  ``cfg``: learning_rate, warmup_steps, steps, weight_decay, grad_clip_norm.
  Weight decay skips vectors (norm scales, biases) unless `decay_vectors`
  (the verifier's trainer, as it always has: the same numbers at its default
  weight_decay = 0, different ones above it).
  """
  return _optimizer(cfg.learning_rate, cfg.warmup_steps, cfg.steps, cfg.weight_decay, cfg.grad_clip_norm,
                    decay_vectors)


@functools.lru_cache(maxsize=8)
def _optimizer(learning_rate: float, warmup_steps: int, steps: int, weight_decay: float,
               grad_clip_norm: float, decay_vectors: bool = False) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=learning_rate,
      warmup_steps=warmup_steps,
      decay_steps=max(steps, warmup_steps + 1),
      end_value=0.1 * learning_rate,
  )
  # No weight decay on norm scales (vectors): decaying them towards 0 would
  # shrink activations rather than regularise.
  decay_mask = None if decay_vectors else (lambda params: jax.tree.map(lambda p: p.ndim > 1, params))
  return optax.chain(
      optax.clip_by_global_norm(grad_clip_norm),
      optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask),
  )


def policy_optimizer(cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict):
  """AdamW of `cfg`, adapters-only under LoRA, moments in ``model.opt_state_dtype``."""
  return optim.for_config(make_optimizer(cfg), model_cfg)


def freeze(params: Any, trainable: Any | None) -> Any:
  """`params` with every leaf where `trainable` (a bool pytree like it) is False behind a stop-gradient.

  Their gradient is then a symbolic zero that JAX never computes: for a LoRA
  policy (`trainable = models.lora_mask(params)`) no gradient of the frozen
  weights, e.g. a [256128, D] float32 scatter into the embedding table. None
  = everything trains.
  """
  if trainable is None:
    return params
  return jax.tree.map(lambda x, t: x if t else jax.lax.stop_gradient(x), params, trainable)


def accumulate_gradients(grad_fn: Any, params: Any, chunks: Any, mesh: jax.sharding.Mesh | None = None,
                         trainable: Any | None = None, per_chunk_params: bool = False) -> tuple[Any, Any]:
  """Gradient accumulation inside a jitted step: ``(summed metrics, gradient)`` over microbatches.

  `grad_fn(params, chunk) -> ((loss, metrics), grads)` (a `jax.value_and_grad`
  with aux); `chunks` stacks the microbatches on a leading axis. A
  `jax.lax.scan` adds the gradients in float32 (laid out like the params on a
  `mesh`) and the metrics as they come; the gradient is cast back to the
  params' dtypes, as one pass would give it to the optimizer. Each chunk's
  loss must be its share of the whole batch's, so that the sums are the
  whole batch's values. With a `trainable` mask (see `freeze`) only those
  leaves are summed; the others' gradient is zero (no float32 sum of them).
  """
  if trainable is None:
    trainable = jax.tree.map(lambda _: True, params)

  def body(carry, chunk):
    acc, sums = carry
    p = params
    if per_chunk_params:
      # Ties the params to this iteration's chunk, so that XLA cannot hoist
      # what it computes from them alone (FSDP gathers, float32 copies) out of
      # the loop, where every layer's copy would live through the whole scan.
      p, chunk = jax.lax.optimization_barrier((params, chunk))
    (_, metrics), grads = grad_fn(p, chunk)
    acc = jax.tree.map(lambda a, g, t: a + g.astype(jnp.float32) if t else a, acc, grads, trainable)
    return (acc, jax.tree.map(jnp.add, sums, metrics)), None

  acc = jax.tree.map(lambda p, t: jnp.zeros(p.shape if t else (), jnp.float32), params, trainable)
  if mesh is not None:
    specs = jax.tree.map(lambda s, t: s if t else jax.sharding.PartitionSpec(),
                         sharding.param_specs(params, mesh), trainable,
                         is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    acc = jax.lax.with_sharding_constraint(acc, sharding.named(mesh, specs))
  first = jax.tree.map(lambda x: x[0], chunks)
  shapes = jax.eval_shape(lambda p, c: grad_fn(p, c)[0][1], params, first)
  sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  (acc, metrics), _ = jax.lax.scan(body, (acc, sums), chunks)
  return metrics, jax.tree.map(lambda a, p, t: a.astype(p.dtype) if t else jnp.zeros(p.shape, p.dtype),
                               acc, params, trainable)


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
  with _stderr_held() as held:
    try:
      restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # pylint: disable=broad-except
      error = _unreadable_checkpoint(mngr, step, e, abstract)
    else:
      held.replay = True
      return restored
  raise error from None


@contextlib.contextmanager
def _stderr_held():
  """Holds what is written to file descriptor 2; replays it unless the block failed.

  After a failed read, tensorstore completes the read's futures on the asyncio
  loop Orbax has already closed and prints "Event loop is closed" tracebacks
  straight to fd 2 (not through Python's hooks), under or above the one-line
  error. They say nothing that line does not; on success everything is replayed.
  """
  held = types.SimpleNamespace(replay=False)
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield held
    finally:
      if not held.replay:
        time.sleep(0.5)  # Let the failed read's late callbacks land here.
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      if held.replay:
        tmp.seek(0)
        sys.stderr.buffer.write(tmp.read())
        sys.stderr.flush()


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


# ----------------------------------------------------------------------------
# The loop.


def _non_finite(metrics: dict[str, Any]) -> str | None:
  """The first of loss / grad_norm that is not finite, as "name=value" (None: all finite)."""
  for name in ("loss", "grad_norm"):
    if name in metrics:
      value = float(jax.device_get(metrics[name]))
      if not math.isfinite(value):
        return f"{name}={value}"
  return None


def train_loop(
    state: TrainState,
    *,
    step_fn: Callable[[TrainState, int], tuple[TrainState, dict[str, Any]]],
    steps: int,
    workdir: str | None,
    mngr: ocp.CheckpointManager | None,
    log_every: int,
    desc: str,
    log_fn: Callable[[dict[str, float], int, float], dict[str, str]],
) -> tuple[TrainState, list[dict[str, float]]]:
  """Runs ``step_fn(state, step)`` from ``state.step`` to `steps`; closes `mngr`.

  Every step is offered to `mngr` (it saves every ``checkpoint_every``) and
  the last one is always saved, so a rerun resumes where this one stopped.
  Every `log_every` steps (and the last) the metrics, as floats, go to
  ``log_fn(metrics, step, steps_per_s)`` (it may add to them and returns the
  progress bar's postfix), then to TensorBoard and ``<workdir>/metrics.jsonl``.
  Without `mngr` nothing is saved, without `workdir` nothing is written (an
  in-memory run, e.g. the verifier's).

  Before a step is saved or logged its ``loss`` and ``grad_norm`` are checked:
  a non-finite one stops the run with a `config_lib.UserError` (one line)
  naming the last good checkpoint, which is kept; the bad state is not saved.
  On any exit the pending checkpoint is finished and the writers closed.

  Returns:
    The final state and the logged metrics ({"step", ...} per logged step).
  """
  start = int(state.step)
  jsonl = writer = None
  if workdir is not None:
    # Files from process 0 only (`bon_jax.multihost`); the others log to absl.
    jsonl = JsonlWriter(os.path.join(workdir, "metrics.jsonl")) if multihost.is_writer() else None
    from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TensorFlow)

    writer = metric_writers.create_default_writer(workdir, just_logging=not multihost.is_writer())
  bar = tqdm.tqdm(total=steps, initial=start, desc=desc, unit="step", dynamic_ncols=True,
                  disable=jax.process_index() > 0)
  history = []
  t_last, s_last = time.perf_counter(), start
  try:
    for step in range(start, steps):
      state, metrics = step_fn(state, step)
      done = step + 1
      log = done % log_every == 0 or done == steps
      if log or (mngr is not None and mngr.should_save(done)):
        if bad := _non_finite(metrics):
          last = None if mngr is None else mngr.latest_step()
          kept = (f"the last good checkpoint, step {last} in {mngr.directory}, is kept" if last is not None
                  else "no checkpoint was written")
          raise config_lib.UserError(
              f"{desc}: non-finite {bad} at step {done}; stopped without saving it ({kept});"
              " lower the learning rate or raise the warm-up, then rerun to resume")
      if mngr is not None:
        mngr.save(done, args=ocp.args.StandardSave(state))
      if log:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        postfix = log_fn(metrics, done, (done - s_last) / (now - t_last))
        t_last, s_last = now, done
        if workdir is not None:
          writer.write_scalars(done, metrics)
        if jsonl is not None:
          jsonl.write(done, metrics)
        history.append({"step": done, **metrics})
        bar.set_postfix(**postfix)
      bar.update(1)
    if mngr is not None and start < steps and mngr.latest_step() != steps:
      mngr.save(steps, args=ocp.args.StandardSave(state), force=True)
  finally:
    # Also on a crash or an interrupt: finish the pending (async) checkpoint so a rerun resumes from it.
    if mngr is not None:
      mngr.wait_until_finished()
      mngr.close()
    if workdir is not None:
      writer.flush()
    if jsonl is not None:
      jsonl.close()
    bar.close()
  return state, history
