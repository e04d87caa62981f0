"""bon_jax: Best-of-N-aware fine-tuning of Gemma policies in JAX.

The public API, one name per concern (shapes: B prompts, n samples each)::

  import bon_jax as bj

  config = bj.base_config()                      # every field and its default
  results = bj.train_and_evaluate(config, "/tmp/run")  # SFT, verifier, stages, comparison

  w = bj.weights_fn("bon_rl_v", N=4)(rewards, scores)   # float[B, n] -> float[B, n]
  bj.ALGORITHMS["bon_rl_v"]                      # what an algorithm needs
  bj.pass_at_k(correct, k)                       # float[B, n] -> float[B]
  bj.best_of_k(rewards, scores, k)               # float[B, n] x2 -> float[B]
  bj.max_at_k(rewards, k)                        # float[B, n] -> float[B]
  bj.maj_at_k(answers, correct, k)               # [B, n] x2 -> float[B]

  samples = bj.sample(model, params, prompts, rng, num_samples=n, max_new_tokens=T)  # int32[B, P] -> int32[B, n, T]
  graded = bj.sample_and_grade(model=..., params=..., tokenizer=..., problems=..., task=..., cfg=..., rng=...)
  print(bj.format_table(bj.summarize(graded, problems)))

  task = bj.make_task(config.task)               # prompt_text, sft_targets, grade, answer_key
  train, test = bj.load_splits(config.task)
  state, history = bj.train_rl(config, workdir, init_params=params)
  state = bj.train_sft(config, workdir, model=model, tokenizer=tok, train_set=train)

Names load their module on first use, so ``import bon_jax`` stays light and
``python -m bon_jax.main`` can quiet TensorFlow before gemma imports it.
Everything else is in the modules (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> (module, attribute).
_API = {
    "base_config": ("defaults", "base_config"),
    "UserError": ("config_lib", "UserError"),
    "train_and_evaluate": ("pipeline", "train_and_evaluate"),
    "train_sft": ("train", "train_sft"),
    "train_rl": ("rl", "train_rl"),
    "ALGORITHMS": ("algorithms", "REGISTRY"),
    "weights_fn": ("algorithms", "weights_fn"),
    "pass_at_k": ("bon", "pass_at_k"),
    "best_of_k": ("bon", "best_of_k"),
    "max_at_k": ("bon", "max_at_k"),
    "maj_at_k": ("bon", "maj_at_k"),
    "sample": ("sampling", "sample"),
    "sample_and_grade": ("evaluate", "sample_and_grade"),
    "summarize": ("evaluate", "summarize"),
    "format_table": ("evaluate", "format_table"),
    "make_task": ("tasks.registry", "make_task"),
    "load_splits": ("tasks.registry", "load_splits"),
}
__all__ = sorted(_API)

def __getattr__(name: str) -> Any:
  if name in _API:
    module, attr = _API[name]
    value = getattr(importlib.import_module(f"bon_jax.{module}"), attr)
    globals()[name] = value  # Loaded once.
    return value
  raise AttributeError(f"module 'bon_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_API))
