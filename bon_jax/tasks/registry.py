"""The task of a config: `config.task.name` -> a task object and its problems.

Training and evaluation code take a *task*, a frozen dataclass implementing
`base.Task` (``prompt_text``, ``sft_targets``, ``grade``, ``grade_batch``,
``answer_key``) whose problems have a ``level`` (evaluation reports per
level): `CountdownTask` (the embedded task, `COUNTDOWN`), `MathTask`
(Hendrycks MATH) and `HumanEvalTask` (code, graded in `bon_jax.sandbox`,
``grade_batch`` in parallel) are the paper's.

Example::

  task = registry.make_task(config.task)          # e.g. name="hendrycks_math"
  train, test = registry.load_splits(config.task)
  prompt = task.prompt_text(test[0])
  task.grade(test[0], r"... so the answer is $\\boxed{2}$.")
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from bon_jax import grading
from bon_jax.tasks import base
from bon_jax.tasks import countdown
from bon_jax.tasks import hendrycks_math
from bon_jax.tasks import humaneval

NAMES = ("countdown", "hendrycks_math", "humaneval")
PROMPT_FORMATS = ("fewshot", "chat")

# The reference harness's stop sequences (Chen et al., 2021): a completion is
# the body of the prompt's function, so a new top-level statement ends it.
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


# ----------------------------------------------------------------------------
# Countdown (the embedded task).


@dataclasses.dataclass(frozen=True, kw_only=True)
class CountdownTask:
  """The embedded Countdown task (`bon_jax.tasks.countdown`): its problems carry their format."""

  def prompt_text(self, problem: countdown.Problem) -> str:
    return countdown.prompt_text(problem)

  def sft_targets(self, problem: countdown.Problem, rng: np.random.Generator) -> str:
    return countdown.sft_targets(problem, rng)

  def grade(self, problem: countdown.Problem, completion: str) -> bool:
    return countdown.grade(problem, completion)

  def grade_batch(self, problems: Sequence[countdown.Problem],
                  completions: Sequence[Sequence[str]]) -> np.ndarray:
    return base.grade_each(self.grade, problems, completions)

  def answer_key(self, problem: countdown.Problem, completion: str) -> str | None:
    return countdown.answer_key(problem, completion)

  def verifier_examples(self, problem: countdown.Problem, rng: np.random.Generator,
                        num: int) -> list[tuple[str, float]]:
    """Task-made (completion, label) pairs (`countdown.verifier_examples`)."""
    return countdown.verifier_examples(problem, rng, num)

  def step_labels(self, problem: countdown.Problem, completion: str) -> list[tuple[int, float]]:
    """Process labels of a step answer (`countdown.step_labels`), for `verifier.step_supervision`."""
    return countdown.step_labels(problem, completion)


COUNTDOWN = CountdownTask()


# ----------------------------------------------------------------------------
# Hendrycks MATH.


@dataclasses.dataclass(frozen=True, kw_only=True)
class MathTask:
  """MATH prompts (few-shot or chat), boxed-answer grading.

  Attributes:
    prompt_format: "fewshot" (Minerva 4-shot, base checkpoints) or "chat"
      (one Gemma user turn, instruction-tuned checkpoints).
    num_shots: exemplars of the few-shot prompt (0-4).
  """

  prompt_format: str = "fewshot"
  num_shots: int = 4

  def __post_init__(self):
    if self.prompt_format not in PROMPT_FORMATS:
      raise ValueError(
          f"prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}"
      )

  def prompt_text(self, problem: hendrycks_math.MathProblem) -> str:
    if self.prompt_format == "chat":
      return hendrycks_math.chat_prompt(problem)
    return hendrycks_math.few_shot_prompt(problem, num_shots=self.num_shots)

  def sft_targets(self, problem: hendrycks_math.MathProblem, rng: np.random.Generator) -> str:
    del rng  # One reference solution per problem.
    return problem.solution

  def _answer_part(self, completion: str) -> str:
    # A base model continues with the next few-shot exemplar: only the text
    # before it answers this problem.
    if self.prompt_format == "fewshot":
      return completion.split(hendrycks_math.FEW_SHOT_STOP)[0]
    return completion

  def grade(self, problem: hendrycks_math.MathProblem, completion: str) -> bool:
    return hendrycks_math.grade_math(self._answer_part(completion), problem.answer)

  def grade_batch(self, problems: Sequence[hendrycks_math.MathProblem],
                  completions: Sequence[Sequence[str]]) -> np.ndarray:
    return base.grade_each(self.grade, problems, completions)

  def answer_key(self, problem: hendrycks_math.MathProblem, completion: str) -> str | None:
    """The normalised boxed answer (string classes, not math-verify's)."""
    del problem
    boxed = grading.extract_boxed(self._answer_part(completion))
    if boxed is None or not boxed.strip():
      return None
    return hendrycks_math.normalize_answer(boxed)


# ----------------------------------------------------------------------------
# HumanEval.


@dataclasses.dataclass(frozen=True, kw_only=True)
class CodeProblem:
  """One HumanEval problem (the dataset's fields).

  Attributes:
    id: the task id, e.g. "HumanEval/0".
    prompt: signature and docstring; the model writes the body.
    test: the test code defining ``check(candidate)``.
    entry_point: the function's name.
    canonical_solution: the reference body.
    level: 0 for every problem (HumanEval has no difficulty levels).
  """

  id: str
  prompt: str
  test: str
  entry_point: str
  canonical_solution: str
  level: int = 0

  def as_dict(self) -> dict[str, str]:
    """The dataset's dict, as `humaneval.evaluate` takes it."""
    return {"task_id": self.id, "prompt": self.prompt, "test": self.test,
            "entry_point": self.entry_point, "canonical_solution": self.canonical_solution}


def truncate_completion(completion: str) -> str:
  """The completion up to the first of `HUMANEVAL_STOPS` (the function body)."""
  cut = min((i for s in HUMANEVAL_STOPS if (i := completion.find(s)) >= 0),
            default=len(completion))
  return completion[:cut]


@dataclasses.dataclass(frozen=True, kw_only=True)
class HumanEvalTask:
  """HumanEval: the prompt is the code, a completion passes if `check` passes.

  Programs run only in the sandbox, graded by `bon_jax.judge`
  (`humaneval.evaluate`): a pass cannot be forged by the completion.
  `grade_batch` judges a whole step's groups in parallel. Code has no final
  answer to vote on, so `answer_key` is None (maj@k is 0).
  """

  def prompt_text(self, problem: CodeProblem) -> str:
    return problem.prompt

  def sft_targets(self, problem: CodeProblem, rng: np.random.Generator) -> str:
    del rng
    return problem.canonical_solution

  def grade(self, problem: CodeProblem, completion: str) -> bool:
    return self.grade_many([problem], [[completion]])[0][0]

  def grade_many(
      self, problems: Sequence[CodeProblem], completions: Sequence[Sequence[str]]
  ) -> list[list[bool]]:
    """All completions of all problems at once, judged in parallel."""
    results = humaneval.evaluate(
        [p.as_dict() for p in problems],
        [[truncate_completion(c) for c in cs] for cs in completions],
    )
    return [[r.passed for r in rs] for rs in results]

  def grade_batch(
      self, problems: Sequence[CodeProblem], completions: Sequence[Sequence[str]]
  ) -> np.ndarray:
    """float32[B, N] 0/1 rewards of B groups of N completions, judged in parallel.

    Training and evaluation grade through it (`base.grade_completions`), so
    a step's completions are judged together instead of one after another.
    """
    return np.asarray(self.grade_many(problems, completions), np.float32)

  def answer_key(self, problem: CodeProblem, completion: str) -> None:
    del problem, completion
    return None


# ----------------------------------------------------------------------------
# From a config.


def make_task(cfg: ml_collections.ConfigDict) -> Any:
  """The `base.Task` of ``config.task``."""
  if cfg.name == "countdown":
    return COUNTDOWN
  if cfg.name == "hendrycks_math":
    return MathTask(prompt_format=cfg.prompt_format, num_shots=cfg.num_shots)
  if cfg.name == "humaneval":
    return HumanEvalTask()
  raise ValueError(f"config.task.name={cfg.name!r} is unknown; choose one of {NAMES}")


def load_splits(cfg: ml_collections.ConfigDict) -> tuple[list[Any], list[Any]]:
  """(train, test) problems of ``config.task``.

  countdown: `countdown.make_splits` of the task's options. hendrycks_math:
  ``<data_dir>/train`` and ``<data_dir>/test`` (or ``test_path``, e.g. a
  MATH-500 .jsonl), filtered by ``levels`` and ``subjects`` (empty = all).
  humaneval: the 164 problems in a fixed random order (``seed``); the first
  ``num_test`` are the test split, the rest train. The trainers read the same
  problems through TensorFlow Datasets (`tfds_builders.load_splits`).
  """
  if cfg.name == "countdown":
    return countdown.make_splits(**countdown_options(cfg))
  if cfg.name == "hendrycks_math":
    kw = math_filters(cfg)
    test = hendrycks_math.load_math(cfg.test_path or os.path.join(cfg.data_dir, "test"), **kw)
    train = hendrycks_math.load_math(os.path.join(cfg.data_dir, "train"), **kw)
    return train, test
  if cfg.name == "humaneval":
    return humaneval_splits(cfg, [
        CodeProblem(id=p["task_id"], prompt=p["prompt"], test=p["test"], entry_point=p["entry_point"],
                    canonical_solution=p["canonical_solution"])
        for p in humaneval.load_humaneval()])
  raise ValueError(f"config.task.name={cfg.name!r} is unknown; choose one of {NAMES}")


def countdown_options(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """`countdown.make_splits`'s keyword arguments of a countdown ``config.task``."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.to_dict().items() if k != "name"}


def math_filters(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """`hendrycks_math.load_math`'s level and subject filters of ``config.task``."""
  return dict(levels=tuple(cfg.levels) or hendrycks_math.LEVELS, subjects=tuple(cfg.subjects) or None)


def humaneval_splits(cfg: ml_collections.ConfigDict, problems: Sequence[Any]) -> tuple[list[Any], list[Any]]:
  """(train, test): the problems in the fixed random order of ``cfg.seed``, the first num_test test."""
  order = np.random.default_rng(cfg.seed).permutation(len(problems))
  problems = [problems[i] for i in order]
  return problems[cfg.num_test:], problems[: cfg.num_test]
