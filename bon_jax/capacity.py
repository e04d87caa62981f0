"""Capacity plan of a config: what one device holds, without weights or devices.

`plan(config)` builds the config's policy (and learned verifier) abstractly
with `jax.eval_shape`, shards them on an `AbstractMesh` of the configured
``config.mesh.shape`` with `bon_jax.sharding`'s rules, and counts the bytes
the most loaded device holds of:

* the policy's parameters, and the optimizer state (`optim.for_config`:
  LoRA adapters only when ``model.lora_rank > 0``, state in
  ``model.opt_state_dtype``), exactly as `optax` builds it;
* the trainable parameters' gradients (transient, during an update);
* the frozen reference policy, when a stage has ``kl_coef > 0``;
* the learned verifier's parameters (and, in its own training stage, its
  optimizer state);
* the sampler's KV cache. `bon_jax.sampling` keeps a prompt's keys/values
  ONCE per prompt and only each sample's own tokens per sample: per layer,
  2 (k, v) x kv_heads x head_dim x (B x P + B x N x max(T - 1, 1)) values in
  the params' dtype, for B prompts of P tokens, N samples of T new tokens.
  Prompts and the B x N decoding rows are split over the mesh's batch axes
  (`sharding.batch_spec_for`), kv heads over ``tensor`` (as the kv kernel
  is);
* the update's working set, as XLA compiles `rl.make_policy_update` on a
  mesh (bench/compiled_memory.py, BENCHMARKS.md "Compiled memory beside the
  plan"): the rows of one microbatch (``rl.microbatch_rows = k > 0``, else
  all B x N') are split over the batch axes, and for them a device holds
  - every layer's weights all-gathered (FSDP), kept from the forward to the
    backward pass, in float32 and in both orientations (W and W^T): 8 bytes
    per layer parameter;
  - every layer's activations saved for the backward pass, float32: per
    row, token and layer 3 x heads x (P + T) (attention logits, soft-capped
    logits, probabilities) + 5 x ffw_hidden (gate and up projections, GELU,
    product) + 2 x embed_dim values;
  - one float32 [rows, P + T - 1, chunk] slice of the logits: the update
    log-softmaxes the vocabulary `rl.VOCAB_CHUNK` entries at a time;
  - with full fine-tuning, ~4 float32 copies of the device's shard of the
    embedding table (the chunked decode's stacked gradients and their sum);
  - with k > 0, the float32 gradient accumulator.
  These coefficients are read off XLA:CPU's buffer assignment, where every
  bfloat16 matmul runs in float32 (a TPU / GPU compile keeps bfloat16
  activations and weights: about half); they reproduce the compiled Gemma 2
  2B update to a few percent.

Other activations, and XLA's smaller temporaries, are not counted.
`format_plan` prints it (``python -m bon_jax.main --dry_run``).

Example::

  p = capacity.plan(config, num_devices=8)
  print(capacity.format_plan(p))
  p["per_device_bytes"]["params"]
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bon_jax import algorithms
from bon_jax import config_lib
from bon_jax import input_pipeline
from bon_jax import models
from bon_jax import optim
from bon_jax import rl as rl_lib
from bon_jax import sharding
from bon_jax import tokenizer as tokenizer_lib
from bon_jax import trainer_lib
from bon_jax import verifier as verifier_lib
from bon_jax.tasks import countdown

GIB = 1024**3


def _vocab_size(config: ml_collections.ConfigDict) -> int:
  fixed = models.PRESETS[config.model.preset].vocab_size
  if fixed is not None:
    return fixed
  if config.tokenizer.kind == "task":
    return tokenizer_lib.task_tokenizer().vocab_size
  return tokenizer_lib.load_tokenizer(config.tokenizer.path).vocab_size


def _prompt_len(config: ml_collections.ConfigDict) -> tuple[int, str]:
  """(P, where it comes from): ``task.max_prompt_tokens``, else measured."""
  configured = config.task.get("max_prompt_tokens", 0)
  if configured:
    return int(configured), "config.task.max_prompt_tokens"
  if config.task.name != "countdown" or config.tokenizer.kind != "task":
    raise ValueError("set config.task.max_prompt_tokens (the longest prompt, in tokens)"
                     " for the capacity plan")
  # The test split is drawn from its own stream (num_train does not change it).
  options = {k: tuple(v) if isinstance(v, list) else v
             for k, v in config.task.to_dict().items() if k not in ("name", "num_train")}
  _, test = countdown.make_splits(num_train=0, **options)
  tok = tokenizer_lib.task_tokenizer()
  width = input_pipeline.encode_prompts(tok, [countdown.prompt_text(p) for p in test]).shape[1]
  return int(width), "measured on the countdown test split"


def _stages(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """The ``rl`` settings of every fine-tuning stage (``rl`` + ``rl_overrides``)."""
  if "rl" not in config:
    return []
  if "algorithms" not in config:
    return [config.rl]  # A config for `rl.train_rl` alone.
  names = tuple(config.algorithms)  # () = no fine-tuning stage.
  return [config_lib.stage_config(config, name).rl for name in names]


def kv_cache_bytes(
    tc: Any, *, batch: int, num_samples: int, prompt_len: int, max_new_tokens: int,
    dtype: Any, mesh_shape: tuple[int, int, int],
) -> dict[str, int]:
  """Bytes of `sampling.sample`'s KV cache, in total and on the most loaded device.

  Args:
    tc: the gemma `TransformerConfig`.
    batch, num_samples, prompt_len, max_new_tokens: B, N, P, T.
    dtype: the params' dtype (the cache takes it).
    mesh_shape: (data, fsdp, tensor).

  Returns:
    {"total", "per_device"} bytes.
  """
  itemsize = np.dtype(dtype).itemsize
  suffix = max(max_new_tokens - 1, 1)
  per_token = tc.num_layers * 2 * tc.num_kv_heads * tc.head_dim * itemsize
  total = per_token * (batch * prompt_len + batch * num_samples * suffix)
  sizes = dict(zip(sharding.AXES, mesh_shape))
  kv_split = sizes["tensor"] if tc.num_kv_heads % sizes["tensor"] == 0 else 1
  per_head_token = per_token // tc.num_kv_heads * -(-tc.num_kv_heads // kv_split)

  def rows(n):
    """Rows of a [n, ...] batch on one device (`sharding.batch_spec_for`)."""
    entry = tuple(sharding.batch_spec_for((n,), mesh_shape))
    if not entry or entry[0] is None:
      return n
    axes = (entry[0],) if isinstance(entry[0], str) else tuple(entry[0])
    return -(-n // math.prod(sizes[a] for a in axes))

  # Prompt caches [B, ...] over the batch axes when B divides; the B * N
  # decoding rows likewise (`sampling.sample(mesh=...)`).
  per_device = per_head_token * (rows(batch) * prompt_len + rows(batch * num_samples) * suffix)
  return {"total": int(total), "per_device": int(per_device)}


def plan(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> dict[str, Any]:
  """The capacity plan of `config` (see the module doc); no weights, no devices.

  Args:
    config: an experiment config (configs/*.py).
    num_devices: resolves a -1 in ``config.mesh.shape`` (default: the devices
      of this process). A shape without -1 is planned as given, whatever
      devices this machine has.

  Returns:
    A dict: ``preset``, ``mesh_shape``, ``param_dtype``, ``num_params``,
    ``num_trainable``, ``verifier_num_params`` (0 without a learned verifier),
    ``samplers`` (per sampler: B, N, P, T and the KV cache bytes),
    ``per_device_bytes`` (name -> bytes on the most loaded device),
    ``verifier_step_bytes`` (the verifier training step's terms; {} without
    a verifier stage),
    ``phases`` (what is live together: resident state, RL sampling, RL
    update, evaluation -> bytes) and ``notes``.
  """
  shape = tuple(config.mesh.shape) if "mesh" in config else (-1, 1, 1)
  # A full shape is planned as given (an 8-chip plan on a laptop); a -1 takes
  # `num_devices`, else this host's device count.
  if -1 not in shape and all(isinstance(s, int) and s > 0 for s in shape):
    num_devices = math.prod(shape)
  mesh_shape = sharding.resolve_mesh_shape(shape, num_devices or jax.device_count())
  amesh = sharding.abstract_mesh(mesh_shape)
  vocab = _vocab_size(config)
  lora_rank = int(config.model.lora_rank)
  dtype = jnp.dtype(config.model.dtype)
  model = models.make_model(preset=config.model.preset, vocab_size=vocab, dtype=dtype,
                            lora_rank=lora_rank)
  stages = _stages(config)
  opt_cfg = stages[0] if stages else config.train
  optimizer = optim.for_config(trainer_lib.make_optimizer(opt_cfg), config.model)

  def init_state(rng):
    params = models.init_params(model, rng)
    return trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=optimizer.init(params))

  state = jax.eval_shape(init_state, jax.random.key(0))
  specs = sharding.state_specs(state, amesh)
  params_bytes = sharding.per_device_bytes(state.params, specs.params, amesh)
  mask = models.lora_mask(state.params) if lora_rank else jax.tree.map(lambda _: True, state.params)
  trainable = [x for x, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(mask)) if m]
  trainable_specs = [s for s, m in zip(jax.tree.leaves(specs.params, is_leaf=_is_spec),
                                       jax.tree.leaves(mask)) if m]
  per_device = {
      "params": params_bytes,
      "optimizer_state": sharding.per_device_bytes(state.opt_state, specs.opt_state, amesh),
      "gradients": sharding.per_device_bytes(trainable, trainable_specs, amesh),
  }
  notes = []
  if any(rl.kl_coef > 0 for rl in stages):
    per_device["reference_params"] = params_bytes
    notes.append("reference_params: the frozen policy of the KL term (kl_coef > 0)")

  base = models.base_model(model)
  tc = base.config
  n_batch = mesh_shape[0] * mesh_shape[1]
  layer_params = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(
      models.abstract_params(base)) if str(getattr(path[0], "key", "")).startswith("layer_"))

  def activations_f32(rows_here: int, tokens: int) -> int:
    # Every layer's saved float32 activations of `rows_here` rows of `tokens` tokens, as XLA:CPU
    # compiles a backward pass: 3 [heads, T, T] attention arrays + 5 MLP + 2 residual values per token.
    per_token = 3 * tc.num_heads * tokens + 5 * tc.hidden_dim + 2 * tc.embed_dim
    return 4 * rows_here * tokens * tc.num_layers * per_token

  uses_verifier = any(rl.verifier == "learned" for rl in stages) or (
      "verifier" in config and config.verifier.steps > 0)
  verifier_num = 0
  if uses_verifier:
    vparams = jax.eval_shape(lambda r: verifier_lib.init_verifier(base, r), jax.random.key(0))
    verifier_num = models.num_params(vparams)
    vspecs = sharding.param_specs(vparams, amesh)
    per_device["verifier_params"] = sharding.per_device_bytes(vparams, vspecs, amesh)
    vopt = jax.eval_shape(optax.adamw(1e-4).init, vparams)
    vstate = trainer_lib.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=vparams,
                              opt_state=vopt)
    vstate_specs = sharding.state_specs(vstate, amesh)
    verifier_opt = sharding.per_device_bytes(vopt, vstate_specs.opt_state, amesh)
    notes.append(f"verifier stage only (before RL, without the policy's state): verifier"
                 f" optimizer state {verifier_opt / GIB:.2f} GiB per device")

  prompt_len, prompt_src = _prompt_len(config)
  verifier_step = {}
  if "verifier" in config and config.verifier.steps > 0:
    # One training step of the verifier stage (verifier.make_verifier_step on the mesh): whole
    # groups of num_samples sequences, their rows split over the batch axes.
    vcfg = config.verifier
    group = vcfg.num_samples if vcfg.rank_weight else 1  # BCE alone trains on single sequences.
    groups = max(1, vcfg.batch_size // group)
    micro = int(vcfg.get("microbatch_groups", 0))
    vrows = (micro if 0 < micro < groups else groups) * group  # Sequences live at once.
    vtokens = prompt_len + vcfg.max_new_tokens
    vrows_here = -(-vrows // n_batch) if vrows % n_batch == 0 else vrows
    verifier_step = {
        "verifier_params": per_device["verifier_params"],
        "verifier_gradients": per_device["verifier_params"],
        "verifier_optimizer_state": verifier_opt,
        "verifier_gathered_layers_f32": 8 * layer_params,
        "verifier_activations_f32": activations_f32(vrows_here, vtokens),
    }
    if vcfg.get("remat_blocks", False):
      # As in the rematerialised policy update (below), and one layer's activations: the step's
      # peak is inside a block's recomputation (fitted at 2, 6 and 10 of 2B's layers).
      verifier_step["verifier_gathered_layers_f32"] = 4 * layer_params // tc.num_layers
      verifier_step["verifier_activations_f32"] = (activations_f32(vrows_here, vtokens) // tc.num_layers
                                                   + 4 * 4 * vrows_here * vtokens * tc.embed_dim * tc.num_layers)
    # The float32 gradient of the embedding table (one shard; a microbatch's and its converted copy
    # when accumulating), as XLA:CPU's buffers at the step's peak hold it (bench/compiled_memory.py).
    table = {"embedder": {"input_embedding": jax.ShapeDtypeStruct((vocab, tc.embed_dim), jnp.float32)}}
    table_shard = sharding.per_device_bytes(table, sharding.param_specs(table, amesh), amesh)
    verifier_step["verifier_embedding_grad_f32"] = (2 if 0 < micro < groups else 1) * table_shard
    if 0 < micro < groups:
      verifier_step["verifier_gradient_accumulator_f32"] = sharding.per_device_bytes(
          jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), vparams), vspecs, amesh)
      if vcfg.get("remat_blocks", False):  # A microbatch's float32 gradient of the layers.
        verifier_step["verifier_microbatch_grads_f32"] = int(
            verifier_step["verifier_gradient_accumulator_f32"] * layer_params / verifier_num)
    notes.append(f"verifier step: {vrows_here} of {vrows} sequences of {vtokens} tokens per device"
                 f"{f' per microbatch (verifier.microbatch_groups={micro})' if 0 < micro < groups else ''};"
                 " gathered layers and activations as in the update (bench/compiled_memory.py)")
  samplers = []
  for name, b, n, t in _sampler_shapes(config, stages):
    kv = kv_cache_bytes(tc, batch=b, num_samples=n, prompt_len=prompt_len, max_new_tokens=t,
                        dtype=dtype, mesh_shape=mesh_shape)
    samplers.append({"name": name, "B": b, "N": n, "P": prompt_len, "T": t,
                     "kv_total": kv["total"], "kv_per_device": kv["per_device"]})
  notes.append(f"P = {prompt_len} prompt tokens ({prompt_src})")
  # The sampler's working set, as XLA:CPU compiles `sampling.sample` on the mesh: its rows are
  # split over the batch axes, so every layer's weights are gathered over them once
  # (`sharding.gathered_over_batch_axes`, split over `tensor` only), for the prefill and the
  # whole decoding loop (`sampling._decode_weights(as_matrices=False)`): one copy of every
  # layer, float32 on XLA:CPU (bfloat16 on TPU / GPU: half). The logits are
  # vocabulary-parallel (`sampling._unembedder`): three float32 copies of a device's slice of
  # the table (its bfloat16 -> float32 conversion, all-to-all and transpose).
  sizes = dict(zip(sharding.AXES, mesh_shape))
  vocab_split = math.prod(sizes.values())
  if vocab % vocab_split or tc.embed_dim % sizes["fsdp"]:
    vocab_split = 1
  per_device["sampler_gathered_layers_f32"] = 4 * layer_params // sizes["tensor"]
  per_device["sampler_unembed_f32"] = 3 * 4 * tc.embed_dim * vocab // vocab_split
  sampler_terms = per_device["sampler_gathered_layers_f32"] + per_device["sampler_unembed_f32"]
  if stages:
    rl = stages[0]
    rows = rl.prompts_per_step * (rl.N_prime + algorithms.get(rl.algorithm).expert)
    length = prompt_len + rl.max_new_tokens - 1
    per_device["kv_cache_rl"] = samplers[0]["kv_per_device"]
    micro = int(rl.microbatch_rows)
    if 0 < micro < rows:
      # One microbatch's rows at a time (rl.make_policy_update), over the batch
      # axes when they divide it, else on every device.
      rows, row_shards = micro, n_batch if micro % n_batch == 0 else 1
      per_device["gradient_accumulator_f32"] = sharding.per_device_bytes(
          [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in trainable], trainable_specs, amesh)
      notes.append("gradient_accumulator_f32: the float32 gradient sums over the update's"
                   f" microbatches (rl.microbatch_rows={micro})")
    else:
      row_shards = n_batch

    rows_here = -(-rows // row_shards)
    if rl.remat_blocks:
      # Rematerialised blocks: one layer's gathered float32 weights at a time, four float32
      # copies of every block's input (the saved residual stream), and a microbatch's own
      # float32 gradient beside the accumulator; a layer's activations are transient and,
      # as XLA:CPU schedules the update, not alive at its peak. Fitted to the compiled
      # update at 2, 6 and 10 of Gemma 2 2B's layers (BENCHMARKS.md).
      per_device["update_gathered_layers_f32"] = 4 * layer_params // tc.num_layers
      per_device["update_activations_f32"] = 4 * 4 * rows_here * (length + 1) * tc.embed_dim * tc.num_layers
      if "gradient_accumulator_f32" in per_device:  # The layers' share of it.
        per_device["update_microbatch_grads_f32"] = int(
            per_device["gradient_accumulator_f32"] * layer_params / models.num_params(models.abstract_params(base)))
    else:
      per_device["update_gathered_layers_f32"] = 8 * layer_params
      per_device["update_activations_f32"] = activations_f32(rows_here, length + 1)
    if lora_rank:
      # The adapters' branch of every kernel (gm.nn.LoRA adds x @ A @ B to the frozen
      # einsum's output) is saved beside it: q, k and v, attention output, gating, linear.
      # XLA:CPU keeps these with rematerialised blocks too (math_pass32, LoRA 16, compiled
      # at 2 / 6 layers: 1.55 / 2.42 GiB vs 1.54 / 2.50 planned).
      lora_per_token = (tc.num_heads * tc.head_dim + 2 * tc.num_kv_heads * tc.head_dim + 2 * tc.embed_dim
                        + 2 * tc.hidden_dim)
      per_device["update_lora_activations_f32"] = 4 * rows_here * (length + 1) * tc.num_layers * lora_per_token
    chunks = -(-vocab // rl_lib.VOCAB_CHUNK)
    chunk = -(-vocab // chunks)
    per_device["update_logits_f32"] = rows_here * length * chunk * 4
    table = jax.ShapeDtypeStruct((vocab, tc.embed_dim), jnp.float32)
    table_f32 = sharding.per_device_bytes(
        [table], [sharding.param_specs({"embedder": {"input_embedding": table}}, amesh)["embedder"][
            "input_embedding"]], amesh)
    if not lora_rank:
      per_device["update_embedding_grad_f32"] = 4 * table_f32
    else:
      # No embedding gradient (frozen: trainer_lib.freeze), but XLA:CPU keeps two
      # float32 copies of the device's table shard (the lookup's and the decode's).
      per_device["update_embedding_f32"] = 2 * table_f32
    held = ("one layer's weights gathered, float32 (rl.remat_blocks); update_activations_f32: every"
            " block's saved input" if rl.remat_blocks else
            "every layer's weights gathered, float32, W and W^T; update_activations_f32: every layer's saved"
            " activations")
    notes.append(f"update: {rows_here} of {rows} rows per device; update_gathered_layers_f32: {held}"
                 f" of those rows; update_logits_f32: one float32 [{rows_here}, {length},"
                 f" {chunk}] vocabulary chunk (rl.VOCAB_CHUNK); as XLA:CPU compiles the update"
                 " (bench/compiled_memory.py; bfloat16 on TPU / GPU: about half)")
  resident = sum(per_device.get(k, 0) for k in
                 ("params", "optimizer_state", "reference_params", "verifier_params"))
  phases = {"resident (params, optimizer, reference, verifier)": resident}
  if verifier_step:
    # The verifier stage holds the SFT policy's params beside the verifier's training state.
    phases["verifier step (policy params + the verifier step's terms)"] = (
        params_bytes + sum(verifier_step.values()))
  if stages:
    phases["rl sampling (resident + kv_cache_rl + sampler_*)"] = (
        resident + per_device["kv_cache_rl"] + sampler_terms)
    update = [k for k in ("gradients", "gradient_accumulator_f32", "update_microbatch_grads_f32",
                          "update_gathered_layers_f32",
                          "update_activations_f32", "update_lora_activations_f32", "update_logits_f32",
                          "update_embedding_grad_f32", "update_embedding_f32")
              if k in per_device]
    phases[f"rl update (resident + {' + '.join(update)})"] = resident + sum(per_device[k] for k in update)
  phases["eval sampling (params + its KV cache + sampler_*)"] = (
      params_bytes + samplers[-1]["kv_per_device"] + sampler_terms)
  return {
      "preset": config.model.preset,
      "mesh_shape": mesh_shape,
      "param_dtype": str(dtype),
      "opt_state_dtype": config.model.opt_state_dtype or str(dtype),
      "lora_rank": lora_rank,
      "vocab_size": vocab,
      "num_params": models.num_params(state.params),
      "num_trainable": int(sum(x.size for x in trainable)),
      "verifier_num_params": verifier_num,
      "samplers": samplers,
      "per_device_bytes": per_device,
      "verifier_step_bytes": verifier_step,
      "phases": phases,
      "notes": notes,
  }


def _is_spec(x: Any) -> bool:
  return isinstance(x, jax.sharding.PartitionSpec)


def _sampler_shapes(config, stages) -> list[tuple[str, int, int, int]]:
  """(name, B prompts, N samples, T new tokens) of the RL and eval samplers."""
  out = []
  if stages:
    rl = stages[0]
    out.append(("rl", rl.prompts_per_step, rl.N_prime, rl.max_new_tokens))
  out.append(("eval", config.eval.prompts_per_batch, config.eval.num_samples,
              config.eval.max_new_tokens))
  return out


def format_plan(p: dict[str, Any]) -> str:
  """A plain-text table of `plan`'s numbers (GiB = 2^30 bytes)."""
  d, f, t = p["mesh_shape"]
  lines = [
      f"preset {p['preset']}: {p['num_params']:,} parameters ({p['param_dtype']}),"
      f" {p['num_trainable']:,} trainable"
      + (f" (LoRA rank {p['lora_rank']})" if p["lora_rank"] else "")
      + f", optimizer state {p['opt_state_dtype']}",
      f"mesh (data={d}, fsdp={f}, tensor={t}): {d * f * t} devices",
  ]
  if p["verifier_num_params"]:
    lines.append(f"learned verifier: {p['verifier_num_params']:,} parameters")
  for s in p["samplers"]:
    lines.append(
        f"sampler {s['name']}: prompts int32[{s['B']}, {s['P']}] -> tokens int32[{s['B']},"
        f" {s['N']}, {s['T']}]; KV cache {s['kv_total'] / GIB:.2f} GiB in total,"
        f" {s['kv_per_device'] / GIB:.2f} GiB per device")
  lines.append("per device (most loaded):")
  width = max(len(k) for k in [*p["per_device_bytes"], *p["verifier_step_bytes"]])
  for name, value in p["per_device_bytes"].items():
    lines.append(f"  {name:<{width}}  {value / GIB:8.2f} GiB  ({value:,} bytes)")
  if p["verifier_step_bytes"]:
    lines.append("the verifier step's terms, per device:")
    for name, value in p["verifier_step_bytes"].items():
      lines.append(f"  {name:<{width}}  {value / GIB:8.2f} GiB  ({value:,} bytes)")
  lines.append("peak per device by phase:")
  width = max(len(k) for k in p["phases"])
  for name, value in p["phases"].items():
    lines.append(f"  {name:<{width}}  {value / GIB:8.2f} GiB")
  lines += [f"note: {n}" for n in p["notes"]]
  return "\n".join(lines)


def dry_run(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> dict[str, Any]:
  """Prints `format_plan(plan(config))` (``--dry_run``) and returns the plan."""
  p = plan(config, num_devices=num_devices)
  print(format_plan(p))
  return p
