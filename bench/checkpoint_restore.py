"""Released-checkpoint restore at real Gemma 2 shape on 8 simulated CPU devices.

Writes a random Gemma 2 checkpoint of a preset in the released Orbax layout
(`models.write_random_checkpoint`: on the host, leaf by leaf) and restores it with `models.load_params` onto a (data, fsdp,
tensor) mesh in bfloat16, each device reading only its shards. Write and
restore run in separate processes so each one's peak RSS is its own. Prints
(and with --json writes) wall times, peak RSS, the bytes each simulated
device holds, and, abstractly (`sharding.per_device_bytes`), what each of 8
chips holds of every preset, e.g. Gemma 2 9B on 8 x 16 GB.

  python bench/checkpoint_restore.py --dir /tmp/g2b_ckpt          # ~5 GB on disk, ~6 GB RAM
  python bench/checkpoint_restore.py --dir /tmp/micro --preset micro  # seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if any(a.startswith("--child") for a in sys.argv):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bon_jax import models  # pylint: disable=g-import-not-at-top
from bon_jax import sharding  # pylint: disable=g-import-not-at-top

GiB = 2**30


def _peak_rss() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB.


def _vocab(preset: str) -> int | None:
  return None if models.PRESETS[preset].vocab_size else 128


def child(mode: str, path: str, preset: str, mesh_shape: tuple[int, ...]) -> dict:
  mesh = sharding.make_mesh(mesh_shape)
  t0 = time.perf_counter()
  if mode == "write":
    n = models.write_random_checkpoint(path, preset=preset, vocab_size=_vocab(preset), dtype=jnp.bfloat16)
    return {"write_s": time.perf_counter() - t0, "write_peak_rss": _peak_rss(), "params": n}
  params = models.load_params(path, preset=preset, vocab_size=_vocab(preset), dtype="bfloat16", mesh=mesh)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - t0
  per_device: dict[str, int] = {}
  for x in jax.tree.leaves(params):
    for s in x.addressable_shards:
      per_device[str(s.device)] = per_device.get(str(s.device), 0) + s.data.nbytes
  total = sum(x.nbytes for x in jax.tree.leaves(params))
  specs = sharding.param_specs(params, mesh)
  return {"restore_s": seconds, "restore_peak_rss": _peak_rss(), "tree_bytes": total,
          "device_bytes": sorted(per_device.values()),
          "planned_device_bytes": sharding.per_device_bytes(params, specs, mesh),
          "dtypes": sorted({str(x.dtype) for x in jax.tree.leaves(params)})}


def abstract_table(mesh_shape: tuple[int, ...]) -> list[dict]:
  rows = []
  for preset in ("gemma2_2b", "gemma2_9b"):
    model = models.make_model(preset=preset, dtype=jnp.bfloat16)
    abstract = models.abstract_params(model)
    specs = sharding.param_specs(abstract, mesh_shape)
    whole = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    rows.append({"preset": preset, "mesh": list(mesh_shape), "tree_bytes": int(whole),
                 "device_bytes": sharding.per_device_bytes(abstract, specs, mesh_shape)})
  return rows


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--dir", required=True, help="a new directory for the checkpoint (removed after)")
  ap.add_argument("--preset", default="gemma2_2b", choices=sorted(models.PRESETS))
  ap.add_argument("--mesh", default="1,8,1", help="data,fsdp,tensor over the 8 simulated devices")
  ap.add_argument("--json", default="", help="also write the results here")
  ap.add_argument("--keep", action="store_true", help="keep the checkpoint")
  ap.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = ap.parse_args()
  mesh_shape = tuple(int(s) for s in args.mesh.split(","))
  path = os.path.join(os.path.abspath(args.dir), args.preset)
  if args.child:
    print(json.dumps(child(args.child, path, args.preset, mesh_shape)))
    return
  if os.path.exists(args.dir):
    sys.exit(f"error: --dir={args.dir} exists; give a new directory")
  out = {"preset": args.preset, "mesh": list(mesh_shape), "devices": 8,
         "machine": "2-core AMD EPYC CPU, shared", "command": " ".join(["python", *sys.argv])}
  try:
    for mode in ("write", "restore"):
      proc = subprocess.run([sys.executable, *sys.argv, f"--child={mode}"], capture_output=True, text=True)
      if proc.returncode:
        sys.exit(proc.stderr[-3000:])
      out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
  finally:
    if not args.keep:
      shutil.rmtree(args.dir, ignore_errors=True)
  out["abstract_8_chips"] = abstract_table(mesh_shape)
  dev = out["device_bytes"]
  print(f"{args.preset} ({out['params'] / 1e9:.2f} B params, {out['tree_bytes'] / GiB:.2f} GiB in"
        f" {','.join(out['dtypes'])}) on mesh {mesh_shape}: write {out['write_s']:.0f} s (peak RSS"
        f" {out['write_peak_rss'] / GiB:.2f} GiB), restore {out['restore_s']:.0f} s (peak RSS"
        f" {out['restore_peak_rss'] / GiB:.2f} GiB); per device {min(dev) / GiB:.3f}-{max(dev) / GiB:.3f} GiB"
        f" (plan {out['planned_device_bytes'] / GiB:.3f} GiB)")
  for row in out["abstract_8_chips"]:
    print(f"  {row['preset']} bf16 on {tuple(row['mesh'])}: {row['tree_bytes'] / GiB:.2f} GiB in all,"
          f" at most {row['device_bytes'] / GiB:.2f} GiB on one chip")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
