"""What `rl.remat_blocks` costs in compute: the RL update with and without rematerialised blocks.

The paper configs run the policy update with every Gemma block rematerialised
(`rl.remat_blocks`, `sharding._remat_block_interceptor`): the backward pass
re-gathers each block's weights and runs its forward again, which is what
brought the 2B full fine-tuning update from 34.95 to 8.57 GiB per device
(BENCHMARKS.md). This bench measures the price, on the same batch, one
process, A and B alternated:

* XLA's FLOP count of each compiled update (`cost_analysis`) and their ratio
  (hardware-independent: what the recomputation adds);
* the median wall time of each update over `--repeats` runs after a warm-up,
  and their ratio (this machine's);
* the compiled per-device memory (`memory_analysis`: arguments + outputs +
  temporaries - aliased) of each.

With ``--flops_only`` nothing is compiled or run: the FLOPs are those of the
lowered (unoptimised) programs on abstract arrays, so a real shape
(``--preset gemma2_2b``, its 256k vocabulary, 1536 tokens) takes seconds.

Usage::

  python bench/remat_cost.py                       # preset "tiny", 64 rows x 96 tokens
  python bench/remat_cost.py --preset small --rows 128 --lora_rank 4 --out /tmp/remat.json
  python bench/remat_cost.py --flops_only --preset gemma2_2b --rows 8 --prompt 1024 --new 512 --microbatch_rows 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

from bon_jax import models  # pylint: disable=g-import-not-at-top
from bon_jax import rl  # pylint: disable=g-import-not-at-top
from bon_jax import trainer_lib  # pylint: disable=g-import-not-at-top

GiB = 2**30


def random_batch(vocab: int, *, rows: int, group: int, prompt: int, new: int, seed: int = 0) -> dict[str, jax.Array]:
  """`rows` sequences in groups of `group` (one prompt each), full-length completions."""
  rng = np.random.default_rng(seed)
  b = rows // group
  tokens = rng.integers(3, vocab, (b, group, prompt + new)).astype(np.int32)
  tokens[:, :, 0] = models.BOS_ID
  tokens[:, :, 1:prompt] = tokens[:, :1, 1:prompt]  # Shared prompt per group.
  mask = np.zeros((b, group, prompt + new - 1), np.float32)
  mask[:, :, prompt - 1:] = 1.0
  return {"tokens": jnp.asarray(tokens), "completion_mask": jnp.asarray(mask),
          "weights": jnp.asarray(rng.normal(size=(b, group)), jnp.float32),
          "sample_mask": jnp.ones((b, group), jnp.float32)}


def _flops(stage) -> float:
  """XLA's FLOP count of a lowered or compiled program (`cost_analysis` is a list on some jax versions)."""
  cost = stage.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get("flops", float("nan")))


def lowered_flops(args) -> dict:
  """FLOPs of the lowered update, plain and remat, on abstract params and batch (nothing allocated)."""
  model = models.make_model(preset=args.preset, vocab_size=args.vocab, lora_rank=args.lora_rank)
  params = models.abstract_params(model)
  batch = jax.eval_shape(lambda: random_batch(args.vocab, rows=args.rows, group=args.group, prompt=args.prompt,
                                              new=args.new))
  opt = optax.adamw(1e-5)
  state = jax.eval_shape(lambda p: trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                                          opt_state=opt.init(p)), params)
  out = {"preset": args.preset, "lora_rank": args.lora_rank, "rows": args.rows, "tokens": args.prompt + args.new,
         "microbatch_rows": args.microbatch_rows, "jax": jax.__version__}
  for remat in (False, True):
    update = rl.make_policy_update(model, opt, kl_coef=0.05, microbatch_rows=args.microbatch_rows,
                                   remat_blocks=remat)
    out["remat" if remat else "plain"] = {"flops": _flops(update.lower(state, params, batch))}
  out["flops_ratio"] = out["remat"]["flops"] / out["plain"]["flops"]
  return out


def measure(args) -> dict:
  model = models.make_model(preset=args.preset, vocab_size=args.vocab, lora_rank=args.lora_rank)
  base = models.make_model(preset=args.preset, vocab_size=args.vocab)
  params = models.init_params(base, jax.random.key(0))
  if args.lora_rank:
    params = models.add_lora(model, params, jax.random.key(1))
  ref = jax.tree.map(jnp.array, params)
  batch = random_batch(args.vocab, rows=args.rows, group=args.group, prompt=args.prompt, new=args.new)
  opt = optax.adamw(1e-5)
  out = {"preset": args.preset, "vocab": args.vocab, "lora_rank": args.lora_rank, "rows": args.rows,
         "tokens": args.prompt + args.new, "microbatch_rows": args.microbatch_rows,
         "params": models.num_params(params), "machine": f"{platform.processor() or platform.machine()},"
         f" {os.cpu_count()} CPUs", "jax": jax.__version__}
  updates, states = {}, {}
  for remat in (False, True):
    update = rl.make_policy_update(model, opt, kl_coef=0.05, mesh=None, microbatch_rows=args.microbatch_rows,
                                   remat_blocks=remat)
    state = trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.array, params),
                                   opt_state=opt.init(params))
    state = jax.device_put(state, jax.devices()[0])
    compiled = update.lower(state, ref, batch).compile()
    mem = compiled.memory_analysis()  # What `bon_jax.compiled.memory_of` reads, without compiling twice.
    per_device = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                  - mem.alias_size_in_bytes)
    key = "remat" if remat else "plain"
    out[key] = {"flops": _flops(compiled), "compiled_gib": per_device / GiB,
                "temp_gib": mem.temp_size_in_bytes / GiB, "seconds": []}
    state, metrics = update(state, ref, batch)  # Warm-up (and the first compile of the jitted call).
    jax.block_until_ready(metrics)
    updates[key], states[key] = update, state
  for _ in range(args.repeats):  # Alternate A and B: load on the machine hits both alike.
    for key in ("plain", "remat"):
      t0 = time.perf_counter()
      states[key], metrics = updates[key](states[key], ref, batch)
      jax.block_until_ready(metrics)
      out[key]["seconds"].append(time.perf_counter() - t0)
  for key in ("plain", "remat"):
    out[key]["median_s"] = statistics.median(out[key]["seconds"])
  out["flops_ratio"] = out["remat"]["flops"] / out["plain"]["flops"]
  out["time_ratio"] = out["remat"]["median_s"] / out["plain"]["median_s"]
  out["memory_ratio"] = out["remat"]["compiled_gib"] / out["plain"]["compiled_gib"]
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="tiny", help="a bon_jax.models.PRESETS name")
  parser.add_argument("--vocab", type=int, default=4096, help="vocabulary size (presets without their own)")
  parser.add_argument("--lora_rank", type=int, default=0)
  parser.add_argument("--rows", type=int, default=64, help="sequences in the update's batch")
  parser.add_argument("--group", type=int, default=8, help="samples per prompt")
  parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
  parser.add_argument("--new", type=int, default=64, help="completion tokens")
  parser.add_argument("--microbatch_rows", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--flops_only", action="store_true", help="lowered FLOPs only: no compile, no run")
  parser.add_argument("--out", default="", help="write the JSON here")
  args = parser.parse_args()
  if models.PRESETS.get(args.preset) is None:
    parser.error(f"--preset must be one of {', '.join(models.PRESETS)}")
  args.vocab = models.PRESETS[args.preset].vocab_size or args.vocab  # A released preset keeps its own.
  if args.rows % args.group:
    parser.error("--rows must be a multiple of --group")
  if args.flops_only:
    res = lowered_flops(args)
    print(f"{args.preset}, {args.rows} rows x {args.prompt + args.new} tokens, LoRA {args.lora_rank}: plain"
          f" {res['plain']['flops'] / 1e12:.2f} TFLOP, remat {res['remat']['flops'] / 1e12:.2f} TFLOP,"
          f" ratio {res['flops_ratio']:.3f} (lowered, unoptimised HLO)")
  else:
    res = measure(args)
    report(res)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(res, f, indent=1)


def report(res: dict) -> None:
  for key in ("plain", "remat"):
    r = res[key]
    print(f"{key:6s}: {r['flops'] / 1e9:8.2f} GFLOP, median {r['median_s'] * 1e3:8.1f} ms"
          f" (of {len(r['seconds'])}), compiled {r['compiled_gib']:.3f} GiB (temp {r['temp_gib']:.3f})")
  print(f"remat / plain: FLOPs {res['flops_ratio']:.3f}, time {res['time_ratio']:.3f},"
        f" memory {res['memory_ratio']:.3f}  [{res['machine']}, jax {res['jax']}]")


if __name__ == "__main__":
  main()
