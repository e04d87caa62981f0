"""Tests for bon_jax.sampling: checked against teacher forcing and greedy
decoding by full forward passes, on a 2-layer model with a 4-token sliding
window so prompts and completions run past the window."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gemma import gm

from bon_jax import gemma_internals
from bon_jax import models
from bon_jax import sampling

VOCAB = 48
N = 4
T = 10
# Lengths 3, 7 and 12 (> the window of 4) in one right-padded batch.
PROMPTS = np.zeros((3, 12), np.int32)
for _row, _len in enumerate((3, 7, 12)):
  PROMPTS[_row, 0] = models.BOS_ID
  PROMPTS[_row, 1:_len] = 3 + (np.arange(_len - 1) * (7 + _row)) % (VOCAB - 3)


@functools.lru_cache(maxsize=None)
def _model_and_params():
  config = gemma_internals.TransformerConfig(
      num_embed=VOCAB,
      embed_dim=32,
      hidden_dim=64,
      num_heads=4,
      head_dim=8,
      num_kv_heads=2,
      final_logit_softcap=30.0,
      attention_types=(
          gemma_internals.LOCAL_SLIDING,
          gemma_internals.GLOBAL,
      ),
      use_post_attn_norm=True,
      use_post_ffw_norm=True,
      attn_logits_soft_cap=50.0,
      sliding_window_size=4,
  )
  model = gm.nn.Transformer(config=config, dtype=jnp.float32)
  return model, models.init_params(model, jax.random.key(0))


def _sample(prompts=PROMPTS, rng=1, **kw):
  model, params = _model_and_params()
  kw = {"num_samples": N, "max_new_tokens": T, **kw}
  return sampling.sample(
      model, params, jnp.asarray(prompts), jax.random.key(rng), **kw
  )


def _full_sequences(prompts, tokens):
  """int32[B, N, P + T]: prompt (unpadded) + completion, right-padded."""
  b, n, t = tokens.shape
  seqs = np.zeros((b, n, prompts.shape[1] + t), np.int32)
  for i in range(b):
    p = int((prompts[i] != models.PAD_ID).sum())
    seqs[i, :, :p] = prompts[i, :p]
    seqs[i, :, p:p + t] = tokens[i]
  return seqs


def _teacher_forced(prompts, tokens, lengths, temperature):
  """float32[B, N, T] log-probs of the completions by one forward pass."""
  model, params = _model_and_params()
  seqs = _full_sequences(prompts, tokens)
  b, n, _ = seqs.shape
  logp = np.asarray(
      models.token_logprobs(
          model, params, jnp.asarray(seqs.reshape(b * n, -1)),
          temperature=temperature,
      )
  ).reshape(b, n, -1)
  out = np.zeros(tokens.shape, np.float32)
  for i in range(b):
    p = int((prompts[i] != models.PAD_ID).sum())
    out[i] = logp[i, :, p - 1:p - 1 + tokens.shape[-1]]
  return np.where(np.arange(tokens.shape[-1]) < lengths[..., None], out, 0.0)


def _next_token_logits(prompts, tokens):
  """float32[B, N, T, V]: logits that produced each completion token."""
  model, params = _model_and_params()
  seqs = _full_sequences(prompts, tokens)
  b, n, _ = seqs.shape
  logits = np.asarray(
      model.apply({"params": params}, jnp.asarray(seqs.reshape(b * n, -1)))
      .logits
  ).reshape(b, n, seqs.shape[-1], -1)
  out = []
  for i in range(b):
    p = int((prompts[i] != models.PAD_ID).sum())
    out.append(logits[i, :, p - 1:p - 1 + tokens.shape[-1]])
  return np.stack(out)


def _greedy_reference(prompts, steps):
  """int32[B, steps]: argmax decoding by full forward passes (no cache)."""
  model, params = _model_and_params()
  seqs = _full_sequences(prompts, np.zeros((len(prompts), 1, steps), np.int32))
  seqs = seqs[:, 0]
  forward = jax.jit(lambda s: model.apply({"params": params}, s).logits)
  lens = (prompts != models.PAD_ID).sum(-1)
  out = np.zeros((len(prompts), steps), np.int32)
  for t in range(steps):
    logits = np.asarray(forward(jnp.asarray(seqs)))
    for i, p in enumerate(lens):
      row = logits[i, p + t - 1].copy()
      row[models.PAD_ID] = -np.inf  # the sampler never emits PAD
      out[i, t] = seqs[i, p + t] = row.argmax()
  return out


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_teacher_forcing_for_mixed_prompt_lengths(temperature):
  out = _sample(temperature=temperature, eos_id=None)
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  assert (lengths == T).all()
  np.testing.assert_allclose(
      out.logprobs,
      _teacher_forced(PROMPTS, tokens, lengths, temperature),
      atol=1e-4, rtol=0,
  )
  np.testing.assert_allclose(
      out.logprobs_t1, _teacher_forced(PROMPTS, tokens, lengths, 1.0),
      atol=1e-4, rtol=0,
  )


def test_stopping_at_eos_truncates_the_unstopped_samples():
  full = _sample(eos_id=None)
  # An EOS id that occurs mid-completion in the free-running samples.
  eos = int(full.tokens[0, 0, 2])
  out = _sample(eos_id=eos)
  full_tokens = np.asarray(full.tokens)
  hit = full_tokens == eos
  want_len = np.where(hit.any(-1), hit.argmax(-1) + 1, T)
  assert (want_len < T).sum() >= 2
  np.testing.assert_array_equal(out.lengths, want_len)
  np.testing.assert_array_equal(out.reached_eos, hit.any(-1))
  alive = np.arange(T) < want_len[..., None]
  np.testing.assert_array_equal(out.tokens, np.where(alive, full_tokens, 0))
  np.testing.assert_allclose(
      out.logprobs, np.where(alive, full.logprobs, 0.0), atol=1e-5, rtol=0
  )
  assert (np.asarray(out.logprobs_t1)[~alive] == 0).all()
  np.testing.assert_allclose(
      out.logprobs_t1,
      _teacher_forced(PROMPTS, np.asarray(out.tokens), want_len, 1.0),
      atol=1e-4, rtol=0,
  )


def test_temperature_zero_equals_greedy_decoding():
  out = _sample(temperature=0.0, eos_id=None)
  greedy = _greedy_reference(PROMPTS, T)
  np.testing.assert_array_equal(
      out.tokens, np.broadcast_to(greedy[:, None], (3, N, T))
  )
  assert (np.asarray(out.logprobs) == 0).all()
  np.testing.assert_allclose(
      out.logprobs_t1,
      _teacher_forced(PROMPTS, np.asarray(out.tokens), out.lengths, 1.0),
      atol=1e-4, rtol=0,
  )


def test_top_k_one_equals_greedy_decoding():
  out = _sample(temperature=1.0, top_k=1, eos_id=None)
  greedy = _greedy_reference(PROMPTS, T)
  np.testing.assert_array_equal(
      out.tokens, np.broadcast_to(greedy[:, None], (3, N, T))
  )


def test_same_key_same_samples_and_different_keys_differ():
  a, b, c = _sample(rng=5), _sample(rng=5), _sample(rng=6)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert (np.asarray(a.tokens) != np.asarray(c.tokens)).any()


def test_samples_of_one_prompt_differ():
  tokens = np.asarray(_sample(eos_id=None).tokens)
  for i in range(tokens.shape[0]):
    assert len({tuple(s) for s in tokens[i]}) == N


def test_padding_and_batch_mates_do_not_change_a_prompts_samples():
  alone = PROMPTS[:1, :3]  # the length-3 prompt, unpadded
  a = _sample(prompts=alone, eos_id=None)
  b = _sample(prompts=PROMPTS, eos_id=None)  # padded to 12, first row
  np.testing.assert_array_equal(a.tokens[0], b.tokens[0])
  np.testing.assert_allclose(a.logprobs[0], b.logprobs[0], atol=1e-5)
  np.testing.assert_allclose(a.logprobs_t1[0], b.logprobs_t1[0], atol=1e-5)


def test_top_k_samples_only_the_k_most_likely_tokens():
  temperature, k = 1.5, 3
  out = _sample(temperature=temperature, top_k=k, eos_id=None)
  tokens = np.asarray(out.tokens)
  logits = _next_token_logits(PROMPTS, tokens)
  logits[..., models.PAD_ID] = -np.inf
  chosen = np.take_along_axis(logits, tokens[..., None], -1)
  rank = (logits > chosen).sum(-1)
  assert rank.max() < k
  assert rank.max() > 0  # not just greedy


def _mass_before(tokens, temperature):
  """Probability (PAD excluded) of the tokens more likely than each sample."""
  logits = _next_token_logits(PROMPTS, tokens) / temperature
  logits[..., models.PAD_ID] = -np.inf
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  chosen = np.take_along_axis(probs, tokens[..., None], -1)
  return np.where(probs > chosen, probs, 0.0).sum(-1)


def test_top_p_samples_only_inside_the_nucleus():
  temperature, top_p = 1.0, 0.6
  out = _sample(temperature=temperature, top_p=top_p, eos_id=None)
  # A token is in the nucleus iff the mass strictly before it is < top_p.
  mass_before = _mass_before(np.asarray(out.tokens), temperature)
  assert mass_before.max() < top_p + 1e-5
  assert (mass_before > 0).any()  # not just greedy
  # Plain sampling does leave the nucleus, so the check above can fail.
  plain = _sample(temperature=temperature, eos_id=None)
  assert (_mass_before(np.asarray(plain.tokens), temperature) >= top_p).any()


def test_new_params_prompts_keys_and_temperature_reuse_the_compiled_sampler():
  model, params = _model_and_params()
  kw = dict(num_samples=N, max_new_tokens=T, eos_id=None)
  sampling.sample(model, params, PROMPTS, jax.random.key(0), top_p=0.9, **kw)
  size = sampling._sample._cache_size()  # pylint: disable=protected-access
  params2 = jax.tree.map(lambda x: x * 1.01, params)
  sampling.sample(
      model, params2, PROMPTS[::-1].copy(), jax.random.key(3),
      temperature=0.5, top_p=0.5, **kw,
  )
  assert sampling._sample._cache_size() == size  # pylint: disable=protected-access


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"num_samples": 0}, "num_samples"),
        ({"prompts": PROMPTS[0]}, "prompts"),
        ({"prompts": np.zeros((2, 4), np.int32)}, "non-PAD"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    _sample(**kwargs)


@pytest.mark.parametrize(
    "variant",
    [
        {"transpose_gating_einsum": True},  # Gemma 2 9B's FFN layout.
        {"num_kv_heads": 4},  # Multi-head attention: gemma's fused qkv_einsum.
        {"use_qk_norm": True},  # Gemma 3's query/key norms.
    ],
    ids=["transposed_gating", "qkv_einsum", "qk_norm"],
)
def test_logprobs_match_teacher_forcing_for_architecture_variants(variant):
  base = _model_and_params()[0].config
  config = dataclasses.replace(base, **variant)
  model = gm.nn.Transformer(config=config, dtype=jnp.float32)
  params = models.init_params(model, jax.random.key(3))
  out = sampling.sample(model, params, jnp.asarray(PROMPTS), jax.random.key(4),
                        num_samples=2, max_new_tokens=6, eos_id=None)
  tokens = np.asarray(out.tokens)
  seqs = _full_sequences(PROMPTS, tokens)
  b, n, _ = seqs.shape
  logp = np.asarray(models.token_logprobs(model, params, jnp.asarray(seqs.reshape(b * n, -1))))
  logp = logp.reshape(b, n, -1)
  for i in range(b):
    p = int((PROMPTS[i] != models.PAD_ID).sum())
    np.testing.assert_allclose(out.logprobs_t1[i], logp[i, :, p - 1:p - 1 + 6], atol=1e-4, rtol=0)
