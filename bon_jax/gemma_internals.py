"""Every private piece of the `gemma` library that bon_jax relies on, in one place.

gemma's public API (`gm.nn.Transformer`, `gm.nn.LoRA`, `gm.ckpts`, `peft`) does
not expose what the shared-prompt sampler (`sampling.py`) and the LoRA merge
(`models.py`) need: the Transformer config class, attention types, RoPE, the
attention mask constant, LoRA's einsum rewrite, and the layout of a bound
`Transformer` (its blocks, norms, parameter names, KV cache). They live in
private modules that may change in any release, so bon_jax imports them only
here, and `check()` verifies the whole surface on a micro model: a gemma
release that moves or renames any of it fails here, loudly, with this file's
name, instead of deep inside a jitted sampler.

Supported lines (`SUPPORTED_LINES`; `tests/test_gemma_internals.py` runs on
each through CI's Pythons): gemma 3.3 (Python 3.10/3.11, jax 0.7) and gemma
4.x (Python 3.12+, current jax).

Example::

  from bon_jax import gemma_internals as gi

  config = gi.TransformerConfig(..., attention_types=gi.make_attention_layers_types(
      (gi.AttentionType.LOCAL_SLIDING, gi.AttentionType.GLOBAL), num_layers=2))
  gi.check()  # raises GemmaInternalsError naming what changed
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
from typing import Any

from gemma import gm
import jax
import jax.numpy as jnp

GEMMA_VERSION = importlib.metadata.version("gemma")
# major.minor prefixes of the gemma releases this file was written against.
SUPPORTED_LINES = ("3.3.", "4.")


class GemmaInternalsError(RuntimeError):
  """gemma's private layout is not the one bon_jax was written against."""


def _changed(what: str) -> GemmaInternalsError:
  return GemmaInternalsError(
      f"gemma {GEMMA_VERSION} changed a private piece bon_jax relies on: {what}."
      f" bon_jax supports the gemma lines {SUPPORTED_LINES}; adapt"
      " bon_jax/gemma_internals.py (the only module that touches gemma's internals)"
      " or install the gemma pinned in constraints.txt"
  )


try:
  # pylint: disable=g-import-not-at-top
  from gemma.gm.math import _positional_embeddings
  from gemma.gm.nn import _config
  from gemma.gm.nn import _lora
  from gemma.gm.nn import _modules
  from gemma.peft import _einsum_utils
except ImportError as e:
  raise _changed(f"a private module moved ({e})") from e

try:
  TransformerConfig = _config.TransformerConfig
  make_attention_layers_types = _config.make_attention_layers_types
  Attention = _modules.Attention
  Block = _modules.Block
  AttentionType = _modules.AttentionType
  LOCAL_SLIDING = _modules.AttentionType.LOCAL_SLIDING
  GLOBAL = _modules.AttentionType.GLOBAL
  # The additive mask value of gemma's attention softmax.
  K_MASK = _modules.K_MASK
  apply_rope = _positional_embeddings.apply_rope
  # (einsum, weight shape, rank) -> the LoRA einsum peft rewrites a kernel's into.
  get_lora_einsum_str_and_shapes = _einsum_utils.get_lora_einsum_str_and_shapes
  # `Transformer.__call__` without the `nn.jit` gemma wraps it in (see `forward`).
  _transformer_call = gm.nn.Transformer.__call__.__wrapped__
  _replace_by_lora = _lora._replace_by_lora  # pylint: disable=protected-access
  from gemma.peft import ModuleInterceptor  # pylint: disable=g-import-not-at-top
except (AttributeError, ImportError) as e:
  raise _changed(f"a private symbol is gone ({e})") from e


def forward(module: Any, tokens: jax.Array, **kwargs) -> Any:
  """gemma's forward pass of a bound `Transformer` (or `gm.nn.LoRA`), not jitted.

  Use as ``model.apply(variables, tokens, method=gemma_internals.forward, ...)``:
  the same computation and `Output` as ``model.apply(variables, tokens, ...)``.
  gemma's `Transformer.__call__` is an `nn.jit`, whose trace cache is keyed by
  the module and the arguments only: a trace made under a flax method
  interceptor (e.g. `sharding.apply_rows_split`'s sharding constraints) would be
  reused by a later call of the same shapes without it, or with another mesh.
  Called inside the caller's own `jax.jit`, this traces afresh every time.
  """
  if isinstance(module, gm.nn.LoRA):  # LoRA.__call__, around the unjitted forward.
    with lora_context(module):
      return _transformer_call(module.model, tokens, **kwargs)
  return _transformer_call(module, tokens, **kwargs)


def lora_context(module: Any) -> Any:
  """The context `gm.nn.LoRA` runs its model under (Einsums replaced by LoRA ones); a no-op otherwise."""
  if not isinstance(module, gm.nn.LoRA):
    return contextlib.nullcontext()
  return ModuleInterceptor(functools.partial(_replace_by_lora, rank=module.rank, dtype=module.dtype,
                                             verbose=module.verbose))


def query_norm(attn: Any) -> Any:
  """The bound `Attention`'s query RMSNorm (a private attribute; `use_qk_norm` only)."""
  return attn._query_norm  # pylint: disable=protected-access


def key_norm(attn: Any) -> Any:
  """The bound `Attention`'s key RMSNorm (a private attribute; `use_qk_norm` only)."""
  return attn._key_norm  # pylint: disable=protected-access


# What `sampling._decode_step` reads from a bound Transformer, its blocks and
# their attention, beyond the config.
_TRANSFORMER_ATTRS = ("embedder", "blocks", "final_norm")
_BLOCK_ATTRS = ("attn", "pre_attention_norm", "post_attention_norm", "pre_ffw_norm", "post_ffw_norm")
_ATTENTION_ATTRS = ("num_heads", "use_qk_norm", "rope_base_frequency", "rope_scale_factor",
                    "query_pre_attn_scalar", "attn_logits_soft_cap", "attn_type",
                    "sliding_window_size")
# Parameter names `sampling._decode_weights` and `models.merge_lora` read.
_LAYER_PARAMS = {"attn": ("attn_vec_einsum", "q_einsum", "kv_einsum"),
                 "mlp": ("gating_einsum", "linear")}


def check() -> None:
  """Verifies every private piece on a 2-layer micro model (~1 s on a CPU).

  Raises:
    GemmaInternalsError: naming the first piece that is not as bon_jax expects.
  """
  config = TransformerConfig(
      num_embed=16, embed_dim=8, hidden_dim=16, num_heads=2, head_dim=4, num_kv_heads=1,
      final_logit_softcap=30.0,
      attention_types=make_attention_layers_types((LOCAL_SLIDING, GLOBAL), num_layers=2),
      use_post_attn_norm=True, use_post_ffw_norm=True, attn_logits_soft_cap=50.0,
      sliding_window_size=4,
  )
  model = gm.nn.Transformer(config=config, dtype=jnp.float32)
  tokens = jnp.array([[2, 5, 6, 0]])
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))["params"]
  for i in range(config.num_layers):
    for group, names in _LAYER_PARAMS.items():
      for name in names:
        if name not in params.get(f"layer_{i}", {}).get(group, {}):
          raise _changed(f"parameter layer_{i}/{group}/{name} is missing")
  if "input_embedding" not in params.get("embedder", {}):
    raise _changed("parameter embedder/input_embedding is missing")

  cache = config.init_cache(batch_size=1, dtype=jnp.float32, cache_length=4)
  k = cache.get("layer_0", {}).get("k")
  if k is None or k.shape != (1, 4, config.num_kv_heads, config.head_dim):
    raise _changed("the KV cache is no longer {'layer_<i>': {'k': [B, length, K, H], ...}}")

  def probe(module):
    for name in _TRANSFORMER_ATTRS:
      if not hasattr(module, name):
        raise _changed(f"Transformer.{name} is gone")
    block = module.blocks[0]
    for name in _BLOCK_ATTRS:
      if not hasattr(block, name):
        raise _changed(f"Block.{name} is gone")
    if not isinstance(block.attn, Attention):
      raise _changed("Block.attn is no longer an Attention")
    for name in _ATTENTION_ATTRS:
      if not hasattr(block.attn, name):
        raise _changed(f"Attention.{name} is gone")
    if block.attn.attn_type != LOCAL_SLIDING:
      raise _changed("Block.attn.attn_type does not follow config.attention_types")
    return module.embedder.encode(tokens)

  jax.eval_shape(lambda p: model.apply({"params": p}, method=probe), params)

  # `forward` computes what the jitted `__call__` computes (plain and LoRA).
  for wrapped in (model, gm.nn.LoRA(model=model, rank=2, dtype=jnp.float32)):
    variables = wrapped.init(jax.random.key(0), tokens)
    variables = jax.tree.map(lambda x: x + 0.05, variables)  # LoRA's B starts at 0
    want = wrapped.apply(variables, tokens).logits
    got = wrapped.apply(variables, tokens, method=forward).logits
    if got.shape != want.shape or not jnp.allclose(got, want, atol=1e-5):
      raise _changed(f"{type(wrapped).__name__}'s forward without Transformer.__call__'s nn.jit"
                     " computes something else")
