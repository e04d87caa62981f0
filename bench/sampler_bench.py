"""Throughput of `bon_jax.sampling.sample` vs. gemma's and Tunix's samplers.

All three samplers run the same tiny Gemma-2 model (the `tiny` preset with a
2560-token vocabulary: 3.8 M parameters, float32, random weights) on the same
prompts, in one process, round-robin, so machine drift hits them alike:

* ours: `sampling.sample(..., num_samples=N)`, one prefill per prompt;
* gemma: `gm.text.Sampler` on the prompts repeated N times (it has no
  samples-per-prompt option), `RandomSampling(temperature=1)`;
* tunix: `tunix.generate.sampler.Sampler` (package google-tunix, the `bench`
  extra) on its own `Gemma` built with the same sizes and loaded with the same
  weights, prompts repeated N times, temperature 1 (top_p=1).

EOS stopping is disabled in all three (the stop token is outside the
vocabulary), so every sample has exactly `--new-tokens` tokens; the script
checks the produced counts. tokens/s = generated tokens / wall time of one
call (prefill + decode + returning the tokens to the host), median over
`--repeats` after one warm-up (compilation) call per sampler and shape.

Usage::

  python bench/sampler_bench.py                      # prints and updates BENCHMARKS.md
  python bench/sampler_bench.py --repeats 3 --no-write

Tunix needs a venv of its own (it pulls transformers etc.); when it cannot be
imported its column is skipped with the reason printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import statistics
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from gemma import gm  # pylint: disable=g-import-not-at-top

from bon_jax import models  # pylint: disable=g-import-not-at-top
from bon_jax import sampling  # pylint: disable=g-import-not-at-top

BEGIN = "<!-- sampler-bench:begin -->"
END = "<!-- sampler-bench:end -->"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setup:
  model: gm.nn.Transformer
  params: models.Params
  prompts: np.ndarray  # int32[B, P], BOS first, no padding
  num_samples: int
  new_tokens: int
  never: int  # a stop token outside the vocabulary


# ----------------------------------------------------------------- samplers


def run_ours(s: Setup, seed: int) -> int:
  out = sampling.sample(
      s.model, s.params, jnp.asarray(s.prompts), jax.random.key(seed),
      num_samples=s.num_samples, max_new_tokens=s.new_tokens,
      temperature=1.0, eos_id=None,
  )
  return int(np.asarray(out.lengths).sum())


class _IdTokenizer:
  """Stub tokenizer for both peers: text is space-separated token ids."""

  FORBIDDEN_TOKENS = ()
  VERSION = 0
  # gemma 4's sampler reads these; FORMAT only formats dialog prompts (ours are text).
  FORMAT = None

  def __init__(self, never: int):
    self._never = never
    # A class, as gemma hashes it into a static jit argument.
    self.special_tokens = type("SpecialTokens", (), dict(
        PAD=models.PAD_ID, BOS=models.BOS_ID, EOS=never, END_OF_TURN=never,
        BEGIN_OF_TOOL_RESPONSE=never,
    ))

  def encode(self, text, *, add_bos: bool = False, **unused_kw):
    ids = [int(x) for x in text.split()]
    return [models.BOS_ID] + ids if add_bos else ids

  def decode(self, ids, **unused_kw):
    del ids
    return ""

  def bos_id(self):
    return models.BOS_ID

  def eos_id(self):
    return self._never

  def pad_id(self):
    return models.PAD_ID


def _texts(s: Setup) -> list[str]:
  """The prompts without BOS (both peers add it), each repeated N times."""
  texts = [" ".join(map(str, p[1:])) for p in s.prompts]
  return [t for t in texts for _ in range(s.num_samples)]


def make_gemma(s: Setup):
  """gm.text.Sampler with an exact-fit cache and no prompt bucketing."""
  sampler = gm.text.Sampler(
      model=s.model,
      params=s.params,
      tokenizer=_IdTokenizer(s.never),
      sampling=gm.text.RandomSampling(temperature=1.0),
      cache_length=s.prompts.shape[1] + s.new_tokens,
      max_out_length=s.new_tokens,
      pad_length=None,
  )
  texts = _texts(s)

  def run(seed: int) -> int:
    out = sampler.sample(
        texts, max_new_tokens=s.new_tokens, rng=seed, return_state=True
    )
    return int(out.state.step) * len(texts)

  return run


def tunix_unavailable() -> str | None:
  try:
    import tunix.generate.sampler  # pylint: disable=g-import-not-at-top,unused-import
  except Exception as e:  # pylint: disable=broad-except
    return f"cannot import tunix ({type(e).__name__}: {e})"
  return None


def make_tunix(s: Setup):
  """tunix Sampler on a tunix Gemma with the same sizes and weights."""
  # pylint: disable=g-import-not-at-top
  from flax import nnx
  from tunix.generate import sampler as tunix_sampler
  from tunix.models.gemma import model as tunix_gemma
  # pylint: enable=g-import-not-at-top

  c = s.model.config
  kinds = {"LOCAL_SLIDING": tunix_gemma.AttentionType.LOCAL_SLIDING,
           "GLOBAL": tunix_gemma.AttentionType.GLOBAL}
  config = tunix_gemma.ModelConfig(
      num_layers=c.num_layers,
      num_embed=c.num_embed,
      embed_dim=c.embed_dim,
      hidden_dim=c.hidden_dim,
      num_heads=c.num_heads,
      head_dim=c.head_dim,
      num_kv_heads=c.num_kv_heads,
      final_logit_softcap=c.final_logit_softcap,
      use_post_attn_norm=c.use_post_attn_norm,
      use_post_ffw_norm=c.use_post_ffw_norm,
      attention_types=[kinds[t.name] for t in c.attention_types],
      attn_logits_soft_cap=c.attn_logits_soft_cap,
      sliding_window_size=c.sliding_window_size,
  )
  transformer = tunix_gemma.module_from_linen_variables(
      module_factory=lambda: tunix_gemma.Gemma(config, rngs=nnx.Rngs(0)),
      variables=s.params,
      map_key_fn=tunix_gemma._map_linen_var_names,  # pylint: disable=protected-access
      assign_val_fn=tunix_gemma._assign_linen_params_to_nnx_state,  # pylint: disable=protected-access
  )
  p = s.prompts.shape[1]
  sampler = tunix_sampler.Sampler(
      transformer,
      _IdTokenizer(s.never),
      tunix_sampler.CacheConfig(
          cache_size=p + s.new_tokens,
          num_layers=c.num_layers,
          num_kv_heads=c.num_kv_heads,
          head_dim=c.head_dim,
      ),
  )
  texts = _texts(s)

  def run(seed: int) -> int:
    out = sampler(
        texts, max_generation_steps=s.new_tokens, max_prompt_length=p,
        temperature=1.0, top_p=1.0, seed=seed, eos_tokens=[s.never],
    )
    return sum(len(t) for t in out.tokens)

  return run


# ------------------------------------------------------------------- driver


def machine() -> dict[str, str]:
  cpu = platform.processor() or "?"
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = re.search(r"Model name:\s*(.+)", lscpu).group(1).strip()
  except Exception:  # pylint: disable=broad-except
    pass
  cores = len(os.sched_getaffinity(0))
  dev = jax.devices()[0]
  return {
      "cpu": cpu,
      "cores": str(cores),
      "device": f"{dev.platform} ({dev.device_kind})",
      "jax": jax.__version__,
      "python": platform.python_version(),
  }


def matmul_gflops() -> float:
  """Achieved f32 GFLOP/s of a 1024^3 matmul, as the machine's peak proxy."""
  a = jnp.ones((1024, 1024), jnp.float32)
  mm = jax.jit(lambda x: x @ x)
  mm(a).block_until_ready()
  times = []
  for _ in range(5):
    t = time.perf_counter()
    mm(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * 1024**3 / statistics.median(times) / 1e9


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--prompts", type=int, default=1, help="B, distinct prompts")
  parser.add_argument("--samples", default="1,8,32")
  parser.add_argument("--prompt-lengths", default="16,256")
  parser.add_argument("--new-tokens", type=int, default=64)
  parser.add_argument("--vocab", type=int, default=2560)
  parser.add_argument("--peers", default="gemma,tunix")
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      "BENCHMARKS.md"))
  parser.add_argument("--no-write", action="store_true")
  args = parser.parse_args()
  if args.repeats < 1:
    raise ValueError(f"--repeats must be >= 1, got {args.repeats}")

  start = time.perf_counter()
  model = models.make_model(preset="tiny", vocab_size=args.vocab)
  params = models.init_params(model, jax.random.key(0))
  n_params = models.num_params(params)
  info = machine()
  peak = matmul_gflops()
  print(f"model: tiny preset, vocab {args.vocab}, {n_params / 1e6:.2f} M params")
  print("machine:", info, f"matmul {peak:.0f} GFLOP/s")

  peers = [p for p in args.peers.split(",") if p]
  skipped = {}
  if "tunix" in peers and (why := tunix_unavailable()):
    skipped["tunix"] = why
    peers.remove("tunix")
    print(f"skipping tunix: {why}")

  rng = np.random.default_rng(0)
  rows = []
  for p in map(int, args.prompt_lengths.split(",")):
    prompts = rng.integers(3, args.vocab, (args.prompts, p), dtype=np.int32)
    prompts[:, 0] = models.BOS_ID
    for n in map(int, args.samples.split(",")):
      s = Setup(model=model, params=params, prompts=prompts, num_samples=n,
                new_tokens=args.new_tokens, never=args.vocab + 7)
      runners = {"ours": lambda seed, s=s: run_ours(s, seed)}
      for peer in peers:
        try:
          runners[peer] = {"gemma": make_gemma, "tunix": make_tunix}[peer](s)
        except Exception as e:  # pylint: disable=broad-except
          skipped[peer] = f"{type(e).__name__}: {e}"
          print(f"skipping {peer} at P={p} N={n}: {skipped[peer]}")
      want = args.prompts * n * args.new_tokens
      times = {k: [] for k in runners}
      for r in range(args.repeats + 1):  # round 0 is the warm-up
        for name, run in runners.items():
          t = time.perf_counter()
          produced = run(1000 * r + 1)
          dt = time.perf_counter() - t
          if produced != want:
            raise RuntimeError(f"{name} made {produced} tokens, not {want}")
          if r:
            times[name].append(dt)
      tps = {k: want / statistics.median(v) for k, v in times.items()}
      rows.append((p, n, tps))
      print(f"P={p:4d} N={n:3d} " + "  ".join(
          f"{k} {v:9.0f} tok/s" for k, v in tps.items()), flush=True)

  all_peers = [p for p in args.peers.split(",") if p]
  head = ["prompt len", "N", "ours tok/s"]
  for peer in all_peers:
    head += [f"{peer} tok/s", f"ours / {peer}"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for p, n, tps in rows:
    cells = [str(p), str(n), f"{tps['ours']:.0f}"]
    for peer in all_peers:
      if peer in tps:
        cells += [f"{tps[peer]:.0f}", f"**{tps['ours'] / tps[peer]:.2f}×**"]
      else:
        cells += ["–", "–"]
    lines.append("| " + " | ".join(cells) + " |")
  table = "\n".join(lines)
  elapsed = time.perf_counter() - start
  command = "python " + " ".join(
      [os.path.relpath(sys.argv[0])] + sys.argv[1:])
  report = "\n".join([
      BEGIN,
      f"Command: `{command}` (run from the repository root; "
      f"{elapsed / 60:.1f} min in all).",
      "",
      f"Machine: {info['cpu']}, {info['cores']} cores, {info['device']}, "
      f"jax {info['jax']}, Python {info['python']}; a 1024³ float32 matmul "
      f"runs at {peak:.0f} GFLOP/s.",
      "",
      f"Model: `tiny` preset, vocabulary {args.vocab} "
      f"({n_params / 1e6:.2f} M parameters, float32, random weights); "
      f"{args.prompts} prompt(s) × N samples × {args.new_tokens} new tokens, "
      f"EOS disabled; median of {args.repeats} after a warm-up call.",
      "",
      table,
      "",
      *(f"Skipped {k}: {v}" for k, v in skipped.items()),
      END,
  ])
  print(report)
  print(f"total runtime {elapsed:.0f} s")
  if not args.no_write:
    write_section(args.out, report)


def write_section(path: str, report: str) -> None:
  """Replaces the generated block of the Sampler section of BENCHMARKS.md."""
  text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
  if BEGIN in text and END in text:
    text = text[:text.index(BEGIN)] + report + text[text.index(END) + len(END):]
  else:
    text = text.rstrip("\n") + "\n\n## Sampler\n\n" + report + "\n"
  with open(path, "w") as f:
    f.write(text)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
