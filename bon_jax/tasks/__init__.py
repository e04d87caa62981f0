"""Tasks. The embedded verifiable math task (MATH format) is `countdown`.

Problems carry `problem`, `level` (1..5) and a `solution` ending in
``\\boxed{answer}``. The main family is Countdown: combine given digits once
each with +, -, * and brackets to hit a target. Many prompts have several
checkable answers and their difficulty spreads widely, which is where
Best-of-N pays. Unique-answer families (`arith`: two-step arithmetic,
modular arithmetic, linear equations) can be mixed in. The task API lives in
`countdown` and is re-exported here.

Example::

  from bon_jax.tasks import countdown
  train, test = countdown.make_splits(seed=0, num_train=5000, num_test=500)
  p = train[0]
  x = countdown.prompt_text(p)        # "3 4 7 9 -> 60:"
  y = countdown.sft_targets(p, np.random.default_rng(0))  # "\\boxed{3*(4+7+9)}"
  countdown.grade(p, y)               # True
  countdown.answer_key(p, y)          # "60": maj@k votes on values
"""

from __future__ import annotations

import importlib
from typing import Any

# Re-exported from `countdown` on first use: importing the package (as every
# task module does for its siblings) does not import countdown, so imports
# inside bon_jax.tasks flow one way.
__all__ = ["FAMILIES", "Problem", "TaskConfig", "answer_key", "describe", "grade", "make_problem",
           "make_splits", "prompt_text", "sft_targets", "tokenizer_corpus"]


def __getattr__(name: str) -> Any:
  if name in __all__:
    value = getattr(importlib.import_module("bon_jax.tasks.countdown"), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'bon_jax.tasks' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
