"""Token batches for SFT and for sampling.

Sequences are `[BOS] prompt completion [EOS]`, right-padded with `PAD_ID` (0),
because gemma derives positions and the causal mask from `tokens != 0`. A SFT
batch is a pure function of `(seed, step)`, so a run resumed from a checkpoint
sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from bon_jax import models
from bon_jax import sharding

if TYPE_CHECKING:  # Shape annotations only (kauldron.typing imports TensorFlow).
  from kauldron.typing import Int  # pylint: disable=g-multiple-import


def encode_prompts(tokenizer: Any, prompts: Sequence[str], length: int | None = None) -> Int["B P"]:
  """int32[B, P]: `[BOS] prompt`, right-padded to `length` (default: longest)."""
  rows = [[models.BOS_ID, *tokenizer.encode(p)] for p in prompts]
  length = length or max(len(r) for r in rows)
  if max(len(r) for r in rows) > length:
    raise ValueError(f"a prompt has more than {length} tokens; raise the length")
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    out[i, : len(r)] = r
  return out


def device_prompts(tokenizer: Any, prompts: Sequence[str], length: int | None = None,
                   mesh: jax.sharding.Mesh | None = None) -> Int["B P"]:
  """`encode_prompts` as one device array: on `mesh`, split over its batch axes.

  On a mesh every process encodes only the rows its devices hold
  (`sharding.process_rows`) and the global array is assembled from them, so a
  multi-host run never moves a whole batch through one host. Every process
  pads to the same `length` (default: the longest prompt of the batch).
  """
  if mesh is None:
    return jnp.asarray(encode_prompts(tokenizer, prompts, length))
  if length is None:
    length = int(encode_prompts(tokenizer, prompts).shape[1])
  rows = sharding.process_rows(mesh, len(prompts))
  local = encode_prompts(tokenizer, list(prompts)[rows], length)
  return sharding.global_batch(local, mesh, len(prompts))


def encode_sft(
    tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], length: int
) -> dict[str, np.ndarray]:
  """A SFT batch.

  Returns:
    tokens: int32[B, L], `[BOS] prompt completion [EOS]` right-padded.
    loss_mask: float32[B, L-1], 1 where `tokens[:, t+1]` is a completion token
      or the EOS (the targets of teacher forcing), else 0.
  """
  tokens = np.zeros((len(prompts), length), np.int32)
  mask = np.zeros((len(prompts), length - 1), np.float32)
  for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
    prompt = [models.BOS_ID, *tokenizer.encode(p)]
    answer = [*tokenizer.encode(c), models.EOS_ID]
    n = len(prompt) + len(answer)
    if n > length:
      raise ValueError(
          f"a SFT sequence has {n} tokens > train.max_len={length}; raise it"
      )
    tokens[i, :n] = prompt + answer
    mask[i, len(prompt) - 1 : n - 1] = 1.0
  return {"tokens": tokens, "loss_mask": mask}


def sft_batch(
    problems: Sequence[Any],
    *,
    tokenizer: Any,
    prompt_fn: Callable[[Any], str],
    target_fn: Callable[[Any, np.random.Generator], str],
    batch_size: int,
    length: int,
    seed: int,
    step: int,
) -> dict[str, np.ndarray]:
  """The SFT batch of `step`: problems drawn uniformly, one target each."""
  rng = np.random.default_rng([seed, step])
  idx = rng.integers(0, len(problems), size=batch_size)
  chosen = [problems[i] for i in idx]
  return encode_sft(
      tokenizer,
      [prompt_fn(p) for p in chosen],
      [target_fn(p, rng) for p in chosen],
      length,
  )


def sft_length(
    problems: Sequence[Any],
    *,
    tokenizer: Any,
    prompt_fn: Callable[[Any], str],
    target_fn: Callable[[Any, np.random.Generator], str],
    num_probe: int = 2000,
) -> int:
  """A sequence length that fits every probed SFT example, rounded up to 8."""
  rng = np.random.default_rng(0)
  longest = 0
  for p in problems[:num_probe]:
    n = 2 + len(tokenizer.encode(prompt_fn(p))) + len(tokenizer.encode(target_fn(p, rng)))
    longest = max(longest, n)
  # Headroom for targets longer than the probed ones (e.g. more brackets).
  return int(-(-(longest + 4) // 8) * 8)
