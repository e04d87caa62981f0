"""BoN gradient estimators on a tabular many-prompt bandit, equal sample budget.

Each prompt x has K candidate responses with binary reward R and a noisy,
tie-prone verifier score r; the policy is softmax(theta_x). Everything the
estimators target is exact here (bon.bon_value), so we measure

1. at a fixed policy: bias and variance of each estimator's gradient around the
   exact gradient of its objective (Bo-N with the verifier, or pass@N), with n
   samples per prompt for every estimator;
2. training: exact pass@N, Bo-N and pass@1 trajectories under SGD with each
   estimator's weights (n samples per prompt per step, same learning rate).

Usage (a few minutes on 2 CPU cores):

  python bench/estimator_variance.py            # writes docs/img/estimator_*.png
  python bench/estimator_variance.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import functools
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bon_jax import bon  # noqa: E402


def make_bandit(seed: int, prompts: int, k: int):
  """Logits, rewards and verifier scores with a spread of difficulties."""
  rng = np.random.default_rng(seed)
  rewards = np.zeros((prompts, k), np.float32)
  n_correct = rng.integers(1, k // 2 + 1, size=prompts)
  for p in range(prompts):
    rewards[p, rng.choice(k, n_correct[p], replace=False)] = 1.0
  # Correct answers are shifted by a prompt-dependent amount: pass@1 of the
  # initial policy spreads from ~0.001 to ~0.6 (median ~0.06).
  shift = rng.uniform(-4.0, 1.0, size=(prompts, 1))
  logits = rng.normal(0.0, 1.0, (prompts, k)) + shift * rewards
  # Verifier: reward plus noise, rounded to one decimal so ties occur.
  scores = np.round(rewards + rng.normal(0.0, 0.6, (prompts, k)), 1)
  return logits.astype(np.float32), rewards, scores.astype(np.float32)


def estimators(N: int) -> dict:
  """name -> (objective, weight fn(R, s) on [..., n])."""
  return {
      "rloo (RL, N'=1)": ("pass@1", lambda R, s: bon.rloo_weights(R)),
      "grpo": ("pass@1", lambda R, s: bon.grpo_weights(R)),
      "bon_rl_v (paper, groups of N)": ("Bo-N", lambda R, s: bon.bon_rl_v_weights(R, s, N=N)),
      "best_of_k subset, no baseline": ("Bo-N", lambda R, s: bon.best_of_k_weights(R, s, k=N, baseline=False)),
      "best_of_k subset + LOO": ("Bo-N", lambda R, s: bon.best_of_k_weights(R, s, k=N)),
      "bon_rl_s (paper, groups of N)": ("pass@N", lambda R, s: bon.bon_rl_s_weights(R, N=N)),
      "pass_at_k subset + LOO": ("pass@N", lambda R, s: bon.pass_at_k_weights(R, k=N)),
      "bon_rlb (reported)": ("pass@N", lambda R, s: bon.bon_rlb_weights(R, N=N)),
      "bon_rlb_p (reported)": ("pass@N", lambda R, s: bon.bon_rlb_p_weights(R, N=N)),
  }


def objective_fns(rewards, scores, N):
  rewards, scores = jnp.asarray(rewards), jnp.asarray(scores)
  return {
      "pass@1": lambda pi: jnp.sum(pi * rewards, -1),
      "pass@N": lambda pi: bon.bon_value(pi, rewards, rewards, N),
      "Bo-N": lambda pi: bon.bon_value(pi, scores, rewards, N),
  }


def sample_gradients(key, logits, rewards, scores, weight_fn, n, reps):
  """float[reps, P, K]: per-prompt gradient estimates sum_i w_i (e_{y_i} - pi)."""
  pi = jax.nn.softmax(logits)
  P, K = logits.shape
  ys = jax.random.categorical(key, jnp.log(pi), shape=(reps, n, P)).transpose(0, 2, 1)
  R = jnp.take_along_axis(jnp.broadcast_to(rewards, (reps, P, K)), ys, -1)
  s = jnp.take_along_axis(jnp.broadcast_to(scores, (reps, P, K)), ys, -1)
  w = weight_fn(R.reshape(-1, n), s.reshape(-1, n)).reshape(reps, P, n)
  onehot = jax.nn.one_hot(ys, K)
  return jnp.einsum("rpn,rpnk->rpk", w, onehot) - jnp.sum(w, -1)[..., None] * pi


def variance_table(args, N, n):
  logits, rewards, scores = make_bandit(args.seed, args.prompts, args.k)
  objectives = objective_fns(rewards, scores, N)
  # Prompts are independent, so the gradient of the sum is the per-prompt gradient.
  exact = {name: np.asarray(jax.grad(lambda th, f=f: jnp.sum(f(jax.nn.softmax(th))))(jnp.asarray(logits)))
           for name, f in objectives.items()}
  rows = {}
  for name, (objective, fn) in estimators(N).items():
    if "groups of N" in name and n % N:
      continue
    grad_fn = jax.jit(functools.partial(sample_gradients, weight_fn=fn, n=n, reps=args.chunk))
    chunks = []
    for c in range(args.reps // args.chunk):
      key = jax.random.key(1000 * args.seed + c)
      chunks.append(np.asarray(grad_fn(key, jnp.asarray(logits), jnp.asarray(rewards), jnp.asarray(scores)),
                               np.float64))
    g = np.concatenate(chunks)  # [reps, P, K]
    mean = g.mean(0)
    target = exact[objective]
    var = float(np.sum(g.var(0)))  # summed over prompts and logits
    bias_rel = float(np.linalg.norm(mean - target) / np.linalg.norm(target))
    # Standard error of the mean, to tell bias from Monte Carlo noise.
    se_rel = float(np.sqrt(var / g.shape[0]) / np.linalg.norm(target))
    cos = float(np.sum(mean * target) / (np.linalg.norm(mean) * np.linalg.norm(target)))
    rows[name] = dict(objective=objective, variance=var, rel_bias=bias_rel, rel_se=se_rel, cosine=cos,
                      grad_norm2=float(np.sum(target**2)))
  return rows


def trajectories(args, N, n):
  logits0, rewards, scores = make_bandit(args.seed, args.prompts, args.k)
  objectives = objective_fns(rewards, scores, N)
  R_, s_ = jnp.asarray(rewards), jnp.asarray(scores)

  def evaluate(theta):
    pi = jax.nn.softmax(theta)
    return jnp.stack([jnp.mean(objectives[o](pi)) for o in ("pass@1", "pass@N", "Bo-N")])

  out = {}
  for name, (_, fn) in estimators(N).items():
    if "no baseline" in name:
      continue

    def step(theta, key, fn=fn):
      g = sample_gradients(key, theta, R_, s_, fn, n, 1)[0]
      theta = theta + args.lr * g
      return theta, evaluate(theta)

    @jax.jit
    def run(theta, keys, step=step):
      return jax.lax.scan(step, theta, keys)[1]

    curves = []
    for seed in range(args.seeds):
      keys = jax.random.split(jax.random.key(seed), args.steps)
      curves.append(np.asarray(run(jnp.asarray(logits0), keys)))
    out[name] = np.mean(curves, 0)  # [steps, 3]
  return out, np.asarray(evaluate(jnp.asarray(logits0)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--prompts", type=int, default=64)
  parser.add_argument("--k", type=int, default=16, help="responses per prompt")
  parser.add_argument("--n", type=int, default=16, help="samples per prompt (budget)")
  parser.add_argument("--Ns", type=int, nargs="+", default=[2, 4, 8])
  parser.add_argument("--reps", type=int, default=2000)
  parser.add_argument("--chunk", type=int, default=500)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--lr", type=float, default=1.0)
  parser.add_argument("--train_N", type=int, default=4)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="docs/img")
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  if args.quick:
    args.reps, args.chunk, args.steps, args.seeds, args.Ns = 500, 250, 30, 1, [4]
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()

  results = {}
  for N in args.Ns:
    rows = variance_table(args, N, args.n)
    results[N] = rows
    print(f"\n## Gradient variance at the initial policy: N = {N}, n = {args.n} samples per prompt, "
          f"{args.prompts} prompts, {args.reps} replicates")
    print("| estimator | objective | variance (sum over prompts) | rel. bias | rel. s.e. | cosine(mean, exact) |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
      print(f"| {name} | {r['objective']} | {r['variance']:.4g} | {r['rel_bias']:.3f} | {r['rel_se']:.3f} "
            f"| {r['cosine']:.4f} |")
    paper_v, sub_v = rows["bon_rl_v (paper, groups of N)"]["variance"], rows["best_of_k subset + LOO"]["variance"]
    paper_s, sub_s = rows["bon_rl_s (paper, groups of N)"]["variance"], rows["pass_at_k subset + LOO"]["variance"]
    print(f"\nvariance ratio subset/paper: Bo-{N} {sub_v / paper_v:.3f}, pass@{N} {sub_s / paper_s:.3f}")
    results[N]["ratios"] = {"bo_n": sub_v / paper_v, "pass_n": sub_s / paper_s}

  curves, start = trajectories(args, args.train_N, args.n)
  print(f"\n## Training: N = {args.train_N}, n = {args.n}, lr = {args.lr}, {args.steps} SGD steps, "
        f"{args.seeds} seeds; exact metrics averaged over prompts (start: pass@1 {start[0]:.3f}, "
        f"pass@{args.train_N} {start[1]:.3f}, Bo-{args.train_N} {start[2]:.3f})")
  print(f"| estimator | pass@1 | pass@{args.train_N} | Bo-{args.train_N} (verifier) |")
  print("|---|---|---|---|")
  for name, c in curves.items():
    print(f"| {name} | {c[-1, 0]:.3f} | {c[-1, 1]:.3f} | {c[-1, 2]:.3f} |")

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  for name, c in curves.items():
    for j, ax in enumerate(axes):
      ax.plot(np.arange(1, len(c) + 1), c[:, j], label=name)
  for ax, title in zip(axes, ("pass@1", f"pass@{args.train_N}", f"Bo-{args.train_N} (verifier)")):
    ax.set_title(f"exact {title}")
    ax.set_xlabel("SGD step")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "estimator_trajectories.png"), dpi=110)

  fig, ax = plt.subplots(figsize=(7, 4))
  names = ["bon_rl_v (paper, groups of N)", "best_of_k subset, no baseline", "best_of_k subset + LOO",
           "bon_rl_s (paper, groups of N)", "pass_at_k subset + LOO"]
  for name in names:
    ax.plot(args.Ns, [results[N][name]["variance"] for N in args.Ns], "o-", label=name)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("inference-time N")
  ax.set_ylabel(f"gradient variance, n = {args.n}")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "estimator_variance.png"), dpi=110)
  print(f"\nwall time {time.time() - t0:.0f} s; plots in {args.out}/")


if __name__ == "__main__":
  main()
