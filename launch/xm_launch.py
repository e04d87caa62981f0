r"""XManager launch script: bon_jax on GPU / TPU pods, one job per host.

Every work unit is one run of ``python -m bon_jax.main`` on all hosts of a
slice; a sweep (a list of config-override dicts, or a dict of lists expanded as
a grid) gives one work unit per entry, each with its own workdir.

  # 2 hosts of 8 x H100 on Vertex AI, algorithm x seed sweep (6 work units):
  xmanager launch launch/xm_launch.py -- --xm_wrap_late_bindings \
      --accelerator=h100 --accelerator_count=16 \
      --config=configs/demo.py --workdir=/gcs/BUCKET/bon \
      --override=rl.N_prime=32 \
      --sweep='{"rl.algorithm": ["rloo", "bon_rl_s"], "seed": [0, 1, 2]}'

  # What would be launched, without any cloud call (per-host commands):
  python launch/xm_launch.py --dry_run --accelerator=tpu_v5e \
      --accelerator_count=16 --config=configs/demo.py --workdir=/gcs/BUCKET/bon

Each host runs ``bash launch/multihost.sh python -m bon_jax.main --config=...
--workdir=... --config.<key>=<value>...``; multihost.sh fills in the
`jax.distributed` environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID) that `bon_jax.sharding.initialize_distributed` reads. On GPU
the launcher sets them per job (the coordinator is host 0, whose address
XManager binds late on Vertex AI); on TPU VMs `jax.distributed` finds its
peers itself, so nothing is set.

Backends (``--backend``):
  vertex:     Vertex AI custom job, one worker pool per host (GPUs). XManager
              0.8.5 maps only TPU v2/v3 to Vertex, so TPU v4/v5e/v5p go through
              ``tpu_vm``.
  kubernetes: GKE (GPUs). XManager 0.8.5 does not add the GKE TPU node
              selectors, so TPUs are refused here too.
  local:      this machine (single host; smoke tests).
  tpu_vm:     prints the ``gcloud compute tpus tpu-vm ssh --worker=all``
              command that runs the same line on every host of an existing
              TPU VM slice (not XManager; no cloud call from this script).
``--dry_run`` builds the plan and the XManager job groups for any backend
and prints them without packaging or launching.

The plan and the job groups come from launch/launch_plan.py (pure Python,
unit-tested on CPU in tests/test_launch.py).
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

# launch/ is on sys.path both when run as a script and under `xmanager launch`.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launch_plan as lp  # pylint: disable=g-import-not-at-top,wrong-import-position

_BACKEND = flags.DEFINE_enum("backend", "vertex", lp.BACKENDS, "Where to launch (see above).")
_ACCELERATOR = flags.DEFINE_enum("accelerator", "h100", sorted(lp.ACCELERATORS), "Accelerator kind.")
_COUNT = flags.DEFINE_integer("accelerator_count", 8, "Chips (GPUs) per slice; hosts = count / chips per host.")
_TOPOLOGY = flags.DEFINE_string("topology", "", "TPU slice topology (default: the usual one for the count).")
_CONFIG = flags.DEFINE_string("config", "configs/demo.py", "Config file, relative to the repository root.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Experiment root: a path every host shares (on Google Cloud a gcsfuse mount, /gcs/BUCKET/...);"
    " a sweep gets subfolders.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "field=value config override for every work unit (repeat).")
_SWEEP = flags.DEFINE_string("sweep", "", "JSON: a list of override dicts, or a dict of value lists (a grid).")
_SWEEP_FILE = flags.DEFINE_string("sweep_file", "", "A JSON file holding what --sweep takes.")
_COORDINATOR = flags.DEFINE_string("coordinator", "", "host:port of host 0 (GPU); default: Vertex AI's late binding.")
_IMAGE = flags.DEFINE_string("image_path", "", "A prebuilt image to run instead of building this checkout.")
_TITLE = flags.DEFINE_string("experiment_title", "bon_jax", "XManager experiment title.")
_TPU_NAME = flags.DEFINE_string("tpu_name", "TPU_NAME", "--backend=tpu_vm: the TPU VM slice's name.")
_ZONE = flags.DEFINE_string("zone", "ZONE", "--backend=tpu_vm: the slice's zone.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan and the XManager jobs; launch nothing.")
flags.mark_flag_as_required("workdir")


def _plan() -> lp.LaunchPlan:
  sweep = None
  if _SWEEP.value and _SWEEP_FILE.value:
    raise ValueError("give --sweep or --sweep_file, not both")
  text = _SWEEP.value
  if _SWEEP_FILE.value:
    with open(_SWEEP_FILE.value) as f:
      text = f.read()
  if text:
    try:
      sweep = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"the sweep is not valid JSON: {e}") from None
  plan = lp.build_plan(
      accelerator=_ACCELERATOR.value, accelerator_count=_COUNT.value, config=_CONFIG.value,
      workdir=_WORKDIR.value, overrides=_OVERRIDE.value, sweep=sweep, topology=_TOPOLOGY.value,
      coordinator=_COORDINATOR.value)
  lp.check_backend(plan, _BACKEND.value)
  return plan


def _print_dry_run(plan: lp.LaunchPlan) -> None:
  """The plan, then the XManager jobs built from it (so bad requirements fail here)."""
  from xmanager.xm_local import executables  # pylint: disable=g-import-not-at-top

  print(lp.describe(plan))
  placeholder = executables.GoogleContainerRegistryImage(
      name="bon_jax", image_path=_IMAGE.value or "<built from this checkout>")
  for wu, group in zip(plan.work_units, lp.job_groups(plan, placeholder, _BACKEND.value)):
    for name, job in group.jobs.items():
      print(f"# xm work unit {wu.index} {name}: {job.executor!r}"
            f" args={job.args.to_list()} env={dict(job.env_vars)}")


def _launch(plan: lp.LaunchPlan) -> None:
  from xmanager import xm  # pylint: disable=g-import-not-at-top
  from xmanager import xm_local  # pylint: disable=g-import-not-at-top

  @xm.run_in_asyncio_loop
  async def run():
    async with xm_local.create_experiment(experiment_title=_TITLE.value) as experiment:
      [executable] = experiment.package([
          xm.Packageable(
              executable_spec=lp.executable_spec(plan.accelerator, image_path=_IMAGE.value),
              executor_spec=lp.executor_spec(_BACKEND.value),
          )
      ])
      for wu, group in zip(plan.work_units, lp.job_groups(plan, executable, _BACKEND.value)):
        await experiment.add(group)
        print(f"work unit {wu.index}: {wu.workdir}")

  run()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # XManager's imports log at INFO.
  try:
    plan = _plan()
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if _BACKEND.value == "tpu_vm":
    print(lp.describe(plan))
    print("\n".join(lp.tpu_vm_commands(plan, tpu_name=_TPU_NAME.value, zone=_ZONE.value)))
  elif _DRY_RUN.value:
    _print_dry_run(plan)
  else:
    _launch(plan)


if __name__ == "__main__":
  app.run(main)
