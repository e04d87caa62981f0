"""Best-of-N math: exact BoN quantities, metric estimators, gradient weights.

Everything here works per prompt on a group of ``n`` samples, vectorised over
any leading batch shape ``[..., n]`` (usually ``[B, n]``). Objectives and the
derivations of every estimator are in ``docs/ESTIMATORS.md``.

Metrics (unbiased U-statistics over the k-subsets of n >= k samples)::

  pass_at_k(correct, k)                 # 1 - C(n-c, k) / C(n, k)
  best_of_k(rewards, scores, k)         # verifier-selected reward, ties split
  max_at_k(rewards, k)                  # best_of_k(rewards, rewards, k)
  maj_at_k(answers, correct, k)         # majority vote (numpy, exact)

Gradient weights: ``w = fn(rewards, scores, mask, **hparams)`` returns
``float[B, n]`` such that ``sum_i w_i * grad log pi(y_i | x)`` estimates the
gradient of the function's objective for that prompt; a training loop
minimises ``-mean_b sum_i stop_gradient(w_bi) * log pi(y_bi | x_b)``. Select
one by name with ``algorithms.weights_fn("bon_rl_v", N=4)`` (bon_jax/algorithms.py,
where each algorithm's needs are declared).

Conventions: ``mask`` (bool ``[..., n]``, default all true) marks the samples
that exist; masked samples get weight 0 and never count. Scores must be
finite. Binomial ratios come from float64 tables built at trace time, so
float32 results are accurate to ~1e-7 relative even at n = 64..1024.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:  # Shape annotations only (kauldron.typing imports TensorFlow).
  from kauldron.typing import Bool, Float, Int, Num  # pylint: disable=g-multiple-import

  Values = Float["*B n"]  # One value per sample: B groups (prompts) of n samples.
  Mask = Bool["*B n"]  # The samples that exist.
  PerGroup = Float["*B"]  # One value per group.

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
  n = scores.shape[-1]
  s = jnp.where(valid, scores, -jnp.inf)
  order = jnp.argsort(s, axis=-1, stable=True)
  srt = jnp.take_along_axis(s, order, axis=-1)
  pos = jnp.broadcast_to(jnp.arange(n), s.shape)
  # Runs of equal values in the sorted row: start = running max of the
  # positions where a new value begins, end = reverse running min of ends.
  new_run = jnp.concatenate([jnp.ones_like(srt[..., :1], bool), srt[..., 1:] != srt[..., :-1]], -1)
  ends_run = jnp.concatenate([new_run[..., 1:], jnp.ones_like(new_run[..., :1])], -1)
  start = jax.lax.cummax(jnp.where(new_run, pos, 0), axis=s.ndim - 1)
  end = jax.lax.cummin(jnp.where(ends_run, pos + 1, n), axis=s.ndim - 1, reverse=True)
  # Back to the original order: inverse permutation of `order`.
  inverse = jnp.argsort(order, axis=-1)
  lo = jnp.take_along_axis(start, inverse, axis=-1)
  hi = jnp.take_along_axis(end, inverse, axis=-1)
  n_invalid = jnp.sum(~valid, axis=-1, keepdims=True)
  return lo, hi, order, n_invalid


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


def pass_at_k(correct: Num["*B n"], k: int) -> PerGroup:
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


def best_of_k(rewards: Values, scores: Values, k: int) -> PerGroup:
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


def max_at_k(rewards: Values, k: int) -> PerGroup:
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


def maj_at_k(answers: Int["*B n"], correct: Num["*B n"], k: int) -> PerGroup:
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


# ----------------------------------------------------------------------------
# Exact BoN policy on a discrete candidate set, and the variational pieces.


def bon_distribution(probs, scores, N: int) -> Array:
  """Exact Best-of-N distribution over K discrete responses (ties uniform).

  ``pi_bon(y) = [(a + b)^N - a^N] * pi(y) / b`` with ``a = P(r < r(y))`` and
  ``b = P(r = r(y))`` under pi: the probability that the best score among N
  draws is r(y), shared by the tied responses in proportion to pi. The power
  difference is taken as ``a^N * expm1(N * log1p(b / a))`` to avoid
  cancellation.

  Args:
    probs: float ``[..., K]`` the policy pi(.|x), summing to 1.
    scores: float ``[..., K]`` verifier scores r(x, y).
    N: number of draws, >= 1.

  Returns:
    float ``[..., K]`` pi_bon.

  Example: ``bon_distribution([.5, .5], [0., 1.], 2) == [.25, .75]``.
  """
  if not isinstance(N, (int, np.integer)) or N < 1:
    raise ValueError(f"N={N} must be an int >= 1.")
  return _bon_distribution(_float(probs), _float(scores), int(N))


@functools.partial(jax.jit, static_argnames=("N",))
def _bon_distribution(probs, scores, N):
  below = scores[..., None, :] < scores[..., :, None]  # [.., y, y']
  equal = scores[..., None, :] == scores[..., :, None]
  a = jnp.sum(jnp.where(below, probs[..., None, :], 0.0), axis=-1)
  b = jnp.sum(jnp.where(equal, probs[..., None, :], 0.0), axis=-1)
  a_safe = jnp.where(a > 0, a, 1.0)
  b_safe = jnp.where(b > 0, b, 1.0)
  diff = jnp.where(
      a > 0,
      jnp.exp(N * jnp.log(a_safe)) * jnp.expm1(N * jnp.log1p(b / a_safe)),
      b**N,
  )
  return jnp.where(b > 0, diff * probs / b_safe, 0.0)


def bon_value(probs, scores, rewards, N: int) -> Array:
  """Exact value of Best-of-N, ``E_{y ~ pi_bon}[R(y)]``; float ``[...]``.

  With ``scores == rewards`` binary this is pass@N = 1 - p^N.
  """
  return jnp.sum(bon_distribution(probs, scores, N) * _float(rewards), axis=-1)


def win_rate(scores, mask=None) -> Array:
  """Sample estimate of Q(y_i) = P_{y' ~ pi}(r(y_i) >= r(y')), ties count as wins.

  Leave-one-out: ``Q_i = #{j != i : r_j <= r_i} / (n - 1)``, unbiased for
  Q(y_i) given y_i since the other samples are iid draws of y'. O(n log n).
  Rows with a single valid sample get 1; invalid samples get 0.

  Args:
    scores: float ``[..., n]`` verifier scores, finite.
    mask: optional bool ``[..., n]``.

  Returns:
    float ``[..., n]``.
  """
  scores = _float(scores)
  valid = _valid(mask, scores.shape)
  _, hi, _, n_invalid = _tie_structure(scores, valid)
  n = jnp.sum(valid, axis=-1, keepdims=True)
  wins = _float(hi - n_invalid - 1)
  q = jnp.where(n > 1, wins / jnp.maximum(n - 1, 1), 1.0)
  return jnp.where(valid, q, 0.0)


def tilted_kl(lam: float) -> float:
  """KL(pi_lam || pi) of the tilt ``pi * exp(lam * Q) / Z`` when Q ~ U(0, 1).

  Q is uniform under pi for continuous, tie-free scores, so the tilted density
  of u = Q is ``lam e^{lam u} / (e^lam - 1)`` and
  ``KL = lam / (1 - e^-lam) - 1 - log((e^lam - 1) / lam)`` (``~ lam^2 / 24``
  near 0, ``~ log(lam) - 1`` for large lam).
  """
  lam = float(lam)
  if lam < 0:
    raise ValueError(f"lam={lam} must be >= 0.")
  if lam < 1e-4:
    return lam * lam / 24.0
  one_minus = -math.expm1(-lam)
  log_z = lam + math.log(one_minus) - math.log(lam)
  return lam / one_minus - 1.0 - log_z


@functools.lru_cache(maxsize=1024)
def lambda_for_n(N: int) -> float:
  """lambda_N of the variational BoN policy: the KL-matching rule.

  Solves ``tilted_kl(lam) = log N - (N - 1) / N`` (the KL of the exact BoN
  policy from pi for continuous scores, whose win rate has density
  ``N u^(N-1)``) by bisection. lambda_1 = 0; lambda_N ~ N + 1 for large N.
  This rule is ours, not the paper's (its rule was not available).

  Example: ``lambda_for_n(1) == 0.0``; ``lambda_for_n(4) ~ 4.92``.
  """
  if not isinstance(N, (int, np.integer)) or N < 1:
    raise ValueError(f"N={N} must be an int >= 1.")
  target = math.log(N) - (N - 1) / N
  if N == 1:
    return 0.0
  lo, hi = 0.0, 1.0
  while tilted_kl(hi) < target:
    hi *= 2.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if tilted_kl(mid) < target else (lo, mid)
  return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------
# Gradient weights. Each returns w: float[..., n] with
#   E[sum_i w_i grad log pi(y_i|x)] = grad J(x)    (unbiased ones)
# for the objective J in its docstring. Invalid (masked) samples get 0.


def _prep(rewards, scores, mask):
  rewards = _float(rewards)
  if scores is None:
    scores = rewards
  scores = _float(scores)
  if rewards.shape != scores.shape:
    raise ValueError(f"rewards {rewards.shape} and scores {scores.shape} must have the same shape.")
  valid = _valid(mask, rewards.shape)
  return jnp.where(valid, rewards, 0.0), scores, valid


def _subset_credit(rewards: Array, scores: Array, valid: Array, k: int, ties=None):
  """Raw subset credit of Bo-k and the Bo-k U-statistic.

  Returns:
    credit: float[..., n], ``credit_i = C(n, k)^-1 sum_{|S|=k, S ∋ i} f(S)`` with
      f(S) the tie-averaged reward of S's top-scored samples;
    value: float[..., 1], the U-statistic ``C(n, k)^-1 sum_S f(S)``.
  Both are 0 on rows with fewer than k valid samples (k = 0 gives 0, 0).

  With L samples strictly below i's tie group G (size m, reward sum S_G) and
  U = L + m, the subsets whose top group is a higher group G' contribute
  ``Rbar_G' [C(U'-1, k-1) - C(L'-1, k-1)]`` (suffix sum over groups), those
  whose top group is G contribute
  ``(1/m) [A R_i + (B - A) (S_G - R_i) / (m - 1)]`` with
  ``A = C(U, k) - C(L, k)`` and ``B = m C(U-1, k-1)`` (docs/ESTIMATORS.md).
  """
  n_max = rewards.shape[-1]
  if k == 0:
    zeros = jnp.zeros_like(rewards)
    return zeros, zeros[..., :1]
  lo, hi, order, n_invalid = _tie_structure(scores, valid) if ties is None else ties
  n = jnp.sum(valid, axis=-1, keepdims=True)
  low, up = lo - n_invalid, hi - n_invalid
  m = _float(jnp.maximum(up - low, 1))
  group_sum = _group_sums(rewards, order, lo, hi)
  # C(., k-1) / C(n, k) = [C(., k-1) / C(n, k-1)] * k / (n - k + 1).
  to_k = k / _float(jnp.maximum(n - k + 1, 1))
  higher = (_comb_ratio(up - 1, n, k - 1, n_max) - _comb_ratio(low - 1, n, k - 1, n_max)) * to_k
  # Terms for subsets topped by a strictly higher group: suffix sums of q.
  q = rewards * higher / m
  q_sorted = jnp.take_along_axis(q, order, axis=-1)
  prefix = jnp.concatenate([jnp.zeros_like(q_sorted[..., :1]), jnp.cumsum(q_sorted, axis=-1)], axis=-1)
  from_higher = prefix[..., -1:] - jnp.take_along_axis(prefix, hi, axis=-1)
  # Subsets topped by i's own group.
  a_term = _comb_ratio(up, n, k, n_max) - _comb_ratio(low, n, k, n_max)
  b_term = m * _comb_ratio(up - 1, n, k - 1, n_max) * to_k
  shared = jnp.where(m > 1, (b_term - a_term) * (group_sum - rewards) / jnp.maximum(m - 1, 1), 0.0)
  from_own = (a_term * rewards + shared) / m
  ok = valid & (n >= k)
  credit = jnp.where(ok, from_higher + from_own, 0.0)
  value = jnp.sum(jnp.where(ok, a_term / m * rewards, 0.0), axis=-1, keepdims=True)
  return credit, value


def best_of_k_weights(rewards: Values, scores: Values | None = None, mask: Mask | None = None, *,
                      k: int, baseline: bool = True) -> Values:
  """Unbiased subset gradient weights for Bo-k from n >= k samples.

  Objective: ``J_k(pi) = E_{y_1..k ~ pi}[R(y_sel)]``, y_sel the top-scored draw
  (ties uniform). With ``baseline=False``, ``w_i = C(n,k)^-1 sum_{S ∋ i} f(S)``
  (every k-subset's BoN reward credited to its members). With the leave-one-out
  baseline (default) ``w_i = U_k(y_1..n) - U_k(y_-i)``, the Bo-k U-statistic
  minus the same statistic without sample i (for n = k: minus Bo-(k-1) of the
  other samples); both baselines are independent of y_i, so it stays unbiased,
  and the weights sum to 0 when n > k. k = 1 gives RLOO. Closed form in
  O(n log n); rows with fewer than k valid samples get 0.

  Args:
    rewards: float ``[..., n]`` R(y_i).
    scores: float ``[..., n]`` verifier scores r(y_i); None means rewards
      (then this is max@k, or pass@k for binary rewards).
    mask: optional bool ``[..., n]``, true where a sample exists.
    k: subset size (the inference-time N), 1 <= k <= n.
    baseline: subtract the leave-one-out baseline.

  Returns:
    float ``[..., n]``.

  Example: ``best_of_k_weights(R, r, k=4)`` on ``[B, 16]`` samples.
  """
  rewards, scores, valid = _prep(rewards, scores, mask)
  _check_k(k, rewards.shape[-1])
  return _best_of_k_weights(rewards, scores, valid, k, baseline)


@functools.partial(jax.jit, static_argnames=("k", "baseline"))
def _best_of_k_weights(rewards, scores, valid, k, baseline):
  ties = _tie_structure(scores, valid)
  credit, value = _subset_credit(rewards, scores, valid, k, ties)
  if not baseline:
    return credit
  n = _float(jnp.sum(valid, axis=-1, keepdims=True))
  # n > k: U - U_-i = (n credit - k U) / (n - k)   (sum_{S not∋ i} = total - sum_{S∋i}).
  loo = (n * credit - k * value) / jnp.maximum(n - k, 1.0)
  # n = k: f(all) - Bo-(k-1)(others), Bo-(k-1)(others) = n (U_{k-1} - credit_{k-1}).
  credit_m1, value_m1 = _subset_credit(rewards, scores, valid, k - 1, ties)
  at_n = value - n * (value_m1 - credit_m1)
  w = jnp.where(n > k, loo, at_n)
  return jnp.where(valid & (n >= k), w, 0.0)


def pass_at_k_weights(rewards: Values, scores: Values | None = None, mask: Mask | None = None, *,
                      k: int, baseline: bool = True) -> Values:
  """Unbiased subset gradient weights for pass@k (binary rewards).

  Objective: ``pass@k = 1 - p^k``, p = P_pi(R = 0). It is Bo-k with the reward
  as its own verifier: ``best_of_k_weights(correct, correct, k=k)``; see there
  for the estimator. ``scores`` is ignored. k = 1 gives RLOO.
  """
  del scores
  correct = _float(jnp.asarray(rewards) > 0.5)
  return best_of_k_weights(correct, correct, mask, k=k, baseline=baseline)


def max_at_k_weights(rewards: Values, scores: Values | None = None, mask: Mask | None = None, *,
                     k: int, baseline: bool = True) -> Values:
  """Unbiased subset gradient weights for max@k (continuous rewards).

  Objective: ``E_{y_1..k ~ pi}[max_j R(y_j)]``; ``best_of_k_weights(R, R, k=k)``.
  ``scores`` is ignored.
  """
  del scores
  return best_of_k_weights(rewards, rewards, mask, k=k, baseline=baseline)


def maj_at_k_weights(rewards: Values, scores: Values | None = None, mask: Mask | None = None, *,
                     k: int, answers: Int["*B n"]) -> Values:
  """Unbiased subset gradient weights for maj@k (host-side numpy, not jit-able).

  Objective: ``E_{y_1..k ~ pi}[correct(majority answer)]`` (ties uniform,
  negative answer ids abstain), as in `maj_at_k`. Weights are the leave-one-out
  differences ``w_i = maj@k(y_1..n) - maj@k(y_-i)`` (n = k: minus
  maj@(k-1) of the others), i.e. the subset credit minus an independent
  baseline, so unbiased. Cost: n + 1 exact maj@k evaluations per prompt.

  Args:
    rewards: 0/1 ``[..., n]`` correctness of each sample.
    scores: ignored.
    mask: optional bool ``[..., n]``.
    k: 1 <= k <= n.
    answers: int ``[..., n]`` answer class ids (see `maj_at_k`).

  Returns:
    float64 ``[..., n]``.
  """
  del scores
  correct = np.asarray(rewards, dtype=np.float64)
  answers = np.asarray(answers)
  if answers.shape != correct.shape:
    raise ValueError(f"answers {answers.shape} and rewards {correct.shape} must have the same shape.")
  n = correct.shape[-1]
  _check_k(k, n)
  valid = np.ones(correct.shape, bool) if mask is None else np.asarray(mask, bool)
  flat_a, flat_c, flat_v = answers.reshape(-1, n), correct.reshape(-1, n), valid.reshape(-1, n)
  out = np.zeros(flat_a.shape)
  for row in range(flat_a.shape[0]):
    idx = np.flatnonzero(flat_v[row])
    a, c = flat_a[row, idx], flat_c[row, idx]
    nv = idx.size
    if nv < k:
      continue
    total = float(maj_at_k(a, c, k))
    for pos, i in enumerate(idx):
      keep = np.arange(nv) != pos
      k_rest = k if nv > k else k - 1
      rest = float(maj_at_k(a[keep], c[keep], k_rest)) if k_rest >= 1 else 0.0
      out[row, i] = total - rest
  return out.reshape(correct.shape)


def rloo_weights(rewards: Values, scores: Values | None = None, mask: Mask | None = None) -> Values:
  """REINFORCE with a leave-one-out baseline (RLOO): standard RL, N' = 1.

  Objective: ``E_{y ~ pi}[R(y)]``. ``w_i = (R_i - mean_{j != i} R_j) / n``
  (unbiased); a single sample gets ``w = R`` (no baseline available).
  ``scores`` is ignored.
  """
  del scores
  rewards, _, valid = _prep(rewards, None, mask)
  n = _float(jnp.sum(valid, axis=-1, keepdims=True))
  others = (jnp.sum(rewards, axis=-1, keepdims=True) - rewards) / jnp.maximum(n - 1, 1.0)
  w = jnp.where(n > 1, (rewards - others) / jnp.maximum(n, 1.0), rewards)
  return jnp.where(valid, w, 0.0)


def grpo_weights(rewards: Values, scores: Values | None = None, mask: Mask | None = None, *,
                 eps: float = 1e-6) -> Values:
  """GRPO-style normalised advantages: ``(R_i - mean R) / (std R + eps) / n``.

  Objective (heuristic): ``E_{y ~ pi}[R(y)]`` per prompt, rescaled by
  1 / std(R) of the group. Biased (the mean includes y_i and the std is
  estimated from the same samples); the per-prompt direction agrees with RLOO's
  (each weight is RLOO's times ``(n - 1) / n / (std + eps)``); constant
  groups get 0. ``scores`` is ignored.
  """
  del scores
  rewards, _, valid = _prep(rewards, None, mask)
  n = _float(jnp.sum(valid, axis=-1, keepdims=True))
  mean = jnp.sum(rewards, axis=-1, keepdims=True) / jnp.maximum(n, 1.0)
  var = jnp.sum(jnp.where(valid, (rewards - mean) ** 2, 0.0), axis=-1, keepdims=True) / jnp.maximum(n, 1.0)
  w = (rewards - mean) / (jnp.sqrt(var) + eps) / jnp.maximum(n, 1.0)
  return jnp.where(valid, w, 0.0)


def sft_weights(rewards: Values | None = None, scores: Values | None = None,
                mask: Mask | None = None) -> Values:
  """Supervised fine-tuning on expert demonstrations: ``w_i = 1 / n``.

  Objective: ``mean_i log pi(y*_i | x)`` over the n demonstrations of a prompt.
  ``rewards`` only gives the shape; ``scores`` is ignored.
  """
  del scores
  shape = jnp.shape(rewards)
  valid = _valid(mask, shape)
  n = _float(jnp.sum(valid, axis=-1, keepdims=True))
  return jnp.where(valid, 1.0 / jnp.maximum(n, 1.0), 0.0)


def bon_rl_weights(rewards: Values, scores: Values | None = None, mask: Mask | None = None, *,
                   N: int) -> Values:
  """BoN-RL as in the paper: REINFORCE on disjoint groups of N draws.

  Objective: ``J(pi) = E_{y_1..N ~ pi}[R(y_sel)]`` = Bo-N with the verifier
  ``scores`` (BoN-RL-V) or the reward itself (BoN-RL-S, pass@N for binary R).
  The n samples are split in G = n / N consecutive groups; every member of
  group g is credited with the group's BoN reward f_g (tie-averaged), i.e. the
  exact gradient ``E[R(y_sel) sum_i grad log pi(y_i)]`` (all N draws, not only
  the selected one, which would be biased). Baseline: the mean f of the other
  groups (G >= 2), or Bo-(N-1) of the other members (G = 1). Unbiased.
  ``w_i = (f_g - b_g) / G``. A group counts only if all its members are valid.
  N = 1 gives RLOO. Compare `best_of_k_weights` (all C(n, N) subsets).

  Args:
    rewards, scores, mask: ``[..., n]`` with n a multiple of N.
    N: inference-time number of samples.
  """
  rewards, scores, valid = _prep(rewards, scores, mask)
  n = rewards.shape[-1]
  _check_k(N, n, "N")
  if n % N:
    raise ValueError(f"n={n} samples must be a multiple of N={N} for group BoN-RL.")
  return _bon_rl_weights(rewards, scores, valid, N)


@functools.partial(jax.jit, static_argnames=("N",))
def _bon_rl_weights(rewards, scores, valid, N):
  shape = rewards.shape
  grouped = lambda x: x.reshape(*shape[:-1], shape[-1] // N, N)
  r, s, v = grouped(rewards), grouped(scores), grouped(valid)
  group_ok = jnp.all(v, axis=-1, keepdims=True)  # [..., G, 1]
  f = jnp.sum(_selection_probs(s, v, N) * r, axis=-1, keepdims=True)
  f = jnp.where(group_ok, f, 0.0)
  g = _float(jnp.sum(group_ok, axis=-2, keepdims=True))  # [..., 1, 1]
  base = (jnp.sum(f, axis=-2, keepdims=True) - f) / jnp.maximum(g - 1, 1.0)
  many = jnp.broadcast_to((f - base) / jnp.maximum(g, 1.0), r.shape)
  single = _best_of_k_weights(r, s, v, N, True)  # = f - Bo-(N-1)(others)
  w = jnp.where(g > 1, many, single)
  return jnp.where(group_ok & v, w, 0.0).reshape(shape)


def bon_rl_v_weights(rewards: Values, scores: Values, mask: Mask | None = None, *, N: int) -> Values:
  """BoN-RL-V: `bon_rl_weights` with a separate verifier ``scores``."""
  return bon_rl_weights(rewards, scores, mask, N=N)


def bon_rl_s_weights(rewards: Values, scores: Values | None = None, mask: Mask | None = None, *,
                     N: int) -> Values:
  """BoN-RL-S: `bon_rl_weights` selecting with the reward (pass@N if binary)."""
  del scores
  return bon_rl_weights(rewards, rewards, mask, N=N)


def bon_rlb_gains(p_fail, N: int, max_gain: float | None = None):
  """The reported BoN-RLB gains at failure probability p, stable and bounded.

  ``g+ = N p^(N-1) / (1 - p^N)``, ``g- = N p / (1 - p)`` and
  ``gbar+ = N p^(N-1) (1 - p) / (1 - p^N)`` (in [0, 1]; -> 1 as p -> 1),
  computed in log space (``expm1``/``log1p``). g+ ~ 1 / (1 - p) and
  g- ~ N / (1 - p) explode as p -> 1 (at p = 1 they are infinite), so both are
  clipped at ``max_gain`` (default ``10 N``).

  Args:
    p_fail: float ``[...]`` in [0, 1].
    N: inference-time number of samples.
    max_gain: bound on g+ and g-.

  Returns:
    (g_plus, g_minus, gbar_plus, clipped): float ``[...]`` x 3 and bool
    ``[...]`` (true where g+ or g- hit the bound; report its mean).
  """
  _check_k(N, N, "N")
  max_gain = 10.0 * N if max_gain is None else float(max_gain)
  p = jnp.clip(_float(p_fail), 0.0, 1.0)
  tiny = jnp.finfo(p.dtype).eps
  p_safe = jnp.minimum(p, 1.0 - tiny)
  log_p = jnp.log(jnp.maximum(p_safe, jnp.finfo(p.dtype).tiny))
  log_p = jnp.where(p_safe > 0, log_p, -jnp.inf)
  pow_nm1 = jnp.ones_like(p) if N == 1 else jnp.exp((N - 1) * log_p)
  one_minus_pn = -jnp.expm1(N * log_p)
  g_plus_raw = N * pow_nm1 / one_minus_pn
  g_minus_raw = N * p_safe / (1.0 - p_safe)
  # gbar+ -> 1 at p = 1 (limit), no clipping needed.
  gbar = jnp.where(p < 1.0, N * pow_nm1 * (1.0 - p_safe) / one_minus_pn, 1.0)
  clipped = (g_plus_raw > max_gain) | (g_minus_raw > max_gain)
  return jnp.minimum(g_plus_raw, max_gain), jnp.minimum(g_minus_raw, max_gain), gbar, clipped


def _fail_fraction(correct, valid, p_fail):
  if p_fail is not None:
    return _float(p_fail)[..., None]
  n = _float(jnp.sum(valid, axis=-1, keepdims=True))
  return 1.0 - jnp.sum(jnp.where(valid, correct, 0.0), axis=-1, keepdims=True) / jnp.maximum(n, 1.0)


def bon_rlb_weights(rewards: Values, scores: Values | None = None, mask: Mask | None = None, *, N: int,
                    max_gain: float | None = None, p_fail: Float["*B"] | None = None) -> Values:
  """BoN-RLB, the paper's binary-reward closed form *(reported)*.

  Targets pass@N = 1 - p^N. ``w_i = [R_i g+(p) - (1 - R_i) g-(p)] / n`` with
  the reported gains (`bon_rlb_gains`, clipped at ``max_gain``) and p the
  failure fraction of the group (or ``p_fail``, float ``[...]``, if given).
  Not unbiased: with the true p its expectation is
  ``(g+ + g-) * grad(1 - p)``, while ``grad pass@N = N p^(N-1) grad(1 - p)``:
  the same direction per prompt, weighted across prompts by
  ``1/(1 - p^N) + p^(2-N)/(1 - p)`` times the exact scale, and at N = 1 it is
  ``(1 + p)/(1 - p)`` times REINFORCE rather than REINFORCE
  (docs/ESTIMATORS.md). The unbiased alternative is `pass_at_k_weights`.
  ``scores`` is ignored; rewards are thresholded at 0.5.
  """
  del scores
  correct = _float(jnp.asarray(rewards) > 0.5)
  valid = _valid(mask, correct.shape)
  _check_k(N, N, "N")
  p_fail = None if p_fail is None else _float(p_fail)
  return _bon_rlb_weights(correct, valid, p_fail, N, max_gain)


@functools.partial(jax.jit, static_argnames=("N", "max_gain"))
def _bon_rlb_weights(correct, valid, p_fail, N, max_gain):
  p = _fail_fraction(correct, valid, p_fail)
  g_plus, g_minus, _, _ = bon_rlb_gains(p, N, max_gain)
  n = _float(jnp.sum(valid, axis=-1, keepdims=True))
  w = (correct * g_plus - (1.0 - correct) * g_minus) / jnp.maximum(n, 1.0)
  return jnp.where(valid, w, 0.0)


def bon_rlb_p_weights(rewards: Values, scores: Values | None = None, mask: Mask | None = None, *,
                      N: int, p_fail: Float["*B"] | None = None) -> Values:
  """BoN-RLB(P): positive samples only, ``w_i = R_i gbar+(p) / n`` *(reported)*.

  Targets pass@N. With samples drawn from pi_bon and the true p this is exact:
  ``E_{pi_bon}[R gbar+ grad log pi] = grad(1 - p^N)``. On samples from pi (the
  usual case) its expectation is ``gbar+(p) grad(1 - p)``, i.e.
  ``(1 - p) / (1 - p^N)`` times grad pass@N: right direction, prompts
  re-weighted. p is the group's failure fraction unless ``p_fail`` is given.
  gbar+ <= 1, so no clipping is needed. ``scores`` is ignored.
  """
  del scores
  correct = _float(jnp.asarray(rewards) > 0.5)
  valid = _valid(mask, correct.shape)
  _check_k(N, N, "N")
  p_fail = None if p_fail is None else _float(p_fail)
  return _bon_rlb_p_weights(correct, valid, p_fail, N)


@functools.partial(jax.jit, static_argnames=("N",))
def _bon_rlb_p_weights(correct, valid, p_fail, N):
  p = _fail_fraction(correct, valid, p_fail)
  _, _, gbar, _ = bon_rlb_gains(p, N)
  n = _float(jnp.sum(valid, axis=-1, keepdims=True))
  return jnp.where(valid, correct * gbar / jnp.maximum(n, 1.0), 0.0)


def bon_sft_weights(rewards: Values | None = None, scores: Values | None = None, mask: Mask | None = None, *,
                    N: int, lam: float | None = None) -> Values:
  """BoN-SFT: imitation of an expert by the variational BoN policy.

  Objective: ``log pi_lam(y*|x)`` with ``pi_lam = pi exp(lam Q_pi) / Z``, whose
  gradient is ``grad log pi(y*) + lam grad Q(y*) - grad log Z``, where
  ``grad Q(y*) = E_{y'~pi}[1{r* >= r(y')} grad log pi(y')]`` and
  ``grad log Z = E_{y~pi_lam}[grad log pi(y) + lam grad Q(y)]``.

  Input convention: along the sample axis, column 0 is the expert
  demonstration y* (its score r*), columns 1..n-1 are m = n - 1 samples from
  pi. Weights: ``w_0 = 1`` and, for policy samples,
  ``w_l = (lam/m) 1{r* >= r_l} - rho_l - (lam/(m-1)) sum_{j != l} rho_j 1{r_j >= r_l}``
  with ``rho = softmax(lam * win_rate)`` the self-normalised weights of pi_lam.
  A deliberate approximation (Q and Z estimated from the same m samples):
  consistent as m grows; at N = 1 (lam = 0) it is SFT plus a zero-mean control
  variate (-1/m on each policy sample), exactly unbiased.

  Args:
    rewards: unused except for the shape (may be the scores).
    scores: float ``[..., n]`` verifier scores, expert first.
    mask: optional bool ``[..., n]``; the expert column must be valid.
    N: inference-time number of samples; lam defaults to `lambda_for_n(N)`.
  """
  if scores is None:
    scores = rewards
  scores = _float(scores)
  if scores.shape[-1] < 2:
    raise ValueError("BoN-SFT needs n >= 2 samples per prompt: the expert in column 0, then policy samples.")
  lam = lambda_for_n(N) if lam is None else float(lam)
  return _bon_sft_weights(scores, _valid(mask, scores.shape), lam)


@functools.partial(jax.jit, static_argnames=("lam",))
def _bon_sft_weights(scores, valid, lam):
  pol_s, pol_v = scores[..., 1:], valid[..., 1:]
  m = _float(jnp.sum(pol_v, axis=-1, keepdims=True))
  q = win_rate(pol_s, pol_v)
  logits = jnp.where(pol_v, lam * q, -jnp.inf)
  rho = jnp.where(pol_v, jax.nn.softmax(logits, axis=-1), 0.0)
  rho = jnp.nan_to_num(rho)  # rows without policy samples
  beats = pol_s[..., :, None] >= pol_s[..., None, :]  # [.., j, l]: r_j >= r_l
  beats = beats & pol_v[..., :, None] & pol_v[..., None, :]
  beats = beats & ~jnp.eye(pol_s.shape[-1], dtype=bool)
  pushed = jnp.sum(rho[..., :, None] * beats, axis=-2)
  expert_beats = (scores[..., :1] >= pol_s) & pol_v
  w_pol = lam / jnp.maximum(m, 1.0) * expert_beats - rho - lam / jnp.maximum(m - 1, 1.0) * pushed
  w_pol = jnp.where(pol_v, w_pol, 0.0)
  w_exp = jnp.where(valid[..., :1], 1.0, 0.0)
  return jnp.concatenate([w_exp, w_pol], axis=-1)
