r"""Command-line entry point.

  python -m bon_jax.main --config=configs/demo.py --workdir=/tmp/bon_demo \
      --config.train.steps=200

`--dry_run` prints what one device holds for the config on its
`config.mesh.shape` (no weights, data or accelerator needed) and exits:

  python -m bon_jax.main --config=configs/math_bon32.py --dry_run

With `--dry_run_compile=sampler,update,verifier` it also compiles those
programs at full shape on the mesh (abstract arguments: nothing allocated)
and prints XLA's per-device memory beside the plan's (bon_jax/compiled.py).

Config fields are overridden with `--config.<path>=<value>`. Problems with the
input (unknown or ill-typed fields, missing paths, a workdir that belongs to
another run) are reported as one `error: ...` line and exit status 2.
"""

import importlib.util
import os
import sys
import tempfile

# Quiet TensorFlow (pulled in by gemma, clu and tensorflow-datasets) before
# anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _import_tensorflow_quietly() -> None:
  """Imports TensorFlow with its C++ start-up lines kept off the terminal.

  TensorFlow writes them ("oneDNN custom operations are on", "Could not find
  cuda drivers", ...) straight to file descriptor 2 before absl's C++ logging
  is initialised, where TF_CPP_MIN_LOG_LEVEL does not reach. They go to a
  temporary file, replayed only when the import fails.
  """
  with tempfile.TemporaryFile() as tmp:
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(tmp.fileno(), 2)
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    except ModuleNotFoundError:
      pass  # Nothing to quiet.
    except BaseException:
      os.dup2(saved, 2)
      tmp.seek(0)
      sys.stderr.buffer.write(tmp.read())
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


_import_tensorflow_quietly()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from bon_jax import capacity
from bon_jax import compiled
from bon_jax import config_lib
from bon_jax import pipeline
from bon_jax import sharding

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
_DRY_RUN_COMPILE = flags.DEFINE_list(
    "dry_run_compile", [], "With --dry_run: also compile (never run) these programs at the config's"
    " full shapes on its mesh and print XLA's per-device memory beside the plan's (bon_jax/compiled.py):"
    " any of sampler, update, verifier. Needs the mesh's devices (on CPU: XLA_FLAGS="
    "--xla_force_host_platform_device_count=N); Gemma 2 2B's update takes tens of minutes to compile on CPU.")
flags.mark_flags_as_required(["config"])


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split()).strip("'\"")


def _config_arg(argv: list[str]) -> str | None:
  """The value of --config in `argv` (None when absent)."""
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _fail(msg: str) -> None:
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


def _get_config_type(arg: str | None) -> type | None:
  """The type `get_config()` of `--config=arg` returns (None if it cannot be run)."""
  if arg is None:
    return None
  path, *args = arg.split(":", 1)
  try:
    spec = importlib.util.spec_from_file_location("bon_jax_config_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return type(module.get_config(*args))
  except Exception:  # pylint: disable=broad-except  (the flag parser reports these)
    return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config-file and override errors on one line."""
  arg = _config_arg(argv)
  if arg is not None:
    # `--config=file.py:arg` passes `arg` to get_config.
    path = arg.split(":", 1)[0]
    if not os.path.isfile(path):
      where = "" if os.path.isabs(path) else f" (relative to {os.getcwd()})"
      _fail(f"--config={arg}: no such config file {path!r}{where}")
  try:
    rest = flags.FLAGS(argv)
    # Loads the config file and applies the overrides.
    config = _CONFIG.value
    if not isinstance(config, ml_collections.ConfigDict):
      _fail(f"--config={arg}: get_config() must return an ml_collections.ConfigDict,"
            f" got {type(config).__name__}")
    config.to_dict()
  except flags.Error as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:
    # An override of something that is not a ConfigDict: say that, not "unknown field".
    kind = _get_config_type(arg)
    if kind is not None and not issubclass(kind, ml_collections.ConfigDict):
      _fail(f"--config={arg}: get_config() must return an ml_collections.ConfigDict,"
            f" got {kind.__name__}")
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
  if _DRY_RUN_COMPILE.value and not _DRY_RUN.value:
    print("error: --dry_run_compile needs --dry_run", file=sys.stderr)
    sys.exit(2)
  if _DRY_RUN.value:
    try:
      if _DRY_RUN_COMPILE.value:  # Fail on a device count that cannot hold the mesh before printing anything.
        compiled.check(_CONFIG.value, tuple(_DRY_RUN_COMPILE.value))
      capacity.dry_run(_CONFIG.value, num_devices=_DRY_RUN_DEVICES.value)
      if _DRY_RUN_COMPILE.value:
        print(compiled.format_measure(compiled.measure(_CONFIG.value, tuple(_DRY_RUN_COMPILE.value))),
              flush=True)
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
    pipeline.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except config_lib.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # No interpreter shutdown: after a failed Orbax restore its background
    # threads and futures would still log tracebacks under the one line.
    os._exit(2)  # pylint: disable=protected-access


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
