"""BoN-aware fine-tuning: one training loop for SFT, RL and the BoN algorithms.

Each step (`rl_step`) takes a batch of prompts, samples N' completions per
prompt from the current policy (`sampling.sample`), scores them with a reward
function and optionally a verifier (both `verifier.Verifier` callables),
turns (rewards, scores) into per-sample weights with the algorithm's weight
function (`algorithms.REGISTRY`), and applies one jitted update
(`make_policy_update`) of

    loss = -(1/B) sum_b sum_i w_bi log pi(y_bi | x_b)
           + kl_coef * KL(pi || pi_ref) - entropy_coef * H(pi)

so that the gradient is ``(1/B) sum_b sum_i w_bi grad log pi(y_bi | x_b)``:
bon.py's convention (``sum_i w_i grad log pi(y_i|x)`` per prompt, averaged
over the B prompts). ``log pi(y|x)`` is the SEQUENCE log-probability (the sum
of the completion's token log-probs, EOS included), at the sampling
temperature, i.e. of the distribution that produced the samples.

Algorithms (``config.rl.algorithm``, any name of `algorithms.REGISTRY`): ``sft``,
``rloo`` (RL, N' samples, leave-one-out baseline), ``grpo``, ``bon_sft``,
``bon_rl_v``, ``bon_rl_s``, ``bon_rlb``, ``bon_rlb_p``, and the subset
estimators ``best_of_k``, ``pass_at_k``, ``max_at_k``, ``maj_at_k`` (k = N).
``sft`` and ``bon_sft`` use bon.bon_sft_weights's layout: column 0 of every
group is an expert demonstration (``task.sft_targets``), columns 1..N' the
policy samples (for ``sft`` they get weight 0 and only feed the logs).

Example::

  config = defaults.base_config()  # Or an experiment's, e.g. configs/demo.py.
  config.rl.algorithm, config.rl.N_prime, config.rl.N = "bon_rl_s", 8, 4
  state, history = rl.train_rl(config, "/tmp/bon_rl", init_params=sft_params)

Regularisers, both at the sequence level and both on the policy's own samples
(expert rows of sft / bon_sft are excluded):

* KL: ``sum_t KL(pi(.|y_<t) || pi_ref(.|y_<t))`` over the sampled prefixes,
  each per-token KL computed exactly over the full vocabulary (the
  Rao-Blackwellised form of the single-sample log-ratio estimator: unbiased
  for the sequence KL, and no variance from the sampled token). Averaged over
  policy samples. Its gradient, like the entropy bonus's, treats the sampled
  prefixes as fixed (the usual per-token regulariser; the term through the
  prefix distribution is dropped). The k3 estimator on the sampled tokens,
  ``r - 1 - log r`` with ``r = pi_ref / pi``, is logged as ``kl_k3`` for
  comparison (its gradient would be that of KL(pi_ref || pi), so it is not
  in the loss).
* Entropy: ``sum_t H(pi(.|y_<t))`` on the same prefixes, full vocabulary.
  Logged per token (``entropy``) and per sequence (``entropy_seq``).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bon_jax import algorithms
from bon_jax import bon
from bon_jax import config_lib
from bon_jax import experiment
from bon_jax import input_pipeline
from bon_jax import models
from bon_jax import sampling
from bon_jax import sharding
from bon_jax import trainer_lib
from bon_jax import validation
from bon_jax import verifier as verifier_lib
from bon_jax.tasks import base as task_lib

Params = Any

# ----------------------------------------------------------------------------
# The update.


def _flat_rows(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The batch's [B, n, ...] groups as R = B * n rows (the loss needs no group statistics)."""
  tokens = batch["tokens"]
  b, n, length = tokens.shape
  return {
      "tokens": tokens.reshape(b * n, length),
      "completion_mask": batch["completion_mask"].reshape(b * n, length - 1).astype(jnp.float32),
      "weights": jax.lax.stop_gradient(batch["weights"].reshape(b * n).astype(jnp.float32)),
      "sample_mask": batch["sample_mask"].reshape(b * n).astype(jnp.float32),
  }


def _normalisers(rows: dict[str, jax.Array], num_prompts: int) -> dict[str, jax.Array]:
  """The loss's batch-wide denominators: B prompts, policy samples, their completion tokens.

  Taken once from the whole batch, so the loss of any partition of the rows
  sums to the batch's loss (`make_policy_update`'s microbatches).
  """
  smask = rows["completion_mask"] * rows["sample_mask"][:, None]
  return {"prompts": jnp.float32(num_prompts),
          "samples": jnp.maximum(jnp.sum(rows["sample_mask"]), 1.0),
          "tokens": jnp.maximum(jnp.sum(smask), 1.0)}


# Vocabulary entries per chunk of the update's log-softmax (`_token_terms_chunked`):
# a vocabulary larger than this is never held whole as float32 [rows, L, V]
# arrays. Gemma's 256,128 entries make 16 chunks of 16,008.
VOCAB_CHUNK = 16384


def _token_terms_full(model, params, ref_params, flat, *, temperature, constrain, remat_blocks=False):
  """Per-token (target log-prob, entropy, KL, reference log-prob) from full-vocabulary log-softmaxes."""

  def log_probs(p):
    logits = sharding.apply_rows_split(model, p, flat, constrain, remat_blocks=remat_blocks).logits
    logits = logits[:, :-1].astype(jnp.float32)
    return jax.nn.log_softmax(logits / temperature, axis=-1)  # [r, L-1, V]

  logp_all = log_probs(params)
  logp = jnp.take_along_axis(logp_all, flat[:, 1:, None], axis=-1)[..., 0]
  probs = jnp.exp(logp_all)
  ent_tok = -jnp.sum(probs * logp_all, axis=-1)
  if ref_params is None:
    return logp, ent_tok, None, None
  ref_all = jax.lax.stop_gradient(log_probs(ref_params))
  # Exact per-prefix KL. Its gradient is sum_v grad(p_v) (log p_v - log ref_v): the other
  # term, sum_v p_v grad log p_v = grad sum_v p_v, is 0 analytically but float noise
  # (~1e-7) that Adam would blow up to full steps when the weights are all 0, so the
  # log-ratio is held fixed (same value, exact gradient). At pi == pi_ref the two forward
  # passes still differ by float32 round-off (~1e-7 nats, a ~1e-9 gradient that Adam would
  # also normalise into a real step): log-ratios below _LOG_RATIO_ATOL count as 0.
  log_ratio = jax.lax.stop_gradient(logp_all - ref_all)
  log_ratio = jnp.where(jnp.abs(log_ratio) < _LOG_RATIO_ATOL, 0.0, log_ratio)
  kl_tok = jnp.sum(probs * log_ratio, axis=-1)
  ref_logp = jnp.take_along_axis(ref_all, flat[:, 1:, None], axis=-1)[..., 0]
  return logp, ent_tok, kl_tok, ref_logp


def _token_terms_chunked(model, params, ref_params, flat, *, temperature, constrain, chunk, mesh,
                         remat_blocks=False):
  """`_token_terms_full`'s values, the vocabulary taken `chunk` entries at a time.

  The final hidden states [r, L-1, D] are decoded against one slice of the
  embedding table at a time, as gemma's `Embedder.decode` and final
  soft-cap do (same dtypes), inside `jax.lax.scan`s whose bodies are
  rematerialised: no [r, L-1, V] array exists, forward or backward, only
  [r, L-1, chunk] ones. A first sweep takes each row's online logsumexp,
  sum_v e^z z (entropy) and target logit; with a reference policy a second
  sweep sums p_v * log-ratio_v (the KL, thresholded as in the full form).
  Costs extra matmuls: the decode is recomputed in every sweep and again in
  the backward pass.
  """
  cap = models.base_model(model).config.final_logit_softcap
  targets = flat[:, 1:]

  def hidden(p):
    h = sharding.apply_rows_split(model, p, flat, constrain, remat_blocks=remat_blocks,
                                  return_hidden_states=True).hidden_states[:, :-1]
    return (h if constrain is None else constrain(h)), p["embedder"]["input_embedding"]

  def split(table):
    v, d = table.shape
    n = -(-v // chunk)
    size = -(-v // n)
    table = jnp.pad(table, ((0, n * size - v), (0, 0)))
    return table.reshape(n, size, d), jnp.arange(n) * size, v

  replicated = (lambda x: x) if mesh is None else (
      lambda x: jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())))

  def decode(h, e, offset, v):
    z = jnp.dot(h, replicated(e).T)  # Embedder.decode
    if cap is not None:
      z = z / cap
      z = jnp.tanh(z) * cap
    z = z.astype(jnp.float32) / temperature
    valid = offset + jnp.arange(e.shape[0]) < v
    return z, valid

  def first_sweep(h, table):
    chunks, offsets, v = split(table)
    r, l = targets.shape

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def body(carry, x):
      m, s, t, zy = carry
      e, offset = x
      z, valid = decode(h, e, offset, v)
      zm = jnp.where(valid, z, -jnp.inf)
      m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(zm, axis=-1)))
      scale = jnp.exp(m - m_new)
      ez = jnp.where(valid, jnp.exp(z - m_new[..., None]), 0.0)
      s = s * scale + jnp.sum(ez, axis=-1)
      t = t * scale + jnp.sum(ez * jnp.where(valid, z, 0.0), axis=-1)
      local = targets - offset
      inside = (local >= 0) & (local < e.shape[0])
      hit = jnp.take_along_axis(z, jnp.clip(local, 0, e.shape[0] - 1)[..., None], axis=-1)[..., 0]
      zy = zy + jnp.where(inside, hit, 0.0)
      return (m_new, s, t, zy), None

    zeros = jnp.zeros((r, l), jnp.float32)
    init = (jnp.full((r, l), -jnp.inf, jnp.float32), zeros, zeros, zeros)
    (m, s, t, zy), _ = jax.lax.scan(body, init, (chunks, offsets))
    lse = m + jnp.log(s)
    return lse, zy - lse, lse - t / s  # logsumexp, target log-prob, entropy

  h, table = hidden(params)
  lse, logp, ent_tok = first_sweep(h, table)
  if ref_params is None:
    return logp, ent_tok, None, None
  h_ref, table_ref = jax.lax.stop_gradient(hidden(ref_params))
  lse_ref, ref_logp, _ = jax.lax.stop_gradient(first_sweep(h_ref, table_ref))
  chunks, offsets, v = split(table)
  chunks_ref, _, _ = split(table_ref)

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def kl_body(kl, x):
    e, e_ref, offset = x
    z, valid = decode(h, e, offset, v)
    z_ref, _ = decode(h_ref, e_ref, offset, v)
    logp_all = z - lse[..., None]
    log_ratio = jax.lax.stop_gradient(logp_all - (z_ref - lse_ref[..., None]))
    log_ratio = jnp.where(valid & (jnp.abs(log_ratio) >= _LOG_RATIO_ATOL), log_ratio, 0.0)
    return kl + jnp.sum(jnp.exp(logp_all) * log_ratio, axis=-1), None

  kl_tok, _ = jax.lax.scan(kl_body, jnp.zeros(targets.shape, jnp.float32), (chunks, chunks_ref, offsets))
  return logp, ent_tok, kl_tok, ref_logp


def _rows_loss(
    model: Any,
    params: Params,
    ref_params: Params | None,
    rows: dict[str, jax.Array],
    norm: dict[str, jax.Array],
    *,
    kl_coef: float,
    entropy_coef: float,
    temperature: float,
    mesh: jax.sharding.Mesh | None = None,
    vocab_chunk: int = 0,
    remat_blocks: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`policy_loss`'s row-additive part: (loss, metrics) of some rows [r, ...].

  Every value is a sum over rows divided by a batch-wide `norm`, so summing
  it over a partition of the batch's rows gives the whole batch's value.
  With a `mesh`, the rows' activations stay split over its batch axes
  (`sharding.apply_rows_split`); ``vocab_chunk > 0`` smaller than the vocabulary takes the
  log-softmax a chunk at a time (`_token_terms_chunked`): the same values.
  """
  if ref_params is None and kl_coef:
    raise ValueError("kl_coef > 0 needs ref_params (the frozen reference policy)")
  flat, mask, w = rows["tokens"], rows["completion_mask"], rows["weights"]
  smask = mask * rows["sample_mask"][:, None]
  constrain = sharding.rows_constraint(mesh, flat.shape[0])
  if constrain is not None:
    flat = constrain(flat)
  vocab = models.base_model(model).config.num_embed
  if 0 < vocab_chunk < vocab:
    terms = _token_terms_chunked(model, params, ref_params, flat, temperature=temperature, constrain=constrain,
                                 chunk=vocab_chunk, mesh=mesh, remat_blocks=remat_blocks)
  else:
    terms = _token_terms_full(model, params, ref_params, flat, temperature=temperature, constrain=constrain,
                              remat_blocks=remat_blocks)
  logp, ent_tok, kl_tok, ref_logp = terms
  seq_logp = jnp.sum(mask * logp, axis=-1)  # [r]
  pg_loss = -jnp.sum(w * seq_logp) / norm["prompts"]

  ent_sum = jnp.sum(smask * ent_tok)
  ent_seq = ent_sum / norm["samples"]
  loss = pg_loss - entropy_coef * ent_seq
  metrics = {
      "pg_loss": pg_loss,
      "entropy": ent_sum / norm["tokens"],
      "entropy_seq": ent_seq,
  }
  if ref_params is not None:
    kl_seq = jnp.sum(smask * kl_tok) / norm["samples"]
    log_r = ref_logp - logp
    k3 = jnp.exp(log_r) - log_r - 1.0
    metrics["kl"] = kl_seq
    metrics["kl_k3"] = jax.lax.stop_gradient(jnp.sum(smask * k3) / norm["samples"])
    loss = loss + kl_coef * kl_seq
  metrics["loss"] = loss
  return loss, metrics


def _weight_metrics(rows: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The batch's weight statistics and policy-sample completion tokens (no model needed)."""
  w = rows["weights"]
  return {
      "weight_max": jnp.max(w),
      "weight_min": jnp.min(w),
      "weight_mean": jnp.mean(w),
      "weight_abs_mean": jnp.mean(jnp.abs(w)),
      "completion_tokens": jnp.sum(rows["completion_mask"] * rows["sample_mask"][:, None]),
  }


# Float32 round-off between two forward passes of the same params, in nats (see policy_loss).
_LOG_RATIO_ATOL = 1e-5


def policy_loss(
    model: Any,
    params: Params,
    ref_params: Params | None,
    batch: dict[str, jax.Array],
    *,
    kl_coef: float = 0.0,
    entropy_coef: float = 0.0,
    temperature: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The weighted log-likelihood loss with KL and entropy terms (see module doc).

  Args:
    model: the policy `Transformer`.
    params: policy params (differentiated).
    ref_params: frozen reference params, or None (then no KL term or metric).
    batch:
      tokens: int32[B, n, L] ``[BOS] prompt completion`` right-padded
        (`verifier.join_prompt_completion`).
      completion_mask: float32[B, n, L-1], 1 on completion targets.
      weights: float32[B, n] per-sample weights (gradient stopped).
      sample_mask: float32[B, n], 1 where the row is a policy sample (KL and
        entropy are measured on those only).
    kl_coef, entropy_coef, temperature: see the module docstring.

  Returns:
    (loss, metrics) with loss float32[].
  """
  rows = _flat_rows(batch)
  loss, metrics = _rows_loss(model, params, ref_params, rows, _normalisers(rows, batch["tokens"].shape[0]),
                             kl_coef=kl_coef, entropy_coef=entropy_coef, temperature=temperature)
  return loss, {**metrics, **_weight_metrics(rows)}


def _microbatches(rows: dict[str, jax.Array], k: int, mesh: jax.sharding.Mesh | None) -> dict[str, jax.Array]:
  """Rows [R, ...] -> C = ceil(R / k) microbatches [C, k, ...].

  The last is filled up with copies of the first rows at weight 0, mask 0 and
  sample_mask 0: they add exactly 0 to every sum. Microbatch c holds rows
  c, C + c, 2C + c, ...: rows split over the mesh's batch axes in contiguous
  blocks give every microbatch an equal share of every device.
  """
  r = rows["tokens"].shape[0]
  c = -(-r // k)
  pad = c * k - r  # < k < R

  def split(name, x):
    if pad:
      fill = x[:pad] if name == "tokens" else jnp.zeros((pad, *x.shape[1:]), x.dtype)
      x = jnp.concatenate([x, fill])
    x = jnp.swapaxes(x.reshape(k, c, *x.shape[1:]), 0, 1)
    if mesh is not None:
      spec = sharding.batch_spec_for(x.shape[1:], mesh)  # Each microbatch over the batch axes.
      x = jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, *spec)))
    return x

  return {name: split(name, x) for name, x in rows.items()}


def make_policy_update(
    model: Any,
    optimizer: optax.GradientTransformation,
    *,
    kl_coef: float = 0.0,
    entropy_coef: float = 0.0,
    temperature: float = 1.0,
    mesh: jax.sharding.Mesh | None = None,
    microbatch_rows: int = 0,
    vocab_chunk: int = VOCAB_CHUNK,
    remat_blocks: bool = False,
) -> Callable[..., tuple[trainer_lib.TrainState, dict[str, jax.Array]]]:
  """Jitted ``(state, ref_params, batch) -> (state, metrics)``, one optimizer step.

  `state` is a `trainer_lib.TrainState` (donated: pass a copy of params you keep);
  `ref_params` may be None when ``kl_coef == 0`` (no KL metric then). Batch and
  metrics as in `policy_loss`, plus ``grad_norm``.

  With a `bon_jax.sharding` mesh it is jitted with explicit shardings: state
  by `sharding.state_specs` and ref_params by `sharding.param_specs` (FSDP /
  tensor parallel), the batch [B, n, ...] over `sharding.BATCH_AXES` on the
  prompts (else on the samples: the loss needs no group statistics, the
  weights come precomputed from `rl_step`), metrics replicated.

  ``microbatch_rows = k > 0`` accumulates the gradient over microbatches of k
  of the B * n rows (a `jax.lax.scan`, float32 sums, one optimizer update):
  the same loss, gradient and metrics as one pass (normalisers from the whole
  batch), with the full-vocabulary log-softmax, probs and reference
  log-probs of k rows live at a time instead of all. k that does not divide
  the rows is fine (the last microbatch is padded); on a mesh, a k that is a
  multiple of the batch shards and divides the rows avoids resharding.

  On a mesh, every activation of the rows stays split over the batch axes
  (the FSDP weights are gathered instead). A vocabulary larger than
  ``vocab_chunk`` is log-softmaxed ``vocab_chunk`` entries at a time
  (`_token_terms_chunked`: the same loss and gradient up to float32
  summation order, with no float32 [rows, L, V] array); 0 = never chunk.

  ``remat_blocks=True`` rematerialises every transformer block
  (`sharding.apply_rows_split`): the backward pass re-gathers a block's
  weights and recomputes its activations from its saved input, so about one
  layer's are alive at a time instead of every layer's; with microbatches,
  each one gathers the weights afresh. The same gradient for one more
  forward pass of compute.

  Example::

    update = make_policy_update(model, optimizer, kl_coef=0.05, microbatch_rows=16)
    state, metrics = update(state, ref_params, batch)
  """
  if isinstance(microbatch_rows, bool) or not isinstance(microbatch_rows, int) or microbatch_rows < 0:
    raise ValueError(f"microbatch_rows must be an integer >= 0 (0 = one pass), got {microbatch_rows!r}")
  rows_loss = functools.partial(
      _rows_loss, model, kl_coef=kl_coef, entropy_coef=entropy_coef, temperature=temperature, mesh=mesh,
      vocab_chunk=vocab_chunk, remat_blocks=remat_blocks)

  def step(state: trainer_lib.TrainState, ref_params, batch):
    rows = _flat_rows(batch)
    norm = _normalisers(rows, batch["tokens"].shape[0])
    # A LoRA policy: gradients of the adapters only (the frozen weights' are never computed).
    trainable = models.trainable_mask(model, state.params)
    grad_fn = jax.value_and_grad(
        lambda p, r: rows_loss(trainer_lib.freeze(p, trainable), ref_params, r, norm), has_aux=True)
    if not microbatch_rows or microbatch_rows >= rows["tokens"].shape[0]:
      (_, metrics), grads = grad_fn(state.params, rows)
    else:
      chunks = _microbatches(rows, microbatch_rows, mesh)
      metrics, grads = trainer_lib.accumulate_gradients(grad_fn, state.params, chunks, mesh, trainable,
                                                        per_chunk_params=remat_blocks)
    metrics = {**metrics, **_weight_metrics(rows)}
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return trainer_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  if mesh is not None:
    return sharding.jit_sharded(step, mesh, ("state", "params", "groups"), ("state", "replicated"),
                                donate_argnums=0)
  return jax.jit(step, donate_argnums=0)


# ----------------------------------------------------------------------------
# One step of the loop.


def expert_completions(
    tokenizer: Any, task: Any, problems: Sequence[Any], rng: np.random.Generator, length: int
) -> np.ndarray:
  """int32[B, length]: one ``task.sft_targets`` demonstration + EOS per problem, PAD after."""
  out = np.zeros((len(problems), length), np.int32)
  for i, p in enumerate(problems):
    ids = [*tokenizer.encode(task.sft_targets(p, rng)), models.EOS_ID]
    if len(ids) > length:
      raise config_lib.UserError(
          f"an expert demonstration has {len(ids)} tokens > config.rl.max_new_tokens={length}; raise it")
    out[i, : len(ids)] = ids
  return out


def rl_step(
    state: trainer_lib.TrainState,
    ref_params: Params | None,
    problems: Sequence[Any],
    *,
    model: Any,
    update_fn: Callable[..., Any],
    tokenizer: Any,
    task: Any,
    cfg: ml_collections.ConfigDict,
    rng: jax.Array,
    reward_fn: verifier_lib.Verifier | None = None,
    verifier: verifier_lib.Verifier | None = None,
    prompt_len: int | None = None,
    expert_rng: np.random.Generator | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[trainer_lib.TrainState, dict[str, float]]:
  """Sample, score, weight, update: one step of BoN-aware fine-tuning.

  Args:
    state: the policy's `trainer_lib.TrainState` (donated to `update_fn`).
    ref_params: the frozen reference policy (None: no KL).
    problems: the B task problems of this step.
    model: the policy `Transformer`.
    update_fn: `make_policy_update(...)`.
    tokenizer: encodes prompts / decodes completions.
    task: the `tasks.base.Task`.
    cfg: ``config.rl`` (`defaults.rl_config`).
    rng: PRNG key of this step's samples.
    reward_fn: the environment reward R, a `Verifier` callable (default: the
      task's grader, 0/1).
    verifier: the selector r for the BoN algorithms (default: R itself).
    prompt_len: pad prompts to this many tokens (fixed shapes across steps).
    expert_rng: draws the expert demonstrations (sft, bon_sft).
    mesh: a `bon_jax.sharding` mesh (`update_fn` made with the same): each
      process encodes only its rows of the prompts (`sharding.process_rows`),
      the sampler runs sharded, and the [B, N'] completions are gathered to
      every host, so rewards and the BoN weights (group statistics, subset
      estimators) always see whole groups.

  Returns:
    The new state and host metrics: the update's (loss, kl, entropy, weight
    stats, grad_norm), ``reward_mean`` / ``score_mean`` over policy samples,
    ``pass@1`` and ``pass@N'`` (unbiased, rewards > 0.5 count as correct)
    of the training groups, ``clipped_frac`` (bon_rlb: groups whose gain hit
    max_gain), ``mean_length``, ``tokens_per_s`` (generated tokens per
    second of the whole step) and ``step_s``.
  """
  t0 = time.perf_counter()
  reward_fn = reward_fn or verifier_lib.grader_verifier(task)
  n_prime = cfg.N_prime
  prompts = input_pipeline.device_prompts(tokenizer, [task.prompt_text(p) for p in problems], prompt_len, mesh)
  samples = sampling.sample(model, state.params, prompts, rng, num_samples=n_prime, mesh=mesh,
                            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
  comp = sharding.to_host(samples.tokens)  # [B, N', T], whole groups on every host
  algo = algorithms.get(cfg.algorithm)
  with_expert = algo.expert
  if with_expert:
    expert_rng = expert_rng if expert_rng is not None else np.random.default_rng(0)
    expert = expert_completions(tokenizer, task, problems, expert_rng, cfg.max_new_tokens)
    comp = np.concatenate([expert[:, None], comp], axis=1)
  first = 1 if with_expert else 0
  sample_mask = np.ones(comp.shape[:2], np.float32)
  sample_mask[:, :first] = 0.0

  texts = verifier_lib.decode_completions(tokenizer, comp)
  rewards = np.asarray(reward_fn(problems, texts, comp), np.float32)
  scores = rewards if verifier is None else np.asarray(verifier(problems, texts, comp), np.float32)
  if rewards.shape != comp.shape[:2] or scores.shape != comp.shape[:2]:
    raise ValueError(f"reward_fn and verifier must return [B, n]={comp.shape[:2]}, got {rewards.shape}, {scores.shape}")

  hparams = algorithms.hparams(cfg)
  fn = algorithms.weights_fn(cfg.algorithm, **hparams)
  mask = (sample_mask == 0) if algo.expert_only else None
  inputs = {}
  if "answers" in algo.inputs:  # The graded final answers (maj@k's votes).
    inputs["answers"] = task_lib.grade_completions(task, problems, texts)[1]
  weights = np.asarray(fn(rewards, scores, mask, **inputs), np.float32)

  tokens, cmask = verifier_lib.join_prompt_completion(sharding.to_host(prompts), jnp.asarray(comp))
  batch = {"tokens": tokens, "completion_mask": cmask, "weights": jnp.asarray(weights),
           "sample_mask": jnp.asarray(sample_mask)}
  state, metrics = update_fn(state, ref_params, batch)
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}

  pol_r = rewards[:, first:]
  correct = (pol_r > 0.5).astype(np.float32)
  metrics["reward_mean"] = float(pol_r.mean())
  metrics["score_mean"] = float(scores[:, first:].mean())
  metrics["pass@1"] = float(np.mean(bon.pass_at_k(correct, 1)))
  metrics[f"pass@{n_prime}"] = float(np.mean(bon.pass_at_k(correct, n_prime)))
  metrics["weight_abs_max"] = float(np.abs(weights).max())
  if algo.metrics is not None:
    metrics.update(algo.metrics(correct, hparams))
  lengths = sharding.to_host(samples.lengths)
  metrics["mean_length"] = float(lengths.mean())
  dt = time.perf_counter() - t0
  metrics["step_s"] = dt
  metrics["tokens_per_s"] = float(lengths.sum()) / dt
  return state, metrics


# ----------------------------------------------------------------------------
# The driver.


def _optimizer_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_steps, steps=cfg.steps,
      grad_clip_norm=cfg.grad_clip_norm, weight_decay=cfg.weight_decay))


@functools.lru_cache(maxsize=4)
def _optimizer_and_update(model, opt_items, kl_coef, entropy_coef, temperature, mesh=None,
                          model_opt=(("lora_rank", 0), ("opt_state_dtype", "")),
                          microbatch_rows=0, remat_blocks=False):
  """One compiled update per (model, optimizer settings, coefficients, microbatch) per process.

  Relaunching `train_rl` in the same process (resume, sweeps, tests) then
  reuses the compiled program instead of tracing a new closure.
  """
  optimizer = trainer_lib.policy_optimizer(ml_collections.ConfigDict(dict(opt_items)),
                                     ml_collections.ConfigDict(dict(model_opt)))
  update = make_policy_update(model, optimizer, kl_coef=kl_coef, entropy_coef=entropy_coef,
                              temperature=temperature, mesh=mesh, microbatch_rows=microbatch_rows,
                              remat_blocks=remat_blocks)
  return optimizer, update


def step_problems(problems: Sequence[Any], *, seed: int, step: int, num: int) -> tuple[list[Any], np.random.Generator]:
  """The prompts of `step` and the generator of its expert demonstrations.

  A pure function of (seed, step): a resumed run sees the same prompts.
  """
  rng = np.random.default_rng([seed, 0x5EED, step])
  idx = rng.integers(0, len(problems), size=num)
  return [problems[i] for i in idx], rng


def step_key(seed: int, step: int) -> jax.Array:
  """The sampling key of `step` (pure function of (seed, step))."""
  return jax.random.fold_in(jax.random.key(seed), step)


def train_rl(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    init_params: Params | None = None,
    problems: Sequence[Any] | None = None,
    task: Any = None,
    reward_fn: verifier_lib.Verifier | None = None,
    verifier: verifier_lib.Verifier | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[trainer_lib.TrainState, list[dict[str, float]]]:
  """Runs ``config.rl.steps`` steps of `rl_step`, resuming from `workdir`.

  Reuses trainer_lib's TrainState, optimizer, Orbax checkpoint manager (every
  ``rl.checkpoint_every`` steps, in ``workdir/checkpoints``) and metric
  writers (``metrics.jsonl`` + TensorBoard). Prompts and sampling keys are
  pure functions of (seed, step) (``rl.seed``, default ``config.seed``; set it
  to repeat a stage from one SFT policy with other seeds), so a resumed run equals an
  uninterrupted one.

  Args:
    config: the experiment config (task, tokenizer, model, seed) with an
      ``rl`` section (`defaults.rl_config`).
    workdir: run directory (checked with `config_lib.prepare_workdir`).
    init_params: the starting policy (e.g. the SFT checkpoint's params); it
      is also the frozen reference for KL. None: `experiment.initial_params`.
      Pass the same params when resuming.
    problems: training problems (default: the task's train split).
    task: the `tasks.base.Task` (default: `experiment.make_task(config)`).
    reward_fn: environment reward (default: the task's grader).
    verifier: BoN selector (default: from ``config.rl.verifier``).
    mesh: the run's mesh (default, and None: `sharding.mesh_for_run(config)`).

  Returns:
    The final state and the metrics logged by this launch.
  """
  rl = config.rl
  validation.validate_rl_config(rl)
  # The starting point (the SFT run) and the rl settings are part of what a checkpoint is.
  tok = experiment.load_tokenizer(config)  # Before the workdir: a bad tokenizer leaves nothing behind.
  config_lib.prepare_workdir(config, workdir, config_lib.IDENTITY_FIELDS + ("train", "rl"))
  task = task or experiment.make_task(config)
  if problems is None:
    problems, _ = experiment.make_task_splits(config.task, os.path.join(workdir, experiment.TFDS_DIR))
  model = experiment.make_policy(config, tok)
  mesh = mesh if mesh is not None else sharding.mesh_for_run(config)  # None on one device.
  ref_params = init_params if init_params is not None else experiment.initial_params(config, model, mesh)
  # The state is donated at every update: give it its own buffers.
  params = jax.tree.map(jnp.array, ref_params)
  opt_items = tuple(sorted(_optimizer_config(rl).items()))
  optimizer, update_fn = _optimizer_and_update(
      model, opt_items, float(rl.kl_coef), float(rl.entropy_coef), float(rl.temperature), mesh,
      (("lora_rank", int(config.model.lora_rank)),
       ("opt_state_dtype", str(config.model.opt_state_dtype))),
      int(rl.microbatch_rows), bool(rl.remat_blocks))
  state = trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))
  if mesh is None:
    # Committed like restored arrays, so a resumed run reuses the compiled programs.
    state = jax.device_put(state, jax.devices()[0])
  else:
    # Sharded before the restore: Orbax restores into these shardings (any mesh shape).
    state = sharding.shard(state, mesh, sharding.state_specs(state, mesh))
    if ref_params is not None:
      ref_params = sharding.shard(ref_params, mesh, sharding.param_specs(ref_params, mesh))
  mngr = trainer_lib.checkpoint_manager(workdir, rl)
  state = trainer_lib.restore_or_init(mngr, state)

  if verifier is None and rl.verifier == "noisy":
    verifier = verifier_lib.noisy_grader_verifier(task, target_auc=float(rl.verifier_auc),
                                                  seed=int(rl.verifier_noise_seed))
  if verifier is None and rl.verifier == "learned":
    if not rl.verifier_ckpt:
      raise config_lib.UserError(
          "config.rl.verifier='learned' needs config.rl.verifier_ckpt (a verifier.save_verifier"
          " directory) or config.verifier.steps > 0 (train one in the pipeline)")
    try:
      vparams = verifier_lib.load_verifier(rl.verifier_ckpt, models.base_model(model), mesh)
    except FileNotFoundError as e:
      raise config_lib.UserError(str(e)) from None
    verifier = verifier_lib.learned_verifier(models.base_model(model), vparams, tokenizer=tok, task=task,
                                             pooling=config.verifier.pooling, mesh=mesh)
  prompt_len = int(input_pipeline.encode_prompts(tok, [task.prompt_text(p) for p in problems]).shape[1])
  seed = config.seed if rl.seed is None else int(rl.seed)

  def step_fn(state, step):
    chosen, expert_rng = step_problems(problems, seed=seed, step=step, num=rl.prompts_per_step)
    return rl_step(
        state, ref_params, chosen, model=model, update_fn=update_fn, tokenizer=tok, task=task, cfg=rl,
        rng=step_key(seed, step), reward_fn=reward_fn, verifier=verifier,
        prompt_len=prompt_len, expert_rng=expert_rng, mesh=mesh)

  def log_fn(metrics, step, steps_per_s):
    del steps_per_s  # The step's own time is in the metrics (step_s).
    logging.info("rl step %d: loss %.4f reward %.3f pass@1 %.3f kl %.4f", step, metrics["loss"],
                 metrics["reward_mean"], metrics["pass@1"], metrics.get("kl", 0.0))
    return dict(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics.get('kl', 0.0):.3f}",
                step_s=f"{metrics['step_s']:.2f}")

  state, history = trainer_lib.train_loop(state, step_fn=step_fn, steps=rl.steps, workdir=workdir, mngr=mngr,
                                          log_every=rl.log_every, desc=rl.algorithm, log_fn=log_fn)
  return state, history
