r"""Command-line entry point.

  python -m bon_jax.main --config=configs/demo.py --workdir=/tmp/bon_demo \
      --config.train.steps=200

`--dry_run` prints what one device holds for the config on its
`config.mesh.shape` (no weights, data or accelerator needed) and exits:

  python -m bon_jax.main --config=configs/math_bon32.py --dry_run

Config fields are overridden with `--config.<path>=<value>`. Problems with the
input (unknown or ill-typed fields, missing paths, a workdir that belongs to
another run) are reported as one `error: ...` line and exit status 2.
"""

import os
import sys

# Quiet TensorFlow (pulled in by gemma and clu) before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

from bon_jax import config_lib
from bon_jax import sharding
from bon_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and reports; a rerun resumes."
)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False,
    "Print the config's capacity plan and exit (bon_jax/capacity.py): parameter count and"
    " per-device bytes of parameters, optimizer state and sampler KV cache on config.mesh.shape,"
    " built abstractly; needs no weights, data, accelerator or --workdir.")
_DRY_RUN_DEVICES = flags.DEFINE_integer(
    "dry_run_devices", None, "The device count that resolves a -1 in config.mesh.shape for"
    " --dry_run (default: this host's devices).")
flags.mark_flags_as_required(["config"])


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split()).strip("'\"")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config-file and override errors on one line."""
  try:
    rest = flags.FLAGS(argv)
    _CONFIG.value.to_dict()  # Loads the config file and applies the overrides.
  except flags.Error as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:
    print(f"error: unknown config field in an override: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  except (OSError, TypeError, ValueError, SyntaxError, ImportError) as e:
    print(f"error: cannot load --config: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  return rest


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  if _DRY_RUN.value:
    from bon_jax import capacity  # pylint: disable=g-import-not-at-top

    try:
      capacity.dry_run(_CONFIG.value, num_devices=_DRY_RUN_DEVICES.value)
    except (config_lib.UserError, ValueError) as e:
      print(f"error: {_one_line(e)}", file=sys.stderr)
      sys.exit(2)
    return
  if not _WORKDIR.value:
    print("error: --workdir is required (except with --dry_run)", file=sys.stderr)
    sys.exit(2)
  try:
    # Multi-host: join the other processes before anything touches devices.
    sharding.initialize_distributed(_CONFIG.value)
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except config_lib.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
