"""Best-of-N math: exact BoN quantities, metric estimators, gradient weights.

Everything here works per prompt on a group of ``n`` samples, vectorised over
any leading batch shape ``[..., n]`` (usually ``[B, n]``). Objectives and the
derivations of every estimator are in ``docs/ESTIMATORS.md``; the notes they
follow are in ``BON_NOTES.md``.

Metrics (unbiased U-statistics over the k-subsets of n >= k samples)::

  pass_at_k(correct, k)                 # 1 - C(n-c, k) / C(n, k)
  best_of_k(rewards, scores, k)         # verifier-selected reward, ties split
  max_at_k(rewards, k)                  # best_of_k(rewards, rewards, k)
  maj_at_k(answers, correct, k)         # majority vote (numpy, exact)

Gradient weights: ``w = fn(rewards, scores, mask, **hparams)`` returns
``float[B, n]`` such that ``sum_i w_i * grad log pi(y_i | x)`` estimates the
gradient of the function's objective for that prompt; a training loop
minimises ``-mean_b sum_i stop_gradient(w_bi) * log pi(y_bi | x_b)``. Select
one by name with ``weights_fn("bon_rl_v", N=4)``.

Conventions: ``mask`` (bool ``[..., n]``, default all true) marks the samples
that exist; masked samples get weight 0 and never count. Scores must be
finite. Binomial ratios come from float64 tables built at trace time, so
float32 results are accurate to ~1e-7 relative even at n = 64..1024.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# ----------------------------------------------------------------------------
# Helpers.


def _float(x) -> Array:
  """Casts to the default float dtype (float32, or float64 under x64)."""
  return jnp.asarray(x, dtype=jnp.result_type(float))


def _check_k(k: int, n: int, name: str = "k") -> None:
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
    raise TypeError(f"{name} must be a Python int, got {type(k).__name__}.")
  if not 1 <= k <= n:
    raise ValueError(f"{name}={k} must satisfy 1 <= {name} <= n={n} samples.")


@functools.lru_cache(maxsize=256)
def _ratio_table(n_max: int, b: int) -> np.ndarray:
  """float64[n_max + 1, n_max + 1]: T[n, a] = C(a, b) / C(n, b), 0 if a < b or n < b.

  Built once per (n_max, b) in float64 on the host: differences of large
  log-factorials lose ~1e-5 in float32, a table of the ratios themselves
  loses only one float32 rounding.
  """
  idx = np.arange(n_max + 1, dtype=np.float64)
  lg = np.vectorize(math.lgamma)
  with np.errstate(invalid="ignore"):
    log_c = lg(idx + 1) - math.lgamma(b + 1) - lg(np.maximum(idx - b, 0) + 1)
  log_c = np.where(idx >= b, log_c, -np.inf)
  table = np.exp(log_c[None, :] - np.where(idx >= b, log_c, 0.0)[:, None])
  table[idx < b, :] = 0.0
  return table


def _comb_ratio(a: Array, n: Array, b: int, n_max: int) -> Array:
  """C(a, b) / C(n, b) elementwise for integer arrays 0 <= a, n <= n_max; b static."""
  if b < 0:
    return jnp.zeros(jnp.broadcast_shapes(jnp.shape(a), jnp.shape(n)), jnp.result_type(float))
  table = _float(_ratio_table(n_max, b))
  a = jnp.clip(jnp.asarray(a), 0, n_max)
  n = jnp.clip(jnp.asarray(n), 0, n_max)
  return table[n, a]


def _valid(mask, shape) -> Array:
  if mask is None:
    return jnp.ones(shape, dtype=bool)
  mask = jnp.asarray(mask).astype(bool)
  if mask.shape != tuple(shape):
    raise ValueError(f"mask shape {mask.shape} must equal the samples' shape {tuple(shape)}.")
  return mask


def _tie_structure(scores: Array, valid: Array):
  """Ranks with ties, O(n log n) by sorting.

  Args:
    scores: float[..., n], finite where valid.
    valid: bool[..., n].

  Returns:
    lo, hi: int[..., n] positions in the ascending sort (invalid samples first,
      at -inf) where the sample's tie group starts / ends (exclusive);
    order: int[..., n] the argsort;
    n_invalid: int[..., 1].
  For a valid sample, L = lo - n_invalid valid samples score strictly lower and
  U = hi - n_invalid score lower or equal (U - L = size of its tie group).
  """
  shape = scores.shape
  s = jnp.where(valid, scores, -jnp.inf).reshape(-1, shape[-1])
  order = jnp.argsort(s, axis=-1, stable=True)
  srt = jnp.take_along_axis(s, order, axis=-1)
  lo = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="left"))(srt, s)
  hi = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="right"))(srt, s)
  n_invalid = jnp.sum(~valid, axis=-1, keepdims=True)
  return (lo.reshape(shape), hi.reshape(shape), order.reshape(shape), n_invalid)


def _group_sums(values: Array, order: Array, lo: Array, hi: Array) -> Array:
  """Sum of `values` over each sample's tie group (prefix sums in sort order)."""
  srt = jnp.take_along_axis(values, order, axis=-1)
  prefix = jnp.concatenate([jnp.zeros_like(srt[..., :1]), jnp.cumsum(srt, axis=-1)], axis=-1)
  return jnp.take_along_axis(prefix, hi, axis=-1) - jnp.take_along_axis(prefix, lo, axis=-1)


def _selection_probs(scores: Array, valid: Array, k: int) -> Array:
  """P(sample i is returned by Best-of-k on a uniform random k-subset).

  A tie group with L valid samples below it and m in it is the subset's top
  group in C(L+m, k) - C(L, k) of the C(n, k) subsets; its mass is split evenly
  over its m members (uniform tie-breaking). Zero for invalid samples and for
  rows with fewer than k valid samples.

  Returns:
    float[..., n].
  """
  lo, hi, _, n_invalid = _tie_structure(scores, valid)
  n = jnp.sum(valid, axis=-1, keepdims=True)
  low, up = lo - n_invalid, hi - n_invalid
  m = jnp.maximum(up - low, 1)
  n_max = scores.shape[-1]
  p = (_comb_ratio(up, n, k, n_max) - _comb_ratio(low, n, k, n_max)) / m
  return jnp.where(valid & (n >= k), p, 0.0)


# ----------------------------------------------------------------------------
# Metric estimators.


@functools.partial(jax.jit, static_argnames=("k",))
def _pass_at_k(correct: Array, k: int) -> Array:
  n = correct.shape[-1]
  c = jnp.sum(correct, axis=-1).astype(jnp.int32)
  # C(n - c, k) / C(n, k); zero when fewer than k failures.
  return 1.0 - _comb_ratio(n - c, jnp.full_like(c, n), k, n)


def pass_at_k(correct, k: int) -> Array:
  """Unbiased pass@k from n >= k samples: ``1 - C(n - c, k) / C(n, k)``.

  Objective estimated: pass@k = P(at least one of k iid samples is correct).

  Args:
    correct: bool or 0/1 ``[..., n]``; the last axis holds one prompt's samples.
    k: 1 <= k <= n.

  Returns:
    float ``[...]``.

  Example: ``pass_at_k(np.array([1, 0, 0, 0]), 2) == 0.5``.
  """
  correct = jnp.asarray(correct)
  _check_k(k, correct.shape[-1])
  return _pass_at_k(_float(correct != 0), k)


@functools.partial(jax.jit, static_argnames=("k",))
def _best_of_k(rewards: Array, scores: Array, k: int) -> Array:
  valid = jnp.ones(rewards.shape, dtype=bool)
  return jnp.sum(_selection_probs(scores, valid, k) * rewards, axis=-1)


def best_of_k(rewards, scores, k: int) -> Array:
  """Unbiased Bo-k: the mean over all k-subsets of the reward BoN returns.

  Objective estimated: ``E_{y_1..k ~ pi}[R(y_sel)]`` where ``y_sel`` has the
  largest verifier score among the k draws, ties broken uniformly at random.
  Computed in O(n log n): after sorting by score, a tie group with L samples
  below it and m in it is the subset's top group in ``C(L+m, k) - C(L, k)`` of
  the ``C(n, k)`` subsets, shared evenly by its members.

  Args:
    rewards: float ``[..., n]`` environment rewards R(y_i).
    scores: float ``[..., n]`` verifier scores r(y_i), finite.
    k: 1 <= k <= n.

  Returns:
    float ``[...]``.

  Example: ``best_of_k([1., 0., 0.], [0.9, 0.5, 0.1], 2) == 2 / 3``.
  """
  rewards, scores = _float(rewards), _float(scores)
  if rewards.shape != scores.shape:
    raise ValueError(f"rewards {rewards.shape} and scores {scores.shape} must have the same shape.")
  _check_k(k, rewards.shape[-1])
  return _best_of_k(rewards, scores, k)


def max_at_k(rewards, k: int) -> Array:
  """Unbiased max@k = ``E[max(R(y_1), .., R(y_k))]``: ``best_of_k(r, r, k)``.

  Example: ``max_at_k([0.2, 0.7, 0.5], 3) == 0.7``.
  """
  return best_of_k(rewards, rewards, k)


@functools.lru_cache(maxsize=65536)
def _majority_win_counts(counts: tuple[int, ...], n_abstain: int, k: int) -> dict[int, float]:
  """Weighted number of k-subsets in which a given class of size m wins.

  Args:
    counts: sizes of all answer classes (sorted), abstentions excluded.
    n_abstain: number of abstaining samples (they fill slots, never vote).
    k: subset size.

  Returns:
    {m: sum over k-subsets of P(a fixed class of size m wins the vote)},
    ties broken uniformly. Divide by C(n, k) for a probability.

  For a target class contributing j votes, every other class must contribute
  fewer than j, or exactly j (a tie among t + 1 classes, won with prob
  1/(t + 1)). Classes smaller than j and abstentions are unconstrained and
  collapse into one binomial C(M_small, .); the at most n/j classes of size
  >= j are folded in by a DP over (slots used, number of ties).
  """
  result = {}
  for target in sorted(set(counts)):
    others = list(counts)
    others.remove(target)
    total = 0.0
    for j in range(1, min(target, k) + 1):
      big = [m for m in others if m >= j]
      small = n_abstain + sum(m for m in others if m < j)
      max_ties = min(len(big), (k - j) // j)
      dp = np.zeros((k + 1, max_ties + 1))
      dp[:, 0] = [math.comb(small, s) for s in range(k + 1)]
      for m in big:
        trunc = np.array([math.comb(m, a) for a in range(j)], dtype=float)
        new = np.zeros_like(dp)
        for t in range(max_ties + 1):
          new[:, t] = np.convolve(dp[:, t], trunc)[: k + 1]
        if max_ties:
          new[j:, 1:] += math.comb(m, j) * dp[: k + 1 - j, :-1]
        dp = new
      ties = np.arange(max_ties + 1)
      total += math.comb(target, j) * float(np.sum(dp[k - j] / (ties + 1)))
    result[target] = total
  return result


def maj_at_k(answers, correct, k: int) -> np.ndarray:
  """Unbiased maj@k: the accuracy of majority voting over k of the n samples.

  Objective estimated: ``E_{y_1..k ~ pi}[correct(most frequent answer)]``,
  with ties between answers broken uniformly at random. Exact average over all
  k-subsets (not Monte Carlo), computed per prompt in numpy by counting subsets
  per answer class (see `_majority_win_counts`); results are cached on the
  class-size pattern, so ~500 prompts x n = 64 take about a second per k.
  Host-side only (not jit-able): answers come from host-side grading anyway.

  Args:
    answers: int ``[..., n]`` answer class ids; equal ids = same final answer.
      Negative ids (use -1) mean "no answer": the sample fills a slot but
      never votes; a subset where every sample abstains scores 0.
    correct: bool or 0/1 ``[..., n]``; should be constant within an answer
      class (it is when grading is by final answer); otherwise the class's
      mean correctness is used.
    k: 1 <= k <= n.

  Returns:
    float64 ``[...]``.

  Example: ``maj_at_k([[7, 7, 3]], [[1, 1, 0]], 3) == [1.0]``.
  """
  answers = np.asarray(answers)
  correct = np.asarray(correct, dtype=np.float64)
  if answers.shape != correct.shape:
    raise ValueError(f"answers {answers.shape} and correct {correct.shape} must have the same shape.")
  if not np.issubdtype(answers.dtype, np.integer):
    raise TypeError(f"answers must be integer class ids, got dtype {answers.dtype}.")
  n = answers.shape[-1]
  _check_k(k, n)
  flat_a = answers.reshape(-1, n)
  flat_c = correct.reshape(-1, n)
  out = np.empty(flat_a.shape[0])
  total = float(math.comb(n, k))
  for row, (a, c) in enumerate(zip(flat_a, flat_c)):
    votes = a >= 0
    classes, inverse, counts = np.unique(a[votes], return_inverse=True, return_counts=True)
    if classes.size == 0:
      out[row] = 0.0
      continue
    class_acc = np.bincount(inverse, weights=c[votes]) / counts
    wins = _majority_win_counts(tuple(sorted(counts.tolist())), int(n - votes.sum()), k)
    per_class = np.array([wins[m] for m in counts.tolist()])
    out[row] = float(np.sum(class_acc * per_class)) / total
  return out.reshape(answers.shape[:-1])
