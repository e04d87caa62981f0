"""Capacity plan: per-device memory and roofline step time of BoN-RL on 8 chips.

Prints the markdown tables of docs/SCALING.md for Gemma 2 2B and 9B with
N' = 32 samples per prompt on a TPU v5e-8 and an 8 x H100 host, over every
(data, fsdp, tensor) mesh of 8 devices. Nothing here runs the model: shapes
come from `jax.eval_shape` (`models.abstract_params`, the optimizer's `init`),
per-device bytes from `bon_jax.sharding` (`param_specs`, `state_specs`,
`per_device_bytes`), and times from public peak numbers (`HARDWARE`). Every
time is an ESTIMATE (a roofline bound plus unoverlapped collectives), not a
measurement.

  python bench/capacity_plan.py            # all tables (markdown) to stdout
  python bench/capacity_plan.py --models gemma2_2b --hardware "TPU v5e-8"

What one BoN-RL step is (`rl.rl_step`): sample N' completions for each of B
prompts (prefill once per prompt, then C decode steps for all B N' rows),
score them, then one weighted log-likelihood update on the B N' sequences of
P + C tokens, with a forward pass of the frozen reference policy for the KL.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

from bon_jax import models  # pylint: disable=g-import-not-at-top
from bon_jax import sharding  # pylint: disable=g-import-not-at-top

GiB = 2**30


@dataclasses.dataclass(frozen=True, kw_only=True)
class Hardware:
  """Public per-chip peak numbers (see `source`)."""

  name: str
  chips: int
  hbm_bytes: float  # per chip
  hbm_bw: float  # bytes/s per chip
  peak_flops: float  # dense bf16 FLOP/s per chip
  link_bw: float  # bytes/s one chip receives in an all-gather (one direction)
  source: str


HARDWARE = {
    "TPU v5e-8": Hardware(
        name="TPU v5e-8", chips=8, hbm_bytes=16 * GiB, hbm_bw=819e9, peak_flops=197e12,
        # 400 GB/s bidirectional ICI per chip; an all-gather receives on half of it.
        link_bw=200e9,
        source="cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s, ICI 400 GB/s bidirectional per chip"),
    "8x H100": Hardware(
        name="8x H100", chips=8, hbm_bytes=80 * GiB, hbm_bw=3.35e12, peak_flops=989e12,
        # NVLink 4: 900 GB/s bidirectional per GPU (through NVSwitch), 450 GB/s each way.
        link_bw=450e9,
        source="nvidia.com/en-us/data-center/h100 (SXM): 989 TFLOP/s dense bf16, 80 GB HBM3 at 3.35 TB/s, NVLink 900 GB/s"),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Workload:
  """One BoN-RL step (the assumptions of docs/SCALING.md)."""

  prompts: int = 16  # B, prompts per step (config.rl.prompts_per_step)
  n_prime: int = 32  # N', samples per prompt
  prompt_len: int = 256  # P, tokens incl. BOS (padded)
  completion_len: int = 512  # C, config.rl.max_new_tokens; every row decodes C steps
  param_bytes: int = 2  # bf16 policy params (and the bf16 reference copy, and the KV cache)
  grad_bytes: int = 4  # f32 gradient accumulator over microbatches
  adam_dtype: str = "float32"  # Adam mu and nu
  logit_copies: int = 5  # f32 [tokens, V] buffers live in rl.policy_loss (see `update_activation_bytes`)
  budget: float = 0.9  # fraction of HBM a plan may use
  sample_chunks: int = 1  # the B prompts are sampled in this many sequential chunks

  @property
  def rows(self) -> int:
    return self.prompts * self.n_prime

  @property
  def seq_len(self) -> int:
    return self.prompt_len + self.completion_len


@dataclasses.dataclass(frozen=True, kw_only=True)
class Dims:
  layers: int
  d: int  # embed_dim
  f: int  # FFN hidden
  heads: int
  kv_heads: int
  head_dim: int
  vocab: int
  params: int  # total parameter count (embedding counted once; it is also the LM head)


def dims(preset: str, abstract) -> Dims:
  p = models.PRESETS[preset]
  return Dims(layers=p.num_layers, d=p.embed_dim, f=p.hidden_dim, heads=p.num_heads,
              kv_heads=p.num_kv_heads, head_dim=p.head_dim, vocab=p.vocab_size,
              params=models.num_params(abstract))


def meshes(chips: int) -> list[tuple[int, int, int]]:
  """Every (data, fsdp, tensor) with product `chips`, tensor a power of 2."""
  out = []
  for t in (1, 2, 4, 8):
    for f in (1, 2, 4, 8):
      if chips % (t * f) == 0:
        out.append((chips // (t * f), f, t))
  return sorted(set(out), key=lambda m: (m[2], m[1]))


# ----------------------------------------------------------------------------
# Memory.


def abstract_states(preset: str, w: Workload):
  """(bf16 params, f32 Adam state) as ShapeDtypeStructs, via jax.eval_shape."""
  model = models.make_model(preset=preset, dtype=jnp.bfloat16)
  abstract = models.abstract_params(model)
  cast = lambda dt: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(dt)), abstract)
  params = cast(jnp.bfloat16)
  # optax.adamw keeps mu and nu in the dtype of what it is given: f32 moments.
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5))
  adam = jax.eval_shape(opt.init, cast(w.adam_dtype))
  return params, adam


def kv_bytes_per_token(dm: Dims, w: Workload) -> int:
  return dm.layers * 2 * dm.kv_heads * dm.head_dim * w.param_bytes


def update_activation_bytes(dm: Dims, w: Workload, m: int, t: int, *, remat: bool) -> int:
  """Activation bytes of the update for m sequences on one device (ESTIMATE).

  Per token and layer, the bf16 tensors autodiff saves: ~8 vectors of width
  D (residual, norms, projections out), q/k/v/attention output (2 N H +
  2 K H), three FFN tensors of width F (gate, up, gelu(gate) * up), and
  ~3 N L attention-score tensors (logits, soft-capped, softmax; XLA's
  attention materialises [N, L, L]). Head / hidden / vocab axes divide by
  the tensor-parallel size t. With remat (one checkpoint per block) only
  the block inputs (D per token per layer) stay, plus one block recomputed.
  The loss adds `logit_copies` f32 [tokens, V / t] buffers: policy logits,
  log-softmax, probabilities (entropy and exact KL), the reference
  log-softmax, and the logits' gradient.
  """
  tokens = m * w.seq_len
  kv_t = t if dm.kv_heads % t == 0 else 1
  per_layer = 2 * (8 * dm.d + (2 * dm.heads * dm.head_dim + 3 * dm.f + 3 * dm.heads * w.seq_len) / t
                   + 2 * dm.kv_heads * dm.head_dim / kv_t)
  logits = w.logit_copies * 4 * dm.vocab / t
  if remat:
    body = dm.layers * 2 * dm.d + per_layer
  else:
    body = dm.layers * per_layer
  return int(tokens * (body + logits))


def memory(preset: str, hw: Hardware, mesh: tuple[int, int, int], w: Workload, cache) -> dict:
  """Per-device bytes of every buffer, and the largest microbatch that fits."""
  if preset not in cache:
    params, adam = abstract_states(preset, w)
    cache[preset] = (params, adam, dims(preset, params))
  params, adam, dm = cache[preset]
  d, f, t = mesh
  p_specs = sharding.param_specs(params, mesh)
  param_b = sharding.per_device_bytes(params, p_specs, mesh)
  grads_b = param_b * w.grad_bytes // w.param_bytes
  adam_b = sharding.per_device_bytes(adam, sharding.state_specs(adam, mesh), mesh)
  ref_b = param_b
  batch_shards = d * f
  kv_t = t if dm.kv_heads % t == 0 else 1
  kv_tokens = w.prompts * w.prompt_len + w.rows * w.completion_len
  kv_b = kv_tokens * kv_bytes_per_token(dm, w) // (batch_shards * kv_t * w.sample_chunks)
  budget = w.budget * hw.hbm_bytes
  sampling_peak = param_b + ref_b + adam_b + kv_b
  persistent_update = param_b + ref_b + adam_b + grads_b
  rows_local = w.rows // batch_shards
  m = rows_local
  while m >= 1 and persistent_update + update_activation_bytes(dm, w, m, t, remat=True) > budget:
    m //= 2
  fits = m >= 1 and sampling_peak <= budget
  m_eff = max(m, 1)
  act_remat = update_activation_bytes(dm, w, m_eff, t, remat=True)
  act_full = update_activation_bytes(dm, w, m_eff, t, remat=False)
  return dict(
      dims=dm, params=param_b, grads=grads_b, adam=adam_b, ref=ref_b, kv=kv_b,
      act_remat=act_remat, act_noremat=act_full, microbatch=m, rows_local=rows_local,
      peak=max(sampling_peak, persistent_update + act_remat), fits=fits,
      noremat_fits=persistent_update + act_full <= budget)


# ----------------------------------------------------------------------------
# Time (roofline + collectives, not overlapped).


def step_time(mem: dict, hw: Hardware, mesh: tuple[int, int, int], w: Workload) -> dict:
  """Seconds per phase; every number is an estimate (see docs/SCALING.md)."""
  dm: Dims = mem["dims"]
  d, f, t = mesh
  n = hw.chips
  pbytes_full = dm.params * w.param_bytes  # all bf16 params
  attn_mac = dm.layers * dm.heads * dm.head_dim  # per token per context position
  kv_t = t if dm.kv_heads % t == 0 else 1
  rows_local = mem["rows_local"]
  chunks = w.sample_chunks
  rows_chunk = rows_local / chunks

  # Prefill: B prompts of P tokens, compute-bound.
  prefill_flops = w.prompts * w.prompt_len * (2 * dm.params + 4 * attn_mac * w.prompt_len)
  t_prefill = prefill_flops / (n * hw.peak_flops)

  # Decode: C steps; each reads this device's (gathered) params and its KV cache shard.
  ctx = w.prompt_len + w.completion_len  # the whole static cache is attended (masked)
  flops_row = 2 * dm.params + 4 * attn_mac * ctx
  dec_flops_dev = rows_chunk * flops_row / t
  dec_bytes_dev = pbytes_full / t + (
      (w.prompts * w.prompt_len + w.rows * w.completion_len) * kv_bytes_per_token(dm, w)
      / ((d * f) * kv_t * chunks))
  dec_comm = 0.0
  if f > 1:  # FSDP: every decode step all-gathers the params over fsdp.
    dec_comm += pbytes_full / t * (f - 1) / f / hw.link_bw
  if t > 1:  # Megatron: 2 all-reduces of [rows, D] per layer.
    dec_comm += dm.layers * 2 * 2 * (t - 1) / t * rows_chunk * dm.d * 2 / hw.link_bw
  t_step = max(dec_flops_dev / hw.peak_flops, dec_bytes_dev / hw.hbm_bw) + dec_comm
  t_decode = chunks * w.completion_len * t_step
  # Rows per device at which reading the params stops dominating (KV reads ignored) ...
  crossover = hw.peak_flops / hw.hbm_bw * w.param_bytes / 2
  # ... and with each row's KV reads (prompt cache shared by its N' rows): compute-bound
  # only if a row's FLOPs outweigh its KV bytes at the machine balance, else never.
  kv_row = (w.prompt_len / w.n_prime + w.completion_len) * kv_bytes_per_token(dm, w) / kv_t
  spare = flops_row / t * hw.hbm_bw / hw.peak_flops - kv_row
  crossover_kv = pbytes_full / t / spare if spare > 0 else math.inf

  # Update: policy fwd + bwd (6), reference fwd (2), remat re-forward (2); attention on full L x L.
  tokens = w.rows * w.seq_len
  attn_fwd = 4 * attn_mac * w.seq_len
  upd_flops = tokens * ((6 + 2 + 2) * dm.params + (3 + 1 + 1) * attn_fwd)
  t_upd_compute = upd_flops / (n * hw.peak_flops)
  m = max(mem["microbatch"], 1)
  n_micro = math.ceil(rows_local / m)
  upd_comm = 0.0
  if f > 1:  # per microbatch: gather for policy fwd, remat fwd + bwd, ref fwd; reduce-scatter grads
    upd_comm += n_micro * 4 * pbytes_full / t * (f - 1) / f / hw.link_bw
  if d > 1:  # one all-reduce of this device's gradient shard per step
    upd_comm += 2 * (d - 1) / d * dm.params * w.grad_bytes / (f * t) / hw.link_bw
  if t > 1:  # 2 all-reduces per layer in each of fwd, remat fwd, bwd, ref fwd
    upd_comm += (n_micro * dm.layers * 8 * 2 * (t - 1) / t * m * w.seq_len * dm.d * 2
                 / hw.link_bw)
  t_update = t_upd_compute + upd_comm
  return dict(
      prefill=t_prefill, decode=t_decode, decode_step=t_step, decode_comm=dec_comm * w.completion_len,
      decode_bound="compute" if dec_flops_dev / hw.peak_flops > dec_bytes_dev / hw.hbm_bw else "memory",
      decode_flops=w.rows * w.completion_len * flops_row,
      decode_bytes_dev=dec_bytes_dev * w.completion_len * chunks,
      crossover=crossover, crossover_kv=crossover_kv, kv_row=kv_row, rows_chunk=rows_chunk,
      update=t_update, update_compute=t_upd_compute, update_comm=upd_comm,
      update_flops=upd_flops, n_micro=n_micro, total=t_prefill + t_decode + t_update)


# ----------------------------------------------------------------------------
# Tables.


def _gb(x: float) -> str:
  return f"{x / GiB:.2f}"


def _s(x: float) -> str:
  return f"{x:.2f} s" if x >= 0.1 else f"{x * 1e3:.1f} ms"


def plan(models_: list[str], hardware: list[str], w: Workload) -> list[dict]:
  cache: dict = {}
  rows = []
  for preset in models_:
    for hw_name in hardware:
      hw = HARDWARE[hw_name]
      for mesh in meshes(hw.chips):
        mem = memory(preset, hw, mesh, w, cache)
        rows.append(dict(preset=preset, hw=hw, mesh=mesh, mem=mem, time=step_time(mem, hw, mesh, w)))
  return rows


def recommended(rows: list[dict]) -> dict:
  """The fitting mesh with the smallest estimated step time (None if none fits)."""
  ok = [r for r in rows if r["mem"]["fits"]]
  return min(ok, key=lambda r: r["time"]["total"]) if ok else None


def markdown(rows: list[dict], w: Workload) -> str:
  out = []
  dm0 = {r["preset"]: r["mem"]["dims"] for r in rows}
  out.append("### Models (from `jax.eval_shape`)\n")
  out.append("| model | params | layers | D | F | heads / kv heads x head_dim | vocab | KV cache / token (bf16) |")
  out.append("|---|---|---|---|---|---|---|---|")
  for p, dm in dm0.items():
    out.append(f"| {p} | {dm.params / 1e9:.3f} B | {dm.layers} | {dm.d} | {dm.f} | {dm.heads} / {dm.kv_heads} x {dm.head_dim}"
               f" | {dm.vocab} | {kv_bytes_per_token(dm, w) / 1024:.0f} KiB |")
  out.append("")
  groups = itertools.groupby(rows, key=lambda r: (r["preset"], r["hw"].name))
  summary = []
  for (preset, hw_name), grp in groups:
    grp = list(grp)
    hw = grp[0]["hw"]
    out.append(f"### {preset} on {hw_name} (per device; HBM {hw.hbm_bytes / GiB:.0f} GiB, budget"
               f" {w.budget:.0%})\n")
    out.append("| mesh (data, fsdp, tensor) | params | grads | Adam | ref params | KV cache | act./device remat (no remat) |"
               " microbatch / device | peak GiB | fits | prefill | decode | update | step (est.) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in grp:
      m, tm = r["mem"], r["time"]
      mb = (f"{m['microbatch']} of {m['rows_local']} ({tm['n_micro']} passes)" if m["microbatch"] >= 1
            else "none fits")
      out.append(
          f"| {r['mesh']} | {_gb(m['params'])} | {_gb(m['grads'])} | {_gb(m['adam'])} | {_gb(m['ref'])} |"
          f" {_gb(m['kv'])} | {_gb(m['act_remat'])} ({_gb(m['act_noremat'])}{'' if m['noremat_fits'] else ', over'}) |"
          f" {mb} | {_gb(m['peak'])} | {'yes' if m['fits'] else 'no'} | {_s(tm['prefill'])} |"
          f" {_s(tm['decode'])} | {_s(tm['update'])} | {_s(tm['total']) if m['fits'] else '-'} |")
    rec = recommended(grp)
    out.append("")
    if rec is None:
      out.append("No mesh of these fits: more chips (or fewer rows per step / shorter sequences) are needed.\n")
      summary.append((preset, hw_name, None))
      continue
    tm, m = rec["time"], rec["mem"]
    summary.append((preset, hw_name, rec))
    out.append(f"Recommended (fastest estimate that fits): mesh {rec['mesh']}, update microbatch"
               f" {m['microbatch']} sequences per device.")
    roomy = [r for r in grp if r["mem"]["fits"] and r["mem"]["peak"] <= 0.75 * hw.hbm_bytes and r is not rec]
    if rec["mem"]["peak"] > 0.75 * hw.hbm_bytes and roomy:
      alt = min(roomy, key=lambda r: r["time"]["total"])
      out.append(f"With more headroom (peak <= 75% of HBM): mesh {alt['mesh']},"
                 f" {_gb(alt['mem']['peak'])} GiB, step {_s(alt['time']['total'])}.")
    kv_cross = ("never (a row's KV reads, "
                f"{tm['kv_row'] / 1e6:.0f} MB per step, outweigh its FLOPs at the machine balance)"
                if math.isinf(tm["crossover_kv"]) else f"{tm['crossover_kv']:.0f} rows")
    out.append(f"- decode: {w.sample_chunks * w.completion_len} steps x {_s(tm['decode_step'])} = {_s(tm['decode'])}"
               f" ({tm['decode_bound']}-bound, collectives {_s(tm['decode_comm'])});"
               f" {tm['decode_flops'] / 1e15:.1f} PFLOP in all, {tm['decode_bytes_dev'] / 1e9:.0f} GB read per"
               f" device. {tm['rows_chunk']:.0f} rows per device decode together; reading the params alone"
               f" stops dominating at {tm['crossover']:.0f} rows, with the KV cache: {kv_cross}.")
    out.append(f"- update: {tm['update_flops'] / 1e15:.1f} PFLOP / ({hw.chips} x {hw.peak_flops / 1e12:.0f} TFLOP/s)"
               f" = {_s(tm['update_compute'])} + collectives {_s(tm['update_comm'])}"
               f" ({tm['n_micro']} microbatch passes)")
    out.append(f"- step: prefill {_s(tm['prefill'])} + decode {_s(tm['decode'])} + update {_s(tm['update'])}"
               f" = **{_s(tm['total'])}** (roofline estimate, not measured)\n")
  out.append("### Summary (estimates)\n")
  out.append("| model | hardware | recommended mesh | peak GiB / device | step (est.) | samples / s (est.) |")
  out.append("|---|---|---|---|---|---|")
  for preset, hw_name, rec in summary:
    if rec is None:
      out.append(f"| {preset} | {hw_name} | does not fit | - | - | - |")
    else:
      out.append(f"| {preset} | {hw_name} | {rec['mesh']} | {_gb(rec['mem']['peak'])} | {_s(rec['time']['total'])} |"
                 f" {w.rows / rec['time']['total']:.0f} |")
  return "\n".join(out)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", nargs="+", default=["gemma2_2b", "gemma2_9b"], choices=sorted(models.PRESETS))
  ap.add_argument("--hardware", nargs="+", default=list(HARDWARE), choices=list(HARDWARE))
  ap.add_argument("--prompts", type=int, default=Workload.prompts)
  ap.add_argument("--n-prime", type=int, default=Workload.n_prime)
  ap.add_argument("--prompt-len", type=int, default=Workload.prompt_len)
  ap.add_argument("--completion-len", type=int, default=Workload.completion_len)
  ap.add_argument("--grad-bytes", type=int, default=Workload.grad_bytes, choices=(2, 4))
  ap.add_argument("--adam-dtype", default=Workload.adam_dtype, choices=("float32", "bfloat16"))
  ap.add_argument("--sample-chunks", type=int, default=Workload.sample_chunks)
  a = ap.parse_args(argv)
  w = Workload(prompts=a.prompts, n_prime=a.n_prime, prompt_len=a.prompt_len, completion_len=a.completion_len,
               grad_bytes=a.grad_bytes, adam_dtype=a.adam_dtype, sample_chunks=a.sample_chunks)
  print(f"Workload: B={w.prompts} prompts x N'={w.n_prime} = {w.rows} rows; P={w.prompt_len},"
        f" C={w.completion_len} (L={w.seq_len}); bf16 params, ref params and KV cache;"
        f" {w.adam_dtype} Adam mu/nu; {8 * w.grad_bytes}-bit gradient accumulator; prompts sampled in"
        f" {w.sample_chunks} chunk(s); HBM budget {w.budget:.0%}.\n")
  print(markdown(plan(a.models, a.hardware, w), w))


if __name__ == "__main__":
  main(sys.argv[1:])
