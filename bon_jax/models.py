"""Gemma policies: presets, construction, parameter loading, teacher forcing.

The policy is the `gemma` library's `gm.nn.Transformer` built from a
`TransformerConfig`. Presets:

* ``micro``: the same at test size.
* ``tiny``: Gemma-2 architecture (GQA, alternating local sliding / global
  attention, attention and final logit soft-capping, pre+post norms) at a size
  that trains on a CPU in minutes.
* ``gemma2_2b`` / ``gemma2_9b``: the released Gemma 2 shapes, loaded from a
  local Orbax checkpoint.
* ``gemma2_2b_depth2``: Gemma 2 2B with 2 of its 26 layers (real vocabulary
  and width), for end-to-end runs of the paper configs on a CPU.

Example::

  model = models.make_model(preset="tiny", vocab_size=512)
  params = models.init_params(model, jax.random.key(0))
  logp = models.token_logprobs(model, params, tokens)  # [B, L-1]

LoRA (``make_model(..., lora_rank=r)``) wraps the Transformer in the gemma
library's ``gm.nn.LoRA``: every kernel gets an adapter ``W + A @ B`` (B = 0
at init), stored next to it under a ``lora`` key. `add_lora` puts fresh
adapters around loaded base params, `lora_mask` marks the adapter leaves
(train only those: `bon_jax.optim.finetune`), and `merge_lora` folds the
adapters into the kernels, giving params of the plain Transformer
(`base_model`), which is what the sampler runs::

  model = models.make_model(preset="micro", vocab_size=128, lora_rank=4)
  params = models.add_lora(model, base_params, jax.random.key(0))
  plain = models.merge_lora(model, params)  # for models.base_model(model)

Token conventions follow Gemma: ``pad = 0``, ``eos = 1``, ``bos = 2``. Gemma
derives positions and the causal attention mask from ``tokens != 0``, so
sequences are right-padded with 0.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from gemma import gm
from gemma import peft
import numpy as np
from orbax import checkpoint as ocp

from bon_jax import gemma_internals
from bon_jax import sharding

if TYPE_CHECKING:  # Shape annotations only (kauldron.typing imports TensorFlow).
  from kauldron.typing import Float, Int  # pylint: disable=g-multiple-import

Params = Any

PAD_ID = 0
EOS_ID = 1
BOS_ID = 2

_LOCAL = gemma_internals.LOCAL_SLIDING
_GLOBAL = gemma_internals.GLOBAL


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
  """Architecture hyper-parameters; `vocab_size=None` means the tokenizer's."""

  num_layers: int
  embed_dim: int
  hidden_dim: int
  num_heads: int
  head_dim: int
  num_kv_heads: int
  sliding_window_size: int
  vocab_size: int | None = None
  transpose_gating_einsum: bool = False
  # Released checkpoints only: what to download when the path is missing.
  download_hint: str = ""


PRESETS: dict[str, Preset] = {
    # For tests: compiles and steps in well under a second on a CPU.
    "micro": Preset(
        num_layers=2,
        embed_dim=64,
        hidden_dim=128,
        num_heads=4,
        head_dim=16,
        num_kv_heads=2,
        sliding_window_size=16,
    ),
    # The size of the Countdown prototype (~0.5M parameters).
    "small": Preset(
        num_layers=2,
        embed_dim=128,
        hidden_dim=512,
        num_heads=4,
        head_dim=32,
        num_kv_heads=2,
        sliding_window_size=64,
    ),
    # ~3.3M parameters with a 512-token vocabulary.
    "tiny": Preset(
        num_layers=4,
        embed_dim=256,
        hidden_dim=768,
        num_heads=4,
        head_dim=64,
        num_kv_heads=2,
        sliding_window_size=64,
    ),
    "gemma2_2b": Preset(
        num_layers=26,
        embed_dim=2304,
        hidden_dim=9216,
        num_heads=8,
        head_dim=256,
        num_kv_heads=4,
        sliding_window_size=4096,
        vocab_size=256128,
        download_hint=(
            "the Gemma 2 2B Orbax checkpoint (e.g. Kaggle google/gemma-2/flax/gemma2-2b)"
        ),
    ),
    "gemma2_9b": Preset(
        num_layers=42,
        embed_dim=3584,
        hidden_dim=14336,
        num_heads=16,
        head_dim=256,
        num_kv_heads=8,
        sliding_window_size=4096,
        vocab_size=256128,
        transpose_gating_einsum=True,
        download_hint=(
            "the Gemma 2 9B Orbax checkpoint (e.g. Kaggle google/gemma-2/flax/gemma2-9b)"
        ),
    ),
}
# Gemma 2 2B cut to 2 of its 26 layers: the real vocabulary, width and
# attention layout (one local, one global layer) at a size whose whole
# pipeline runs on a CPU (CI's end-to-end runs of the paper configs).
PRESETS["gemma2_2b_depth2"] = dataclasses.replace(PRESETS["gemma2_2b"], num_layers=2, download_hint="")


def transformer_config(
    preset: str, vocab_size: int | None = None
) -> gemma_internals.TransformerConfig:
  """Returns the gemma `TransformerConfig` of a preset (Gemma 2 features on)."""
  if preset not in PRESETS:
    raise ValueError(
        f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}"
    )
  p = PRESETS[preset]
  vocab = p.vocab_size or vocab_size
  if vocab is None:
    raise ValueError(f"preset {preset!r} needs the tokenizer's vocab_size")
  if p.vocab_size is not None and vocab_size not in (None, p.vocab_size):
    raise ValueError(
        f"preset {preset!r} has a {p.vocab_size}-token vocabulary but the"
        f" tokenizer has {vocab_size}; use the Gemma 2 tokenizer"
    )
  return gemma_internals.TransformerConfig(
      num_embed=vocab,
      embed_dim=p.embed_dim,
      hidden_dim=p.hidden_dim,
      num_heads=p.num_heads,
      head_dim=p.head_dim,
      num_kv_heads=p.num_kv_heads,
      final_logit_softcap=30.0,
      attention_types=gemma_internals.make_attention_layers_types(
          (_LOCAL, _GLOBAL), num_layers=p.num_layers
      ),
      use_post_attn_norm=True,
      use_post_ffw_norm=True,
      attn_logits_soft_cap=50.0,
      sliding_window_size=p.sliding_window_size,
      transpose_gating_einsum=p.transpose_gating_einsum,
  )


def make_model(
    *,
    preset: str,
    vocab_size: int | None = None,
    dtype: Any = jnp.float32,
    lora_rank: int = 0,
) -> gm.nn.Transformer | gm.nn.LoRA:
  """Builds the gemma `Transformer` of a preset.

  `dtype` is the parameter dtype (gemma initialises its params in it).
  `lora_rank > 0` wraps the Transformer in ``gm.nn.LoRA`` with adapters of
  that rank in the same dtype (see the module doc).
  """
  if lora_rank < 0:
    raise ValueError(f"lora_rank must be >= 0 (0 = no LoRA), got {lora_rank}")
  # Normalised, so `jnp.float32` and `jnp.dtype("float32")` give equal *and
  # equally hashed* models: the model is a static jit argument.
  model = gm.nn.Transformer(
      config=transformer_config(preset, vocab_size), dtype=jnp.dtype(dtype)
  )
  if lora_rank:
    return gm.nn.LoRA(rank=lora_rank, model=model, dtype=jnp.dtype(dtype))
  return model


def is_lora(model: Any) -> bool:
  return isinstance(model, gm.nn.LoRA)


def base_model(model: Any) -> gm.nn.Transformer:
  """The plain Transformer (the model itself when it has no LoRA)."""
  return model.model if is_lora(model) else model


def lora_mask(params: Params) -> Any:
  """bool pytree like `params`: True on LoRA adapter leaves (under a `lora` key)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(getattr(k, "key", None) == "lora" for k in path), params
  )


def trainable_mask(model: Any, params: Params) -> Any | None:
  """What an update trains: `lora_mask` for a LoRA model, None (everything) otherwise."""
  return lora_mask(params) if is_lora(model) else None


def add_lora(model: gm.nn.LoRA, base_params: Params, rng: jax.Array) -> Params:
  """`base_params` (e.g. a loaded checkpoint) with fresh adapters of `model`.

  gemma initialises B = 0, so the LoRA model starts equal to the base one.
  """
  # Only the adapters leave the jitted init: XLA drops the base params' init.
  adapters = jax.jit(lambda: peft.split_params(init_params(model, rng)).lora)()
  return peft.merge_params(base_params, adapters)


def policy_from_config(model_cfg: Any, vocab_size: int | None = None) -> Any:
  """`make_model` from ``config.model`` (preset, dtype, lora_rank)."""
  return make_model(preset=model_cfg.preset, vocab_size=vocab_size,
                    dtype=jnp.dtype(model_cfg.dtype), lora_rank=int(model_cfg.lora_rank))


def ensure_adapters(model: Any, params: Params, rng: jax.Array) -> Params:
  """`params` for `model`: fresh adapters added when a LoRA model gets plain params.

  E.g. a released checkpoint for a LoRA policy (`add_lora`); params that
  already hold adapters, or a plain model, are returned unchanged.
  """
  if not is_lora(model) or any(jax.tree.leaves(lora_mask(params))):
    return params
  return add_lora(model, params, rng)


# The einsum each LoRA-wrapped kernel of gemma's Transformer runs (gm/nn/_modules.py),
# by weight name, or by module name for weights called "w".
_KERNEL_EQNS = {
    "attn_vec_einsum": "BTNH,NHD->BTD",
    "q_einsum": "BTD,NDH->BTNH",
    "kv_einsum": "BSD,CKDH->CBSKH",
    "qkv_einsum": "BTD,SNDH->SBTNH",
    "linear": "...H,HF->...F",
}
_LORA_PREFIX = "_LoRAEinsum_"


def merge_lora(model: gm.nn.LoRA, params: Params) -> Params:
  """Params of `base_model(model)` with each adapter folded in: W + A @ B.

  The decomposition of every kernel (which axes A and B carry) is gemma's own
  (`peft`'s einsum rewrite), so the merged Transformer computes what the LoRA
  model computes, up to float rounding in the kernels' dtype.
  """
  gating = "...F,NHF->...NH" if model.config.transpose_gating_einsum else "...F,NFH->...NH"
  eqns = {**_KERNEL_EQNS, "gating_einsum": gating}

  def fold(tree: dict[str, Any], name: str) -> dict[str, Any]:
    out = {k: fold(v, k) if isinstance(v, dict) else v
           for k, v in tree.items() if not k.startswith(_LORA_PREFIX)}
    for key, sub in tree.items():
      if not key.startswith(_LORA_PREFIX):
        continue
      weight = key[len(_LORA_PREFIX):]
      weight = "w" if weight.isdigit() else weight
      eqn = eqns.get(weight if weight != "w" else name)
      if eqn is None or weight not in tree:
        raise ValueError(f"no known einsum for the LoRA adapter {name}/{key}")
      w, a, b = tree[weight], sub["lora"]["a"], sub["lora"]["b"]
      lora_eqn, _, _ = gemma_internals.get_lora_einsum_str_and_shapes(
          einsum_str=eqn, weights_shape=w.shape, rank=a.shape[-1])
      a_str, b_str = lora_eqn.split("->")[0].split(",")[1:]
      w_str = eqn.split("->")[0].split(",")[1]
      # In float32 (exact upcast): XLA:CPU has no bf16 x bf16 -> f32 dot once the
      # adapters are sharded ("Unsupported element type for DotThunk").
      delta = jnp.einsum(f"{a_str},{b_str}->{w_str}", a.astype(jnp.float32), b.astype(jnp.float32))
      out[weight] = (w.astype(jnp.float32) + delta).astype(w.dtype)
    return out

  return fold(params, "")


def init_params(model: gm.nn.Transformer, rng: jax.Array) -> Params:
  """Random parameters (the tiny preset, or abstract shapes via eval_shape)."""
  dummy = jnp.ones((1, 4), jnp.int32)
  return model.init(rng, dummy)["params"]


def abstract_params(model: gm.nn.Transformer) -> Params:
  """Parameter shapes without allocating them (`jax.eval_shape`)."""
  return jax.eval_shape(lambda: init_params(model, jax.random.key(0)))


def num_params(params: Params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


class CheckpointError(ValueError):
  """A released checkpoint that does not fit the config (one-line message)."""


# The released Orbax layout (what `gm.ckpts.load_params` reads): a flat dict
# "transformer/<module path>" -> {leaf name: array}; the MLP's kernels are
# leaves of their own module there ("transformer/layer_0/mlp/linear" -> {"w"}).
_RELEASED_PREFIX = "transformer/"
_MLP_KERNELS = ("gating_einsum", "linear")


def released_layout(params: Params) -> dict[str, dict[str, Any]]:
  """`params` (nested, as `init_params`) in the released checkpoints' flat layout.

  Example::

    flat = released_layout(abstract_params(make_model(preset="gemma2_2b")))
    flat["transformer/layer_0/mlp/linear"]["w"].shape  # (9216, 2304)
  """
  out: dict[str, dict[str, Any]] = {}
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    module, leaf = _released_key(path)
    out.setdefault(module, {})[leaf] = x
  return out


def _released_key(path) -> tuple[str, str]:
  """(module, leaf) of a nested params path in the released layout."""
  names = [str(k.key) for k in path]
  if len(names) >= 2 and names[-2] == "mlp" and names[-1] in _MLP_KERNELS:
    return _RELEASED_PREFIX + "/".join(names), "w"
  return _RELEASED_PREFIX + "/".join(names[:-1]), names[-1]


def write_random_checkpoint(
    path: str, *, preset: str, vocab_size: int | None = None, dtype: Any = jnp.bfloat16, seed: int = 0,
) -> int:
  """Writes random `preset` params to `path` in the released Orbax layout.

  For tests and benchmarks of the released-checkpoint path: `load_params`
  (and ``gm.ckpts.load_params``) read it like a downloaded Gemma 2
  checkpoint. Values: kernels and embeddings ~ N(0, 1 / fan-in), norm scales
  0 (gemma's RMSNorm multiplies by 1 + scale), drawn on the host leaf by leaf
  in row blocks (a jitted init keeps several float32 copies live; drawing
  holds the ~5 GB of 2B's bfloat16 plus a block, Orbax's save more).
  Deterministic in `seed`. Refuses an existing `path`. Returns the parameter
  count.

  Example::

    write_random_checkpoint("/tmp/g2b", preset="gemma2_2b")  # ~5 GB of bf16
    params = load_params("/tmp/g2b", preset="gemma2_2b", dtype="bfloat16", mesh=mesh)
  """

  path = os.path.abspath(path)
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; write the checkpoint to a new path")
  abstract = abstract_params(make_model(preset=preset, vocab_size=vocab_size))
  dtype = jnp.dtype(dtype)
  block = 1 << 24  # Elements drawn at a time (64 MB of float32).
  # 1 / sqrt(fan-in) for the kernels that contract the width D (most; near enough for the rest),
  # and unit-variance embeddings once gemma scales them by sqrt(D).
  scale = 1.0 / np.sqrt(PRESETS[preset].embed_dim)

  def draw(i: int, x: Any) -> np.ndarray:
    out = np.zeros(x.shape, dtype)
    if x.ndim < 2:
      return out  # Norm scales.
    rng = np.random.default_rng([seed, i])
    flat = out.reshape(-1)
    for lo in range(0, flat.size, block):
      n = min(block, flat.size - lo)
      flat[lo:lo + n] = rng.standard_normal(n, np.float32) * scale
    return out

  leaves, treedef = jax.tree.flatten(abstract)
  params = jax.tree.unflatten(treedef, [draw(i, x) for i, x in enumerate(leaves)])
  # Synchronous, with 1 GB in flight: an async save would first copy the whole
  # tree. Orbax still holds ~2 extra copies while serialising (14.4 GiB peak
  # RSS for 2B's 4.87 GiB, BENCHMARKS.md): fine for a test utility.
  with ocp.Checkpointer(ocp.StandardCheckpointHandler(save_concurrent_gb=1)) as ckpt:
    ckpt.save(path, args=ocp.args.StandardSave(released_layout(params)))
  return num_params(params)


def _preset_of(shapes: dict[str, dict[str, tuple[int, ...]]]) -> str:
  """Which preset a checkpoint's shapes look like, for the error message."""
  emb = shapes.get(_RELEASED_PREFIX + "embedder", {}).get("input_embedding")
  layers = sum(1 for k in shapes if k.startswith(_RELEASED_PREFIX + "layer_") and k.endswith("/pre_attention_norm"))
  for name, p in PRESETS.items():
    if emb is not None and emb[1] == p.embed_dim and layers == p.num_layers:
      return f"a {name}-shaped model ({layers} layers, width {emb[1]}, vocabulary {emb[0]})"
  if emb is None:
    return "no Gemma transformer (no transformer/embedder)"
  return f"a {layers}-layer model of width {emb[1]} and vocabulary {emb[0]}"


def load_params(
    path: str, *, preset: str, vocab_size: int | None = None, dtype: Any = None,
    mesh: Any = None, field: str = "model.ckpt_path",
) -> Params:
  """Restores released Gemma parameters from a local Orbax checkpoint.

  Every array is read straight into its place: with `mesh`, each device reads
  only its shard (`sharding.param_specs`), so no device ever holds the whole
  tree (Gemma 2 9B on 8 x 16 GB chips); without, onto the first device. The
  checkpoint's arrays are cast to `dtype` as they are read (default: as
  stored).

  Raises one-line errors: `FileNotFoundError` naming what to download and
  which config field to set when `path` is missing; `CheckpointError` for a
  checkpoint of another preset or vocabulary, or an unreadable (e.g.
  truncated) one.

  Example::

    mesh = sharding.make_mesh((1, 8, 1))
    params = load_params(ckpt, preset="gemma2_9b", dtype="bfloat16", mesh=mesh)
  """

  if not path or not os.path.exists(path):
    hint = PRESETS[preset].download_hint or "an Orbax checkpoint of this preset"
    raise FileNotFoundError(
        f"checkpoint {path!r} not found: download {hint} and set"
        f" --config.{field}=/path/to/checkpoint"
    )
  path = os.path.abspath(path)
  model = make_model(preset=preset, vocab_size=vocab_size)
  abstract = abstract_params(model)
  try:
    meta = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
    have = {k: {leaf: tuple(m.shape) for leaf, m in v.items()} for k, v in meta.items()}
  except Exception as e:  # pylint: disable=broad-except  (orbax / tensorstore raise many kinds)
    raise CheckpointError(f"checkpoint {path} is unreadable ({_first_line(e)}); --config.{field}"
                          " must name an Orbax checkpoint of Gemma params") from None
  want = {k: {leaf: tuple(x.shape) for leaf, x in v.items()} for k, v in released_layout(abstract).items()}
  emb = _RELEASED_PREFIX + "embedder"
  have_vocab = have.get(emb, {}).get("input_embedding", (None,))[0]
  if have != want and have_vocab != model.config.num_embed and _with_vocab(have, model.config.num_embed) == want:
    raise CheckpointError(
        f"checkpoint {path} has a {have_vocab}-token vocabulary but the tokenizer has"
        f" {model.config.num_embed}; use the tokenizer the checkpoint was trained with")
  if have != want:
    raise CheckpointError(
        f"checkpoint {path} holds {_preset_of(have)}, not the {preset} preset"
        f" ({PRESETS[preset].num_layers} layers, width"
        f" {PRESETS[preset].embed_dim}, vocabulary {model.config.num_embed}); set"
        f" --config.model.preset to match the checkpoint")
  if mesh is not None:
    shardings = sharding.named(mesh, sharding.param_specs(abstract, mesh))
  else:
    shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)

  def target(path, x, s):
    module, leaf = _released_key(path)
    return jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype or meta[module][leaf].dtype), sharding=s)

  target = jax.tree_util.tree_map_with_path(target, abstract, shardings)
  try:
    # gemma maps the nested target onto the checkpoint's layout; Orbax reads
    # each shard into its target sharding and dtype.
    return gm.ckpts.load_params(path, params=target)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"checkpoint {path} cannot be restored, it may be truncated"
                          f" ({_first_line(e)}); download it again") from None


def _with_vocab(shapes: dict[str, dict[str, tuple[int, ...]]], vocab: int) -> dict[str, Any]:
  emb = _RELEASED_PREFIX + "embedder"
  if "input_embedding" not in shapes.get(emb, {}):
    return shapes
  table = shapes[emb]["input_embedding"]
  return {**shapes, emb: {**shapes[emb], "input_embedding": (vocab, *table[1:])}}


def _first_line(e: BaseException) -> str:
  text = " ".join(str(e).split()).split(" See full ")[0]  # TensorStore appends a dump.
  return f"{type(e).__name__}: {text[:200]}"


def token_logprobs(
    model: gm.nn.Transformer,
    params: Params,
    tokens: Int["B L"],
    *,
    temperature: float = 1.0,
) -> Float["B L-1"]:
  """Teacher-forced log-probabilities of `tokens[:, 1:]` given their prefix.

  Args:
    model: the policy.
    params: its parameters.
    tokens: int32[B, L], right-padded with `PAD_ID`.
    temperature: logits are divided by it before the softmax.

  Returns:
    float32[B, L-1]: log pi(tokens[:, t+1] | tokens[:, :t+1]); entries whose
    target is padding are meaningless and must be masked by the caller.
  """
  logits = model.apply({"params": params}, tokens).logits[:, :-1]
  logits = logits.astype(jnp.float32) / temperature
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
