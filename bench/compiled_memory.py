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

Compiling Gemma 2 2B programs takes minutes of CPU each.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bon_jax import capacity  # pylint: disable=g-import-not-at-top
from bon_jax import experiment  # pylint: disable=g-import-not-at-top
from bon_jax import models  # pylint: disable=g-import-not-at-top
from bon_jax import optim  # pylint: disable=g-import-not-at-top
from bon_jax import rl  # pylint: disable=g-import-not-at-top
from bon_jax import sampling  # pylint: disable=g-import-not-at-top
from bon_jax import sharding  # pylint: disable=g-import-not-at-top
from bon_jax import trainer_lib  # pylint: disable=g-import-not-at-top
from bon_jax import verifier as verifier_lib  # pylint: disable=g-import-not-at-top

GiB = 2**30
PROGRAMS = ("sampler", "update", "verifier")


def compiled_bytes(lowered) -> dict[str, float]:
  t0 = time.perf_counter()
  m = lowered.compile().memory_analysis()
  out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
  out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  out["compile_s"] = time.perf_counter() - t0
  return out


def sharded_abstract(tree, mesh, specs):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      sharding.named(mesh, specs))


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
  plan = capacity.plan(config, num_devices=jax.device_count())
  mesh = sharding.make_mesh(plan["mesh_shape"])
  model = experiment.make_policy(config, _Vocab(plan["vocab_size"]))
  base = models.base_model(model)
  stage = capacity._stages(config)[0]  # pylint: disable=protected-access
  optimizer = optim.for_config(trainer_lib.make_optimizer(stage), config.model)

  def init_state(rng):
    params = models.init_params(model, rng)
    return trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

  state = jax.eval_shape(init_state, jax.random.key(0))
  b, n, p, t = stage.prompts_per_step, stage.N_prime, plan["samplers"][0]["P"], stage.max_new_tokens
  pd = plan["per_device_bytes"]
  out = {"config": name, "preset": config.model.preset, "mesh": list(plan["mesh_shape"]),
         "lora_rank": plan["lora_rank"], "plan": pd, "programs": {}}
  if "sampler" in programs:
    plain = jax.eval_shape(lambda r: models.init_params(base, r), jax.random.key(0))
    fn = sampling._sharded_sample(  # pylint: disable=protected-access
        mesh, base, b, num_samples=n, max_new_tokens=t, top_k=None, use_top_p=False, eos_id=models.EOS_ID)
    lowered = fn.lower(plain, jax.ShapeDtypeStruct((b, p), jnp.int32), jax.random.key(0),
                       jnp.float32(1.0), jnp.float32(1.0))
    out["programs"]["sampler"] = {
        "compiled": compiled_bytes(lowered),
        "plan": (sharding.per_device_bytes(plain, sharding.param_specs(plain, mesh), mesh) + pd["kv_cache_rl"]
                 + pd["sampler_gathered_layers_f32"] + pd["sampler_unembed_f32"]),
        "plan_parts": "params (merged, plain) + kv_cache_rl + sampler_gathered_layers_f32 + sampler_unembed_f32"}
  if "update" in programs:
    update = rl.make_policy_update(model, optimizer, kl_coef=float(stage.kl_coef),
                                   entropy_coef=float(stage.entropy_coef), temperature=float(stage.temperature),
                                   mesh=mesh, microbatch_rows=int(stage.microbatch_rows))
    length = p + t
    batch = {"tokens": jax.ShapeDtypeStruct((b, n, length), jnp.int32),
             "completion_mask": jax.ShapeDtypeStruct((b, n, length - 1), jnp.float32),
             "weights": jax.ShapeDtypeStruct((b, n), jnp.float32),
             "sample_mask": jax.ShapeDtypeStruct((b, n), jnp.float32)}
    ref = state.params if stage.kl_coef > 0 else None
    lowered = update.lower(state, ref, batch)
    parts = [k for k in ("params", "optimizer_state", "reference_params", "gradients",
                         "gradient_accumulator_f32", "update_gathered_layers_f32", "update_activations_f32",
                         "update_lora_activations_f32",
                         "update_logits_f32", "update_embedding_grad_f32", "update_embedding_f32") if k in pd]
    out["programs"]["update"] = {"compiled": compiled_bytes(lowered), "plan": sum(pd[k] for k in parts),
                                 "plan_parts": " + ".join(parts)}
  if "verifier" in programs:
    vcfg = config.verifier
    vparams = jax.eval_shape(lambda r: verifier_lib.init_verifier(base, r), jax.random.key(0))
    vopt = optax.adamw(1e-4)
    vstate = trainer_lib.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=vparams,
                                        opt_state=jax.eval_shape(vopt.init, vparams))
    vstate = sharded_abstract(vstate, mesh, sharding.state_specs(vstate, mesh))
    # train_verifier's batches: whole groups for the ranking loss, else single sequences.
    group = vcfg.num_samples if vcfg.get("rank_weight", 0.0) else 1
    shape = (max(1, vcfg.batch_size // group), group, p + vcfg.max_new_tokens)
    vbatch = {"tokens": jax.ShapeDtypeStruct(shape, jnp.int32,
                                             sharding=jax.sharding.NamedSharding(
                                                 mesh, sharding.batch_spec_for(shape, mesh, groups=True))),
              "labels": jax.ShapeDtypeStruct(shape[:2], jnp.float32,
                                             sharding=jax.sharding.NamedSharding(
                                                 mesh, sharding.batch_spec_for(shape[:2], mesh, groups=True)))}
    step = verifier_lib.make_verifier_step(base, vopt, rank_weight=float(vcfg.get("rank_weight", 0.0)),
                                           pooling=vcfg.get("pooling", "last"), mesh=mesh,
                                           microbatch_groups=int(vcfg.get("microbatch_groups", 0)))
    vparts = plan["verifier_step_bytes"]
    out["programs"]["verifier"] = {"compiled": compiled_bytes(step.lower(vstate, vbatch)),
                                   "plan": sum(vparts.values()), "plan_parts": " + ".join(vparts)}
  for prog in out["programs"].values():
    prog["compiled_over_plan"] = prog["compiled"]["total"] / prog["plan"]
  return out


class _Vocab:
  def __init__(self, v):
    self.vocab_size = v


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
