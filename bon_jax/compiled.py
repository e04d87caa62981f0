"""XLA's compiled per-device memory of a config's programs, beside `capacity.plan`.

Compiles (never runs) the three programs that hold the most memory, at the
config's full shapes on its mesh, from abstract arguments (nothing is
allocated, no weights are read):

* ``sampler``: the RL sampler (`sampling.sample` on the mesh: B =
  rl.prompts_per_step prompts of P = task.max_prompt_tokens tokens, N =
  rl.N_prime samples of T = rl.max_new_tokens tokens);
* ``update``: the BoN-aware policy update (`rl.make_policy_update` with the
  mesh and ``rl.microbatch_rows``) on B x N rows of P + T tokens;
* ``verifier``: the verifier's training step (`verifier.make_verifier_step`)
  on ``verifier.batch_size`` sequences, as the verifier stage runs it;

and reads XLA's figure per device (``compile().memory_analysis()``:
arguments + outputs + temporaries - donated/aliased) beside the plan's terms
for the same program. ``python -m bon_jax.main --dry_run
--dry_run_compile=sampler,update,verifier`` prints it; on a CPU host,
simulate the mesh's devices first:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m bon_jax.main \\
      --config=configs/math_bon32.py --dry_run --dry_run_compile=sampler

Compiling Gemma 2 2B's update takes tens of minutes of CPU (its sampler: a
minute or two); test-size presets take seconds.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from bon_jax import capacity
from bon_jax import config_lib
from bon_jax import experiment
from bon_jax import models
from bon_jax import optim
from bon_jax import rl
from bon_jax import sampling
from bon_jax import sharding
from bon_jax import trainer_lib
from bon_jax import verifier as verifier_lib

GIB = 2**30
PROGRAMS = ("sampler", "update", "verifier")


def memory_of(lowered: Any) -> dict[str, float]:
  """Compiles `lowered` and returns XLA's per-device bytes and the compile time."""
  t0 = time.perf_counter()
  m = lowered.compile().memory_analysis()
  out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
  out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  out["compile_s"] = time.perf_counter() - t0
  return out


def _sharded_abstract(tree: Any, mesh: jax.sharding.Mesh, specs: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      sharding.named(mesh, specs))


class _Vocab:
  """What `experiment.make_policy` reads of a tokenizer: its size (the plan's)."""

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size


def check(config: ml_collections.ConfigDict, programs: tuple[str, ...]) -> tuple[int, ...]:
  """The config's mesh shape on this host's devices; a `config_lib.UserError` (one line) for an unknown
  program or a host whose devices cannot hold the mesh."""
  unknown = sorted(set(programs) - set(PROGRAMS))
  if unknown:
    raise config_lib.UserError(f"--dry_run_compile: unknown program(s) {', '.join(unknown)};"
                               f" choose from {', '.join(PROGRAMS)}")
  shape = tuple(config.mesh.shape)
  have = jax.device_count()
  try:
    return sharding.resolve_mesh_shape(shape, have)
  except config_lib.UserError as e:
    need = math.prod(s for s in shape if s > 0)
    raise config_lib.UserError(
        f"--dry_run_compile compiles on this host's devices: {e}; on a CPU host simulate"
        f" {need} with XLA_FLAGS=--xla_force_host_platform_device_count={need}") from None


def measure(config: ml_collections.ConfigDict, programs: tuple[str, ...] = PROGRAMS) -> dict[str, Any]:
  """Compiles `programs` of `config` on this host's devices; XLA's bytes beside the plan's.

  Returns {"plan": capacity.plan(config), "programs": {name: {"compiled":
  memory_of(...), "plan": bytes, "plan_parts": the plan terms summed,
  "compiled_over_plan": ratio}}}. The verifier step is measured only when
  the config trains one (``verifier.steps > 0``).

  Example::

    config = configs.math_bon32.get_config()
    config.model.preset = "gemma2_2b_depth2"
    r = compiled.measure(config, ("update",))  # on 8 (simulated) devices
    r["programs"]["update"]["compiled_over_plan"]  # 1.03
  """
  check(config, programs)
  plan = capacity.plan(config, num_devices=jax.device_count())
  mesh = sharding.make_mesh(plan["mesh_shape"])
  model = experiment.make_policy(config, _Vocab(plan["vocab_size"]))
  base = models.base_model(model)
  stage = capacity._stages(config)[0]  # pylint: disable=protected-access
  optimizer = optim.for_config(trainer_lib.make_optimizer(stage), config.model)
  b, n, p, t = stage.prompts_per_step, stage.N_prime, plan["samplers"][0]["P"], stage.max_new_tokens
  pd = plan["per_device_bytes"]
  out = {"plan": plan, "programs": {}}

  if "sampler" in programs:
    plain = jax.eval_shape(lambda r: models.init_params(base, r), jax.random.key(0))
    fn = sampling._sharded_sample(  # pylint: disable=protected-access
        mesh, base, b, num_samples=n, max_new_tokens=t, top_k=None, use_top_p=False, eos_id=models.EOS_ID)
    lowered = fn.lower(plain, jax.ShapeDtypeStruct((b, p), jnp.int32), jax.random.key(0),
                       jnp.float32(1.0), jnp.float32(1.0))
    out["programs"]["sampler"] = {
        "compiled": memory_of(lowered),
        "plan": (sharding.per_device_bytes(plain, sharding.param_specs(plain, mesh), mesh) + pd["kv_cache_rl"]
                 + pd["sampler_gathered_layers_f32"] + pd["sampler_unembed_f32"]),
        "plan_parts": "params (merged, plain) + kv_cache_rl + sampler_gathered_layers_f32 + sampler_unembed_f32"}

  if "update" in programs:
    def init_state(rng):
      params = models.init_params(model, rng)
      return trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    state = jax.eval_shape(init_state, jax.random.key(0))
    update = rl.make_policy_update(model, optimizer, kl_coef=float(stage.kl_coef),
                                   entropy_coef=float(stage.entropy_coef), temperature=float(stage.temperature),
                                   mesh=mesh, microbatch_rows=int(stage.microbatch_rows),
                                   remat_blocks=bool(stage.remat_blocks))
    length = p + t
    batch = {"tokens": jax.ShapeDtypeStruct((b, n, length), jnp.int32),
             "completion_mask": jax.ShapeDtypeStruct((b, n, length - 1), jnp.float32),
             "weights": jax.ShapeDtypeStruct((b, n), jnp.float32),
             "sample_mask": jax.ShapeDtypeStruct((b, n), jnp.float32)}
    ref = state.params if stage.kl_coef > 0 else None
    parts = [k for k in ("params", "optimizer_state", "reference_params", "gradients",
                         "gradient_accumulator_f32", "update_microbatch_grads_f32", "update_gathered_layers_f32",
                         "update_activations_f32",
                         "update_lora_activations_f32", "update_logits_f32", "update_embedding_grad_f32",
                         "update_embedding_f32") if k in pd]
    out["programs"]["update"] = {"compiled": memory_of(update.lower(state, ref, batch)),
                                 "plan": sum(pd[k] for k in parts), "plan_parts": " + ".join(parts)}

  if "verifier" in programs and config.verifier.steps > 0:
    vcfg = config.verifier
    vparams = jax.eval_shape(lambda r: verifier_lib.init_verifier(base, r), jax.random.key(0))
    vopt = optax.adamw(1e-4)  # The stage's optimizer state: AdamW's two moments.
    vstate = trainer_lib.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=vparams,
                                    opt_state=jax.eval_shape(vopt.init, vparams))
    vstate = _sharded_abstract(vstate, mesh, sharding.state_specs(vstate, mesh))
    # train_verifier's batches: whole groups for the ranking loss, else single sequences.
    group = vcfg.num_samples if vcfg.get("rank_weight", 0.0) else 1
    shape = (max(1, vcfg.batch_size // group), group, p + vcfg.max_new_tokens)
    on_mesh = lambda s: jax.sharding.NamedSharding(mesh, sharding.batch_spec_for(s, mesh, groups=True))
    vbatch = {"tokens": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=on_mesh(shape)),
              "labels": jax.ShapeDtypeStruct(shape[:2], jnp.float32, sharding=on_mesh(shape[:2]))}
    step = verifier_lib.make_verifier_step(base, vopt, rank_weight=float(vcfg.get("rank_weight", 0.0)),
                                           pooling=vcfg.get("pooling", "last"), mesh=mesh,
                                           microbatch_groups=int(vcfg.get("microbatch_groups", 0)),
                                           remat_blocks=bool(vcfg.get("remat_blocks", False)))
    vparts = plan["verifier_step_bytes"]
    out["programs"]["verifier"] = {"compiled": memory_of(step.lower(vstate, vbatch)),
                                   "plan": sum(vparts.values()), "plan_parts": " + ".join(vparts)}

  for prog in out["programs"].values():
    prog["compiled_over_plan"] = prog["compiled"]["total"] / prog["plan"]
  return out


def format_measure(result: dict[str, Any]) -> str:
  """The `measure` result as lines under the plan (``--dry_run_compile``)."""
  lines = ["compiled per device (XLA's memory analysis: arguments + outputs + temporaries - aliased):"]
  for name, v in result["programs"].items():
    c = v["compiled"]
    lines.append(f"  {name:<9} compiled {c['total'] / GIB:8.2f} GiB  plan {v['plan'] / GIB:8.2f} GiB"
                 f"  compiled/plan {v['compiled_over_plan']:.2f}  ({c['compile_s']:.0f} s to compile)")
  return "\n".join(lines)
