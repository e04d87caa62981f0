"""Time of one BoN-aware fine-tuning step, by part, for every algorithm.

One step of `bon_jax.rl.rl_step` is: sample N' completions for each of B
prompts, grade them (host), turn rewards into per-sample weights with the
algorithm's weight function (`algorithms.weights_fn`), and apply one jitted update.
Only the weights differ between algorithms, so the script samples once per
N' and then, round-robin over the algorithms, times the weights and the
update on the same samples (median of `--repeats` after a warm-up):

* step = sample + grade + weights + update (the update includes the exact
  KL to the reference and the entropy term when their coefficients are > 0;
  the default runs with both, the costlier setting);
* overhead of an algorithm = (its weights time - RLOO's weights time) /
  RLOO's whole step: the update is one compiled program for every algorithm
  (same shapes), so differences in its measured time are noise; the goal is
  <= 3 % for the BoN-aware weights;
* FLOP utilisation of the update = XLA's FLOP count of the compiled update
  (`cost_analysis`) / update time / the measured peak of a 1024^3 float32
  matmul on the same machine.

Usage::

  python bench/train_step_bench.py              # prints and updates BENCHMARKS.md
  python bench/train_step_bench.py --repeats 3 --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from bon_jax import algorithms  # pylint: disable=g-import-not-at-top
from bon_jax import input_pipeline  # pylint: disable=g-import-not-at-top
from bon_jax import models  # pylint: disable=g-import-not-at-top
from bon_jax import rl  # pylint: disable=g-import-not-at-top
from bon_jax import sampling  # pylint: disable=g-import-not-at-top
from bon_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
from bon_jax import trainer_lib  # pylint: disable=g-import-not-at-top
from bon_jax import verifier as verifier_lib  # pylint: disable=g-import-not-at-top
from bon_jax.tasks import base as task_lib  # pylint: disable=g-import-not-at-top
from bon_jax.tasks import countdown  # pylint: disable=g-import-not-at-top
from bon_jax.tasks import registry  # pylint: disable=g-import-not-at-top

BEGIN = "<!-- train-step-bench:begin -->"
END = "<!-- train-step-bench:end -->"
ALGORITHMS = ("rloo", "grpo", "bon_rl_v", "bon_rl_s", "bon_rlb", "bon_rlb_p", "pass_at_k", "best_of_k",
              "maj_at_k")


def matmul_peak(size: int = 1024, repeats: int = 10) -> float:
  """FLOP/s of a size^3 float32 matmul (fastest run), the roofline used here."""
  a = jnp.ones((size, size), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * size**3 / min(times)  # Best of `repeats`: a peak.


def timed(fn):
  t = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return out, time.perf_counter() - t


def bench_n_prime(n_prime: int, *, prompts: int, new_tokens: int, repeats: int, kl: float, ent: float):
  tok = tokenizer_lib.task_tokenizer()
  model = models.make_model(preset="tiny", vocab_size=tok.vocab_size)
  params = models.init_params(model, jax.random.key(0))
  train_set, _ = countdown.make_splits(seed=0, num_train=256, num_test=8)
  problems = train_set[:prompts]
  enc = jnp.asarray(input_pipeline.encode_prompts(tok, [countdown.prompt_text(p) for p in problems]))
  opt = trainer_lib.make_optimizer(ml_collections.ConfigDict(dict(
      learning_rate=1e-5, warmup_steps=0, steps=1000, grad_clip_norm=1.0, weight_decay=0.0)))
  update = rl.make_policy_update(model, opt, kl_coef=kl, entropy_coef=ent, temperature=1.0)

  def sample(i):
    return sampling.sample(model, params, enc, jax.random.key(i), num_samples=n_prime,
                           max_new_tokens=new_tokens, temperature=1.0)

  samples, _ = timed(lambda: sample(0))  # Compile.
  comp = np.asarray(samples.tokens)
  tokens, cmask = verifier_lib.join_prompt_completion(enc, jnp.asarray(comp))
  sample_mask = jnp.ones(comp.shape[:2], jnp.float32)

  def grade():
    texts = verifier_lib.decode_completions(tok, comp)
    correct, answers = task_lib.grade_completions(registry.COUNTDOWN, problems, texts)
    return np.asarray(correct, np.float32), answers

  # Random rewards with ties, so every estimator does its full work (graded
  # rewards of random weights are all 0, a shortcut for some of them).
  rng = np.random.default_rng(0)
  rewards = (rng.random(comp.shape[:2]) < 0.3).astype(np.float32)
  scores = rng.random(comp.shape[:2]).astype(np.float32)
  answers = rng.integers(-1, 4, comp.shape[:2])

  def weights(name):
    n = min(4, n_prime)
    fn = algorithms.weights_fn(name, N=n)
    extra = {"answers": answers} if name == "maj_at_k" else {}
    return np.asarray(fn(rewards, scores, None, **extra), np.float32)

  def run_update(w):
    state = trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.array, params),
                             opt_state=opt.init(params))
    batch = {"tokens": tokens, "completion_mask": cmask, "weights": jnp.asarray(w),
             "sample_mask": sample_mask}
    return lambda: update(state, params, batch)

  for name in ALGORITHMS:
    weights(name)  # Compile (bon's weight functions are jitted per shape).
  w0 = weights("rloo")
  jax.block_until_ready(run_update(w0)())  # Compile.
  state0 = trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt.init(params))
  batch0 = {"tokens": tokens, "completion_mask": cmask, "weights": jnp.asarray(w0), "sample_mask": sample_mask}
  cost = update.lower(state0, params, batch0).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost.get("flops", float("nan")))

  t_sample, t_grade, t_w, t_up = [], [], {a: [] for a in ALGORITHMS}, {a: [] for a in ALGORITHMS}
  for r in range(repeats):
    t_sample.append(timed(lambda: sample(r + 1))[1])
    t_grade.append(timed(grade)[1])
    for name in ALGORITHMS:
      w, dt = timed(lambda: weights(name))
      t_w[name].append(dt)
      fn = run_update(w)
      t_up[name].append(timed(fn)[1])
  med = statistics.median
  base = med(t_sample) + med(t_grade)
  rows = {}
  for name in ALGORITHMS:
    rows[name] = dict(weights=med(t_w[name]), update=med(t_up[name]),
                      step=base + med(t_w[name]) + med(t_up[name]))
  return dict(n_prime=n_prime, sequences=int(np.prod(comp.shape[:2])), length=int(tokens.shape[-1]),
              sample=med(t_sample), grade=med(t_grade), flops=flops, rows=rows,
              num_params=models.num_params(params))


def render(results, *, peak, args, seconds) -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      names = re.findall(r"model name\s*:\s*(.*)", f.read())
      cpu = names[0] if names else cpu
  except OSError:
    pass
  out = [f"Command: `python bench/train_step_bench.py --repeats {args.repeats}` ({seconds / 60:.1f} min in all).", "",
         f"Machine: {cpu}, {os.cpu_count()} cores, {jax.devices()[0].platform}, jax {jax.__version__};"
         f" measured peak (1024³ float32 matmul): {peak / 1e9:.0f} GFLOP/s.", "",
         f"Model: `tiny` preset, task vocabulary ({results[0]['num_params'] / 1e6:.2f} M parameters, float32);"
         f" {args.prompts} prompts × N' samples × {args.new_tokens} new tokens; update with kl_coef={args.kl},"
         f" entropy_coef={args.ent}; weights on N = min(4, N'); median of {args.repeats} after a warm-up.", "",
         "| N' | sequences | sample s | grade s | update s (rloo) | update GFLOP | FLOP util. | rloo step s |"
         " worst weights overhead vs rloo (share of the step) |",
         "|---|---|---|---|---|---|---|---|---|"]
  for res in results:
    rloo = res["rows"]["rloo"]
    # Every algorithm runs the same compiled update on the same samples, so the only real
    # difference is the weight computation; step-to-step update times differ by noise.
    over = {k: (v["weights"] - rloo["weights"]) / rloo["step"] for k, v in res["rows"].items() if k != "rloo"}
    worst = max(over, key=over.get)
    util = res["flops"] / rloo["update"] / peak
    out.append(f"| {res['n_prime']} | {res['sequences']} | {res['sample']:.3f} | {res['grade']:.3f} |"
               f" {rloo['update']:.3f} | {res['flops'] / 1e9:.1f} | {100 * util:.0f}% | {rloo['step']:.3f} |"
               f" {100 * over[worst]:+.1f}% ({worst}) |")
  out += ["", "Weight computation alone (ms, median), per algorithm:", "",
          "| N' | " + " | ".join(ALGORITHMS) + " |", "|---|" + "---|" * len(ALGORITHMS)]
  for res in results:
    out.append(f"| {res['n_prime']} | " + " | ".join(f"{1e3 * res['rows'][a]['weights']:.2f}" for a in ALGORITHMS)
               + " |")
  return "\n".join(out) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--prompts", type=int, default=8)
  parser.add_argument("--new-tokens", type=int, default=32)
  parser.add_argument("--n-prime", type=int, nargs="+", default=[1, 8, 32])
  parser.add_argument("--kl", type=float, default=0.05)
  parser.add_argument("--ent", type=float, default=0.01)
  parser.add_argument("--no-write", action="store_true")
  args = parser.parse_args()
  t0 = time.perf_counter()
  peak = matmul_peak()
  results = [bench_n_prime(n, prompts=args.prompts, new_tokens=args.new_tokens, repeats=args.repeats,
                           kl=args.kl, ent=args.ent) for n in args.n_prime]
  text = render(results, peak=peak, args=args, seconds=time.perf_counter() - t0)
  print(text)
  if not args.no_write:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "BENCHMARKS.md")
    with open(path) as f:
      doc = f.read()
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in doc:
      doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, doc, flags=re.S)
    else:
      doc += f"\n## Train step\n\n{block}\n"
    with open(path, "w") as f:
      f.write(doc)


if __name__ == "__main__":
  main()
