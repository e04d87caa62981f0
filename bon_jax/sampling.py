"""Best-of-N sampling: N completions per prompt from a Gemma policy.

`sample` is one jitted, pure function. Each prompt is prefilled once by the
`gemma` library's `Transformer` with its KV cache. Its N samples then decode
together, keeping that prompt cache as ONE copy per prompt and a small cache
per sample for its own tokens: a decoding step runs gemma's own embedder,
norms and RoPE through `model.apply(method=...)`, gemma's kernels reshaped
once into plain matrices, and an attention core which lets the N queries of a prompt
read its keys in one matmul and puts prompt and sample keys under a single
softmax. (gemma's and Tunix's samplers instead prefill and cache the prompt
once per sample; see BENCHMARKS.md.) Prompts of different lengths share one
batch (right-padded with `PAD_ID`, as tokenizers produce); padding slots are
masked out of attention and generated tokens continue at each prompt's own
positions, so padding does not change the samples.

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
from typing import TYPE_CHECKING, Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
from gemma import gm

from bon_jax import gemma_internals
from bon_jax import models
from bon_jax import sharding

if TYPE_CHECKING:  # Shape annotations only (kauldron.typing imports TensorFlow).
  from kauldron.typing import Int

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
    prompts: Int["B P"],
    rng: jax.Array,
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float | jax.Array = 1.0,
    top_k: int | None = None,
    top_p: float | jax.Array | None = None,
    eos_id: int | None = models.EOS_ID,
    mesh: jax.sharding.Mesh | None = None,
) -> Samples:
  """Draws `num_samples` completions for every prompt.

  Compiled once per (model, shapes, num_samples, max_new_tokens, top_k,
  whether top_p is set, eos_id); params, prompts, rng, temperature and top_p
  are traced, so new values reuse the compiled program.

  Args:
    model: the gemma `Transformer` (static), or its ``gm.nn.LoRA`` wrapper
      (the adapters are merged into the kernels for decoding).
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
    mesh: a `bon_jax.sharding` (data, fsdp, tensor) mesh: the sampler is then
      jitted with explicit shardings: params by `sharding.param_specs`
      (FSDP / tensor parallel; the decode-step matrices and the prompt KV
      cache follow them), prompts over `sharding.BATCH_AXES` when B divides,
      the B * N decoding rows over `BATCH_AXES` (so the N samples of a prompt
      may sit on different devices: nothing here needs the whole group), and
      the outputs [B, N, ...] split over prompts, else over samples. Same
      tokens and log-probs as without a mesh (same keys), up to float
      reduction order. None: one device (or the inputs' own shardings).

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
  args = (
      params,
      prompts.astype(jnp.int32),
      rng,
      jnp.asarray(temperature, jnp.float32),
      jnp.asarray(1.0 if top_p is None else top_p, jnp.float32),
  )
  statics = dict(
      num_samples=num_samples,
      max_new_tokens=max_new_tokens,
      top_k=top_k,
      use_top_p=top_p is not None,
      eos_id=eos_id,
  )
  if mesh is None:
    return _sample(model, *args, **statics)
  return _sharded_sample(mesh, model, prompts.shape[0], **statics)(*args)


@functools.lru_cache(maxsize=16)
def _sharded_sample(mesh, model, batch_size, **statics):
  """`_sample_impl` jitted on `mesh` (one compiled program per settings)."""
  rows = batch_size * statics["num_samples"]
  row_spec = sharding.batch_spec_for((rows,), mesh)
  fn = functools.partial(
      _sample_impl,
      model,
      rows_sharding=jax.sharding.NamedSharding(mesh, row_spec),
      **statics,
  )
  return sharding.jit_sharded(
      fn,
      mesh,
      ("params", "batch", "replicated", "replicated", "replicated"),
      "groups",
  )


class _DecodeState(NamedTuple):
  """The decoding loop's carry (a pytree: the same program as a plain tuple)."""

  t: jax.Array  # int32[]: the position written next
  tok: jax.Array  # int32[R]: the last token of every row (the next step's input)
  done: jax.Array  # bool[R]: rows past their EOS
  tokens: jax.Array  # int32[R, T]: the completions so far (PAD after EOS)
  lp: jax.Array  # float32[R, T]: their log-probs at the sampling temperature
  lp1: jax.Array  # float32[R, T]: and at T = 1
  suffix_kv: Any  # per layer (k, v), [R, K, S, H]: the keys/values of each row's own tokens


def _sample_impl(
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
    rows_sharding: jax.sharding.Sharding | None = None,
) -> Samples:
  """`sample` after argument checks (see there).

  `rows_sharding`: where the B * N decoding rows (buffers, per-sample KV
  cache, keys) live; None leaves it to XLA.
  """
  if rows_sharding is None:
    rows_on_mesh = lambda x: x
  else:
    rows_on_mesh = lambda tree: jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, rows_sharding), tree)
  if models.is_lora(model):
    # The decoding step reads gemma's kernels directly: fold the adapters in.
    params, model = models.merge_lora(model, params), models.base_model(model)
  b, p = prompts.shape
  n, t_max = num_samples, max_new_tokens
  rows = b * n
  valid = prompts != models.PAD_ID
  prompt_len = jnp.sum(valid, axis=-1)  # [B]
  dtype = jax.tree.leaves(params)[0].dtype

  mesh = None if rows_sharding is None else rows_sharding.mesh
  unembed = _unembedder(params, model.config, mesh)
  if mesh is not None:
    # One copy of the layers' weights gathered over the batch axes (split
    # over "tensor" only) serves the prefill and the whole decoding loop:
    # left to XLA, the prefill and the loop each gather their own.
    params = {k: sharding.gathered_over_batch_axes(v, mesh) if k.startswith("layer_") else v
              for k, v in params.items()}

  # Prefill once per prompt with gemma's Transformer and KV cache; the last
  # real prompt token's hidden state gives the first generated token. On a
  # mesh each device computes its own prompts' activations (else XLA keeps
  # the FSDP weights in place and computes every prompt on every device).
  causal = jnp.tril(jnp.ones((p, p), jnp.bool_))
  out = sharding.apply_rows_split(
      model,
      params,
      prompts,
      sharding.rows_constraint(mesh, b),
      cache=model.config.init_cache(batch_size=b, dtype=dtype, cache_length=p),
      positions=jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0),
      attention_mask=causal[None] & valid[:, None, :],
      return_last_only=True,
      return_hidden_states=True,
  )
  # The prompt's keys/values stay one copy per prompt, [B, K, P, H] (the
  # layout the decode-step matmuls read without a transpose); each sample
  # only owns the keys/values of its own tokens, [R, K, S, H].
  to_bkph = lambda x: x.transpose(0, 2, 1, 3)
  prompt_kv = [
      (to_bkph(out.cache[name]["k"]), to_bkph(out.cache[name]["v"]))
      for name in sorted(out.cache, key=lambda k: int(k.split("_")[-1]))
  ]
  suffix_len = max(t_max - 1, 1)
  c = model.config
  zeros = jnp.zeros((rows, c.num_kv_heads, suffix_len, c.head_dim), dtype)
  suffix_kv = rows_on_mesh([(zeros, zeros) for _ in prompt_kv])
  weights = _decode_weights(params, model.config, as_matrices=mesh is None)
  logits = rows_on_mesh(jnp.repeat(unembed(out.hidden_states), n, axis=0))
  keys = rows_on_mesh(jax.vmap(
      lambda i: jax.random.split(jax.random.fold_in(rng, i), n)
  )(jnp.arange(b)).reshape(rows))

  choose = functools.partial(
      _choose, temperature=temperature, top_p=top_p, top_k=top_k,
      use_top_p=use_top_p,
  )
  buf = lambda dt: rows_on_mesh(jnp.zeros((rows, t_max), dt))

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

  def cond(s: _DecodeState):
    return (s.t < t_max) & ~jnp.all(s.done)

  def body(s: _DecodeState):
    # Input token t - 1 goes to suffix slot t - 1.
    hidden, suffix_kv = model.apply(
        {"params": params},
        s.tok,
        s.t - 1,
        weights,
        prompt_kv,
        s.suffix_kv,
        prompt_len,
        method=_decode_step,
    )
    logits = rows_on_mesh(unembed(hidden))
    tok, done, tokens, lp, lp1 = emit(s.t, logits, s.done, s.tokens, s.lp, s.lp1)
    return _DecodeState(t=s.t + 1, tok=tok, done=done, tokens=tokens, lp=lp, lp1=lp1,
                        suffix_kv=rows_on_mesh(suffix_kv))

  done = jnp.zeros((rows,), jnp.bool_)
  tok, done, tokens, lp, lp1 = emit(
      0, logits, done, buf(jnp.int32), buf(jnp.float32), buf(jnp.float32)
  )
  state = _DecodeState(t=jnp.asarray(1), tok=tok, done=done, tokens=tokens, lp=lp, lp1=lp1,
                       suffix_kv=suffix_kv)
  final = jax.lax.while_loop(cond, body, state)
  done, tokens, lp, lp1 = final.done, final.tokens, final.lp, final.lp1

  emitted = (tokens != models.PAD_ID).sum(axis=-1).astype(jnp.int32)
  shape = lambda x: x.reshape((b, n) + x.shape[1:])
  return Samples(
      tokens=shape(tokens),
      logprobs=shape(lp),
      logprobs_t1=shape(lp1),
      lengths=shape(emitted),
      reached_eos=shape(done if eos_id is not None else jnp.zeros_like(done)),
  )


_sample = jax.jit(
    _sample_impl,
    static_argnames=(
        "model", "num_samples", "max_new_tokens", "top_k", "use_top_p",
        "eos_id", "rows_sharding",
    ),
)


def _decode_weights(params: Params, config, *, as_matrices: bool = True) -> dict[str, Any]:
  """gemma's kernels as the decoding loop reads them.

  `as_matrices` (one device): reshaped once per call into row-major 2-D
  matrices. Inside the decoding loop gemma's einsums ('BTD,NDH->BTNH', ...)
  have a contraction axis in the middle of the kernel, which XLA:CPU runs as a
  naive fused loop several times slower than a library matmul at decoding
  batch sizes; reshaped once, every projection is a plain `x @ w`.

  Otherwise (on a mesh) each kernel stays in gemma's layout, as
  ``(einsum, kernel)`` (`_project`): the reshaped copies would be a second
  copy of every gathered layer, held through the loop — the whole model
  twice per device.
  """
  layers = []
  d = config.embed_dim
  for i in range(config.num_layers):
    attn, mlp = params[f"layer_{i}"]["attn"], params[f"layer_{i}"]["mlp"]
    w = {"out": attn["attn_vec_einsum"]["w"].reshape(-1, d),  # [N*H, D], no copy
         "down": mlp["linear"]}  # [F, D]
    gating = mlp["gating_einsum"]  # [2, F, D] (transpose_gating_einsum) or [2, D, F]
    if not as_matrices:
      if "qkv_einsum" in attn:  # [3, N, D, H]
        w["qkv"] = ("rd,sndh->rsnh", attn["qkv_einsum"]["w"])
      else:  # [N, D, H]; [2, K, D, H]
        w["q"] = ("rd,ndh->rnh", attn["q_einsum"]["w"])
        w["kv"] = ("rd,skdh->rskh", attn["kv_einsum"]["w"])
      w["gating"] = ("rd,sfd->rsf" if config.transpose_gating_einsum else "rd,sdf->rsf", gating)
    else:
      if "qkv_einsum" in attn:  # [3, N, D, H] -> [D, 3*N*H]
        w["qkv"] = attn["qkv_einsum"]["w"].transpose(2, 0, 1, 3).reshape(d, -1)
      else:  # [N, D, H] -> [D, N*H]; [2, K, D, H] -> [D, 2*K*H]
        w["q"] = attn["q_einsum"]["w"].transpose(1, 0, 2).reshape(d, -1)
        w["kv"] = attn["kv_einsum"]["w"].transpose(2, 0, 1, 3).reshape(d, -1)
      if config.transpose_gating_einsum:  # [2, hidden, D]
        gating = gating.transpose(0, 2, 1)
      w["gate"], w["up"] = gating[0], gating[1]
    layers.append(w)
  return {"layers": layers}


def _project(x: jax.Array, w: Any) -> jax.Array:
  """[R, D] x one of `_decode_weights`' weights -> [R, outputs] (in the matrix's column order)."""
  if isinstance(w, tuple):
    spec, kernel = w
    return jnp.einsum(spec, x, kernel).reshape(x.shape[0], -1)
  return x @ w


def _unembedder(params: Params, config, mesh):
  """final-normed hidden [rows, D] -> soft-capped logits [rows, V].

  On a mesh (rows over the batch axes, `sharding.BATCH_AXES`) the logits
  are vocabulary-parallel, written out with `jax.shard_map`: the table
  [V, D], split ("tensor", "fsdp") as `sharding.param_specs` lays it out, is
  re-split by one all-to-all over "fsdp" into whole rows of a slice of the
  vocabulary (and that sliced again over "data"), each device multiplies
  every row's hidden state ([rows, D], gathered: small) by its slice, and
  two all-to-alls and a gather over "tensor" hand each device its own rows'
  full logits. Left to XLA's partitioner, the FSDP table (split on D) makes
  each device compute partial logits of every row, all-reduced ([rows, V]
  in float32 per device), or gathers the whole table (as float32 on CPU).
  Without a mesh, or when the shapes do not divide, it is `hidden @ table.T`.
  """
  table = params["embedder"]["input_embedding"]  # [V, D]
  cap = config.final_logit_softcap

  def logits_of(h, w):  # [r, D] x [v, D] -> [r, v]
    logits = h @ w.T
    return logits if cap is None else jnp.tanh(logits / cap) * cap

  if mesh is None:
    return lambda hidden: logits_of(hidden, table)
  d, f, t = (mesh.shape[a] for a in sharding.AXES)
  vocab, dim = table.shape
  if vocab % (d * f * t) or dim % f:
    return lambda hidden: logits_of(hidden, table)

  def local(h, w):
    # h: this device's rows [rows / (d f), D]; w: its table block [V / t, D / f].
    w = jax.lax.all_to_all(w, "fsdp", 0, 1, tiled=True)  # [V / (t f), D]
    w = jax.lax.dynamic_slice_in_dim(w, jax.lax.axis_index("data") * (w.shape[0] // d), w.shape[0] // d)
    h = jax.lax.all_gather(h, ("data", "fsdp"), axis=0, tiled=True)  # [rows, D]
    logits = logits_of(h, w)  # [rows, V / (t f d)]: vocabulary order (t, f, d)
    logits = jax.lax.all_to_all(logits, "data", 0, 1, tiled=True)  # [rows / d, V / (t f)]
    logits = jax.lax.all_to_all(logits, "fsdp", 0, 1, tiled=True)  # [rows / (d f), V / t]
    return jax.lax.all_gather(logits, "tensor", axis=1, tiled=True)  # [rows / (d f), V]

  P = jax.sharding.PartitionSpec
  fn = jax.shard_map(local, mesh=mesh, in_specs=(P(sharding.BATCH_AXES, None), P("tensor", "fsdp")),
                     out_specs=P(sharding.BATCH_AXES, None), check_vma=False)
  return lambda hidden: logits_of(hidden, table) if hidden.shape[0] % (d * f) else fn(hidden, table)


def _decode_step(
    module: gm.nn.Transformer,
    tokens: jax.Array,
    step: jax.Array,
    weights: dict[str, Any],
    prompt_kv: list[tuple[jax.Array, jax.Array]],
    suffix_kv: list[tuple[jax.Array, jax.Array]],
    prompt_len: jax.Array,
) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
  """One decoding step of all samples (run as `model.apply(method=...)`).

  gemma's `Transformer` block by block: its own embedder, RMSNorms and RoPE,
  its kernels as the 2-D matrices of `_decode_weights`, and an attention core
  that reads each prompt's keys/values once for all its samples (gemma's
  cache holds one row per sample, i.e. N copies of the prompt).

  Args:
    module: the bound gemma `Transformer`.
    tokens: int32[R] the input tokens, R = B * N rows, prompt-major.
    step: int32[] their index in the completion (the suffix slot to write).
    weights: `_decode_weights(params, config)`.
    prompt_kv: per layer, float[B, K, P, H] keys and values of the prompts.
    suffix_kv: per layer, float[R, K, S, H] keys and values of the samples.
    prompt_len: int32[B] prompt lengths (generated token u is at position
      prompt_len + u).

  Returns:
    The final-normed hidden states [R, D] (`_unembedder` makes the logits)
    and the updated `suffix_kv`.
  """
  x = module.embedder.encode(tokens)  # [R, D]
  new_kv = []
  for block, w, pkv, skv in zip(
      module.blocks, weights["layers"], prompt_kv, suffix_kv
  ):
    h, skv = _shared_prompt_attention(
        block.attn, w, block.pre_attention_norm(x), step, pkv, skv, prompt_len
    )
    new_kv.append(skv)
    if block.post_attention_norm is not None:
      h = block.post_attention_norm(h)
    x = x + h
    h = block.pre_ffw_norm(x)
    if "gating" in w:
      gate, up = jnp.split(_project(h, w["gating"]), 2, axis=-1)
    else:
      gate, up = h @ w["gate"], h @ w["up"]
    h = (jax.nn.gelu(gate) * up) @ w["down"]
    if block.post_ffw_norm is not None:
      h = block.post_ffw_norm(h)
    x = x + h
  return module.final_norm(x), new_kv


def _shared_prompt_attention(
    attn: gemma_internals.Attention,
    w: dict[str, jax.Array],
    x: jax.Array,
    step: jax.Array,
    prompt_kv: tuple[jax.Array, jax.Array],
    suffix_kv: tuple[jax.Array, jax.Array],
    prompt_len: jax.Array,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """gemma's `Attention` for one new token per row over prompt + own tokens.

  The N queries of a prompt attend to its single copy of the prompt keys in
  one matmul; one softmax spans the prompt and suffix logits, so the result
  equals attention over the concatenated sequence.

  Args:
    attn: the bound gemma `Attention` of the layer (its settings, norms).
    w: the layer's `_decode_weights`.
    x: float[R, D] normalised inputs.
    step: int32[] the suffix slot of this token.
    prompt_kv: float[B, K, P, H] keys and values (RoPE applied).
    suffix_kv: float[R, K, S, H] keys and values.
    prompt_len: int32[B].

  Returns:
    float[R, D] the attention output and the updated `suffix_kv`.
  """
  pk, pv = prompt_kv
  sk, sv = suffix_kv
  b, kh, p, hd = pk.shape
  r, s = sk.shape[0], sk.shape[2]
  n, g = r // b, attn.num_heads // kh
  if "qkv" in w:
    q, k, v = _project(x, w["qkv"]).reshape(r, 3, 1, -1, hd).transpose(1, 0, 2, 3, 4)
  else:
    q = _project(x, w["q"]).reshape(r, 1, -1, hd)
    k, v = _project(x, w["kv"]).reshape(r, 2, 1, kh, hd).transpose(1, 0, 2, 3, 4)
  if attn.use_qk_norm:
    q = gemma_internals.query_norm(attn)(q)
    k = gemma_internals.key_norm(attn)(k)
  pos = jnp.repeat(prompt_len, n)[:, None] + step  # [R, 1]
  rope = functools.partial(
      gemma_internals.apply_rope,
      positions=pos,
      base_frequency=attn.rope_base_frequency,
      scale_factor=attn.rope_scale_factor,
  )
  q = rope(q) * attn.query_pre_attn_scalar
  k = rope(k)
  # [R, 1, K, H] -> slot `step` of [R, K, S, H]
  write = lambda cache, new: jax.lax.dynamic_update_slice(
      cache, new.transpose(0, 2, 1, 3).astype(cache.dtype), (0, 0, step, 0)
  )
  sk, sv = write(sk, k), write(sv, v)

  q = q.reshape(b, n, kh, g, hd)
  sk5, sv5 = sk.reshape(b, n, kh, s, hd), sv.reshape(b, n, kh, s, hd)
  logits = jnp.concatenate(
      [
          jnp.einsum("BNKGH,BKPH->BKNGP", q, pk),
          jnp.einsum("BNKGH,BNKSH->BKNGS", q, sk5),
      ],
      axis=-1,
  )
  if attn.attn_logits_soft_cap is not None:
    cap = attn.attn_logits_soft_cap
    logits = jnp.tanh(logits / cap) * cap
  # Prompt slot j holds position j, suffix slot u position prompt_len + u.
  j, u = jnp.arange(p), jnp.arange(s)
  prompt_mask = j[None, :] < prompt_len[:, None]  # [B, P]
  suffix_mask = u <= step  # [S]
  if attn.attn_type == gemma_internals.LOCAL_SLIDING:
    window = attn.sliding_window_size
    prompt_mask &= j[None, :] > (prompt_len + step - window)[:, None]
    suffix_mask &= u > step - window
  mask = jnp.concatenate(
      [prompt_mask, jnp.broadcast_to(suffix_mask, (b, s))], axis=-1
  )[:, None, None, None, :]
  probs = jax.nn.softmax(
      jnp.where(mask, logits, gemma_internals.K_MASK), axis=-1
  ).astype(pv.dtype)
  enc = jnp.einsum("BKNGP,BKPH->BNKGH", probs[..., :p], pv) + jnp.einsum(
      "BKNGS,BNKSH->BNKGH", probs[..., p:], sv5
  )
  return enc.reshape(r, kh * g * hd) @ w["out"], (sk, sv)


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
  # Inverse-CDF sampling: one uniform per row instead of `categorical`'s
  # Gumbel noise per vocabulary entry, whose generation dominated a decoding
  # step on CPU. A token whose probability is 0 never follows a strict CDF
  # increase, so masked tokens cannot be drawn.
  cdf = jnp.cumsum(jax.nn.softmax(allowed, axis=-1), axis=-1)
  u = jax.vmap(jax.random.uniform)(keys) * cdf[:, -1]
  sampled = jnp.sum(cdf <= u[:, None], axis=-1)
  top = jnp.argmax(allowed, axis=-1)
  sampled = jnp.where(sampled >= logits.shape[-1], top, sampled)  # u rounded up
  argmax = jnp.argmax(logits.at[:, models.PAD_ID].set(-jnp.inf), axis=-1)
  tok = jnp.where(greedy, argmax, sampled).astype(jnp.int32)

  pick = lambda lp: jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0]
  lp_t = jnp.where(greedy, 0.0, pick(jax.nn.log_softmax(scaled, axis=-1)))
  lp_1 = pick(jax.nn.log_softmax(logits, axis=-1))
  return tok, lp_t, lp_1
