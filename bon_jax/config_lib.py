"""Config validation and workdir safety: bad input becomes one clear line.

`UserError` is what `bon_jax.main` prints as a single `error: ...` line (no
traceback). Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from bon_jax import models

# Fields that fix what a checkpoint in the workdir is: a run that differs in any
# of them cannot resume from it.
IDENTITY_FIELDS = ("task", "tokenizer", "model", "seed")
# Settings inside identity fields that change speed or memory, not results:
# a run may resume with others (e.g. on a smaller device after preemption).
NOT_IDENTITY = {"rl": ("microbatch_rows",)}
# Fields added after runs were saved without them: a saved run counts them at
# these defaults (their values then), so it still resumes.
ADDED_LATER = {
    "task": {"solution_format": "expression", "num_digits_weights": None},
    # Declared in the defaults later (read with these defaults before).
    "model": {"lora_rank": 0, "opt_state_dtype": ""},
    "rl": {"verifier_auc": 0.8, "verifier_noise_seed": 0},
}
CONFIG_FILE = "config.json"
# config.task.name values (bon_jax/tasks/registry.py).
TASKS = ("countdown", "hendrycks_math", "humaneval")


class UserError(Exception):
  """A problem with the user's input; its message says what to fix."""


def _require(cond: bool, msg: str) -> None:
  if not cond:
    raise UserError(msg)


def _positive_int(config: ml_collections.ConfigDict, path: str, minimum: int = 1) -> None:
  value = config
  for part in path.split("."):
    value = value[part]
  _require(
      isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
      f"config.{path} must be an integer >= {minimum}, got {value!r}",
  )


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `UserError` on values that would fail later or silently mislead."""
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
      config.task.name in TASKS,
      f"config.task.name={config.task.name!r} is unknown; choose one of {TASKS}",
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
  from bon_jax import inputs  # pylint: disable=g-import-not-at-top  (inputs imports this module)

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
    import jax  # pylint: disable=g-import-not-at-top
    from bon_jax import sharding  # pylint: disable=g-import-not-at-top

    sharding.resolve_mesh_shape(tuple(config.mesh.shape), jax.device_count())
  if "algorithms" in config:
    _validate_pipeline(config)


def _validate_pipeline(config: ml_collections.ConfigDict) -> None:
  """The verifier and fine-tuning stages (`train.train_and_evaluate`)."""
  from bon_jax import rl  # pylint: disable=g-import-not-at-top  (rl imports this module)
  from bon_jax import train  # pylint: disable=g-import-not-at-top

  algorithms = config.algorithms
  _require(isinstance(algorithms, (tuple, list)) and all(isinstance(a, str) for a in algorithms),
           f"config.algorithms must be a tuple of names, got {algorithms!r}")
  _require(len(set(algorithms)) == len(algorithms), f"config.algorithms has duplicates: {algorithms!r}")
  _require(train.BASE not in algorithms,
           f"config.algorithms: {train.BASE!r} names the SFT starting policy; call the stage otherwise")
  _positive_int(config, "verifier.steps", minimum=0)
  rank_weight = config.verifier.rank_weight
  _require(isinstance(rank_weight, (int, float)) and rank_weight >= 0,
           f"config.verifier.rank_weight must be a number >= 0, got {rank_weight!r}")
  pooling = config.verifier.pooling
  _require(pooling in ("last", "min"),
           f"config.verifier.pooling must be 'last' or 'min', got {pooling!r}")
  for t in config.eval.extra_temperatures:
    _require(isinstance(t, (int, float)) and t > 0,
             f"config.eval.extra_temperatures must hold temperatures > 0, got {t!r}")
  for name in algorithms:
    stage = train.stage_config(config, name)
    try:
      rl.validate_rl_config(stage.rl)
    except UserError as e:
      raise UserError(f"stage {name!r}: {e}") from None
    _require(stage.rl.verifier != "learned" or stage.rl.verifier_ckpt or config.verifier.steps > 0,
             f"stage {name!r} uses rl.verifier='learned' but there is no verifier: set"
             " config.verifier.steps > 0 (train one) or config.rl.verifier_ckpt")


def identity(config: ml_collections.ConfigDict | dict[str, Any],
             fields: tuple[str, ...] = IDENTITY_FIELDS) -> dict[str, Any]:
  """The `fields` of a config (or a saved config dict) that a resumed run must share."""
  full = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  out = {k: full.get(k) for k in fields}
  for k, defaults in ADDED_LATER.items():
    if isinstance(out.get(k), dict):
      out[k] = {**defaults, **out[k]}
  for k, skip in NOT_IDENTITY.items():
    if isinstance(out.get(k), dict):
      out[k] = {key: v for key, v in out[k].items() if key not in skip}
  return out


def prepare_workdir(
    config: ml_collections.ConfigDict, workdir: str, fields: tuple[str, ...] = IDENTITY_FIELDS
) -> None:
  """Creates `workdir` or checks that it holds a run this config may resume.

  The first run writes `config.json`; a later run that differs in `fields`
  (default: task, tokenizer, model, seed; a fine-tuning stage adds its SFT
  base `train` and its `rl` settings) is refused (one line), so nothing in
  the workdir is overwritten.
  Other fields (steps, eval settings) may change between runs; every run is
  appended to `runs.jsonl` for provenance.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} exists and is not a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f"--workdir={workdir} cannot be created ({e.strerror or e});"
                    " choose a directory you can write to") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise UserError(f"--workdir={workdir} is not writable; choose a directory you can write to")
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    try:
      with open(path) as f:
        saved = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise UserError(f"{path} is unreadable ({e}); use a new --workdir") from None
    mine = json.loads(json.dumps(identity(config, fields)))
    theirs = identity(saved, fields)
    if mine != theirs:
      diffs = sorted(_diff(theirs, mine))
      raise UserError(
          f"--workdir={workdir} holds a run with a different config"
          f" ({'; '.join(diffs[:3])}); use a new --workdir or the original config"
      )
  elif _has_checkpoints(workdir):
    raise UserError(
        f"--workdir={workdir} holds checkpoints but no {CONFIG_FILE}; use a new --workdir"
    )
  else:
    with open(path, "w") as f:
      json.dump(config.to_dict(), f, indent=2, sort_keys=True)
  with open(os.path.join(workdir, "runs.jsonl"), "a") as f:
    f.write(json.dumps(config.to_dict(), sort_keys=True) + "\n")


def _has_checkpoints(workdir: str) -> bool:
  ckpt = os.path.join(workdir, "checkpoints")
  return os.path.isdir(ckpt) and bool(os.listdir(ckpt))


def _diff(a: Any, b: Any, prefix: str = "config") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff(a.get(k), b.get(k), f"{prefix}.{k}")
    return out
  return [] if a == b else [f"{prefix}: saved {a!r}, now {b!r}"]
