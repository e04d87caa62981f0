"""Gradient weights: exact expectation over all K^n sample tuples of a tabular
softmax policy vs the exact gradient of the stated objective (float64)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
try:
  from jax.experimental import enable_x64  # jax 0.7
except ImportError:  # jax >= 0.8: the config state is the context manager.
  enable_x64 = lambda: jax.enable_x64(True)

from bon_jax import algorithms
from bon_jax import bon

K = 4  # responses per prompt


def _policy(seed, k=K):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=k)
  rewards = rng.choice([0.0, 1.0], size=k)
  rewards[:2] = [0.0, 1.0]  # both outcomes present
  scores = rng.choice([0.0, 0.5, 1.0], size=k)  # ties on purpose
  scores[:2] = [0.5, 0.5]
  return logits, rewards, scores


def _expected_gradient(logits, per_response, weights_of, n):
  """E[sum_i w_i grad_theta log pi(y_i)] by enumerating all K^n tuples.

  Args:
    logits: float64[K].
    per_response: dict of float[K] arrays indexed by the sampled responses.
    weights_of: fn(dict of float[T, n] arrays) -> float[T, n].
    n: samples per group.
  """
  k = len(logits)
  pi = np.asarray(jax.nn.softmax(logits))
  tuples = np.array(list(itertools.product(range(k), repeat=n)))  # [T, n]
  prob = np.prod(pi[tuples], axis=-1)
  w = np.asarray(weights_of({name: v[tuples] for name, v in per_response.items()}), np.float64)
  # grad_theta log pi(y) = onehot(y) - pi.
  onehot = np.eye(k)[tuples] - pi  # [T, n, K]
  return np.einsum("t,tn,tnk->k", prob, w, onehot)


def _grad(objective, logits):
  return np.asarray(jax.grad(lambda th: objective(jax.nn.softmax(th)))(jnp.asarray(logits)))


def _bok_objective(rewards, scores, k):
  return lambda pi: bon.bon_value(pi, scores, rewards, k)


def _assert_unbiased(objective, weights_of, per_response, logits, n):
  with enable_x64():
    logits = jnp.asarray(logits, jnp.float64)
    expected = _expected_gradient(logits, per_response, weights_of, n)
    exact = _grad(objective, logits)
  np.testing.assert_allclose(expected, exact, atol=1e-6)


# ---------------------------------------------------------------------------
# The exact BoN distribution itself.


@pytest.mark.parametrize("N", [1, 2, 3])
def test_bon_distribution_matches_enumeration_of_n_draws(N):
  logits, rewards, scores = _policy(0, k=5)
  with enable_x64():
    pi = np.asarray(jax.nn.softmax(jnp.asarray(logits)))
    expected = np.zeros(5)
    for t in itertools.product(range(5), repeat=N):
      top = max(scores[i] for i in t)
      tied = [i for i in t if scores[i] == top]
      for i in tied:
        expected[i] += np.prod(pi[list(t)]) / len(tied)
    got = np.asarray(bon.bon_distribution(pi, scores, N))
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert float(bon.bon_value(pi, rewards, rewards, N)) == pytest.approx(
        1 - np.sum(pi * (rewards == 0)) ** N)


def test_win_rate_is_unbiased_for_q_given_the_sample():
  logits, _, scores = _policy(1)
  n = 4
  with enable_x64():
    pi = np.asarray(jax.nn.softmax(jnp.asarray(logits)))
    q_exact = np.array([np.sum(pi * (scores <= s)) for s in scores])
    tuples = np.array(list(itertools.product(range(K), repeat=n)))
    prob = np.prod(pi[tuples], axis=-1)
    q_hat = np.asarray(bon.win_rate(scores[tuples]))
  # E[Q_hat_0 | y_0 = y] = Q(y).
  for y in range(K):
    sel = tuples[:, 0] == y
    assert np.sum(prob[sel] * q_hat[sel, 0]) / np.sum(prob[sel]) == pytest.approx(q_exact[y])


def test_lambda_for_n_reproduces_the_bon_kl_by_quadrature():
  from scipy import integrate

  for N in (2, 4, 16):
    lam = bon.lambda_for_n(N)
    z = integrate.quad(lambda u: math.exp(lam * u), 0, 1)[0]
    kl = integrate.quad(lambda u: math.exp(lam * u) / z * (lam * u - math.log(z)), 0, 1)[0]
    assert kl == pytest.approx(math.log(N) - (N - 1) / N, abs=1e-9)
    assert bon.lambda_for_n(N) > bon.lambda_for_n(N // 2 if N > 2 else 1)
  assert bon.lambda_for_n(1) == 0.0


# ---------------------------------------------------------------------------
# Unbiased estimators.


@pytest.mark.parametrize("n", [1, 2, 4])
def test_rloo_is_unbiased_for_expected_reward(n):
  logits, rewards, _ = _policy(2)
  _assert_unbiased(lambda pi: jnp.sum(pi * rewards), lambda d: bon.rloo_weights(d["R"]),
                   {"R": rewards}, logits, n)


@pytest.mark.parametrize("n,k", [(3, 1), (4, 2), (4, 4), (5, 3)])
@pytest.mark.parametrize("baseline", [True, False])
def test_best_of_k_weights_are_unbiased_for_bo_k_with_ties(n, k, baseline):
  logits, rewards, scores = _policy(3 + n + k)
  _assert_unbiased(
      _bok_objective(rewards, scores, k),
      lambda d: bon.best_of_k_weights(d["R"], d["s"], k=k, baseline=baseline),
      {"R": rewards, "s": scores}, logits, n)


@pytest.mark.parametrize("n,k", [(3, 2), (4, 3), (4, 4)])
def test_pass_at_k_weights_are_unbiased_for_pass_at_k(n, k):
  logits, rewards, _ = _policy(4)
  p_fail = lambda pi: jnp.sum(pi * (1 - rewards))
  _assert_unbiased(lambda pi: 1 - p_fail(pi) ** k, lambda d: bon.pass_at_k_weights(d["R"], k=k),
                   {"R": rewards}, logits, n)


@pytest.mark.parametrize("n,k", [(3, 2), (4, 3)])
def test_max_at_k_weights_are_unbiased_for_max_at_k(n, k):
  logits, _, _ = _policy(5)
  rewards = np.array([0.1, 0.7, 0.7, 0.3])
  _assert_unbiased(_bok_objective(rewards, rewards, k), lambda d: bon.max_at_k_weights(d["R"], k=k),
                   {"R": rewards}, logits, n)


@pytest.mark.parametrize("n,N", [(4, 2), (3, 3), (4, 1)])
def test_bon_rl_v_group_weights_are_unbiased_for_bo_n(n, N):
  logits, rewards, scores = _policy(6 + n)
  _assert_unbiased(_bok_objective(rewards, scores, N),
                   lambda d: bon.bon_rl_v_weights(d["R"], d["s"], N=N),
                   {"R": rewards, "s": scores}, logits, n)


def test_bon_rl_s_weights_are_unbiased_for_pass_at_n():
  logits, rewards, _ = _policy(7)
  _assert_unbiased(lambda pi: 1 - jnp.sum(pi * (1 - rewards)) ** 2,
                   lambda d: bon.bon_rl_s_weights(d["R"], N=2), {"R": rewards}, logits, 4)


def _maj_value(answers, correct, tuple_):
  votes = [answers[i] for i in tuple_ if answers[i] >= 0]
  if not votes:
    return 0.0
  counts = {a: votes.count(a) for a in set(votes)}
  top = max(counts.values())
  winners = [a for a, c in counts.items() if c == top]
  return float(np.mean([correct[list(answers).index(a)] for a in winners]))


@pytest.mark.parametrize("n,k", [(3, 2), (4, 3), (3, 3)])
def test_maj_at_k_weights_are_unbiased_for_maj_at_k(n, k):
  logits = np.random.default_rng(8).normal(size=4)
  answers = np.array([0, 0, 1, -1])  # responses 0 and 1 give the same answer
  correct = np.array([1.0, 1.0, 0.0, 0.0])
  table = list(itertools.product(range(4), repeat=k))
  values = np.array([_maj_value(answers, correct, t) for t in table])
  idx = np.array(table)

  def objective(pi):
    return jnp.sum(jnp.prod(pi[idx], axis=-1) * values)

  _assert_unbiased(objective, lambda d: bon.maj_at_k_weights(d["R"], k=k, answers=d["a"]),
                   {"R": correct, "a": answers}, logits, n)


# ---------------------------------------------------------------------------
# Documented approximations, tested as what they are.


@pytest.mark.parametrize("N", [1, 2, 4])
def test_bon_rlb_with_true_p_has_the_documented_expectation(N):
  logits, rewards, _ = _policy(9)
  with enable_x64():
    logits = jnp.asarray(logits, jnp.float64)
    pi = jax.nn.softmax(logits)
    p = float(jnp.sum(pi * (1 - rewards)))
    n = 2
    got = _expected_gradient(
        logits, {"R": rewards},
        lambda d: bon.bon_rlb_weights(d["R"], N=N, p_fail=np.full(len(d["R"]), p)), n)
    grad_success = _grad(lambda q: jnp.sum(q * rewards), logits)
    g_plus, g_minus, _, _ = (float(x) for x in bon.bon_rlb_gains(p, N))
    exact_pass_n = _grad(lambda q: 1 - jnp.sum(q * (1 - rewards)) ** N, logits)
  np.testing.assert_allclose(got, (g_plus + g_minus) * grad_success, atol=1e-9)
  # The discrepancy with the exact gradient of pass@N is a per-prompt scale.
  scale = 1 / (1 - p**N) + p ** (2 - N) / (1 - p)
  np.testing.assert_allclose(got, scale * exact_pass_n, atol=1e-9)
  if N == 1:
    assert scale == pytest.approx((1 + p) / (1 - p))


@pytest.mark.parametrize("N", [1, 3])
def test_bon_rlb_p_is_exact_on_samples_from_the_bon_policy(N):
  logits, rewards, _ = _policy(10)
  with enable_x64():
    logits = jnp.asarray(logits, jnp.float64)
    pi = jax.nn.softmax(logits)
    p = float(jnp.sum(pi * (1 - rewards)))
    pi_bon = np.asarray(bon.bon_distribution(pi, rewards, N))
    w = np.asarray(bon.bon_rlb_p_weights(rewards[:, None], N=N, p_fail=np.full(K, p)))[:, 0]
    onehot = np.eye(K) - np.asarray(pi)
    got_bon = np.einsum("y,y,yk->k", pi_bon, w, onehot)
    got_pi = np.einsum("y,y,yk->k", np.asarray(pi), w, onehot)
    exact = _grad(lambda q: 1 - jnp.sum(q * (1 - rewards)) ** N, logits)
  np.testing.assert_allclose(got_bon, exact, atol=1e-9)
  np.testing.assert_allclose(got_pi, (1 - p) / (1 - p**N) * exact, atol=1e-9)


def test_bon_rlb_weights_have_the_right_signs_and_stay_finite():
  correct = np.array([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]], float)
  for N in (1, 4, 32):
    w = np.asarray(bon.bon_rlb_weights(correct, N=N))
    wp = np.asarray(bon.bon_rlb_p_weights(correct, N=N))
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(wp))
    assert np.all(w[correct == 0] < 0) and np.all(w[correct == 1] >= 0)
    assert np.all(wp[correct == 0] == 0) and np.all(wp >= 0)
    assert np.all(np.abs(w) <= 10 * N / 4 + 1e-5)  # bound / n
  g_plus, g_minus, gbar, clipped = bon.bon_rlb_gains(np.array([0.0, 0.5, 1 - 1e-9, 1.0]), 8, max_gain=50)
  for g in (g_plus, g_minus, gbar):
    assert np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(np.asarray(gbar)[-2:], [1.0, 1.0], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(clipped), [False, False, True, True])
  np.testing.assert_allclose(g_plus[1], 8 * 0.5**7 / (1 - 0.5**8), rtol=1e-6)


def test_grpo_weights_point_like_rloo_and_vanish_on_constant_groups():
  rewards = np.array([[1.0, 0.0, 0.5, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
  g = np.asarray(bon.grpo_weights(rewards))
  r = np.asarray(bon.rloo_weights(rewards))
  np.testing.assert_allclose(g[1:], 0.0)
  ratio = g[0] / r[0]
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
  assert ratio[0] > 0


def _bon_sft_objective(scores, expert, lam):
  def objective(pi):
    q = jnp.array([jnp.sum(pi * (scores[y] >= scores)) for y in range(len(scores))])
    log_z = jnp.log(jnp.sum(pi * jnp.exp(lam * q)))
    return jnp.log(pi[expert]) + lam * q[expert] - log_z
  return objective


def test_bon_sft_at_n_1_is_sft_in_expectation():
  logits, _, scores = _policy(11)
  expert = 2
  n = 4  # expert + 3 policy samples
  with enable_x64():
    logits = jnp.asarray(logits, jnp.float64)
    pi = np.asarray(jax.nn.softmax(logits))
    tuples = np.array(list(itertools.product(range(K), repeat=n - 1)))
    prob = np.prod(pi[tuples], axis=-1)
    s = np.concatenate([np.full((len(tuples), 1), scores[expert]), scores[tuples]], axis=1)
    w = np.asarray(bon.bon_sft_weights(s, N=1))
    ys = np.concatenate([np.full((len(tuples), 1), expert), tuples], axis=1)
    got = np.einsum("t,tn,tnk->k", prob, w, np.eye(K)[ys] - pi)
    exact = _grad(lambda q: jnp.log(q[expert]), logits)
  np.testing.assert_allclose(got, exact, atol=1e-9)
  np.testing.assert_allclose(w[:, 0], 1.0)


def test_bon_sft_is_consistent_as_policy_samples_grow():
  logits, _, scores = _policy(12)
  expert, N = 1, 4
  lam = bon.lambda_for_n(N)
  rng = np.random.default_rng(0)
  errors = []
  with enable_x64():
    logits = jnp.asarray(logits, jnp.float64)
    pi = np.asarray(jax.nn.softmax(logits))
    exact = _grad(_bon_sft_objective(scores, expert, lam), logits)
    for m in (4, 64, 1024):
      reps = 4096 // m
      ys = rng.choice(K, size=(reps, m), p=pi)
      ys = np.concatenate([np.full((reps, 1), expert), ys], axis=1)
      w = np.asarray(bon.bon_sft_weights(scores[ys], N=N))
      est = np.einsum("rn,rnk->k", w, np.eye(K)[ys] - pi) / reps
      errors.append(np.linalg.norm(est - exact))
  assert errors[-1] < 0.05 * np.linalg.norm(exact) + 0.02
  assert errors[-1] < errors[0]


# ---------------------------------------------------------------------------
# N = 1 limits, masks, registry.


def test_every_bon_estimator_reduces_to_rloo_at_n_1():
  rng = np.random.default_rng(13)
  rewards = rng.choice([0.0, 1.0], size=(6, 5))
  scores = rng.normal(size=(6, 5))
  rloo = np.asarray(bon.rloo_weights(rewards))
  for w in (bon.bon_rl_v_weights(rewards, scores, N=1), bon.bon_rl_s_weights(rewards, N=1),
            bon.best_of_k_weights(rewards, scores, k=1), bon.pass_at_k_weights(rewards, k=1),
            bon.max_at_k_weights(rewards, k=1)):
    np.testing.assert_allclose(np.asarray(w), rloo, atol=1e-6)
  assert bon.lambda_for_n(1) == 0.0


def test_mask_is_the_same_as_dropping_the_masked_samples():
  rng = np.random.default_rng(14)
  rewards = rng.choice([0.0, 1.0], size=6)
  scores = rng.choice([0.0, 1.0, 2.0], size=6)
  answers = rng.integers(-1, 3, size=6)
  mask = np.array([True, False, True, True, False, True])
  pad = lambda x: np.where(mask, x, 0)
  fns = {
      "best_of_k": dict(k=2), "pass_at_k": dict(k=3), "max_at_k": dict(k=2), "rloo": {},
      "grpo": {}, "sft": {}, "bon_rlb": dict(N=2), "bon_rlb_p": dict(N=2),
      "maj_at_k": dict(k=2),
  }
  for name, hp in fns.items():
    extra = {"answers": answers} if name == "maj_at_k" else {}
    extra_kept = {"answers": answers[mask]} if name == "maj_at_k" else {}
    fn = algorithms.weights_fn(name, **hp)
    padded = np.asarray(fn(pad(rewards), np.where(mask, scores, 99.0), mask, **extra))
    kept = np.asarray(fn(rewards[mask], scores[mask], **extra_kept))
    np.testing.assert_allclose(padded[mask], kept, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(padded[~mask], 0.0)


def test_weights_are_finite_for_all_correct_all_wrong_and_tiny_groups():
  groups = [np.ones((2, 8)), np.zeros((2, 8)), np.eye(8)[:2]]
  for rewards in groups:
    for name, hp in [("best_of_k", dict(k=8)), ("pass_at_k", dict(k=3)), ("bon_rl_s", dict(N=4)),
                     ("bon_rlb", dict(N=32)), ("bon_rlb_p", dict(N=32)), ("grpo", {}), ("rloo", {}),
                     ("bon_sft", dict(N=8))]:
      w = np.asarray(algorithms.weights_fn(name, **hp)(rewards, rewards))
      assert np.all(np.isfinite(w)), name
      if name in ("best_of_k", "pass_at_k", "bon_rl_s", "grpo", "rloo") and rewards.std() == 0:
        np.testing.assert_allclose(w, 0.0, atol=1e-7, err_msg=name)


def test_weights_fn_rejects_unknown_names_and_bad_group_sizes():
  with pytest.raises(ValueError, match="valid names: .*bon_rl_v"):
    algorithms.weights_fn("bon_rl_w")
  with pytest.raises(ValueError, match="multiple of N=3"):
    bon.bon_rl_v_weights(np.ones((1, 4)), np.ones((1, 4)), N=3)
  with pytest.raises(ValueError, match="k=5"):
    bon.best_of_k_weights(np.ones((1, 4)), k=5)
