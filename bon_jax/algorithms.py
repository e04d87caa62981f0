"""The fine-tuning algorithms: one weight function of `bon` and one entry each.

An entry (`Algorithm`) declares everything the rest of bon_jax needs to know
about an algorithm: config validation (`validation.validate_rl_config`) reads
its group constraint, the RL loop (`rl.rl_step`) its expert column, extra
inputs and hyper-parameters, and the capacity plan (`capacity.plan`) its rows.

Adding an estimator is one weight function in bon.py,
``w = fn(rewards, scores=None, mask=None, *, <hparams>, **inputs) -> float[B, n]``,
and one line here, e.g.::

  "my_bon": Algorithm(weights=bon.my_bon_weights, group="multiple"),

Example::

  w = algorithms.weights_fn("bon_rl_v", N=4)(rewards, scores)  # float[B, n]
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from bon_jax import bon


def _bon_rlb_metrics(correct: np.ndarray, hparams: Mapping[str, Any]) -> dict[str, float]:
  """``clipped_frac``: groups whose gain hit max_gain (bon.bon_rlb_gains)."""
  p_fail = 1.0 - correct.mean(axis=-1)
  clipped = bon.bon_rlb_gains(p_fail, hparams["N"], hparams.get("max_gain"))[3]
  return {"clipped_frac": float(np.mean(clipped))}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Algorithm:
  """What an algorithm needs besides its weight function.

  Attributes:
    weights: the `bon` weight function, ``fn(rewards, scores, mask, **hparams,
      **inputs) -> float[B, n]``.
    expert: column 0 of every group is a task demonstration
      (``task.sft_targets``), columns 1..N' the policy's samples
      (bon.bon_sft_weights's layout).
    expert_only: the weights see the expert column only (the samples only
      feed the logs).
    group: the group-size constraint: "" (any N'), "multiple" (groups of
      exactly N: N' % N == 0) or "subset" (k = N <= N').
    target: the keyword that receives ``config.rl.N`` ("N", "k"; None: none).
    hparams: optional ``config.rl`` fields passed to `weights` when set.
    inputs: per-step inputs besides (rewards, scores, mask): "answers" (the
      graded final answers, maj@k's votes).
    metrics: extra step metrics, ``fn(correct [B, n], hparams) -> dict``.
  """

  weights: Callable[..., Any]
  expert: bool = False
  expert_only: bool = False
  group: str = ""
  target: str | None = "N"
  hparams: tuple[str, ...] = ()
  inputs: tuple[str, ...] = ()
  metrics: Callable[[np.ndarray, Mapping[str, Any]], dict[str, float]] | None = None


REGISTRY: dict[str, Algorithm] = {
    "sft": Algorithm(weights=bon.sft_weights, expert=True, expert_only=True, target=None),
    "rloo": Algorithm(weights=bon.rloo_weights, target=None),
    "grpo": Algorithm(weights=bon.grpo_weights, target=None),
    "bon_sft": Algorithm(weights=bon.bon_sft_weights, expert=True, hparams=("lam",)),
    "bon_rl_v": Algorithm(weights=bon.bon_rl_v_weights, group="multiple"),
    "bon_rl_s": Algorithm(weights=bon.bon_rl_s_weights, group="multiple"),
    "bon_rlb": Algorithm(weights=bon.bon_rlb_weights, hparams=("max_gain",), metrics=_bon_rlb_metrics),
    "bon_rlb_p": Algorithm(weights=bon.bon_rlb_p_weights),
    "best_of_k": Algorithm(weights=bon.best_of_k_weights, group="subset", target="k"),
    "pass_at_k": Algorithm(weights=bon.pass_at_k_weights, group="subset", target="k"),
    "max_at_k": Algorithm(weights=bon.max_at_k_weights, group="subset", target="k"),
    "maj_at_k": Algorithm(weights=bon.maj_at_k_weights, group="subset", target="k",
                          inputs=("answers",)),
}
NAMES = tuple(REGISTRY)


def get(name: str) -> Algorithm:
  """The entry of `name` (ValueError naming the valid ones when unknown)."""
  if name not in REGISTRY:
    raise ValueError(f"Unknown weight function {name!r}; valid names: {', '.join(sorted(REGISTRY))}.")
  return REGISTRY[name]


def weights_fn(name: str, **hparams) -> Callable[..., Any]:
  """The weight function of `name` with its hyper-parameters bound.

  Returns ``fn(rewards, scores=None, mask=None, **inputs) -> float[..., n]``
  (``inputs``: ``answers=`` for maj_at_k, ``p_fail=`` for bon_rlb*).
  Hyper-parameters: ``N`` for bon_*, ``k`` for the subset estimators
  (``N`` is accepted as an alias of ``k``; algorithms without a target drop
  it), ``baseline``, ``max_gain``, ``lam``, ``eps``.

  Example: ``w = weights_fn("bon_rl_v", N=4)(rewards, scores, mask)``.
  """
  algo = get(name)
  if "N" in hparams and algo.target != "N":
    n = hparams.pop("N")
    if algo.target is not None:
      hparams[algo.target] = n
  return functools.partial(algo.weights, **hparams)


def hparams(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The weight function's hyper-parameters from ``config.rl``: N, and each set optional one."""
  algo = get(cfg.algorithm)
  hp: dict[str, Any] = {"N": cfg.N}
  for field in algo.hparams:
    if cfg[field] is not None:
      hp[field] = float(cfg[field])
  return hp
