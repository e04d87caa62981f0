"""LoRA through gemma's gm.nn.LoRA, adapter-only updates, bf16 params with f32 Adam state."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bon_jax import models
from bon_jax import optim
from bon_jax import rl
from bon_jax import sampling
from bon_jax import train
from bon_jax import trainer_lib

VOCAB = 64
RANK = 4


def _opt_cfg(lr, clip=1.0):
  return ml_collections.ConfigDict(dict(learning_rate=lr, warmup_steps=0, steps=100,
                                        weight_decay=0.0, grad_clip_norm=clip))


@pytest.fixture(scope="module")
def lora():
  model = models.make_model(preset="micro", vocab_size=VOCAB, lora_rank=RANK)
  base = models.base_model(model)
  base_params = jax.jit(models.init_params, static_argnums=0)(base, jax.random.key(0))
  params = models.add_lora(model, base_params, jax.random.key(1))
  return model, base, base_params, params


def _logits(model, params, tokens):
  return jax.jit(lambda p, t: model.apply({"params": p}, t).logits)(params, tokens)


@jax.jit
def _perturb_adapters(params, scale=0.3):
  """Non-zero B (gemma initialises it to 0), so the adapters change the output."""
  mask = models.lora_mask(params)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  out = [x + scale * jax.random.normal(k, x.shape, x.dtype) if m else x
         for x, m, k in zip(leaves, jax.tree.leaves(mask), keys)]
  return jax.tree.unflatten(treedef, out)


def _tokens(b=3, length=10, seed=3):
  return jax.random.randint(jax.random.key(seed), (b, length), 3, VOCAB)


def test_add_lora_starts_at_the_base_model(lora):
  model, base, base_params, params = lora
  # A plain checkpoint gets adapters; LoRA params and plain models are left alone.
  again = models.ensure_adapters(model, base_params, jax.random.key(1))
  assert jax.tree.structure(again) == jax.tree.structure(params)
  assert models.ensure_adapters(model, params, jax.random.key(2)) is params
  assert models.ensure_adapters(base, base_params, jax.random.key(2)) is base_params
  mask = jax.tree.leaves(models.lora_mask(params))
  assert any(mask) and not all(mask)
  np.testing.assert_array_equal(_logits(model, params, _tokens()),
                                _logits(base, base_params, _tokens()))


def test_merge_lora_computes_what_the_lora_model_computes(lora):
  model, base, base_params, params = lora
  params = _perturb_adapters(params)
  merged = jax.jit(models.merge_lora, static_argnums=0)(model, params)
  assert jax.tree.structure(merged) == jax.tree.structure(base_params)
  lora_logits = _logits(model, params, _tokens())
  np.testing.assert_allclose(_logits(base, merged, _tokens()), lora_logits, atol=2e-5)
  # The adapters matter: without them the logits differ.
  assert np.abs(_logits(base, base_params, _tokens()) - lora_logits).max() > 1e-2


def test_sampler_runs_a_lora_model_as_its_merged_weights(lora):
  model, base, _, params = lora
  params = _perturb_adapters(params)
  prompts = _tokens(b=2, length=4)
  kw = dict(num_samples=3, max_new_tokens=6, temperature=1.0)
  a = sampling.sample(model, params, prompts, jax.random.key(5), **kw)
  b = sampling.sample(base, jax.jit(models.merge_lora, static_argnums=0)(model, params), prompts, jax.random.key(5), **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_lora_policy_update_trains_only_the_adapters_and_lowers_the_loss(lora):
  model, _, _, params = lora
  opt = optim.finetune(trainer_lib.make_optimizer(_opt_cfg(3e-2)), lora=True)
  update = rl.make_policy_update(model, opt)
  # A fixed batch of 2 prompts x 2 samples with positive weights: the loss is
  # a weighted NLL of the completions, which training must lower.
  tokens = _tokens(b=4, length=12).reshape(2, 2, 12)
  cmask = jnp.zeros((2, 2, 11)).at[:, :, 3:].set(1.0)
  batch = {"tokens": tokens, "completion_mask": cmask, "weights": jnp.ones((2, 2)),
           "sample_mask": jnp.ones((2, 2))}
  start = jax.tree.map(np.asarray, params)
  state = trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.array, params),
                           opt_state=opt.init(params))
  # Adam moments exist for the adapters only.
  adapter_shapes = sorted(x.shape for x, m in zip(jax.tree.leaves(params),
                                                  jax.tree.leaves(models.lora_mask(params))) if m)
  moment_shapes = sorted(x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim >= 2)
  assert moment_shapes == sorted(adapter_shapes * 2)
  losses = []
  for _ in range(8):
    state, metrics = update(state, None, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] - 0.1, losses
  mask = jax.tree.leaves(models.lora_mask(params))
  for before, after, is_adapter in zip(jax.tree.leaves(start), jax.tree.leaves(state.params), mask):
    if is_adapter:
      continue
    np.testing.assert_array_equal(before, np.asarray(after))
  changed = [not np.array_equal(b, np.asarray(a))
             for b, a, m in zip(jax.tree.leaves(start), jax.tree.leaves(state.params), mask) if m]
  assert all(changed)


def test_lora_update_never_computes_the_frozen_weights_gradient():
  """A LoRA update holds no gradient (or float32 gradient sum) of the frozen embedding table.

  With a large vocabulary the table dominates: its float32 gradient is a scatter into a
  [V, D] array (and a second one to sum microbatches). The update must differentiate the
  adapters only (trainer_lib.freeze), whatever the optimizer later does with the rest.
  """
  vocab = 32768
  model = models.make_model(preset="micro", vocab_size=vocab, lora_rank=RANK)
  params = models.add_lora(model, jax.jit(models.init_params, static_argnums=0)(
      models.base_model(model), jax.random.key(0)), jax.random.key(1))
  opt = optim.finetune(trainer_lib.make_optimizer(_opt_cfg(1e-3)), lora=True)
  state = jax.eval_shape(lambda p: trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                                          opt_state=opt.init(p)), params)
  batch = {"tokens": jax.ShapeDtypeStruct((2, 2, 12), jnp.int32),
           "completion_mask": jax.ShapeDtypeStruct((2, 2, 11), jnp.float32),
           "weights": jax.ShapeDtypeStruct((2, 2), jnp.float32),
           "sample_mask": jax.ShapeDtypeStruct((2, 2), jnp.float32)}
  table_f32 = vocab * models.PRESETS["micro"].embed_dim * 4
  for micro in (0, 2):  # One pass, and gradient accumulation over microbatches.
    update = rl.make_policy_update(model, opt, microbatch_rows=micro, vocab_chunk=4096)
    temp = update.lower(state, None, batch).compile().memory_analysis().temp_size_in_bytes
    assert temp < table_f32, (micro, temp, table_f32)
  # The SFT step likewise (one short row: its full-vocabulary logits stay small).
  sft_batch = {"tokens": jax.ShapeDtypeStruct((1, 4), jnp.int32),
               "loss_mask": jax.ShapeDtypeStruct((1, 3), jnp.float32)}
  temp = train.make_sft_step(model, opt).lower(state, sft_batch).compile().memory_analysis().temp_size_in_bytes
  assert temp < table_f32, ("sft", temp, table_f32)


def test_bfloat16_params_keep_float32_adam_state():
  model = models.make_model(preset="micro", vocab_size=VOCAB, dtype="bfloat16")
  params = jax.jit(models.init_params, static_argnums=0)(model, jax.random.key(0))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  opt = optim.finetune(trainer_lib.make_optimizer(_opt_cfg(1e-2, clip=1e9)), state_dtype="float32")
  state = trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=jax.jit(opt.init)(params))
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim >= 1]
  assert len(moments) == 2 * len(jax.tree.leaves(params))  # Adam's mu and nu.
  assert {x.dtype for x in moments} == {jnp.dtype(jnp.float32)}
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, p.dtype), params)  # bf16, like params
  updates, new_state = jax.jit(opt.update)(grads, state.opt_state, params)
  assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(new_state) if x.ndim >= 1} == {jnp.dtype(jnp.float32)}
  # mu after one step is (1 - b1) * g = 0.05 exactly, in float32.
  mus = [x for x in jax.tree.leaves(new_state) if x.ndim >= 1][: len(jax.tree.leaves(params))]
  np.testing.assert_allclose(np.asarray(mus[0]), 0.05, rtol=1e-6)
