"""The embedded verifiable math task, in the MATH format.

Problems carry `problem`, `level` (1..5) and a `solution` ending in
``\\boxed{answer}``. The main family is Countdown (`countdown.py`): combine
given digits once each with +, -, * and brackets to hit a target. Many
prompts have several checkable answers and their difficulty spreads widely,
which is where Best-of-N pays. Unique-answer families (`arith.py`: two-step
arithmetic, modular arithmetic, linear equations) can be mixed in.

Example::

  train, test = tasks.make_splits(seed=0, num_train=5000, num_test=500)
  p = train[0]
  x = tasks.prompt_text(p)                       # "3 4 7 9 -> 60:"
  y = tasks.sft_targets(p, np.random.default_rng(0))   # "\\boxed{3*(4+7+9)}"
  tasks.grade(p, y)                              # True
  tasks.answer_key(p, y)                         # "60": maj@k votes on values
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bon_jax import grading
from bon_jax.tasks import arith
from bon_jax.tasks import countdown

FAMILIES = ("countdown",) + arith.FAMILIES


@dataclasses.dataclass(frozen=True, kw_only=True)
class Problem:
  """One task instance (MATH fields plus the data its grader needs)."""

  id: str  # stable, e.g. "countdown/3-4-7-9/60"
  problem: str  # human-readable MATH-style question
  level: int  # 1..5
  solution: str  # a reference solution ending in \boxed{answer}
  answer: str  # the reference answer (the content of that box)
  family: str  # "countdown", "arith", "mod" or "linear"
  # Distinct valid answers: countdown solution classes (see countdown.py),
  # 1 for the unique-answer families.
  num_solutions: int
  num_forms: int = 1  # countdown: distinct bracket-minimal answer strings
  prompt: str  # the short text the policy is conditioned on
  digits: tuple[int, ...] = ()  # countdown only (sorted)
  target: int | None = None  # countdown only


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskConfig:
  """Task knobs; `make_splits(**kwargs)` builds one from its keyword args.

  Attributes:
    families: family -> mixing weight (e.g. {"countdown": 0.9, "mod": 0.1}).
    num_digits: countdown puzzle sizes to draw.
    num_digits_weights: their draw probabilities (None: uniform).
    digit_range: countdown digits are drawn uniformly from [lo, hi].
    target_range: countdown targets lie in [lo, hi].
    target_weighting: a reachable target is drawn with probability
      proportional to num_solutions ** target_weighting (0: uniform over
      reachable targets; > 0 easier, < 0 harder).
    max_solutions: skip countdown targets with more solution classes.
  """

  families: Mapping[str, float] = dataclasses.field(
      default_factory=lambda: {"countdown": 1.0}
  )
  num_digits: tuple[int, ...] = (3, 4, 5)
  num_digits_weights: tuple[float, ...] | None = None
  digit_range: tuple[int, int] = (1, 9)
  target_range: tuple[int, int] = (10, 99)
  target_weighting: float = 0.0
  max_solutions: int | None = None

  def __post_init__(self):
    fams = dict(self.families)
    unknown = sorted(set(fams) - set(FAMILIES))
    if unknown:
      raise ValueError(f"unknown task families {unknown}; choose from {FAMILIES}")
    if any(w < 0 for w in fams.values()) or sum(fams.values()) <= 0:
      raise ValueError(f"family weights must be >= 0 and not all 0, got {fams}")
    object.__setattr__(self, "families", fams)
    for name in ("num_digits", "num_digits_weights", "digit_range", "target_range"):
      value = getattr(self, name)
      if value is not None:
        object.__setattr__(self, name, tuple(value))

  def countdown_kwargs(self) -> dict[str, Any]:
    return dict(
        num_digits=self.num_digits,
        num_digits_weights=self.num_digits_weights,
        digit_range=self.digit_range,
        target_range=self.target_range,
        target_weighting=self.target_weighting,
        max_solutions=self.max_solutions,
    )


def _countdown_problem(puzzle: countdown.Puzzle, reference: str) -> Problem:
  digits, target = puzzle.digits, puzzle.target
  listed = ", ".join(map(str, digits))
  return Problem(
      id=f"countdown/{'-'.join(map(str, digits))}/{target}",
      problem=(
          f"Use each of the digits {listed} exactly once, with +, - and *"
          f" and brackets, to make {target}."
      ),
      level=puzzle.level,
      solution=f"{reference}={target}, so the answer is \\boxed{{{reference}}}",
      answer=reference,
      family="countdown",
      num_solutions=puzzle.num_solutions,
      num_forms=puzzle.num_forms,
      prompt=f"{' '.join(map(str, digits))} -> {target}:",
      digits=digits,
      target=target,
  )


def _unique_problems(
    family: str, rng: np.random.Generator, num: int, used: set[str]
) -> list[Problem]:
  out = []
  for _ in range(100 * num + 1000):
    if len(out) == num:
      return out
    level = int(rng.integers(1, 6))
    fields = arith.sample(family, rng, level)
    if fields["key"] in used:
      continue
    used.add(fields["key"])
    out.append(
        Problem(
            id=fields["key"],
            problem=fields["problem"],
            level=level,
            solution=fields["solution"],
            answer=fields["answer"],
            family=family,
            num_solutions=1,
            prompt=fields["prompt"],
        )
    )
  raise ValueError(f"could not draw {num} distinct {family!r} problems")


def _generate(
    cfg: TaskConfig,
    num: int,
    rng: np.random.Generator,
    ref_rng: np.random.Generator,
    used: set,
) -> list[Problem]:
  """`num` problems mixed by family weight, none whose key is in `used`."""
  names = sorted(cfg.families)
  w = np.array([cfg.families[n] for n in names], float)
  counts = rng.multinomial(num, w / w.sum())
  out: list[Problem] = []
  for name, count in zip(names, counts.tolist()):
    if count == 0:
      continue
    if name == "countdown":
      puzzles = countdown.sample_puzzles(
          rng, count, exclude=used, **cfg.countdown_kwargs()
      )
      used.update((p.digits, p.target) for p in puzzles)
      countdown.prepare((p.digits, p.target) for p in puzzles)
      out += [
          _countdown_problem(p, countdown.sample_form(p.digits, p.target, ref_rng))
          for p in puzzles
      ]
    else:
      out += _unique_problems(name, rng, count, used)
  return [out[i] for i in rng.permutation(len(out))]


def make_splits(
    *, seed: int, num_train: int, num_test: int, **task_kwargs
) -> tuple[list[Problem], list[Problem]]:
  """Deterministic train/test problems, disjoint by instance.

  Instances are countdown (digits, target) pairs and the unique families'
  questions. The test split is drawn first from its own stream, so it does
  not change with `num_train`. `task_kwargs` are `TaskConfig` fields.

  Raises:
    ValueError: on unknown or bad settings.
  """
  if num_train < 0 or num_test < 0:
    raise ValueError(f"split sizes must be >= 0, got {num_train}, {num_test}")
  cfg = TaskConfig(**task_kwargs)
  test_rng, train_rng, ref_rng = (
      np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
  )
  used: set = set()
  test = _generate(cfg, num_test, test_rng, ref_rng, used)
  train = _generate(cfg, num_train, train_rng, ref_rng, used)
  return train, test


def prompt_text(problem: Problem) -> str:
  """The short text the policy is conditioned on, e.g. ``3 4 7 9 -> 60:``."""
  return problem.prompt


def sft_targets(problem: Problem, rng: np.random.Generator) -> str:
  """An SFT completion (without EOS).

  Countdown: ``\\boxed{expr}`` with a solution class drawn uniformly, then a
  form of it uniformly, so SFT learns the diversity Best-of-N needs. The
  other families: their worked solution.
  """
  if problem.family == "countdown":
    return f"\\boxed{{{countdown.sample_form(problem.digits, problem.target, rng)}}}"
  return problem.solution


def answer_key(problem: Problem, completion: str) -> str | None:
  """The final answer's equivalence class, for majority voting.

  Countdown: the value of the last boxed expression if it is well formed and
  uses exactly the given digits; unique families: the boxed integer. None
  when there is no such answer.
  """
  boxed = grading.extract_boxed(completion)
  if boxed is None:
    return None
  if problem.family == "countdown":
    v = countdown.digits_value(boxed, problem.digits)
  else:
    v = arith.parse_answer(boxed)
  return None if v is None else str(v)


def grade(problem: Problem, completion: str) -> bool:
  """Whether the last ``\\boxed{...}`` of `completion` is a correct answer.

  Countdown answers are parsed (no eval) and must use each given digit once
  and make the target; others must equal the reference integer.
  """
  key = answer_key(problem, completion)
  if problem.family == "countdown":
    return key == str(problem.target)
  return key is not None and key == str(int(problem.answer))


def _histogram(values: Sequence[int]) -> dict[int, int]:
  return dict(sorted(collections.Counter(values).items()))


_SOLUTION_BUCKETS = ((1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 10**9))


def describe(problems: Sequence[Problem], tokenizer=None, seed: int = 0) -> dict:
  """Summary statistics: families, levels, solution counts, token lengths.

  With a `tokenizer` (anything with `encode`), adds the mean and max token
  lengths of prompts and of SFT targets (without the EOS the trainer adds).
  """
  sols = np.array([p.num_solutions for p in problems])
  out = {
      "num_problems": len(problems),
      "families": _histogram([p.family for p in problems]),
      "levels": _histogram([p.level for p in problems]),
      "num_digits": _histogram([len(p.digits) for p in problems if p.digits]),
      "num_solutions": {
          (f"{lo}" if lo == hi else f"{lo}+" if hi > 10**6 else f"{lo}-{hi}"): int(
              ((sols >= lo) & (sols <= hi)).sum()
          )
          for lo, hi in _SOLUTION_BUCKETS
      },
      "num_solutions_median": float(np.median(sols)) if len(sols) else 0.0,
      "num_forms_median": float(np.median([p.num_forms for p in problems]))
      if problems
      else 0.0,
  }
  if tokenizer is not None:
    rng = np.random.default_rng(seed)
    plen = [len(tokenizer.encode(prompt_text(p))) for p in problems]
    clen = [len(tokenizer.encode(sft_targets(p, rng))) for p in problems]
    out.update(
        prompt_tokens_mean=float(np.mean(plen)),
        prompt_tokens_max=int(np.max(plen)),
        completion_tokens_mean=float(np.mean(clen)),
        completion_tokens_max=int(np.max(clen)),
    )
  return out


# The tokenizer corpus is pinned here, independent of the task defaults, so
# the shipped tokenizer stays reproducible when those are tuned. It covers
# every family, so every character the task can emit.
_CORPUS_SPLITS = dict(
    seed=0,
    num_train=2000,
    num_test=0,
    families={"countdown": 0.7, "arith": 0.1, "mod": 0.1, "linear": 0.1},
    num_digits=(3, 4, 5),
    target_range=(1, 199),
)


def tokenizer_corpus() -> list[str]:
  """Texts the task tokenizer is trained on (deterministic)."""
  problems, _ = make_splits(**_CORPUS_SPLITS)
  rng = np.random.default_rng(0)
  texts = []
  for p in problems:
    texts += [p.problem, p.solution, prompt_text(p), sft_targets(p, rng)]
  return texts
