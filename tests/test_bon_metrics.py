"""Metric estimators against brute-force enumeration of all k-subsets."""

import itertools
import math

import hypothesis
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st
try:
  from jax.experimental import enable_x64  # jax 0.7
except ImportError:  # jax >= 0.8: the config state is the context manager.
  enable_x64 = lambda: jax.enable_x64(True)

from bon_jax import bon
from bon_jax import report

SETTINGS = hypothesis.settings(max_examples=30, deadline=None, derandomize=True)


def _subset_mean(n, k, f):
  subsets = list(itertools.combinations(range(n), k))
  return sum(f(list(s)) for s in subsets) / len(subsets)


def _bok_subset(rewards, scores, s):
  """Reward of Best-of-|s| on subset s with uniform tie-breaking."""
  top = max(scores[i] for i in s)
  tied = [i for i in s if scores[i] == top]
  return sum(rewards[i] for i in tied) / len(tied)


def _maj_subset(answers, correct, s):
  votes = [answers[i] for i in s if answers[i] >= 0]
  if not votes:
    return 0.0
  counts = {a: votes.count(a) for a in set(votes)}
  top = max(counts.values())
  winners = [a for a, c in counts.items() if c == top]
  acc = [np.mean([correct[i] for i in range(len(answers)) if answers[i] == a]) for a in winners]
  return float(np.mean(acc))


@st.composite
def _groups(draw):
  # Two group sizes only: each (n, k) is one XLA compilation.
  n = draw(st.sampled_from([3, 6]))
  k = draw(st.integers(1, n))
  # Few distinct values so that ties are common.
  rewards = draw(hnp.arrays(np.float64, n, elements=st.sampled_from([0.0, 0.5, 1.0, 2.0])))
  scores = draw(hnp.arrays(np.float64, n, elements=st.sampled_from([-1.0, 0.0, 0.3, 1.0])))
  return rewards, scores, k


@SETTINGS
@hypothesis.given(_groups())
def test_pass_at_k_matches_subset_enumeration(group):
  rewards, _, k = group
  correct = rewards > 0.5
  n = len(correct)
  expected = _subset_mean(n, k, lambda s: float(any(correct[i] for i in s)))
  with enable_x64():
    got = float(bon.pass_at_k(correct, k))
  assert got == pytest.approx(expected, abs=1e-12)


@SETTINGS
@hypothesis.given(_groups())
def test_best_of_k_matches_subset_enumeration_with_ties(group):
  rewards, scores, k = group
  expected = _subset_mean(len(rewards), k, lambda s: _bok_subset(rewards, scores, s))
  with enable_x64():
    got = float(bon.best_of_k(rewards, scores, k))
  assert got == pytest.approx(expected, abs=1e-10)


@SETTINGS
@hypothesis.given(_groups())
def test_max_at_k_matches_subset_enumeration(group):
  rewards, _, k = group
  expected = _subset_mean(len(rewards), k, lambda s: max(rewards[i] for i in s))
  with enable_x64():
    got = float(bon.max_at_k(rewards, k))
  assert got == pytest.approx(expected, abs=1e-10)


@st.composite
def _votes(draw, max_n=8):
  n = draw(st.integers(1, max_n))
  k = draw(st.integers(1, n))
  answers = np.array(draw(st.lists(st.integers(-1, 3), min_size=n, max_size=n)))
  class_correct = draw(st.lists(st.booleans(), min_size=4, max_size=4))
  correct = np.array([class_correct[a] if a >= 0 else False for a in answers])
  return answers, correct, k


@hypothesis.settings(max_examples=80, deadline=None, derandomize=True)
@hypothesis.given(_votes())
def test_maj_at_k_matches_subset_enumeration(votes):
  answers, correct, k = votes
  expected = _subset_mean(len(answers), k, lambda s: _maj_subset(answers, correct, s))
  assert float(bon.maj_at_k(answers, correct, k)) == pytest.approx(expected, abs=1e-12)


def test_maj_at_k_uses_class_mean_when_correct_varies_within_class():
  answers = np.array([0, 0, 1])
  correct = np.array([1.0, 0.0, 1.0])
  expected = _subset_mean(3, 2, lambda s: _maj_subset(answers, correct, s))
  assert float(bon.maj_at_k(answers, correct, 2)) == pytest.approx(expected)


def test_metrics_are_exact_at_n_64_in_float32():
  rng = np.random.default_rng(0)
  correct = rng.random((3, 64)) < 0.1
  for k in (1, 8, 32, 64):
    c = correct.sum(-1)
    expected = 1 - np.array([math.comb(64 - ci, k) / math.comb(64, k) for ci in c])
    np.testing.assert_allclose(bon.pass_at_k(correct, k), expected, atol=2e-5)
  # Bo-64 with distinct scores is the reward of the top-scored sample.
  rewards, scores = rng.random((3, 64)), rng.random((3, 64))
  top = rewards[np.arange(3), scores.argmax(-1)]
  np.testing.assert_allclose(bon.best_of_k(rewards, scores, 64), top, atol=1e-5)
  # Bo-1 is the mean reward.
  np.testing.assert_allclose(bon.best_of_k(rewards, scores, 1), rewards.mean(-1), atol=1e-5)


def test_maj_at_k_at_n_64_matches_monte_carlo():
  rng = np.random.default_rng(1)
  answers = rng.choice(5, size=64, p=[0.4, 0.3, 0.2, 0.05, 0.05])
  answers[:3] = -1
  correct = answers == 1
  k = 9
  draws = np.array([rng.choice(64, k, replace=False) for _ in range(20000)])
  mc = np.mean([_maj_subset(answers, correct, list(s)) for s in draws])
  assert float(bon.maj_at_k(answers, correct, k)) == pytest.approx(mc, abs=0.02)


def test_metrics_accept_batch_shapes_and_jax_arrays():
  rng = np.random.default_rng(2)
  correct = rng.random((2, 3, 5)) < 0.5
  got = bon.pass_at_k(jnp.asarray(correct), 2)
  assert got.shape == (2, 3)
  np.testing.assert_allclose(got[1, 2], bon.pass_at_k(correct[1, 2], 2), rtol=1e-6)
  answers = rng.integers(0, 3, (2, 3, 5))
  assert bon.maj_at_k(answers, answers == 0, 3).shape == (2, 3)
  assert bon.best_of_k(rng.random((4, 5)), rng.random((4, 5)), 3).shape == (4,)


def test_metrics_reject_bad_k():
  with pytest.raises(ValueError, match="k=5"):
    bon.pass_at_k(np.ones(4), 5)
  with pytest.raises(ValueError, match="k=0"):
    bon.best_of_k(np.ones(4), np.ones(4), 0)
  with pytest.raises(TypeError, match="integer class ids"):
    bon.maj_at_k(np.ones(4), np.ones(4), 2)


def test_pass_at_n_law_fit_recovers_the_parameters_of_an_exact_law():
  ns = np.array([1, 2, 4, 8, 16, 32])
  a, b = report.fit_pass_at_n_law(ns, report.pass_at_n_law(-2.3, -0.4, ns))
  np.testing.assert_allclose([a, b], [-2.3, -0.4], rtol=1e-9)
  # Independent check of the law itself: exp(a N^b) at N = 4 by hand.
  assert report.pass_at_n_law(-2.3, -0.4, 4) == pytest.approx(np.exp(-2.3 * 4 ** -0.4))


def test_pass_at_n_law_fit_ignores_saturated_points_and_refuses_too_few():
  ns = np.array([1, 2, 4, 8])
  p = report.pass_at_n_law(-1.0, -0.5, ns)
  a, b = report.fit_pass_at_n_law([*ns, 16, 32], [*p, 1.0, 1.0])
  np.testing.assert_allclose([a, b], [-1.0, -0.5], rtol=1e-9)
  with pytest.raises(ValueError, match=">= 2 values"):
    report.fit_pass_at_n_law([1, 2, 4], [0.0, 1.0, 0.3])
