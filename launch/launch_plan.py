"""What a bon_jax launch runs, as plain data, and its XManager job groups.

`build_plan` turns (accelerator, chip count, config, workdir, overrides, sweep)
into one `WorkUnit` per sweep entry and one `HostJob` per host: the command
line and the `jax.distributed` environment of every host. It needs no
XManager and no cloud, so it is unit-tested on CPU; `job_groups` turns a plan
into `xm.JobGroup`s (one `xm.Job` per host) for launch/xm_launch.py.

Example::

  plan = build_plan(accelerator="h100", accelerator_count=16,
                    config="configs/demo.py", workdir="gs://b/bon",
                    sweep={"rl.algorithm": ["rloo", "bon_rl_s"], "seed": [0, 1]})
  print(describe(plan))  # 4 work units x 2 hosts, one shell line each

Every host runs ``bash launch/multihost.sh python -m bon_jax.main --config=...
--workdir=... --config.<field>=<value>...``. On GPU slices with several hosts
the plan sets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID per
host (what `bon_jax.sharding.initialize_distributed` reads; the coordinator
is host 0, whose address XManager binds late on Vertex AI). TPU VMs find
their peers themselves, so nothing is set there.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The command every host runs; flags follow it.
ENTRYPOINT = ("bash", "launch/multihost.sh", "python", "-m", "bon_jax.main")
# Port of the jax.distributed coordinator on host 0 (GPU backends).
COORDINATOR_PORT = 8476
BACKENDS = ("vertex", "kubernetes", "local", "tpu_vm")
# Vertex AI custom jobs take at most 4 worker pools (one per host here).
_VERTEX_MAX_POOLS = 4


# ----------------------------------------------------------------------------
# Accelerators.


@dataclasses.dataclass(frozen=True, kw_only=True)
class Accelerator:
  """An accelerator kind: what XManager calls it and how chips sit on hosts.

  Attributes:
    kind: "gpu" or "tpu".
    xm_name: the `xm.ResourceType` name (`xm.JobRequirements(**{xm_name: n})`).
    per_host: chips (GPUs) per host in a multi-host slice.
    topologies: TPU chip count -> slice topology (``--topology`` overrides).
    jax_extra: the pip extra that installs the matching jaxlib plugin.
  """

  kind: str
  xm_name: str
  per_host: int
  topologies: Mapping[int, str] = dataclasses.field(default_factory=dict)
  jax_extra: str = ""


# Public slice shapes: cloud.google.com/tpu/docs/v5e (8 chips per host, 2x4
# per host), cloud.google.com/tpu/docs/v5p and /v4 (4 chips per host).
_V5E = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_V4_V5P = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8"}

ACCELERATORS: dict[str, Accelerator] = {
    "h100": Accelerator(kind="gpu", xm_name="h100", per_host=8, jax_extra="cuda12"),
    "h200": Accelerator(kind="gpu", xm_name="h200", per_host=8, jax_extra="cuda12"),
    "a100_80gib": Accelerator(kind="gpu", xm_name="a100_80gib", per_host=8, jax_extra="cuda12"),
    "tpu_v5e": Accelerator(kind="tpu", xm_name="tpu_v5e", per_host=8, topologies=_V5E, jax_extra="tpu"),
    "tpu_v5p": Accelerator(kind="tpu", xm_name="tpu_v5p", per_host=4, topologies=_V4_V5P, jax_extra="tpu"),
    "tpu_v4": Accelerator(kind="tpu", xm_name="tpu_v4", per_host=4, topologies=_V4_V5P, jax_extra="tpu"),
}


def num_hosts(accelerator: str, count: int) -> int:
  """Hosts of a slice with `count` chips; ValueError if the count cannot be laid out."""
  if accelerator not in ACCELERATORS:
    raise ValueError(f"unknown --accelerator={accelerator!r}; choose one of {sorted(ACCELERATORS)}")
  acc = ACCELERATORS[accelerator]
  if count < 1:
    raise ValueError(f"--accelerator_count must be >= 1, got {count}")
  if count <= acc.per_host:
    return 1
  if count % acc.per_host:
    raise ValueError(
        f"--accelerator_count={count} is not a multiple of the {acc.per_host} {accelerator}"
        " chips per host")
  return count // acc.per_host


def tpu_topology(accelerator: str, count: int, topology: str = "") -> str:
  """The slice topology string of a TPU slice (e.g. ``tpu_v5e``, 16 -> ``4x4``)."""
  if topology:
    return topology
  topologies = ACCELERATORS[accelerator].topologies
  if count not in topologies:
    raise ValueError(
        f"no known {accelerator} slice with {count} chips; use one of {sorted(topologies)}"
        " or pass --topology")
  return topologies[count]


# ----------------------------------------------------------------------------
# Sweeps and overrides.


def expand_sweep(sweep: Any) -> list[dict[str, Any]]:
  """One override dict per work unit.

  Args:
    sweep: None (one work unit, no overrides); a list of dicts (one work unit
      each); or a dict of lists (their grid, in key order, last key fastest).

  Example::

    expand_sweep({"rl.algorithm": ["rloo", "bon_rl_s"], "seed": [0, 1]})
    # [{"rl.algorithm": "rloo", "seed": 0}, {"rl.algorithm": "rloo", "seed": 1},
    #  {"rl.algorithm": "bon_rl_s", "seed": 0}, {"rl.algorithm": "bon_rl_s", "seed": 1}]
  """
  if sweep is None:
    return [{}]
  if isinstance(sweep, Mapping):
    for k, v in sweep.items():
      if not isinstance(v, (list, tuple)) or not v:
        raise ValueError(f"sweep grid entry {k!r} must be a non-empty list of values, got {v!r}")
    keys = list(sweep)
    units = [dict(zip(keys, vals)) for vals in itertools.product(*(sweep[k] for k in keys))]
  elif isinstance(sweep, (list, tuple)):
    units = list(sweep)
    if not units:
      raise ValueError("the sweep is an empty list; give at least one override dict")
  else:
    raise ValueError(f"a sweep is a list of override dicts or a dict of value lists, got {type(sweep).__name__}")
  out = []
  for u in units:
    if not isinstance(u, Mapping):
      raise ValueError(f"every sweep entry must be a dict of config overrides, got {u!r}")
    out.append({_field(k): v for k, v in u.items()})
  return out


def _field(key: Any) -> str:
  """A config field path ``a.b``; a leading ``config.`` is accepted and dropped."""
  if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
    raise ValueError(f"bad config field {key!r} in an override; expected e.g. 'rl.algorithm'")
  return key.removeprefix("config.")


def parse_override(text: str) -> tuple[str, str]:
  """``"rl.N_prime=32"`` -> ``("rl.N_prime", "32")`` (the value is passed on verbatim)."""
  key, sep, value = text.partition("=")
  if not sep:
    raise ValueError(f"--override={text!r} must look like field=value, e.g. rl.N_prime=32")
  return _field(key.strip()), value


def flag_value(value: Any) -> str:
  """How `ml_collections.config_flags` wants a value on the command line."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return "(" + ", ".join(flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def unit_name(overrides: Mapping[str, Any]) -> str:
  """A filesystem-safe tag of a work unit's overrides (``algorithm=rloo,seed=0``)."""
  parts = [f"{k.rsplit('.', 1)[-1]}={flag_value(v)}" for k, v in overrides.items()]
  return re.sub(r"[^\w.=,+-]", "_", ",".join(parts)) or "base"


# ----------------------------------------------------------------------------
# The plan.


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostJob:
  """What one host of one work unit runs: ``env argv``."""

  host: int
  argv: tuple[str, ...]
  env: Mapping[str, str]

  @property
  def flags(self) -> tuple[str, ...]:
    """The arguments after `ENTRYPOINT` (what an XManager job passes)."""
    return self.argv[len(ENTRYPOINT):]

  def shell(self) -> str:
    """One shell line, e.g. for a cluster without a scheduler."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
    return (env + " " if env else "") + shlex.join(self.argv)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkUnit:
  index: int
  overrides: Mapping[str, Any]
  workdir: str
  hosts: tuple[HostJob, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LaunchPlan:
  """Everything a launch needs, as plain data (no XManager objects)."""

  accelerator: str
  accelerator_count: int
  num_hosts: int
  chips_per_host: int
  topology: str  # TPU slice topology; "" for GPUs.
  work_units: tuple[WorkUnit, ...]


def build_plan(
    *,
    accelerator: str,
    accelerator_count: int,
    config: str,
    workdir: str,
    overrides: Sequence[str] = (),
    sweep: Any = None,
    topology: str = "",
    coordinator: str = "",
) -> LaunchPlan:
  """The per-host commands of every work unit.

  Args:
    accelerator, accelerator_count: a key of `ACCELERATORS` and the chips of
      one slice (e.g. ``h100``, 16 = 2 hosts of 8).
    config: the config file, relative to the repository root.
    workdir: the experiment's root; with a sweep every work unit gets
      ``workdir/<index>-<overrides>``, without one the workdir itself (so
      relaunching the same command resumes).
    overrides: ``field=value`` strings applied to every work unit.
    sweep: see `expand_sweep`; a work unit's overrides win over `overrides`.
    topology: TPU slice topology, when not the default for the count.
    coordinator: ``host:port`` of host 0 (GPU, multi-host). "" = the address
      XManager binds at run time on Vertex AI (a ``%objectname(...)%`` late
      binding, resolved with ``--xm_wrap_late_bindings``).
  """
  hosts = num_hosts(accelerator, accelerator_count)
  acc = ACCELERATORS[accelerator]
  topo = tpu_topology(accelerator, accelerator_count, topology) if acc.kind == "tpu" else ""
  if not config or not workdir:
    raise ValueError("--config and --workdir are required")
  base = dict(parse_override(o) for o in overrides)
  units = expand_sweep(sweep)
  work_units = []
  for i, unit in enumerate(units):
    merged = {**base, **unit}
    wd = workdir if len(units) == 1 else f"{workdir.rstrip('/')}/{i:03d}-{unit_name(unit)}"
    flags = [f"--config={config}", f"--workdir={wd}"]
    flags += [f"--config.{k}={flag_value(v)}" for k, v in merged.items()]
    jobs = []
    for h in range(hosts):
      env = {}
      if acc.kind == "gpu" and hosts > 1:
        # TPU VMs find their peers themselves; GPUs are told.
        env = {
            "JAX_COORDINATOR_ADDRESS": coordinator or "%objectname(workerpool0)%",
            "JAX_NUM_PROCESSES": str(hosts),
            "JAX_PROCESS_ID": str(h),
        }
      jobs.append(HostJob(host=h, argv=(*ENTRYPOINT, *flags), env=env))
    work_units.append(WorkUnit(index=i, overrides=merged, workdir=wd, hosts=tuple(jobs)))
  return LaunchPlan(
      accelerator=accelerator,
      accelerator_count=accelerator_count,
      num_hosts=hosts,
      chips_per_host=min(accelerator_count, acc.per_host),
      topology=topo,
      work_units=tuple(work_units),
  )


def check_backend(plan: LaunchPlan, backend: str) -> None:
  """ValueError (one line) for a backend that cannot run the plan."""
  kind = ACCELERATORS[plan.accelerator].kind
  if backend not in BACKENDS:
    raise ValueError(f"unknown --backend={backend!r}; choose one of {list(BACKENDS)}")
  if kind == "tpu" and backend in ("vertex", "kubernetes"):
    raise ValueError(
        f"XManager 0.8.5's {backend} backend cannot provision {plan.accelerator} slices;"
        " use --backend=tpu_vm on a TPU VM slice you created")
  if kind == "gpu" and backend == "tpu_vm":
    raise ValueError("--backend=tpu_vm is for TPU accelerators; use vertex or kubernetes")
  if backend == "local" and plan.num_hosts > 1:
    raise ValueError(f"--backend=local runs one host, but the plan has {plan.num_hosts}")
  if backend == "vertex" and plan.num_hosts > _VERTEX_MAX_POOLS:
    raise ValueError(
        f"Vertex AI takes at most {_VERTEX_MAX_POOLS} worker pools (one per host here), the"
        f" plan has {plan.num_hosts} hosts; use launch/multihost.sh on a cluster instead")


def tpu_vm_commands(plan: LaunchPlan, *, tpu_name: str, zone: str, repo_dir: str = "~/bon_jax") -> list[str]:
  """``gcloud`` lines, one per work unit, that run it on every host of a TPU VM slice.

  The slice must exist with bon_jax installed at `repo_dir` on every host
  (``pip install -c constraints.txt -e . "jax[tpu]==<the pinned jax>"``).
  """
  out = []
  for wu in plan.work_units:
    remote = f"cd {repo_dir} && {wu.hosts[0].shell()}"
    out.append(shlex.join([
        "gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu_name, f"--zone={zone}",
        "--worker=all", f"--command={remote}"]))
  return out


# ----------------------------------------------------------------------------
# XManager objects (imported lazily: the plan above needs no XManager).


def executable_spec(accelerator: str, *, image_path: str = "", base_image: str = "python:3.11-slim"):
  """The image every host runs: bon_jax installed from this checkout, or a prebuilt image."""
  from xmanager import xm  # pylint: disable=g-import-not-at-top

  if image_path:
    return xm.Container(image_path=image_path)
  name = os.path.basename(REPO_ROOT)
  extra = ACCELERATORS[accelerator].jax_extra
  return xm.PythonContainer(
      path=REPO_ROOT,
      base_image=base_image,
      entrypoint=xm.CommandList([shlex.join(ENTRYPOINT)]),
      docker_instructions=[
          f"COPY {name}/ /bon_jax",
          "WORKDIR /bon_jax",
          # The pinned stack of CI (constraints.txt pins jax), plus the accelerator's plugin.
          f'RUN pip install --no-cache-dir -c constraints.txt -e . "jax[{extra}]"',
      ],
  )


def executor(plan: LaunchPlan, backend: str):
  """The XManager executor of one host."""
  from xmanager import xm  # pylint: disable=g-import-not-at-top
  from xmanager import xm_local  # pylint: disable=g-import-not-at-top

  check_backend(plan, backend)
  acc = ACCELERATORS[plan.accelerator]
  amount = plan.topology or plan.chips_per_host
  if backend == "local":
    return xm_local.Local(requirements=xm.JobRequirements(local_gpu=plan.chips_per_host)
                          if acc.kind == "gpu" else xm.JobRequirements())
  requirements = xm.JobRequirements(**{acc.xm_name: amount})
  if backend == "vertex":
    return xm_local.Vertex(requirements=requirements)
  if backend == "kubernetes":
    return xm_local.Kubernetes(requirements=requirements)
  raise ValueError(f"--backend={backend} has no XManager executor")


def executor_spec(backend: str):
  from xmanager import xm_local  # pylint: disable=g-import-not-at-top

  return {"vertex": xm_local.Vertex.Spec, "kubernetes": xm_local.Kubernetes.Spec,
          "local": xm_local.Local.Spec}[backend]()


def job_groups(plan: LaunchPlan, executable: Any, backend: str) -> list[Any]:
  """One `xm.JobGroup` per work unit, one `xm.Job` per host (``host_0`` ... ``host_{H-1}``)."""
  from xmanager import xm  # pylint: disable=g-import-not-at-top

  groups = []
  for wu in plan.work_units:
    jobs = {
        f"host_{h.host}": xm.Job(
            executable=executable,
            executor=executor(plan, backend),
            args=list(h.flags),
            env_vars=dict(h.env),
        )
        for h in wu.hosts
    }
    groups.append(xm.JobGroup(**jobs))
  return groups


def describe(plan: LaunchPlan) -> str:
  """Human-readable plan: slice, then every host's command line."""
  lines = [
      f"# {plan.accelerator} x {plan.accelerator_count}: {plan.num_hosts} host(s) x"
      f" {plan.chips_per_host} chip(s)" + (f", topology {plan.topology}" if plan.topology else ""),
  ]
  for wu in plan.work_units:
    lines.append(f"# work unit {wu.index}: {json.dumps(dict(wu.overrides), sort_keys=False)}")
    lines += [f"[host {h.host}] {h.shell()}" for h in wu.hosts]
  return "\n".join(lines)


