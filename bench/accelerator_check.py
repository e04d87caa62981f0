"""One command for an accelerator: sampler and update at Gemma 2 2B shape, measured.

On one GPU or TPU (in ~8 minutes), with random bfloat16 Gemma 2 2B weights:

* sampler: `sampling.sample` on 8 prompts x N = 32 samples, 512-token
  prompts, 256 new tokens (EOS off: every sample is full length), beside
  ``gm.text.Sampler`` on the same work (the prompts repeated N times; it has
  no samples-per-prompt option); tokens/s, and the fraction of the
  HBM-bandwidth roofline (every decode step reads the weights and the KV cache
  written so far once; the chip's bandwidth from `PEAKS`, else measured);
* the BoN-aware policy update (`rl.make_policy_update`, AdamW, microbatched
  as the paper configs are): step time and model-FLOP utilisation, with LoRA
  (rank 16) and with full fine-tuning;
* memory: XLA's compiled figure (`compile().memory_analysis()`: arguments +
  outputs + temporaries - aliased) beside the allocator's measured peak
  (`device.memory_stats()["peak_bytes_in_use"]`) of each program, each in a
  process of its own so the peaks are its own.

Writes the results as JSON (``--out``) and, with ``--write``, as a block of
BENCHMARKS.md; prints whether the issue's goals are met (sampler >= 3x
gm.text.Sampler and >= 50 % of the roofline; update >= 40 % of peak FLOPs).
``--smoke`` runs the same code at a reduced shape on CPU in well under a
minute (CI runs it: tests/test_accelerator_check.py); its numbers say
nothing about an accelerator.

  python bench/accelerator_check.py --out /tmp/accel.json --write   # on the accelerator host
  python bench/accelerator_check.py --smoke --out /tmp/smoke.json   # CPU, reduced shape
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "--smoke" in sys.argv:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # Compiling dominates a smoke run; LLVM's expensive passes would triple it, for nothing.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                             " --xla_llvm_disable_expensive_passes=true")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]
from bon_jax import models  # pylint: disable=g-import-not-at-top
from bon_jax import optim  # pylint: disable=g-import-not-at-top
from bon_jax import rl  # pylint: disable=g-import-not-at-top
from bon_jax import sampling  # pylint: disable=g-import-not-at-top
from bon_jax import trainer_lib  # pylint: disable=g-import-not-at-top
import sampler_bench  # pylint: disable=g-import-not-at-top  (bench/: the gm.text.Sampler peer)

BEGIN = "<!-- accelerator-check:begin -->"
END = "<!-- accelerator-check:end -->"
GiB = 2**30

# Public per-chip peaks, matched on `device_kind`: HBM bytes/s, dense bf16
# FLOP/s. A chip not listed gets measured stand-ins (`measured_peaks`).
PEAKS = {
    "H200": (4.8e12, 989e12),
    "H100": (3.35e12, 989e12),  # SXM.
    "A100": (2.0e12, 312e12),  # 80 GB SXM.
    "L4": (0.3e12, 121e12),
    "TPU v6": (1.64e12, 918e12),
    "TPU v5 lite": (0.819e12, 197e12),  # v5e.
    "TPU v5e": (0.819e12, 197e12),
    "TPU v5p": (2.765e12, 459e12),
    "TPU v5": (2.765e12, 459e12),
    "TPU v4": (1.2e12, 275e12),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Shape:
  preset: str
  vocab: int | None
  prompts: int  # sampler: B
  samples: int  # N
  prompt_len: int
  new_tokens: int
  update_rows: int  # rows of one update (the per-chip share of a config's B x N')
  update_len: int  # prompt + completion tokens per row
  microbatch_rows: int
  lora_rank: int
  repeats: int


FULL = Shape(preset="gemma2_2b", vocab=None, prompts=8, samples=32, prompt_len=512, new_tokens=256,
             # math_bon32 / math_pass32 on 8 chips: 512 rows of 1024 + 512 tokens per step, 64 per
             # chip; microbatches of 8 rows as configured (the 8-way mesh's 1 row per chip, x8 here
             # since one chip holds the whole microbatch).
             update_rows=64, update_len=1536, microbatch_rows=8, lora_rank=16, repeats=3)
SMOKE = Shape(preset="micro", vocab=512, prompts=2, samples=4, prompt_len=16, new_tokens=8,
              update_rows=8, update_len=24, microbatch_rows=4, lora_rank=4, repeats=2)
STAGES = ("sampler", "gemma_sampler", "update_lora", "update_full")


def peaks(device) -> tuple[float, float, str]:
  for kind, (bw, flops) in PEAKS.items():
    if kind.lower() in device.device_kind.lower():
      return bw, flops, f"public peaks of {kind}"
  bw, flops = measured_peaks()
  return bw, flops, "measured (copy bandwidth, bf16 matmul), not a public peak"


def measured_peaks() -> tuple[float, float]:
  """Stand-ins where the chip is unknown (and on CPU): best of 5 runs."""
  n = 1 << 26  # 128 MiB of bf16.
  x = jnp.ones((n,), jnp.bfloat16)
  copy = jax.jit(lambda a: a + 1)
  a = jnp.ones((2048, 2048), jnp.bfloat16)
  mm = jax.jit(lambda a: a @ a)
  times = {"copy": [], "mm": []}
  copy(x).block_until_ready(), mm(a).block_until_ready()
  for _ in range(5):
    t = time.perf_counter(); copy(x).block_until_ready(); times["copy"].append(time.perf_counter() - t)
    t = time.perf_counter(); mm(a).block_until_ready(); times["mm"].append(time.perf_counter() - t)
  return 2 * 2 * n / min(times["copy"]), 2 * 2048**3 / min(times["mm"])


def memory(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
  out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def measured_peak() -> int | None:
  stats = jax.devices()[0].memory_stats()  # None on CPU.
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def timed(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _model(shape: Shape, lora_rank: int = 0):
  return models.make_model(preset=shape.preset, vocab_size=shape.vocab, dtype=jnp.bfloat16,
                           lora_rank=lora_rank)


def _params(model):
  # Initialised on the chip (no host copy of the whole tree).
  return jax.jit(models.init_params, static_argnums=0)(model, jax.random.key(0))


def _prompts(shape: Shape, vocab: int) -> np.ndarray:
  rng = np.random.default_rng(0)
  p = rng.integers(3, vocab, (shape.prompts, shape.prompt_len)).astype(np.int32)
  p[:, 0] = models.BOS_ID
  return p


def weight_bytes(params) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


def roofline_seconds(config, shape: Shape, param_bytes: int, bw: float) -> float:
  """Decode at the HBM-bandwidth bound: each step reads the weights and the KV cache once.

  Every prompt's cache is read once for its N samples (the sampler shares it);
  each sample's own cache grows by a token per step. Prefill is not counted
  (compute bound, and short beside 256 decode steps).
  """
  kv_token = config.num_layers * 2 * config.num_kv_heads * config.head_dim * 2  # bf16 K and V.
  prompt_kv = shape.prompts * shape.prompt_len * kv_token
  rows = shape.prompts * shape.samples
  total = sum(param_bytes + prompt_kv + rows * t * kv_token for t in range(shape.new_tokens))
  return total / bw


def stage_sampler(shape: Shape, peer: bool) -> dict:
  model = _model(shape)
  params = _params(model)
  prompts = _prompts(shape, model.config.num_embed)
  never = model.config.num_embed + 7  # A stop token outside the vocabulary: full-length samples.
  setup = sampler_bench.Setup(model=model, params=params, prompts=prompts, num_samples=shape.samples,
                              new_tokens=shape.new_tokens, never=never)
  tokens = shape.prompts * shape.samples * shape.new_tokens
  out = {"tokens": tokens}
  if peer:
    run = sampler_bench.make_gemma(setup)
    t0 = time.perf_counter()
    got = run(0)
    out["compile_and_first_s"] = time.perf_counter() - t0
    assert got == tokens, (got, tokens)
    seconds = timed(lambda: run(1), shape.repeats)
  else:
    args = (model, params, jnp.asarray(prompts), jax.random.key(0))
    kw = dict(num_samples=shape.samples, max_new_tokens=shape.new_tokens, temperature=1.0, eos_id=None)
    t0 = time.perf_counter()
    # The program `sampling.sample` runs (its jitted core), compiled on its own for XLA's figure.
    compiled = sampling._sample.lower(  # pylint: disable=protected-access
        model, params, args[2], args[3], jnp.float32(1.0), jnp.float32(1.0), num_samples=shape.samples,
        max_new_tokens=shape.new_tokens, top_k=None, use_top_p=False, eos_id=None).compile()
    out["compile_s"] = time.perf_counter() - t0
    out["compiled_bytes"] = memory(compiled)
    got = sampling.sample(*args, **kw)
    assert int(np.asarray(got.lengths).sum()) == tokens
    seconds = timed(lambda: sampling.sample(*args, **kw).tokens, shape.repeats)
    out["param_bytes"] = weight_bytes(params)
  out.update(seconds=seconds, tokens_per_s=tokens / seconds, measured_peak_bytes=measured_peak())
  return out


def update_flops(config, shape: Shape, lora: bool) -> float:
  """Model FLOPs of one update: 2 per weight per token forward (+ attention), x3 full / x2 LoRA.

  LoRA still back-propagates through every layer (activation gradients) but
  computes no base-weight gradients: 2 forward-equivalents, not 3. The
  adapters' own FLOPs are negligible at rank 16.
  """
  d, f, h, k, hd = config.embed_dim, config.hidden_dim, config.num_heads, config.num_kv_heads, config.head_dim
  per_layer = d * h * hd + 2 * d * k * hd + h * hd * d + 3 * d * f
  tokens = shape.update_rows * shape.update_len
  matmul = 2 * tokens * (config.num_layers * per_layer + config.num_embed * d)
  # Causal attention: QK^T and AV over on average half the row.
  attention = 2 * 2 * config.num_layers * shape.update_rows * h * hd * shape.update_len**2 / 2
  return (2 if lora else 3) * (matmul + attention)


def _update_batch(shape: Shape, vocab: int) -> dict:
  from microbatch_bench import random_batch  # pylint: disable=g-import-not-at-top  (bench/)

  b = max(1, shape.update_rows // 8)
  return random_batch(vocab, b, shape.update_rows // b, shape.update_len)


def stage_update(shape: Shape, lora: bool) -> dict:
  model = _model(shape, shape.lora_rank if lora else 0)
  base = _params(models.base_model(model))
  params = models.ensure_adapters(model, base, jax.random.key(1))
  del base
  opt = optim.finetune(optax.adamw(1e-6), lora=lora, state_dtype="float32")
  update = rl.make_policy_update(model, opt, microbatch_rows=shape.microbatch_rows)
  batch = _update_batch(shape, models.base_model(model).config.num_embed)
  state = trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt.init(params))
  t0 = time.perf_counter()
  compiled = update.lower(state, None, batch).compile()
  out = {"compile_s": time.perf_counter() - t0, "compiled_bytes": memory(compiled)}
  state, _ = compiled(state, None, batch)  # Warm-up.
  times = []
  for _ in range(shape.repeats):
    t = time.perf_counter()
    state, metrics = compiled(state, None, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  flops = update_flops(models.base_model(model).config, shape, lora)
  out.update(seconds=statistics.median(times), model_flops=flops, measured_peak_bytes=measured_peak(),
             rows=shape.update_rows, length=shape.update_len, microbatch_rows=shape.microbatch_rows)
  return out


def run_stage(name: str, shape: Shape) -> dict:
  if name in ("sampler", "gemma_sampler"):
    return stage_sampler(shape, peer=name == "gemma_sampler")
  return stage_update(shape, lora=name == "update_lora")


def summarize(results: dict, shape: Shape) -> dict:
  dev = jax.devices()[0]
  bw, flops, source = peaks(dev)
  config = models.transformer_config(shape.preset, shape.vocab)
  s, g = results.get("sampler", {}), results.get("gemma_sampler", {})
  summary = {"device": f"{dev.platform} ({dev.device_kind})", "peaks_source": source,
             "hbm_bytes_per_s": bw, "peak_flops": flops}
  if "seconds" in s:
    summary["sampler_roofline_fraction"] = roofline_seconds(config, shape, s["param_bytes"], bw) / s["seconds"]
  if "seconds" in s and "seconds" in g:
    summary["sampler_speedup_vs_gemma"] = g["seconds"] / s["seconds"]
  for name in ("update_lora", "update_full"):
    u = results.get(name, {})
    if "seconds" in u:
      summary[f"{name}_mfu"] = u["model_flops"] / u["seconds"] / flops
  goals = {
      "sampler >= 3x gm.text.Sampler": summary.get("sampler_speedup_vs_gemma", 0) >= 3,
      "sampler >= 50% of HBM roofline": summary.get("sampler_roofline_fraction", 0) >= 0.5,
      "update (full) >= 40% of peak FLOPs": summary.get("update_full_mfu", 0) >= 0.4,
      "update (LoRA) >= 40% of peak FLOPs": summary.get("update_lora_mfu", 0) >= 0.4,
  }
  summary["goals"] = goals
  return summary


def render(report: dict) -> str:
  sh, res, sm = report["shape"], report["results"], report["summary"]
  gb = lambda b: "n/a" if b is None else f"{b / GiB:.2f}"
  lines = [BEGIN, "",
           f"Command: `{report['command']}` ({report['seconds']:.0f} s in all). Device: {sm['device']};"
           f" peaks: {sm['peaks_source']} ({sm['hbm_bytes_per_s'] / 1e9:.0f} GB/s,"
           f" {sm['peak_flops'] / 1e12:.1f} TFLOP/s).", "",
           f"Sampler: {sh['preset']}, random bf16 weights, {sh['prompts']} prompts x N = {sh['samples']},"
           f" {sh['prompt_len']}-token prompts, {sh['new_tokens']} new tokens.", "",
           "| sampler | tokens/s | s per call | compiled GiB | measured peak GiB |", "|---|---|---|---|---|"]
  for name, label in (("sampler", "bon_jax `sampling.sample`"), ("gemma_sampler", "`gm.text.Sampler`")):
    r = res.get(name, {})
    if "error" in r:
      lines.append(f"| {label} | failed: {r['error'][:120]} | | | |")
    elif r:
      lines.append(f"| {label} | {r['tokens_per_s']:.0f} | {r['seconds']:.2f} |"
                   f" {gb(r.get('compiled_bytes', {}).get('total'))} | {gb(r['measured_peak_bytes'])} |")
  if "sampler_roofline_fraction" in sm:
    lines += ["", f"Sampler at {100 * sm['sampler_roofline_fraction']:.0f} % of the HBM-bandwidth roofline"
              + (f"; {sm['sampler_speedup_vs_gemma']:.2f}x gm.text.Sampler." if "sampler_speedup_vs_gemma" in sm
                 else ".")]
  lines += ["", f"Policy update (AdamW, float32 moments): {sh['update_rows']} rows x {sh['update_len']}"
            f" tokens, microbatches of {sh['microbatch_rows']} rows.", "",
            "| update | step s | MFU | compiled GiB | measured peak GiB |", "|---|---|---|---|---|"]
  for name, label in (("update_lora", f"LoRA (rank {sh['lora_rank']})"), ("update_full", "full fine-tuning")):
    r = res.get(name, {})
    if "error" in r:
      lines.append(f"| {label} | failed: {r['error'][:120]} | | | |")
    elif r:
      lines.append(f"| {label} | {r['seconds']:.2f} | {100 * sm[name + '_mfu']:.1f} % |"
                   f" {gb(r['compiled_bytes'].get('total'))} | {gb(r['measured_peak_bytes'])} |")
  lines += ["", "Goals: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in sm["goals"].items()) + ".",
            "", END]
  return "\n".join(lines)


def write_section(path: str, block: str) -> None:
  text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
  if BEGIN in text and END in text:
    text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
  else:
    text = text.rstrip("\n") + "\n\n## Accelerator check\n\n" + block + "\n"
  with open(path, "w") as f:
    f.write(text)


def _fail(msg: str) -> None:
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--smoke", action="store_true", help="reduced shape on CPU, in-process (CI)")
  ap.add_argument("--out", default="accelerator_check.json", help="JSON results")
  ap.add_argument("--write", action="store_true", help="also replace the block in BENCHMARKS.md")
  ap.add_argument("--stages", default=",".join(STAGES))
  ap.add_argument("--stage", default="", help=argparse.SUPPRESS)  # Child process: one stage.
  args = ap.parse_args()
  shape = SMOKE if args.smoke else FULL
  if args.stage:
    print(json.dumps(run_stage(args.stage, shape)))
    return
  if not args.smoke and jax.devices()[0].platform == "cpu":
    _fail("no GPU or TPU here (jax.devices() is CPU); run with --smoke for the CPU check")
  names = args.stages.split(",")
  for name in names:
    if name not in STAGES:
      _fail(f"unknown stage {name!r}; choose from {STAGES}")
  t0 = time.perf_counter()
  results = {}
  for name in names:
    if args.smoke:
      results[name] = run_stage(name, shape)  # In-process: fast; peaks are n/a on CPU anyway.
    else:
      # A process per stage: its allocator peak is its own, and an out-of-memory stays there.
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--stage={name}"],
                            capture_output=True, text=True)
      lines = proc.stdout.strip().splitlines()
      if proc.returncode or not lines:
        results[name] = {"error": " ".join(proc.stderr.strip().splitlines()[-1:]) or f"exit {proc.returncode}"}
      else:
        results[name] = json.loads(lines[-1])
    print(f"{name}: {json.dumps(results[name])}", flush=True)
  report = {"command": " ".join(["python", "bench/accelerator_check.py", *sys.argv[1:]]),
            "shape": dataclasses.asdict(shape), "results": results, "summary": summarize(results, shape),
            "seconds": time.perf_counter() - t0}
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  block = render(report)
  print(block)
  if args.write:
    write_section(os.path.join(ROOT, "BENCHMARKS.md"), block)


if __name__ == "__main__":
  main()
