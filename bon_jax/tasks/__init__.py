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

from bon_jax.tasks.countdown import FAMILIES
from bon_jax.tasks.countdown import Problem
from bon_jax.tasks.countdown import TaskConfig
from bon_jax.tasks.countdown import answer_key
from bon_jax.tasks.countdown import describe
from bon_jax.tasks.countdown import grade
from bon_jax.tasks.countdown import make_problem
from bon_jax.tasks.countdown import make_splits
from bon_jax.tasks.countdown import prompt_text
from bon_jax.tasks.countdown import sft_targets
from bon_jax.tasks.countdown import tokenizer_corpus

__all__ = [
    "FAMILIES",
    "Problem",
    "TaskConfig",
    "answer_key",
    "describe",
    "grade",
    "make_problem",
    "make_splits",
    "prompt_text",
    "sft_targets",
    "tokenizer_corpus",
]
