"""Best-of-N sampling: N completions per prompt from a Gemma policy.

`sample` is one jitted, pure function. Each prompt is prefilled once; its KV
cache is then broadcast to its N samples, which are decoded together with the
`gemma` library's `Transformer` and its left-aligned KV cache. Prompts of
different lengths share one batch (right-padded with `PAD_ID`, as tokenizers
produce); a row's padding slots are masked out of attention and its generated
tokens continue at the row's own positions, so padding does not change the
samples.

Example::

  model = models.make_model(preset="tiny", vocab_size=512)
  params = models.init_params(model, jax.random.key(0))
  prompts = jnp.array([[2, 17, 5, 0], [2, 9, 33, 41]])  # right-padded
  out = sampling.sample(model, params, prompts, jax.random.key(1),
                        num_samples=8, max_new_tokens=64, temperature=0.7)
  out.tokens    # int32[2, 8, 64], PAD_ID after EOS
  out.lengths   # int32[2, 8]

Sampling order: logits / temperature, then top-k, then top-p (the nucleus of
the top-k-renormalised distribution). `temperature == 0` is greedy decoding.
The sampler never emits `PAD_ID` (its logit is masked before sampling), since a
0 inside a completion would read as padding to everything downstream.

Log-probabilities are those of the policy the training code differentiates,
i.e. exactly what teacher forcing (`models.token_logprobs`) gives:
`logprobs` are under softmax(logits / temperature) over the whole vocabulary
(no top-k / top-p truncation, no PAD masking; 0 when `temperature == 0`, the
greedy policy being deterministic) and `logprobs_t1` under softmax(logits).
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
from gemma import gm

from bon_jax import models

Params = Any


@flax.struct.dataclass
class Samples:
  """N completions per prompt.

  Attributes:
    tokens: int32[B, N, T] generated tokens only (not the prompt); `PAD_ID`
      after the EOS token (which is kept) and after an early stop.
    logprobs: float32[B, N, T] log pi_T(token | prefix) under
      softmax(logits / temperature) over the full vocabulary; 0 after EOS and
      everywhere when temperature == 0.
    logprobs_t1: float32[B, N, T] log pi(token | prefix) at temperature 1;
      0 after EOS.
    lengths: int32[B, N] generated tokens including the EOS token (== T when
      the sample never stopped).
    reached_eos: bool[B, N] whether the sample ended with EOS.
  """

  tokens: jax.Array
  logprobs: jax.Array
  logprobs_t1: jax.Array
  lengths: jax.Array
  reached_eos: jax.Array


def sample(
    model: gm.nn.Transformer,
    params: Params,
    prompts: jax.Array,
    rng: jax.Array,
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float | jax.Array = 1.0,
    top_k: int | None = None,
    top_p: float | jax.Array | None = None,
    eos_id: int | None = models.EOS_ID,
) -> Samples:
  """Draws `num_samples` completions for every prompt.

  Compiled once per (model, shapes, num_samples, max_new_tokens, top_k,
  whether top_p is set, eos_id); params, prompts, rng, temperature and top_p
  are traced, so new values reuse the compiled program.

  Args:
    model: the gemma `Transformer` (static).
    params: its parameters (the cache takes their dtype).
    prompts: int32[B, P] right-padded with `PAD_ID`; every row holds at least
      one token (usually BOS first).
    rng: a PRNG key. Sample n of prompt b draws from `fold_in(rng, b)` split
      `num_samples` ways, so a prompt's samples do not depend on the other
      prompts in the batch or on its padding.
    num_samples: N, completions per prompt.
    max_new_tokens: T, the length of the output buffers.
    temperature: >= 0; 0 is greedy decoding.
    top_k: keep the k most likely tokens (None: all).
    top_p: keep the smallest set of most likely tokens whose probability
      reaches top_p, in (0, 1] (None: all).
    eos_id: the token that ends a sample (None: never stop early).

  Returns:
    `Samples` with leading dimensions [B, N].
  """
  prompts = jnp.asarray(prompts)
  if prompts.ndim != 2 or not jnp.issubdtype(prompts.dtype, jnp.integer):
    raise ValueError(
        f"prompts must be an int array [batch, prompt_len], got {prompts.dtype}"
        f"{list(prompts.shape)}"
    )
  if num_samples < 1 or max_new_tokens < 1:
    raise ValueError(
        f"num_samples and max_new_tokens must be >= 1, got {num_samples} and"
        f" {max_new_tokens}"
    )
  vocab = model.config.num_embed
  if top_k is not None and not 1 <= top_k <= vocab:
    raise ValueError(f"top_k must be in [1, {vocab}] or None, got {top_k}")
  if isinstance(temperature, (int, float)) and temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if isinstance(top_p, (int, float)) and not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
  if not isinstance(prompts, jax.core.Tracer) and bool(
      jnp.any(jnp.all(prompts == models.PAD_ID, axis=-1))
  ):
    raise ValueError("every prompt needs at least one non-PAD token (e.g. BOS)")
  return _sample(
      model,
      params,
      prompts.astype(jnp.int32),
      rng,
      jnp.asarray(temperature, jnp.float32),
      jnp.asarray(1.0 if top_p is None else top_p, jnp.float32),
      num_samples=num_samples,
      max_new_tokens=max_new_tokens,
      top_k=top_k,
      use_top_p=top_p is not None,
      eos_id=eos_id,
  )


@functools.partial(
    jax.jit,
    static_argnames=(
        "model", "num_samples", "max_new_tokens", "top_k", "use_top_p",
        "eos_id",
    ),
)
def _sample(
    model: gm.nn.Transformer,
    params: Params,
    prompts: jax.Array,
    rng: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    *,
    num_samples: int,
    max_new_tokens: int,
    top_k: int | None,
    use_top_p: bool,
    eos_id: int | None,
) -> Samples:
  """`sample` after argument checks (see there)."""
  b, p = prompts.shape
  n, t_max = num_samples, max_new_tokens
  rows = b * n
  # Slots [0, P) hold the padded prompt, slot P + t the input of step t + 1.
  cache_len = p + t_max - 1

  valid = prompts != models.PAD_ID
  prompt_len = jnp.sum(valid, axis=-1)  # [B]
  dtype = jax.tree.leaves(params)[0].dtype
  cache = model.config.init_cache(
      batch_size=b, dtype=dtype, cache_length=cache_len
  )
  causal = jnp.tril(jnp.ones((p, p), jnp.bool_))
  mask = jnp.pad(
      causal[None] & valid[:, None, :], ((0, 0), (0, 0), (0, t_max - 1))
  )  # [B, P, cache_len]
  # Prefill once per prompt; the logits of the last real prompt token give
  # the first generated token.
  out = model.apply(
      {"params": params},
      prompts,
      cache=cache,
      positions=jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0),
      attention_mask=mask,
      return_last_only=True,
  )

  # Share the prompt among its samples: rows are (prompt, sample) pairs.
  cache = jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), out.cache)
  logits = jnp.repeat(out.logits, n, axis=0)
  row_len = jnp.repeat(prompt_len, n)  # [R]
  keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(rng, i), n))(
      jnp.arange(b)
  ).reshape(rows)

  choose = functools.partial(
      _choose, temperature=temperature, top_p=top_p, top_k=top_k,
      use_top_p=use_top_p,
  )
  buf = lambda dt: jnp.zeros((rows, t_max), dt)

  def emit(t, logits, done, tokens, lp, lp1):
    """Samples token t of every row and writes it to the buffers."""
    step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, t)
    tok, tok_lp, tok_lp1 = choose(logits, step_keys)
    tok = jnp.where(done, models.PAD_ID, tok)
    tokens = tokens.at[:, t].set(tok)
    lp = lp.at[:, t].set(jnp.where(done, 0.0, tok_lp))
    lp1 = lp1.at[:, t].set(jnp.where(done, 0.0, tok_lp1))
    if eos_id is not None:
      done = done | (tok == eos_id)
    return tok, done, tokens, lp, lp1

  slots = jnp.arange(cache_len)
  prompt_slots = slots[None, :] < row_len[:, None]  # [R, cache_len]

  def cond(state):
    t, _, done, *_ = state
    return (t < t_max) & ~jnp.all(done)

  def body(state):
    t, tok, done, tokens, lp, lp1, cache = state
    # Input token t - 1 sits in slot P + t - 1 at position len + t - 1.
    slot = p + t - 1
    step_mask = prompt_slots | ((slots >= p) & (slots <= slot))[None, :]
    out = model.apply(
        {"params": params},
        tok[:, None],
        cache=cache,
        positions=(row_len + t - 1)[:, None],
        attention_mask=step_mask[:, None, :],
        return_last_only=True,
    )
    tok, done, tokens, lp, lp1 = emit(
        t, out.logits, done, tokens, lp, lp1
    )
    return t + 1, tok, done, tokens, lp, lp1, out.cache

  done = jnp.zeros((rows,), jnp.bool_)
  tok, done, tokens, lp, lp1 = emit(
      0, logits, done, buf(jnp.int32), buf(jnp.float32), buf(jnp.float32)
  )
  state = (jnp.asarray(1), tok, done, tokens, lp, lp1, cache)
  _, _, done, tokens, lp, lp1, _ = jax.lax.while_loop(cond, body, state)

  emitted = (tokens != models.PAD_ID).sum(axis=-1).astype(jnp.int32)
  shape = lambda x: x.reshape((b, n) + x.shape[1:])
  return Samples(
      tokens=shape(tokens),
      logprobs=shape(lp),
      logprobs_t1=shape(lp1),
      lengths=shape(emitted),
      reached_eos=shape(done if eos_id is not None else jnp.zeros_like(done)),
  )


def _choose(
    logits: jax.Array,
    keys: jax.Array,
    *,
    temperature: jax.Array,
    top_p: jax.Array,
    top_k: int | None,
    use_top_p: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Draws one token per row.

  Args:
    logits: float[R, V] next-token logits.
    keys: [R] PRNG keys, one per row.
    temperature: scalar >= 0 (0: argmax).
    top_p: scalar nucleus mass (used when `use_top_p`).
    top_k: static number of kept tokens, or None.
    use_top_p: static switch for top-p.

  Returns:
    int32[R] tokens, float32[R] their log-prob at `temperature` (0 if
    greedy), float32[R] their log-prob at temperature 1.
  """
  logits = logits.astype(jnp.float32)
  greedy = temperature <= 0
  scaled = logits / jnp.where(greedy, 1.0, temperature)
  allowed = scaled.at[:, models.PAD_ID].set(-jnp.inf)
  if top_k is not None:
    kth = jax.lax.top_k(allowed, top_k)[0][:, -1:]
    allowed = jnp.where(allowed < kth, -jnp.inf, allowed)
  if use_top_p:
    desc = -jnp.sort(-allowed, axis=-1)
    probs = jax.nn.softmax(desc, axis=-1)
    # Keep a token while the mass strictly before it is below top_p: the
    # smallest prefix reaching top_p, never empty.
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    cutoff = jnp.take_along_axis(
        desc, jnp.sum(keep, axis=-1, keepdims=True) - 1, axis=-1
    )
    allowed = jnp.where(allowed < cutoff, -jnp.inf, allowed)
  sampled = jax.vmap(jax.random.categorical)(keys, allowed)
  argmax = jnp.argmax(logits.at[:, models.PAD_ID].set(-jnp.inf), axis=-1)
  tok = jnp.where(greedy, argmax, sampled).astype(jnp.int32)

  pick = lambda lp: jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0]
  lp_t = jnp.where(greedy, 0.0, pick(jax.nn.log_softmax(scaled, axis=-1)))
  lp_1 = pick(jax.nn.log_softmax(logits, axis=-1))
  return tok, lp_t, lp_1
