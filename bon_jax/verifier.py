"""Outcome verifiers: the learned one (Gemma backbone + scalar head) and the grader.

A verifier scores completions: any callable with the `Verifier` signature
``(problems, completion_texts[B][N], tokens int32[B, N, T]) -> float[B, N]``
(higher = more likely correct). Two are provided:

* `grader_verifier(task)`: the exact grader, 1.0 / 0.0 (BoN-RL-S, pass@N).
* `learned_verifier(model, params, tokenizer=..., task=...)`: a gemma
  `Transformer` over ``[BOS] prompt completion`` with a linear head to one
  logit (`POOLINGS`): "last" reads the final hidden state at the last real
  token; "min" applies the head at every real token and takes a soft
  minimum, so an error anywhere can veto the answer and each position only
  has to judge what it has read so far (a step solution's false step).

The learned verifier is trained with binary cross-entropy on policy samples
labelled by the task's grader (`make_verifier_data`, `train_verifier`) and
judged on held-out prompts by AUC and Bo-k accuracy (`evaluate_verifier`).

Example::

  model = models.make_model(preset="tiny", vocab_size=tok.vocab_size)
  vparams = verifier.init_verifier(model, jax.random.key(0), backbone=policy_params)
  data = verifier.make_verifier_data(model, policy_params, tokenizer=tok,
                                     problems=train[:256], task=registry.COUNTDOWN,
                                     num_samples=8, max_new_tokens=32,
                                     rng=jax.random.key(1))
  vparams, hist = verifier.train_verifier(model, vparams, data["tokens"].reshape(-1, L),
                                          data["labels"].reshape(-1), steps=300)
  verifier.evaluate_verifier(model, vparams, held_out_data, ks=(1, 4, 8))
  score_fn = verifier.learned_verifier(model, vparams, tokenizer=tok, task=registry.COUNTDOWN)

Params layout: ``{"backbone": <gemma Transformer params>, "head": {"kernel":
float[D, 1], "bias": float[1]}}`` (the head is a `flax.linen.Dense(1)`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import scipy.stats

from bon_jax import bon
from bon_jax import input_pipeline
from bon_jax import models
from bon_jax import multihost
from bon_jax import sampling
from bon_jax import sharding
from bon_jax import trainer_lib
from bon_jax.tasks import base as task_lib

Params = Any

if TYPE_CHECKING:  # Shape annotations only (kauldron.typing imports TensorFlow).
  from kauldron.typing import Float, Int, Num  # pylint: disable=g-multiple-import


class Verifier(Protocol):
  """Scores N completions of each of B problems; float[B, N], higher = better."""

  def __call__(
      self,
      problems: Sequence[Any],
      completion_texts: Sequence[Sequence[str]],
      tokens: np.ndarray,
  ) -> np.ndarray:
    ...


# ----------------------------------------------------------------------------
# Token layout shared with `bon_jax.rl`.


@jax.jit
def join_prompt_completion(prompts: Int["*B Lp"], completions: Int["*B T"]) -> tuple[Int["*B L"], Int["*B"]]:
  """Packs right-padded prompts and completions into one right-padded sequence.

  Gemma derives positions from ``tokens != PAD``, so the completion must follow
  the prompt's last real token with no padding in between.

  Args:
    prompts: int32[B, P] ``[BOS] prompt`` right-padded with `PAD_ID`.
    completions: int32[B, N, T] generated tokens (PAD after EOS).

  Returns:
    tokens: int32[B, N, P + T], ``[BOS] prompt completion`` then PAD.
    completion_mask: float32[B, N, P + T - 1], 1 where ``tokens[..., t + 1]``
      is a completion token (EOS included): the teacher-forcing targets of
      ``log pi(completion | prompt)``.

  Example: prompts ``[[2, 7, 0]]``, completions ``[[[5, 1, 0]]]`` give tokens
  ``[[[2, 7, 5, 1, 0, 0]]]`` and mask ``[[[0, 1, 1, 0, 0]]]``.
  """
  b, p = prompts.shape
  n, t = completions.shape[1], completions.shape[2]
  plen = jnp.sum(prompts != models.PAD_ID, axis=-1)[:, None, None]  # [B, 1, 1]
  j = jnp.arange(p + t)[None, None, :]
  prompt_part = jnp.pad(prompts, ((0, 0), (0, t)))[:, None, :]
  idx = jnp.clip(j - plen, 0, t - 1)
  comp_part = jnp.take_along_axis(completions, jnp.broadcast_to(idx, (b, n, p + t)), axis=-1)
  in_comp = (j >= plen) & (j < plen + t)
  tokens = jnp.where(j < plen, prompt_part, jnp.where(in_comp, comp_part, models.PAD_ID))
  tokens = tokens.astype(jnp.int32)
  target = tokens[..., 1:]
  mask = (j[..., 1:] >= plen) & (target != models.PAD_ID)
  return tokens, mask.astype(jnp.float32)


# ----------------------------------------------------------------------------
# The learned verifier.

_HEAD = nn.Dense(1)
# How the head's per-position logits become one score (see `score`).
POOLINGS = ("last", "min")


def _check_pooling(pooling: str) -> None:
  if pooling not in POOLINGS:
    raise ValueError(f"verifier pooling must be one of {POOLINGS}, got {pooling!r}")


def init_verifier(model: Any, rng: jax.Array, *, backbone: Params | None = None) -> Params:
  """Verifier params ``{"backbone", "head"}``.

  Args:
    model: the gemma `Transformer` (usually the policy's architecture).
    rng: PRNG key for the head (and the backbone when `backbone` is None).
    backbone: start from these Transformer params (e.g. the SFT policy's,
      the usual choice); None = random init.
  """
  k_backbone, k_head = jax.random.split(rng)
  if backbone is None:
    backbone = models.init_params(model, k_backbone)
  else:
    # Own buffers: training donates the verifier's params, the policy keeps its own.
    backbone = jax.tree.map(jnp.array, backbone)
  d = model.config.embed_dim
  head = _HEAD.init(k_head, jnp.zeros((1, d), jnp.float32))["params"]
  return {"backbone": backbone, "head": head}


def score(model: Any, params: Params, tokens: Int["*B L"], *, pooling: str = "last",
          mesh: jax.sharding.Mesh | None = None, constrain: Any = None,
          remat_blocks: bool = False) -> Float["*B"]:
  """Verifier logits of full sequences.

  Args:
    model: the backbone `Transformer`.
    params: `init_verifier` params.
    tokens: int32[..., L] ``[BOS] prompt completion`` right-padded with PAD.
    pooling: "last": the head on the final-normed hidden state at the last
      real token. "min": the head on every real position's hidden state,
      then a soft minimum ``-logsumexp(-logits)`` over the positions (at
      most the smallest logit; an answer scores high only if no prefix
      looks wrong).
    mesh: a `bon_jax.sharding` mesh: then jitted with explicit shardings,
      params by `sharding.param_specs` (head replicated), tokens [B, N, L]
      over `sharding.BATCH_AXES` on prompts (else samples), the logits alike.
      Each sequence is scored alone, so groups may be split. None: traced
      as is (usable inside other jitted functions).
    constrain: inside a jitted function on a mesh, `sharding.rows_constraint`
      for the B sequences: every activation stays split over the batch axes
      (`sharding.apply_rows_split`) instead of XLA replicating the rows.

  Returns:
    float32[...]: the logit of P(correct). Depends only on the real tokens
    (causal attention; PAD positions are masked out of the pooling), so
    extra right padding does not change it.
  """
  _check_pooling(pooling)
  if mesh is not None:
    kind = "groups" if np.ndim(tokens) >= 3 else "batch"
    return _sharded_score(model, mesh, kind, pooling)(params, tokens)
  tokens = jnp.asarray(tokens)
  if pooling == "min":
    return pool_min(tokens, token_logits(model, params, tokens, constrain=constrain, remat_blocks=remat_blocks))
  lead, length = tokens.shape[:-1], tokens.shape[-1]
  out = sharding.apply_rows_split(model, params["backbone"], tokens.reshape(-1, length), constrain,
                                  remat_blocks=remat_blocks, return_last_only=True, return_hidden_states=True)
  logits = _HEAD.apply({"params": params["head"]}, out.hidden_states.astype(jnp.float32))[..., 0]
  return logits.reshape(lead)


def token_logits(model: Any, params: Params, tokens: Int["*B L"], *, constrain: Any = None,
                 remat_blocks: bool = False) -> Float["*B L"]:
  """float32[..., L]: the head at every position (position t has read tokens <= t); `constrain` as in `score`."""
  tokens = jnp.asarray(tokens)
  length = tokens.shape[-1]
  out = sharding.apply_rows_split(model, params["backbone"], tokens.reshape(-1, length), constrain,
                                  remat_blocks=remat_blocks, return_hidden_states=True)
  logits = _HEAD.apply({"params": params["head"]}, out.hidden_states.astype(jnp.float32))[..., 0]
  return logits.reshape(tokens.shape)


def pool_min(tokens: Int["*B L"], logits: Float["*B L"]) -> Float["*B"]:
  """Soft minimum ``-logsumexp(-logits)`` over the real (non-PAD) positions: float32[...]."""
  neg = jnp.where(tokens != models.PAD_ID, -logits, -jnp.inf)
  return -jax.nn.logsumexp(neg, axis=-1)


@functools.lru_cache(maxsize=8)
def _sharded_score(model: Any, mesh: jax.sharding.Mesh, kind: str, pooling: str = "last"):
  def fn(params, tokens):
    constrain = sharding.rows_constraint(mesh, int(np.prod(tokens.shape[:-1])))
    return score(model, params, tokens, pooling=pooling, constrain=constrain)

  return sharding.jit_sharded(fn, mesh, ("params", kind), kind)


def bce_loss(logits: Float["*B"], labels: Num["*B"]) -> Float[""]:
  """Mean binary cross-entropy of logits against 0/1 labels (float32[])."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.asarray(labels, jnp.float32)))


def pairwise_ranking_loss(logits: Float["*B n"], labels: Num["*B n"]) -> Float[""]:
  """Within-prompt Bradley-Terry loss: mean of softplus(s_wrong - s_right) over pairs.

  BCE alone can be minimised by scoring how easy a prompt is; Best-of-N only
  uses the order of scores *within* a prompt, which this term trains directly
  (the reward-model loss of RLHF, applied to grader-labelled pairs).

  Args:
    logits: float[G, N] scores of N samples for each of G prompts.
    labels: 0/1 [G, N].

  Returns:
    float32[]: the mean over all (correct, wrong) pairs of the same prompt;
    0 when no prompt has both.

  Example: ``pairwise_ranking_loss([[2., 0.]], [[1, 0]]) == softplus(-2.)``.
  """
  logits = jnp.asarray(logits, jnp.float32)
  pos = jnp.asarray(labels, jnp.float32) > 0.5
  pair = pos[..., :, None] & ~pos[..., None, :]  # [G, N, N]: i right, j wrong.
  margin = logits[..., :, None] - logits[..., None, :]
  total = jnp.sum(jnp.where(pair, jax.nn.softplus(-margin), 0.0))
  return total / jnp.maximum(jnp.sum(pair), 1)


def step_bce_loss(logits: Float["*B L"], labels: Num["*B L"], mask: Num["*B L"]) -> Float[""]:
  """BCE of per-position logits against process labels where `mask` is 1 (float32[]; 0 if none)."""
  mask = jnp.asarray(mask, jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(logits, jnp.asarray(labels, jnp.float32))
  return jnp.sum(bce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _loss_counts(batch: dict[str, jax.Array], with_steps: bool) -> dict[str, jax.Array]:
  """What `make_verifier_step`'s means divide by (each at least 1, as the loss functions clamp)."""
  pos = jnp.asarray(batch["labels"], jnp.float32) > 0.5
  pairs = jnp.sum(pos[..., :, None] & ~pos[..., None, :])
  positions = jnp.sum(jnp.asarray(batch["step_mask"], jnp.float32)) if with_steps else jnp.float32(1)
  return {"sequences": jnp.float32(pos.size), "pairs": jnp.maximum(pairs, 1).astype(jnp.float32),
          "positions": jnp.maximum(positions, 1.0)}


def make_verifier_step(model: Any, optimizer: optax.GradientTransformation, *, rank_weight: float = 0.0,
                       pooling: str = "last", step_weight: float = 0.0,
                       mesh: jax.sharding.Mesh | None = None, microbatch_groups: int = 0,
                       remat_blocks: bool = False):
  """Jitted ``(state, batch) -> (state, metrics)``.

  ``batch``: ``tokens`` int32[G, N, L] (N samples of each of G prompts),
  ``labels`` float32[G, N] (0/1); with `step_weight` also ``step_labels`` and
  ``step_mask`` float32[G, N, L] (`step_supervision`). Loss: BCE over all
  G * N sequences plus ``rank_weight`` x `pairwise_ranking_loss` within each
  prompt plus ``step_weight`` x `step_bce_loss` of the head at the labelled
  positions (needs pooling "min": the head at every position). Metrics: loss,
  bce, rank, step_bce, accuracy (at logit 0), grad_norm. `pooling` as in
  `score`. With a `bon_jax.sharding` mesh the step is jitted with explicit
  shardings like the policy update: the state by `sharding.state_specs`, the
  batch's prompts (else samples) over the batch axes, metrics replicated.

  ``microbatch_groups = k > 0`` (dividing G) accumulates the gradient over
  G / k microbatches of k whole groups (a `jax.lax.scan`, float32 sums, one
  optimizer update): each microbatch adds its share of the whole batch's
  means (sums over the whole batch's counts of sequences, pairs and labelled
  positions), so loss, gradient and metrics equal one pass up to float32
  summation order, with k groups' activations live at a time instead of G.
  ``remat_blocks`` rematerialises the backbone's blocks as the policy update
  does (`rl.make_policy_update`): one layer's gathered weights and
  activations alive at a time; the same step.
  """
  if step_weight and pooling != "min":
    raise ValueError("step_weight > 0 trains the head at every position: it needs pooling='min'")
  if isinstance(microbatch_groups, bool) or not isinstance(microbatch_groups, int) or microbatch_groups < 0:
    raise ValueError(f"microbatch_groups must be an integer >= 0 (0 = one pass), got {microbatch_groups!r}")

  def loss_fn(params, batch, norm=None):
    # On a mesh every activation of the batch's rows stays split over the batch axes.
    constrain = sharding.rows_constraint(mesh, int(np.prod(batch["tokens"].shape[:-1])))
    if step_weight:
      per_token = token_logits(model, params, batch["tokens"], constrain=constrain, remat_blocks=remat_blocks)
      logits = pool_min(batch["tokens"], per_token)
      step_bce = step_bce_loss(per_token, batch["step_labels"], batch["step_mask"])
    else:
      logits = score(model, params, batch["tokens"], pooling=pooling, constrain=constrain,
                     remat_blocks=remat_blocks)
      step_bce = jnp.zeros((), jnp.float32)
    labels = batch["labels"]
    bce = bce_loss(logits, labels)
    rank = pairwise_ranking_loss(logits, labels)
    acc = jnp.mean((logits > 0) == (labels > 0.5))
    if norm is not None:  # A microbatch: its share of each whole-batch mean.
      counts = _loss_counts(batch, bool(step_weight))
      bce, acc = bce * counts["sequences"] / norm["sequences"], acc * counts["sequences"] / norm["sequences"]
      rank = rank * counts["pairs"] / norm["pairs"]
      step_bce = step_bce * counts["positions"] / norm["positions"]
    loss = bce + rank_weight * rank + step_weight * step_bce
    return loss, {"loss": loss, "bce": bce, "rank": rank, "step_bce": step_bce, "accuracy": acc}

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: trainer_lib.TrainState, batch):
    groups = batch["labels"].shape[0]
    if not microbatch_groups or microbatch_groups >= groups:
      (_, metrics), grads = grad_fn(state.params, batch)
    else:
      if groups % microbatch_groups:
        raise ValueError(f"microbatch_groups={microbatch_groups} must divide the step's {groups} groups")
      norm = _loss_counts(batch, bool(step_weight))
      c = groups // microbatch_groups

      def split(x):  # [G, ...] -> [C, k, ...]; microbatch i holds groups i, C + i, 2C + i, ...
        x = jnp.swapaxes(x.reshape(microbatch_groups, c, *x.shape[1:]), 0, 1)
        if mesh is not None:  # Each microbatch over the batch axes, as a whole batch would be.
          spec = sharding.batch_spec_for(x.shape[1:], mesh, groups=True)
          x = jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, *spec)))
        return x

      metrics, grads = trainer_lib.accumulate_gradients(
          lambda p, chunk: grad_fn(p, chunk, norm), state.params, jax.tree.map(split, batch), mesh,
          per_chunk_params=remat_blocks)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return trainer_lib.TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state), metrics

  if mesh is not None:
    return sharding.jit_sharded(step, mesh, ("state", "groups"), ("state", "replicated"), donate_argnums=0)
  return jax.jit(step, donate_argnums=0)


def train_verifier(
    model: Any,
    params: Params,
    tokens: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    rank_weight: float = 0.0,
    pooling: str = "last",
    seed: int = 0,
    step_weight: float = 0.0,
    step_labels: np.ndarray | None = None,
    step_mask: np.ndarray | None = None,
    workdir: str | None = None,
    checkpoint_every: int = 0,
    keep_checkpoints: int = 2,
    mesh: jax.sharding.Mesh | None = None,
    microbatch_groups: int = 0,
    remat_blocks: bool = False,
) -> tuple[Params, list[dict[str, float]]]:
  """BCE (+ within-prompt ranking) training; minibatches are a function of (seed, step).

  With a `workdir` it runs like every other stage (`trainer_lib.train_loop`):
  Orbax checkpoints every `checkpoint_every` steps (0: only the last) under
  ``workdir/checkpoints``, metrics in ``workdir/metrics.jsonl`` and
  TensorBoard, and a rerun resumes from the latest checkpoint. Without one it
  trains in memory.

  Args:
    model: the backbone `Transformer`.
    params: `init_verifier` params to start from.
    tokens: int32[M, L] sequences (`join_prompt_completion` layout), drawn
      independently; or int32[G, N, L], N samples per prompt, drawn as whole
      groups (batch_size // N prompts per step) so that the ranking term sees
      pairs of the same prompt.
    labels: 0/1 [M] or [G, N] grader labels.
    steps, batch_size, learning_rate, weight_decay, warmup_steps: AdamW with
      warm-up and cosine decay after global-norm clipping at 1.
    rank_weight: weight of `pairwise_ranking_loss` (needs grouped data).
    pooling: as in `score`.
    seed: minibatch order.
    step_weight, step_labels, step_mask: process supervision (see
      `make_verifier_step`); labels and mask shaped like `tokens`.
    workdir, checkpoint_every, keep_checkpoints: see above.
    mesh: a `bon_jax.sharding` mesh: the state is sharded by
      `sharding.state_specs` (restored into those shardings on resume) and
      each step runs on it (`make_verifier_step`); every process must pass
      the same data (minibatches are drawn from it by (seed, step)). None:
      one device.
    microbatch_groups: gradient accumulation over microbatches of this many
      groups (single sequences for [M, L] data) per step; see
      `make_verifier_step`. 0 = one pass.
    remat_blocks: rematerialise the backbone's blocks (`make_verifier_step`).

  Returns:
    The trained params and the metrics of the steps this call ran (loss, bce,
    rank, step_bce, accuracy, grad_norm).
  """
  tokens, labels = np.asarray(tokens, np.int32), np.asarray(labels, np.float32)
  if tokens.ndim not in (2, 3) or labels.shape != tokens.shape[:-1]:
    raise ValueError(f"tokens must be [M, L] or [G, N, L] and labels [M] or [G, N], got {tokens.shape}"
                     f" and {labels.shape}")
  if steps < 0 or batch_size < 1:
    raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps}, {batch_size}")
  if rank_weight and tokens.ndim == 2:
    raise ValueError("rank_weight > 0 needs grouped data: tokens [G, N, L] and labels [G, N]")
  steps_data = {}
  if step_weight:
    if step_labels is None or np.shape(step_labels) != tokens.shape or np.shape(step_mask) != tokens.shape:
      raise ValueError("step_weight > 0 needs step_labels and step_mask shaped like tokens")
    steps_data = {"step_labels": np.asarray(step_labels, np.float32),
                  "step_mask": np.asarray(step_mask, np.float32)}
  if tokens.ndim == 2:  # Independent sequences: groups of one.
    tokens, labels = tokens[:, None], labels[:, None]
    steps_data = {k: v[:, None] for k, v in steps_data.items()}
  per_step = max(1, batch_size // tokens.shape[1])
  optimizer = trainer_lib.make_optimizer(ml_collections.ConfigDict(dict(
      learning_rate=learning_rate, warmup_steps=warmup_steps, steps=steps, weight_decay=weight_decay,
      grad_clip_norm=1.0)), decay_vectors=True)
  state = trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))
  if mesh is None:
    # One device, even when the backbone came from a policy sharded over several.
    state = jax.device_put(state, jax.devices()[0])
  else:
    # Sharded before the restore: Orbax restores into these shardings (any mesh shape).
    state = sharding.shard(state, mesh, sharding.state_specs(state, mesh))
  update = make_verifier_step(model, optimizer, rank_weight=rank_weight, pooling=pooling, step_weight=step_weight,
                              mesh=mesh, microbatch_groups=microbatch_groups, remat_blocks=remat_blocks)

  def step_fn(state, step):
    idx = np.random.default_rng([seed, step]).integers(0, len(labels), size=per_step)
    return update(state, {"tokens": tokens[idx], "labels": labels[idx],
                          **{k: v[idx] for k, v in steps_data.items()}})

  mngr = None
  if workdir is not None:
    mngr = trainer_lib.checkpoint_manager(workdir, ml_collections.ConfigDict(dict(
        checkpoint_every=checkpoint_every if checkpoint_every > 0 else max(steps, 1),
        keep_checkpoints=keep_checkpoints)))
    state = trainer_lib.restore_or_init(mngr, state)
  state, history = trainer_lib.train_loop(state, step_fn=step_fn, steps=steps, workdir=workdir, mngr=mngr,
                                          log_every=1, desc="verifier",
                                          log_fn=lambda m, s, r: dict(loss=f"{m['loss']:.3f}"))
  return state.params, [{k: v for k, v in h.items() if k != "step"} for h in history]


# ----------------------------------------------------------------------------
# Data and metrics.


def auc(scores, labels) -> float:
  """ROC AUC: P(score of a random positive > score of a random negative), ties 1/2.

  Rank-based (Mann-Whitney U with average ranks for ties), O(n log n).
  NaN when only one class is present.

  Example: ``auc([0.1, 0.9, 0.5], [0, 1, 0]) == 1.0``.
  """
  scores = np.asarray(scores, np.float64).ravel()
  labels = np.asarray(labels).ravel() > 0.5
  if scores.shape != labels.shape:
    raise ValueError(f"scores {scores.shape} and labels {labels.shape} must have the same size")
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = scipy.stats.rankdata(scores, method="average")
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def within_prompt_auc(scores, labels) -> float:
  """Mean over prompts of the AUC among that prompt's own samples.

  What Best-of-N needs: ranking right above wrong answers *to the same
  prompt*. A verifier that only knows which prompts are easy has a high
  `auc` and a within-prompt AUC of 1/2. Prompts whose samples are all right
  or all wrong are skipped; NaN when none is left.

  Example: ``within_prompt_auc([[0.9, 0.1], [0.2, 0.8]], [[1, 0], [1, 0]]) == 0.5``.
  """
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0.5
  if scores.shape != labels.shape or scores.ndim != 2:
    raise ValueError(f"scores and labels must both be [P, N], got {scores.shape} and {labels.shape}")
  per = [auc(s, l) for s, l in zip(scores, labels) if 0 < l.sum() < l.size]
  return float(np.mean(per)) if per else float("nan")


def make_verifier_data(
    model: Any,
    policy_params: Params,
    *,
    tokenizer: Any,
    problems: Sequence[Any],
    task: Any,
    num_samples: int,
    max_new_tokens: int,
    rng: jax.Array,
    temperature: float = 1.0,
    prompts_per_batch: int = 32,
    with_steps: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, np.ndarray]:
  """Samples `num_samples` completions per problem from the policy and grades them.

  With a `bon_jax.sharding` mesh the sampler runs on it (as in
  `bon_jax.evaluate.sample_and_grade`).

  Returns:
    tokens: int32[P, N, L] ``[BOS] prompt completion`` (L = prompt length +
      max_new_tokens), right-padded.
    labels: float32[P, N] grader labels (0/1).
    answer_ids: int32[P, N] answer classes (-1: none), for maj@k.
    completions: int32[P, N, T] the generated tokens alone.
    step_labels, step_mask: float32[P, N, L] (`step_supervision`), only
      when `with_steps`.
  """
  prompts_all = [task.prompt_text(p) for p in problems]
  plen = int(input_pipeline.encode_prompts(tokenizer, prompts_all).shape[1])
  out = {"tokens": [], "labels": [], "answer_ids": [], "completions": []}
  if with_steps:
    out.update(step_labels=[], step_mask=[])
  for start in range(0, len(problems), prompts_per_batch):
    chunk = list(problems[start : start + prompts_per_batch])
    texts = prompts_all[start : start + prompts_per_batch]
    pad = prompts_per_batch - len(chunk)  # One compiled shape for every chunk.
    prompts = input_pipeline.encode_prompts(tokenizer, texts + texts[:1] * pad, plen)
    on_devices = (jnp.asarray(prompts) if mesh is None  # Each process encodes its own rows on a mesh.
                  else input_pipeline.device_prompts(tokenizer, texts + texts[:1] * pad, plen, mesh))
    s = sampling.sample(model, policy_params, on_devices, jax.random.fold_in(rng, start), num_samples=num_samples,
                        max_new_tokens=max_new_tokens, temperature=temperature, mesh=mesh)
    comp = sharding.to_host(s.tokens)[: len(chunk)]
    tokens, _ = join_prompt_completion(jnp.asarray(prompts[: len(chunk)]), jnp.asarray(comp))
    decoded = decode_completions(tokenizer, comp)
    labels, answers = task_lib.grade_completions(task, chunk, decoded)
    out["tokens"].append(np.asarray(tokens))
    out["labels"].append(labels)
    out["answer_ids"].append(answers)
    out["completions"].append(comp)
    if with_steps:
      step_labels, step_mask = step_supervision(tokenizer, task, chunk, comp, prompts[: len(chunk)],
                                                tokens.shape[-1])
      out["step_labels"].append(step_labels)
      out["step_mask"].append(step_mask)
  return {k: np.concatenate(v) for k, v in out.items()}


def step_supervision(tokenizer: Any, task: Any, problems: Sequence[Any], completions: np.ndarray,
                     prompts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
  """Process labels on the `join_prompt_completion` layout, from ``task.step_labels``.

  Each ``(end, label)`` of ``task.step_labels(problem, text)`` is put at the
  token that completes ``text[:end]`` (the last pair, the answer's verdict,
  at its EOS), so the head there, which has read that prefix, learns whether
  a fault has appeared yet. Several labels on one token: the last one (labels
  only fall along an answer).

  Args:
    tokenizer, task: as in `make_verifier_data`.
    problems: the P problems.
    completions: int[P, N, T] completion tokens (PAD after EOS).
    prompts: int[P, Lp] ``[BOS] prompt`` right-padded (the joined layout's prompts).
    length: L of the joined tokens.

  Returns:
    step_labels, step_mask: float32[P, N, L]; the mask is 0 where there is no
    label (and everywhere for a task without ``step_labels``).
  """
  completions, prompts = np.asarray(completions), np.asarray(prompts)
  labels = np.zeros((*completions.shape[:2], length), np.float32)
  mask = np.zeros_like(labels)
  make = getattr(task, "step_labels", None)
  if make is None:
    return labels, mask
  plens = np.sum(prompts != models.PAD_ID, axis=-1)
  for i, problem in enumerate(problems):
    for j, row in enumerate(completions[i].tolist()):
      real = row[: row.index(models.PAD_ID)] if models.PAD_ID in row else row
      text_ids = real[: real.index(models.EOS_ID)] if models.EOS_ID in real else real
      if not real:
        continue
      text = tokenizer.decode(text_ids)
      # Characters decoded after each token (decoding a prefix is what the head has read).
      ends = [len(tokenizer.decode(text_ids[: t + 1])) for t in range(len(text_ids))]
      checks = make(problem, text)
      for k, (end, label) in enumerate(checks):
        last = k == len(checks) - 1  # The verdict: at EOS (the last token if there is none).
        t = len(real) - 1 if last else next((t for t, e in enumerate(ends) if e >= end), len(real) - 1)
        pos = int(plens[i]) + t
        if pos < length:
          labels[i, j, pos], mask[i, j, pos] = label, 1.0
  return labels, mask


def task_made_data(
    *, tokenizer: Any, task: Any, problems: Sequence[Any], num_samples: int, max_new_tokens: int,
    rng: np.random.Generator, with_steps: bool = False,
) -> dict[str, np.ndarray]:
  """Graded answers made by the task (``task.verifier_examples``), not sampled.

  Same layout as `make_verifier_data` (tokens [P, N, L], labels [P, N]); for
  step-format Countdown, right chains and false last steps (the policy's
  commonest error), so that the verifier sees the check that separates them
  on prompts the policy data does not cover.

  Raises:
    ValueError: if the task makes no examples for these problems.
  """
  comps = np.zeros((len(problems), num_samples, max_new_tokens), np.int32)
  labels = np.zeros((len(problems), num_samples), np.float32)
  make = getattr(task, "verifier_examples", None)
  for i, problem in enumerate(problems):
    examples = make(problem, rng, num_samples) if make is not None else []
    if len(examples) != num_samples:
      raise ValueError("this task makes no verifier examples (task.verifier_examples);"
                       " set config.verifier.synthetic_prompts = 0")
    for j, (text, label) in enumerate(examples):
      ids = [*tokenizer.encode(text), models.EOS_ID][:max_new_tokens]
      comps[i, j, : len(ids)], labels[i, j] = ids, label
  prompts = input_pipeline.encode_prompts(tokenizer, [task.prompt_text(p) for p in problems])
  tokens, _ = join_prompt_completion(jnp.asarray(prompts), jnp.asarray(comps))
  out = {"tokens": np.asarray(tokens), "labels": labels}
  if with_steps:
    out["step_labels"], out["step_mask"] = step_supervision(tokenizer, task, problems, comps, prompts,
                                                            tokens.shape[-1])
  return out


def concat_groups(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Stacks the tokens and labels (and step labels, if both have them) of two grouped data sets.

  Right-pads to one length.
  """
  length = max(a["tokens"].shape[-1], b["tokens"].shape[-1])
  def pad(t, value=0):
    return np.pad(t, ((0, 0), (0, 0), (0, length - t.shape[-1])), constant_values=value)
  out = {"tokens": np.concatenate([pad(a["tokens"], models.PAD_ID), pad(b["tokens"], models.PAD_ID)]),
         "labels": np.concatenate([a["labels"], b["labels"]])}
  for k in ("step_labels", "step_mask"):
    if k in a and k in b:
      out[k] = np.concatenate([pad(a[k]), pad(b[k])])
  return out


def decode_completions(tokenizer: Any, completions: np.ndarray) -> list[list[str]]:
  """Texts of int[B, N, T] completions (up to EOS), as B lists of N strings."""
  completions = np.asarray(completions)
  return [[tokenizer.decode(row.tolist()) for row in group] for group in completions]


def score_batched(model: Any, params: Params, tokens: Int["*B L"], batch_size: int = 64, *,
                  pooling: str = "last", mesh: jax.sharding.Mesh | None = None) -> Float["*B"]:
  """`score` over int[..., L] in fixed-size chunks (one compiled shape); float32[...].

  With a `bon_jax.sharding` mesh each chunk's rows are split over its batch
  axes (params as `score` places them; every process passes the same
  tokens and gets every score back).
  """
  tokens = np.asarray(tokens, np.int32)
  flat = tokens.reshape(-1, tokens.shape[-1])
  fn = _jitted_score(model, pooling) if mesh is None else _sharded_score(model, mesh, "batch", pooling)
  out = []
  for start in range(0, len(flat), batch_size):
    chunk = flat[start : start + batch_size]
    pad = batch_size - len(chunk)
    padded = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)]) if pad else chunk
    out.append(sharding.to_host(fn(params, padded))[: len(chunk)])
  return np.concatenate(out).reshape(tokens.shape[:-1])


@functools.lru_cache(maxsize=8)
def _jitted_score(model: Any, pooling: str = "last"):
  return jax.jit(functools.partial(score, model, pooling=pooling))


def evaluate_verifier(
    model: Any, params: Params, data: dict[str, np.ndarray], *, ks: Sequence[int] = (1, 2, 4),
    batch_size: int = 64, pooling: str = "last", mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
  """AUC and Bo-k accuracy of the verifier on held-out groups.

  Args:
    data: `make_verifier_data` output (tokens [P, N, L], labels [P, N]).
    ks: subset sizes for Bo-k (each <= N).
    batch_size: sequences per scoring call.
    pooling: as in `score`.
    mesh: score on this mesh (`score_batched`).

  Returns:
    {"auc", "within_prompt_auc", "bo@k": [..], "pass@k": [..], "ks": [..]}:
    `auc` pools every sample, `within_prompt_auc` ranks within prompts (what
    Best-of-N uses); Bo-k is the unbiased
    verifier-selected accuracy (`bon.best_of_k`), pass@k its oracle ceiling
    (the grader as verifier); both averaged over prompts.
  """
  scores = score_batched(model, params, data["tokens"], batch_size, pooling=pooling, mesh=mesh)
  labels = np.asarray(data["labels"], np.float32)
  return {
      "auc": auc(scores, labels),
      "within_prompt_auc": within_prompt_auc(scores, labels),
      "ks": list(ks),
      "bo@k": [float(np.mean(bon.best_of_k(labels, scores, k))) for k in ks],
      "pass@k": [float(np.mean(bon.pass_at_k(labels, k))) for k in ks],
  }


# ----------------------------------------------------------------------------
# Verifiers with the `Verifier` signature.


def grader_verifier(task: Any) -> Verifier:
  """The exact grader as a verifier: 1.0 if correct, else 0.0."""

  def fn(problems, completion_texts, tokens=None):
    del tokens
    return task_lib.grade_completions(task, problems, completion_texts)[0]

  return fn


def noise_scale_for_auc(target_auc: float) -> float:
  """The sigma of `noisy_grader_verifier` whose within-prompt AUC is `target_auc`.

  A right and a wrong answer score ``1 + sigma z1`` and ``sigma z2``, so the
  right one ranks above with probability ``Phi(1 / (sigma sqrt 2))``; solved
  for sigma. 1.0 gives 0 (the grader); 0.5 is pure noise (infinite sigma).
  """
  if not 0.5 < target_auc <= 1.0:
    raise ValueError(f"a noisy grader's target AUC must be in (0.5, 1], got {target_auc!r}")
  if target_auc == 1.0:
    return 0.0
  return float(1.0 / (np.sqrt(2.0) * scipy.stats.norm.ppf(target_auc)))


def _text_normals(seed: int, problems: Sequence[Any], texts: Sequence[Sequence[str]]) -> np.ndarray:
  """float64[B, N] standard normals, each a fixed function of (seed, problem, text)."""
  u = np.empty((len(texts), len(texts[0]) if texts else 0))
  for i, (problem, group) in enumerate(zip(problems, texts, strict=True)):
    pid = str(getattr(problem, "id", problem))
    for j, text in enumerate(group):
      digest = hashlib.blake2b(f"{seed}\0{pid}\0{text}".encode(), digest_size=8).digest()
      u[i, j] = (int.from_bytes(digest, "little") + 0.5) / 2.0**64
  return scipy.stats.norm.ppf(u)


def noisy_grader_verifier(task: Any, *, target_auc: float, seed: int = 0) -> Verifier:
  """The grader's verdict plus noise: a verifier of controlled quality.

  Score = grade + sigma * z, with sigma from `noise_scale_for_auc` so that
  the within-prompt AUC is `target_auc` on any mix of right and wrong
  answers, and z a standard normal fixed by (seed, problem id, completion
  text): like a learned verifier, it is a function of the text, so a policy
  trained against it can find wrong answers that it over-scores.

  Example: ``noisy_grader_verifier(registry.COUNTDOWN, target_auc=0.8)(problems,
  texts, tokens)`` -> float64[B, N].
  """
  sigma = noise_scale_for_auc(target_auc)
  grader = grader_verifier(task)

  def fn(problems, completion_texts, tokens=None):
    grades = grader(problems, completion_texts, tokens).astype(np.float64)
    return grades + sigma * _text_normals(seed, problems, completion_texts) if sigma else grades

  return fn


def learned_verifier(
    model: Any, params: Params, *, tokenizer: Any, task: Any, batch_size: int = 64,
    pooling: str = "last", mesh: jax.sharding.Mesh | None = None,
) -> Verifier:
  """A `Verifier` scoring ``[BOS] task.prompt_text(problem) completion`` with `score`.

  Scores are the head's logits (only their order matters for BoN); `pooling`
  must be the one the params were trained with (``config.verifier.pooling``).
  With a mesh, scoring runs on it (`score_batched`).
  """
  _check_pooling(pooling)

  def fn(problems, completion_texts, tokens):
    del completion_texts
    tokens = np.asarray(tokens)
    prompts = input_pipeline.encode_prompts(tokenizer, [task.prompt_text(p) for p in problems])
    seqs, _ = join_prompt_completion(jnp.asarray(prompts), jnp.asarray(tokens))
    return score_batched(model, params, np.asarray(seqs), batch_size, pooling=pooling, mesh=mesh)

  return fn


# ----------------------------------------------------------------------------
# Config and checkpoints.


def run_verifier_stage(
    cfg: ml_collections.ConfigDict,
    *,
    model: Any,
    policy_params: Params,
    tokenizer: Any,
    task: Any,
    train_problems: Sequence[Any],
    test_problems: Sequence[Any],
    out_dir: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[Params, dict[str, Any]]:
  """The verifier stage: sample and grade, train (BCE + ranking), evaluate, save.

  Args:
    cfg: ``config.verifier`` (`defaults.verifier_config`).
    model: the backbone architecture (the policy's).
    policy_params: the policy that produces the samples (and the backbone
      init when ``cfg.init == "policy"``).
    tokenizer, task: as in `make_verifier_data`.
    train_problems, test_problems: the first ``cfg.num_prompts`` /
      ``cfg.holdout_prompts`` of each are used.
    out_dir: if set, the params are saved to ``out_dir/verifier`` (reload
      with `load_verifier`; `bon_jax.rl` takes that path as
      ``config.rl.verifier_ckpt``).
    mesh: the run's mesh: the policy samples, the verifier trains and the
      held-out groups are scored on it (None: one device).

  Returns:
    The trained params and a report: held-out ``auc``, ``bo@k``, ``pass@k``
    and ``ks`` (`evaluate_verifier`), the training ``label_mean`` and
    ``final_loss``.
  """
  if cfg.init not in ("policy", "random"):
    raise ValueError(f"verifier init must be 'policy' or 'random', got {cfg.init!r}")
  synthetic = int(cfg.synthetic_prompts)
  if len(train_problems) < cfg.num_prompts + synthetic or len(test_problems) < cfg.holdout_prompts:
    extra = f" (+ {synthetic} for synthetic_prompts)" if synthetic else ""
    raise ValueError(
        f"the verifier stage needs {cfg.num_prompts}{extra} train and {cfg.holdout_prompts} held-out"
        f" problems, got {len(train_problems)} and {len(test_problems)}")
  ks = [k for k in cfg.ks if k <= cfg.num_samples]
  key = jax.random.key(cfg.seed)
  data_kw = dict(tokenizer=tokenizer, task=task, num_samples=cfg.num_samples,
                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                 prompts_per_batch=cfg.prompts_per_batch, mesh=mesh)
  step_weight = float(cfg.get("step_weight", 0.0))
  data_path = None if out_dir is None else os.path.join(out_dir, "data.npz")
  if data_path is not None and os.path.exists(data_path):
    # A resumed stage trains and evaluates on the samples it drew before it stopped.
    train_data, held = _load_data(data_path)
  else:
    train_data = make_verifier_data(model, policy_params, problems=train_problems[: cfg.num_prompts],
                                    rng=jax.random.fold_in(key, 0), with_steps=bool(step_weight), **data_kw)
    held = make_verifier_data(model, policy_params, problems=test_problems[: cfg.holdout_prompts],
                              rng=jax.random.fold_in(key, 1), **data_kw)
    if synthetic:  # Task-made groups from the training prompts after the sampled ones.
      train_data = concat_groups(train_data, task_made_data(
          tokenizer=tokenizer, task=task, problems=train_problems[cfg.num_prompts : cfg.num_prompts + synthetic],
          num_samples=cfg.num_samples, max_new_tokens=cfg.max_new_tokens,
          rng=np.random.default_rng([cfg.seed, 3]), with_steps=bool(step_weight)))
    if data_path is not None and multihost.is_writer():
      _save_data(data_path, train_data, held)
  params = init_verifier(model, jax.random.fold_in(key, 2),
                         backbone=policy_params if cfg.init == "policy" else None)
  rank_weight = float(cfg.rank_weight)
  pooling = cfg.pooling
  train_dir = None if out_dir is None else os.path.join(out_dir, "train")
  tokens, labels = train_data["tokens"], train_data["labels"]
  step_labels, step_mask = train_data.get("step_labels"), train_data.get("step_mask")
  if not rank_weight:  # BCE alone: independent sequences make more varied minibatches.
    tokens, labels = tokens.reshape(-1, tokens.shape[-1]), labels.reshape(-1)
    if step_weight:
      step_labels, step_mask = step_labels.reshape(tokens.shape), step_mask.reshape(tokens.shape)
  params, history = train_verifier(
      model, params, tokens, labels,
      steps=cfg.steps, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
      weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, rank_weight=rank_weight,
      pooling=pooling, seed=cfg.seed, step_weight=step_weight, step_labels=step_labels,
      step_mask=step_mask, workdir=train_dir, checkpoint_every=cfg.checkpoint_every,
      keep_checkpoints=cfg.keep_checkpoints, mesh=mesh, microbatch_groups=int(cfg.get("microbatch_groups", 0)),
      remat_blocks=bool(cfg.get("remat_blocks", False)))
  report = evaluate_verifier(model, params, held, ks=ks, batch_size=cfg.prompts_per_batch, pooling=pooling,
                             mesh=mesh)
  report["label_mean"] = float(train_data["labels"][: cfg.num_prompts].mean())
  if history:
    report["final_loss"] = history[-1]["loss"]
  else:  # Nothing left to run (a rerun after the last checkpoint): the logged last step.
    report["final_loss"] = _last_logged(train_dir, "loss") if cfg.steps else float("nan")
  if out_dir is not None:
    save_verifier(os.path.join(out_dir, "verifier"), params)
  return params, report


def _save_data(path: str, train: dict[str, np.ndarray], held: dict[str, np.ndarray]) -> None:
  """Both data sets in one .npz, written whole or not at all (a stop mid-write leaves none)."""
  arrays = {f"train/{k}": v for k, v in train.items()} | {f"held/{k}": v for k, v in held.items()}
  tmp = path + ".tmp.npz"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _load_data(path: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  with np.load(path) as f:
    split = lambda prefix: {k[len(prefix):]: f[k] for k in f.files if k.startswith(prefix)}
    return split("train/"), split("held/")


def _last_logged(workdir: str | None, key: str) -> float:
  """`key` of the last line of ``workdir/metrics.jsonl`` (NaN when there is none)."""
  path = os.path.join(workdir or "", "metrics.jsonl")
  if not workdir or not os.path.exists(path):
    return float("nan")
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  return float(json.loads(lines[-1]).get(key, "nan")) if lines else float("nan")


def save_verifier(path: str, params: Params) -> None:
  """Writes verifier params to an Orbax checkpoint directory at `path`."""
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.abspath(path), params, force=True)


def load_verifier(path: str, model: Any, mesh: jax.sharding.Mesh | None = None) -> Params:
  """Restores `save_verifier` params for `model`'s architecture.

  With a mesh, each device reads its shard (`sharding.param_specs`); else
  they land on the default device. Raises a one-line FileNotFoundError when
  `path` is missing.
  """
  if not path or not os.path.exists(path):
    raise FileNotFoundError(f"verifier checkpoint {path!r} not found; train one first or fix the path")
  abstract = jax.eval_shape(lambda: init_verifier(model, jax.random.key(0)))
  if mesh is not None:
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
                            sharding.named(mesh, sharding.param_specs(abstract, mesh)))
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(os.path.abspath(path), abstract)
