"""Stage 1, supervised fine-tuning of the policy on the task's reference solutions.

`train_sft` resumes from ``<workdir>/checkpoints`` (Orbax, every
``train.checkpoint_every`` steps) with the same result as an uninterrupted
run: batches are a pure function of `(seed, step)`. Its metrics go to
``metrics.jsonl`` and TensorBoard. The whole job around it (verifier,
fine-tuning stages, evaluation) is `bon_jax.pipeline.train_and_evaluate`.
"""

from __future__ import annotations

import functools
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax

from bon_jax import experiment
from bon_jax import input_pipeline
from bon_jax import models
from bon_jax import sharding
from bon_jax import trainer_lib
from bon_jax.tasks import base as task_lib
from bon_jax.tasks import registry


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

  def step(state: trainer_lib.TrainState, batch: dict[str, jax.Array]):
    # A LoRA policy: gradients of the adapters only (the frozen weights' are never computed).
    trainable = models.trainable_mask(model, state.params)
    grad_fn = jax.value_and_grad(lambda p: sft_loss(model, trainer_lib.freeze(p, trainable), batch), has_aux=True)
    (_, metrics), grads = grad_fn(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return trainer_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  if mesh is not None:
    return sharding.jit_sharded(step, mesh, ("state", "batch"), ("state", "replicated"), donate_argnums=0)
  return jax.jit(step, donate_argnums=0)


def train_sft(
    config: ml_collections.ConfigDict, workdir: str, *, model: Any, tokenizer: Any, train_set: list[Any],
    task: task_lib.Task = registry.COUNTDOWN, mesh: jax.sharding.Mesh | None = None,
) -> trainer_lib.TrainState:
  """Stage 1: supervised fine-tuning on the task's reference solutions.

  Resumes from `workdir/checkpoints`; returns the state after
  ``config.train.steps`` steps (the initial params when steps = 0). `mesh`:
  the run's mesh (`sharding.mesh_for_run`, which None also selects).
  """
  tok = tokenizer
  optimizer = trainer_lib.policy_optimizer(config.train, config.model)
  mesh = mesh if mesh is not None else sharding.mesh_for_run(config)
  params = experiment.initial_params(config, model, mesh)
  state = trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))
  # config.mesh: shard the state before restoring, so Orbax restores each array straight
  # into its target sharding (a checkpoint written on another mesh shape reshards).
  if mesh is not None:
    state = sharding.shard(state, mesh, sharding.state_specs(state, mesh))
  logging.info("Policy: %s preset, %d parameters", config.model.preset, models.num_params(params))

  mngr = trainer_lib.checkpoint_manager(workdir, config.train)
  state = trainer_lib.restore_or_init(mngr, state)

  length = config.train.max_len or input_pipeline.sft_length(
      train_set, tokenizer=tok, prompt_fn=task.prompt_text, target_fn=task.sft_targets
  )
  train_step = make_sft_step(model, optimizer, mesh=mesh)

  def step_fn(state, step):
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
    return train_step(state, batch)

  def log_fn(metrics, step, steps_per_s):
    del step
    metrics["steps_per_s"] = steps_per_s
    return dict(loss=f"{metrics['loss']:.3f}", steps_s=f"{steps_per_s:.2f}")

  state, _ = trainer_lib.train_loop(state, step_fn=step_fn, steps=config.train.steps, workdir=workdir,
                                    mngr=mngr, log_every=config.train.log_every, desc="sft", log_fn=log_fn)
  return state
