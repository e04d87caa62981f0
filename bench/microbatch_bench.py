"""Peak memory and time of the policy update, in one pass vs microbatched.

`rl.make_policy_update(..., microbatch_rows=k)` accumulates the gradient over
microbatches of k rows so that the update's float32 full-vocabulary arrays
(log-softmax, probs, the reference's log-probs: [rows, L - 1, V] each) exist
for k rows at a time. This script compiles the update on B x N random rows
for each k and reports XLA's own numbers for the compiled program
(`compile().memory_analysis()`: temporary buffers, i.e. everything besides
the arguments and outputs), the compile time and the median step time. The
update runs with the exact KL to a reference and the entropy term (the
costlier setting). A check that it computes the same thing as one pass is
printed too (largest parameter difference after one SGD step).

Usage::

  python bench/microbatch_bench.py                      # tiny preset, 64 rows, V = 512
  python bench/microbatch_bench.py --vocab 32768 --micro 0,16 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

from bon_jax import models  # pylint: disable=g-import-not-at-top
from bon_jax import rl  # pylint: disable=g-import-not-at-top
from bon_jax import trainer_lib  # pylint: disable=g-import-not-at-top

MIB = 2**20


def random_batch(vocab: int, b: int, n: int, length: int, seed: int = 0) -> dict[str, jax.Array]:
  """B x N rows of `length` tokens: a 1/4 prompt, completions of random lengths, mixed weights."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, (b, n, length)).astype(np.int32)
  tokens[..., 0] = models.BOS_ID
  prompt = length // 4
  ends = rng.integers(prompt + 1, length + 1, (b, n))
  cmask = np.zeros((b, n, length - 1), np.float32)
  for i in range(b):
    for j in range(n):
      tokens[i, j, ends[i, j]:] = models.PAD_ID
      cmask[i, j, prompt - 1 : ends[i, j] - 1] = 1.0
  return {"tokens": jnp.asarray(tokens), "completion_mask": jnp.asarray(cmask),
          "weights": jnp.asarray(rng.normal(size=(b, n)), jnp.float32),
          "sample_mask": jnp.ones((b, n), jnp.float32)}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="tiny")
  ap.add_argument("--vocab", type=int, default=512)
  ap.add_argument("--prompts", type=int, default=8, help="B")
  ap.add_argument("--samples", type=int, default=8, help="N (rows = B x N)")
  ap.add_argument("--length", type=int, default=128, help="tokens per row (prompt + completion)")
  ap.add_argument("--micro", default="0,32,16,8", help="microbatch_rows values (0 = one pass)")
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()

  model = models.make_model(preset=args.preset, vocab_size=args.vocab, dtype=jnp.dtype("float32"))
  params = jax.jit(models.init_params, static_argnums=0)(model, jax.random.key(0))
  ref = jax.tree.map(lambda x: x + 0.01 * jnp.sign(x), params)
  batch = random_batch(args.vocab, args.prompts, args.samples, args.length)
  rows = args.prompts * args.samples
  opt = optax.sgd(1e-2)

  def fresh_state():
    p = jax.tree.map(jnp.array, params)  # Donated by the update.
    return trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=opt.init(p))

  print(f"{jax.devices()[0].platform} ({os.cpu_count()} cores), preset {args.preset}"
        f" ({models.num_params(params):,} params), V={args.vocab}, {rows} rows x {args.length} tokens,"
        f" kl_coef=0.05 entropy_coef=0.01, one float32 [rows, L-1, V] ="
        f" {rows * (args.length - 1) * args.vocab * 4 / MIB:.1f} MiB")
  print("| microbatch_rows | temp MiB (XLA) | compile s | step s (median) | max param diff vs one pass |")
  print("|---|---|---|---|---|")
  one_pass = None
  for k in [int(x) for x in args.micro.split(",")]:
    update = rl.make_policy_update(model, opt, kl_coef=0.05, entropy_coef=0.01, microbatch_rows=k)
    t0 = time.perf_counter()
    compiled = update.lower(fresh_state(), ref, batch).compile()
    compile_s = time.perf_counter() - t0
    temp = compiled.memory_analysis().temp_size_in_bytes
    times = []
    for _ in range(args.repeats):
      state = fresh_state()
      jax.block_until_ready(state)
      t0 = time.perf_counter()
      new, _ = jax.block_until_ready(compiled(state, ref, batch))
      times.append(time.perf_counter() - t0)
    new = jax.device_get(new.params)
    one_pass = new if one_pass is None else one_pass
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(one_pass)))
    print(f"| {k or 'one pass'} | {temp / MIB:.1f} | {compile_s:.1f} | {statistics.median(times):.3f} |"
          f" {diff:.1e} |", flush=True)


if __name__ == "__main__":
  main()
