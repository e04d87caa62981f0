"""The parts of a run built from its config: tokenizer, task, problems, policy, start params.

Each turns what a user can get wrong (a missing file, an unknown option, a
tokenizer that does not fit the model) into one `config_lib.UserError` line.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from bon_jax import config_lib
from bon_jax import models
from bon_jax import multihost
from bon_jax import tokenizer as tokenizer_lib
from bon_jax.tasks import registry

# The workdir's tensorflow-datasets data dir: the task's records the stages read.
TFDS_DIR = "tfds"


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
  there (`bon_jax.tfds_builders`; by process 0 before the others read it);
  the pipeline uses ``<workdir>/tfds``.
  """
  try:
    if tfds_dir is None:
      return registry.load_splits(cfg)
    # Imports TensorFlow (tensorflow-datasets): only runs that read through it pay for it.
    from bon_jax import tfds_builders  # pylint: disable=g-import-not-at-top

    with multihost.writer_first(f"prepare {tfds_dir}"):
      return tfds_builders.load_splits(cfg, tfds_dir)
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
