"""Config validation: values that would fail later or silently mislead become one line.

`validate(config)` checks a whole pipeline config before anything is written
(`pipeline.train_and_evaluate`), `validate_rl_config(config.rl)` one
fine-tuning stage (`rl.train_rl`); both raise `config_lib.UserError`, which
`bon_jax.main` prints as a single `error: ...` line.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from bon_jax import algorithms
from bon_jax import config_lib
from bon_jax import inputs
from bon_jax import models
from bon_jax import sharding

def _require(cond: bool, msg: str) -> None:
  if not cond:
    raise config_lib.UserError(msg)


def _positive_int(config: ml_collections.ConfigDict, path: str, minimum: int = 1) -> None:
  value = config
  for part in path.split("."):
    value = value[part]
  _require(
      isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
      f"config.{path} must be an integer >= {minimum}, got {value!r}",
  )


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `config_lib.UserError` on values that would fail later or silently mislead."""
  _require(
      config.model.preset in models.PRESETS,
      f"config.model.preset={config.model.preset!r} is unknown; choose one of"
      f" {sorted(models.PRESETS)}",
  )
  _require(
      config.model.dtype in ("float32", "bfloat16"),
      f"config.model.dtype must be 'float32' or 'bfloat16', got {config.model.dtype!r}",
  )
  _require(
      config.task.name in config_lib.TASKS,
      f"config.task.name={config.task.name!r} is unknown; choose one of {config_lib.TASKS}",
  )
  lora_rank = config.model.lora_rank
  _require(
      isinstance(lora_rank, int) and not isinstance(lora_rank, bool) and lora_rank >= 0,
      f"config.model.lora_rank must be an integer >= 0 (0 = no LoRA), got {lora_rank!r}",
  )
  _require(
      config.model.opt_state_dtype in ("", "float32", "bfloat16"),
      "config.model.opt_state_dtype must be '' (the params' dtype), 'float32' or 'bfloat16',"
      f" got {config.model.opt_state_dtype!r}",
  )
  _require(
      config.tokenizer.kind in ("task", "sentencepiece"),
      f"config.tokenizer.kind must be 'task' or 'sentencepiece', got {config.tokenizer.kind!r}",
  )
  for path in ("task.num_train", "task.num_test", "train.batch_size", "train.log_every",
               "train.checkpoint_every", "train.keep_checkpoints", "eval.num_prompts",
               "eval.num_samples", "eval.max_new_tokens", "eval.prompts_per_batch"):
    _positive_int(config, path)
  _positive_int(config, "train.steps", minimum=0)
  _positive_int(config, "train.warmup_steps", minimum=0)
  _positive_int(config, "train.max_len", minimum=0)
  _positive_int(config, "eval.top_k", minimum=0)
  _require(config.train.learning_rate > 0, "config.train.learning_rate must be > 0")
  _require(config.eval.temperature >= 0, "config.eval.temperature must be >= 0")
  _require(0 < config.eval.top_p <= 1, "config.eval.top_p must be in (0, 1]")
  _require(
      config.eval.num_prompts <= config.task.num_test,
      f"config.eval.num_prompts={config.eval.num_prompts} exceeds"
      f" config.task.num_test={config.task.num_test}",
  )
  # Released weights, tokenizer, data: one line naming what to download, which field to set.
  inputs.check(config)
  for field in ("model.ckpt_path", "tokenizer.path"):
    section, key = field.split(".")
    path = config[section][key]
    _require(
        not path or os.path.exists(path),
        f"config.{field}={path!r} does not exist; fix the path or set it to ''",
    )
  _require(
      config.tokenizer.kind != "sentencepiece" or config.tokenizer.path,
      "config.tokenizer.kind='sentencepiece' needs config.tokenizer.path (a .model file,"
      " e.g. Gemma 2's tokenizer.model)",
  )
  if "mesh" in config and "shape" in config.mesh:
    # Before the workdir is touched: a mesh these devices cannot form.
    sharding.resolve_mesh_shape(tuple(config.mesh.shape), jax.device_count())
  if "algorithms" in config:
    _validate_pipeline(config)


def _validate_pipeline(config: ml_collections.ConfigDict) -> None:
  """The verifier and fine-tuning stages (`pipeline.train_and_evaluate`)."""
  names = config.algorithms
  _require(isinstance(names, (tuple, list)) and all(isinstance(a, str) for a in names),
           f"config.algorithms must be a tuple of names, got {names!r}")
  _require(len(set(names)) == len(names), f"config.algorithms has duplicates: {names!r}")
  _require(config_lib.BASE not in names,
           f"config.algorithms: {config_lib.BASE!r} names the SFT starting policy; call the stage otherwise")
  _positive_int(config, "verifier.steps", minimum=0)
  rank_weight = config.verifier.rank_weight
  _require(isinstance(rank_weight, (int, float)) and rank_weight >= 0,
           f"config.verifier.rank_weight must be a number >= 0, got {rank_weight!r}")
  pooling = config.verifier.pooling
  _require(pooling in ("last", "min"),
           f"config.verifier.pooling must be 'last' or 'min', got {pooling!r}")
  v = config.verifier
  mb = v.get("microbatch_groups", 0)
  _require(isinstance(mb, int) and not isinstance(mb, bool) and mb >= 0,
           f"config.verifier.microbatch_groups must be an integer >= 0 (0 = one pass), got {mb!r}")
  _require(isinstance(v.get("remat_blocks", False), bool),
           f"config.verifier.remat_blocks must be True or False, got {v.get('remat_blocks')!r}")
  if mb and v.steps > 0:
    # A training step holds batch_size // num_samples whole groups, or batch_size sequences (BCE alone).
    groups = max(1, v.batch_size // v.num_samples) if v.rank_weight else v.batch_size
    _require(mb >= groups or groups % mb == 0,
             f"config.verifier.microbatch_groups={mb} must divide the {groups}"
             f" {'groups' if v.rank_weight else 'sequences'} of a verifier step")
  for t in config.eval.extra_temperatures:
    _require(isinstance(t, (int, float)) and t > 0,
             f"config.eval.extra_temperatures must hold temperatures > 0, got {t!r}")
  for name in names:
    stage = config_lib.stage_config(config, name)
    try:
      validate_rl_config(stage.rl)
    except config_lib.UserError as e:
      raise config_lib.UserError(f"stage {name!r}: {e}") from None
    _require(stage.rl.verifier != "learned" or stage.rl.verifier_ckpt or config.verifier.steps > 0,
             f"stage {name!r} uses rl.verifier='learned' but there is no verifier: set"
             " config.verifier.steps > 0 (train one) or config.rl.verifier_ckpt")


def validate_rl_config(cfg: ml_collections.ConfigDict) -> None:
  """``config.rl`` of one fine-tuning stage: `UserError` (one line) on settings that cannot run."""

  need = _require
  need(cfg.algorithm in algorithms.REGISTRY,
       f"config.rl.algorithm={cfg.algorithm!r} is unknown; choose one of {sorted(algorithms.REGISTRY)}")
  for name in ("N_prime", "N", "prompts_per_step", "max_new_tokens", "log_every",
               "checkpoint_every", "keep_checkpoints"):
    v = cfg[name]
    need(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
         f"config.rl.{name} must be an integer >= 1, got {v!r}")
  need(isinstance(cfg.steps, int) and cfg.steps >= 0, f"config.rl.steps must be an integer >= 0, got {cfg.steps!r}")
  need(cfg.learning_rate > 0, "config.rl.learning_rate must be > 0")
  need(cfg.temperature > 0, "config.rl.temperature must be > 0 (log pi of greedy decoding is undefined)")
  need(cfg.kl_coef >= 0 and cfg.entropy_coef >= 0, "config.rl.kl_coef and entropy_coef must be >= 0")
  mb = cfg.microbatch_rows
  need(isinstance(mb, int) and not isinstance(mb, bool) and mb >= 0,
       f"config.rl.microbatch_rows must be an integer >= 0 (0 = the whole batch in one pass), got {mb!r}")
  need(isinstance(cfg.remat_blocks, bool), f"config.rl.remat_blocks must be True or False, got {cfg.remat_blocks!r}")
  group = algorithms.REGISTRY[cfg.algorithm].group
  if group == "multiple":
    need(cfg.N_prime % cfg.N == 0,
         f"config.rl.N_prime={cfg.N_prime} must be a multiple of config.rl.N={cfg.N} for {cfg.algorithm}")
  if group == "subset":
    need(cfg.N <= cfg.N_prime,
         f"config.rl.N={cfg.N} must be <= config.rl.N_prime={cfg.N_prime} for {cfg.algorithm}")
  need(cfg.verifier in ("grader", "learned", "noisy"),
       f"config.rl.verifier must be 'grader', 'learned' or 'noisy', got {cfg.verifier!r}")
  if cfg.verifier == "noisy":
    auc = cfg.verifier_auc
    need(isinstance(auc, (int, float)) and 0.5 < auc <= 1.0,
         f"config.rl.verifier_auc must be in (0.5, 1] for rl.verifier='noisy', got {auc!r}")
