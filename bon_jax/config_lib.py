"""What a config is: user errors, fine-tuning stages, and workdir safety.

`UserError` is what `bon_jax.main` prints as a single `error: ...` line (no
traceback). Everything else is a bug and keeps its traceback. The bottom of
bon_jax's import graph: it imports no other bon_jax module (the defaults are
bon_jax/defaults.py, the checks of values bon_jax/validation.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from bon_jax import multihost


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
# The SFT policy in the pipeline's results and tables (not a stage name).
BASE = "base"


class UserError(Exception):
  """A problem with the user's input; its message says what to fix."""


def stage_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The config of fine-tuning stage `name`: ``rl`` + ``rl_overrides.<name>``.

  `name` is an algorithm of `algorithms.REGISTRY`, or any label whose overrides
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
  appended to `runs.jsonl` for provenance. On several processes, process 0
  checks and writes first, then the others check what it wrote
  (`bon_jax.multihost`).
  """
  with multihost.writer_first(f"prepare {workdir}"):
    _prepare_workdir(config, workdir, fields)


def _prepare_workdir(config: ml_collections.ConfigDict, workdir: str, fields: tuple[str, ...]) -> None:
  if "://" in workdir:  # os.makedirs would make a local "gs:" folder and write there silently.
    raise UserError(f"--workdir={workdir}: URLs are not supported; mount the bucket (e.g. gcsfuse at /gcs/)"
                    " and pass its local path")
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
  elif multihost.is_writer():
    with open(path, "w") as f:
      json.dump(config.to_dict(), f, indent=2, sort_keys=True)
  if multihost.is_writer():
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
