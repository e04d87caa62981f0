"""XLA's compiled per-device memory beside `capacity.plan`, at full shape on 8 devices.

For each paper config, on its configured mesh over 8 simulated CPU devices,
compiles (never runs) the three programs that hold the most memory:

* the RL sampler (`sampling.sample` with the mesh: B = rl.prompts_per_step
  prompts of P = task.max_prompt_tokens tokens, N = rl.N_prime samples of
  T = rl.max_new_tokens tokens);
* the BoN-aware policy update (`rl.make_policy_update` with the mesh and
  ``rl.microbatch_rows``) on B x N rows of P + T tokens;
* the verifier's training step (`verifier.make_verifier_step`) on
  ``verifier.batch_size`` sequences, its state and batch sharded by
  `sharding.state_specs` / `batch_spec_for`, as the verifier stage runs it
  on the run's mesh;

and reads XLA's per-device figure (`compile().memory_analysis()`: arguments +
outputs + temporaries - donated/aliased) beside the plan's phase for the same
program. Arguments are `jax.ShapeDtypeStruct`s: nothing is allocated.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/compiled_memory.py \
      --configs math_bon32 --programs sampler,update,verifier --out /tmp/compiled.json

Compiling Gemma 2 2B programs takes minutes of CPU each. The measurement is
`bon_jax.compiled.measure` (also ``python -m bon_jax.main --dry_run
--dry_run_compile=...``); this script runs it over configs and presets and
writes a table and JSON.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bon_jax import compiled  # pylint: disable=g-import-not-at-top
from bon_jax import models  # pylint: disable=g-import-not-at-top

GiB = compiled.GIB
PROGRAMS = compiled.PROGRAMS


def run(name: str, programs: tuple[str, ...], preset: str | None, sets: tuple[str, ...] = ()) -> dict:
  config = importlib.import_module(f"configs.{name}").get_config()
  for item in sets:  # "rl.max_new_tokens=4": a Python literal into the config.
    key, value = item.split("=", 1)
    *path, leaf = key.split(".")
    node = config
    for part in path:
      node = node[part]
    node[leaf] = ast.literal_eval(value)
  if preset:
    config.model.preset = preset
    if models.PRESETS[preset].vocab_size is None:  # A test-size preset: the task tokenizer's vocabulary.
      config.tokenizer.kind = "task"
  # The bench measures the verifier step whatever the config's verifier.steps (it has the same shapes).
  if "verifier" in programs and config.verifier.steps == 0:
    config.verifier.steps = 1
  result = compiled.measure(config, programs)
  plan = result["plan"]
  return {"config": name, "preset": config.model.preset, "mesh": list(plan["mesh_shape"]),
          "lora_rank": plan["lora_rank"], "plan": plan["per_device_bytes"], "programs": result["programs"]}


def render(rows: list[dict]) -> str:
  lines = ["| config | preset | mesh | program | plan GiB (what it counts) | compiled GiB (args + out + temp"
           " - alias) | temp GiB | compiled / plan | compile s |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    for prog, v in r["programs"].items():
      c = v["compiled"]
      lines.append(f"| {r['config']} | {r['preset']} | {tuple(r['mesh'])} | {prog} | {v['plan'] / GiB:.2f}"
                   f" ({v['plan_parts']}) | {c['total'] / GiB:.2f} | {c['temp'] / GiB:.2f} |"
                   f" {v['compiled_over_plan']:.2f} | {c['compile_s']:.0f} |")
  return "\n".join(lines)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--configs", default="math_bon32,math_pass32,humaneval_pass16")
  ap.add_argument("--programs", default=",".join(PROGRAMS))
  ap.add_argument("--preset", default="", help="override config.model.preset (e.g. gemma2_9b)")
  ap.add_argument("--set", action="append", default=[],
                  help="config override, a Python literal: --set rl.max_new_tokens=4 --set 'mesh.shape=(1, 2, 1)'")
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  rows = []
  for name in args.configs.split(","):
    rows.append(run(name, tuple(args.programs.split(",")), args.preset or None, tuple(args.set)))
    print(render(rows[-1:]), flush=True)
    if args.out:
      with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
  print(render(rows))


if __name__ == "__main__":
  main()
