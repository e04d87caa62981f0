"""Optimizer wrappers for full-size fine-tuning: LoRA-only updates, float32 state.

Both wrap any optax optimizer (e.g. `trainer_lib.make_optimizer`'s AdamW), so the
SFT and RL loops keep one update function over the full parameter tree:

* `trainable_only(opt, mask_fn)`: updates (and optimizer state) only where
  `mask_fn(params)` is True; elsewhere the update is 0 and no state is kept.
  With `models.lora_mask` the base weights stay frozen and Adam's moments
  exist for the adapters only. Gradient clipping inside `opt` sees only the
  trained leaves.
* `with_state_dtype(opt, jnp.float32)`: the optimizer runs on float32 copies
  of the gradients and params, so its state (Adam's moments) is float32 while
  the params stay e.g. bfloat16; updates are cast back to each param's dtype.

Example::

  opt = optim.finetune(trainer_lib.make_optimizer(cfg), lora=True, state_dtype="float32")
  state = trainer_lib.TrainState(step=0, params=params, opt_state=opt.init(params))
  update = rl.make_policy_update(model, opt)  # the usual update, unchanged
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from bon_jax import models

Params = Any


def trainable_only(
    optimizer: optax.GradientTransformation, mask_fn: Callable[[Params], Any]
) -> optax.GradientTransformation:
  """`optimizer` where `mask_fn(params)` is True, zero updates elsewhere."""
  labels = lambda params: jax.tree.map(lambda t: "train" if t else "frozen", mask_fn(params))
  return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


def with_state_dtype(optimizer: optax.GradientTransformation, dtype: Any) -> optax.GradientTransformation:
  """`optimizer` run in `dtype` (its state in `dtype`); updates in the params' dtypes."""
  dtype = jnp.dtype(dtype)
  cast = lambda tree: optax.tree.cast(tree, dtype)

  def init(params):
    return optimizer.init(cast(params))

  def update(updates, state, params=None):
    new, state = optimizer.update(cast(updates), state, None if params is None else cast(params))
    return optax.tree.cast_like(new, updates), state

  return optax.GradientTransformation(init, update)


def finetune(
    optimizer: optax.GradientTransformation, *, lora: bool = False, state_dtype: str = ""
) -> optax.GradientTransformation:
  """`optimizer` for a policy: adapters only when `lora`, state in `state_dtype`.

  Args:
    optimizer: e.g. `train.make_optimizer(config.rl)`.
    lora: train only `models.lora_mask` leaves (the model is a LoRA model).
    state_dtype: "" = the params' dtype; e.g. "float32" for bfloat16 params.
  """
  if state_dtype:
    optimizer = with_state_dtype(optimizer, state_dtype)
  if lora:
    optimizer = trainable_only(optimizer, models.lora_mask)
  return optimizer


def for_config(optimizer: optax.GradientTransformation, model_cfg: Any) -> optax.GradientTransformation:
  """`finetune` with ``config.model.lora_rank`` and ``config.model.opt_state_dtype``."""
  return finetune(optimizer, lora=model_cfg.lora_rank > 0,
                  state_dtype=model_cfg.opt_state_dtype)
