"""The task of a config: `config.task.name` -> a task object and its problems.

Training and evaluation code take a *task*: anything with

* ``prompt_text(problem) -> str``: the prompt (without BOS),
* ``sft_targets(problem, rng) -> str``: a reference completion,
* ``grade(problem, completion) -> bool``: the environment reward,
* optionally ``grade_batch(problems, completions) -> float32[B, N]``: the same
  for B groups of N completions at once (e.g. in parallel processes); when a
  task has it, training and evaluation grade through it,
* ``answer_key(problem, completion) -> str | None``: the final answer that
  maj@k votes on (None: no answer),

and problems with a ``level`` attribute (evaluation reports per level). The
`countdown` module is such a task; `MathTask` (Hendrycks MATH) and
`HumanEvalTask` (code, graded in `bon_jax.sandbox`) are the paper's.

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
from bon_jax.tasks import countdown
from bon_jax.tasks import hendrycks_math
from bon_jax.tasks import humaneval

NAMES = ("countdown", "hendrycks_math", "humaneval")
PROMPT_FORMATS = ("fewshot", "chat")

# The reference harness's stop sequences (Chen et al., 2021): a completion is
# the body of the prompt's function, so a new top-level statement ends it.
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


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

    The batch grading path: training (`verifier.grade_completions`) and
    evaluation call it when a task has it, so a step's completions are
    judged together instead of one after another.
    """
    return np.asarray(self.grade_many(problems, completions), np.float32)

  def answer_key(self, problem: CodeProblem, completion: str) -> None:
    del problem, completion
    return None


# ----------------------------------------------------------------------------
# From a config.


def make_task(cfg: ml_collections.ConfigDict) -> Any:
  """The task object of ``config.task`` (the `countdown` module for countdown)."""
  if cfg.name == "countdown":
    return countdown
  if cfg.name == "hendrycks_math":
    return MathTask(prompt_format=cfg.prompt_format, num_shots=cfg.num_shots)
  if cfg.name == "humaneval":
    return HumanEvalTask()
  raise ValueError(f"config.task.name={cfg.name!r} is unknown; choose one of {NAMES}")


def load_splits(cfg: ml_collections.ConfigDict, *,
                tfds_dir: str | None = None) -> tuple[list[Any], list[Any]]:
  """(train, test) problems of ``config.task``.

  hendrycks_math: ``<data_dir>/train`` and ``<data_dir>/test`` (or
  ``test_path``, e.g. a MATH-500 .jsonl), filtered by ``levels`` and
  ``subjects`` (empty = all). humaneval: the 164 problems in a fixed random
  order (``seed``); the first ``num_test`` are the test split, the rest train.

  `tfds_dir`: read the problems through the tensorflow-datasets builders of
  `bon_jax.tfds_builders`, prepared in that data dir (the same problems; the
  trainers do this, in their workdir).
  """
  if tfds_dir is not None:
    from bon_jax import tfds_builders  # pylint: disable=g-import-not-at-top  (it imports us)
  if cfg.name == "countdown":
    options = {k: v for k, v in cfg.to_dict().items() if k != "name"}
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    if tfds_dir is not None:
      return tfds_builders.countdown_splits(options, tfds_dir)
    return countdown.make_splits(**options)
  if cfg.name == "hendrycks_math":
    kw = dict(levels=tuple(cfg.levels) or hendrycks_math.LEVELS,
              subjects=tuple(cfg.subjects) or None)
    if tfds_dir is None or cfg.test_path:
      test = hendrycks_math.load_math(cfg.test_path or os.path.join(cfg.data_dir, "test"), **kw)
    else:
      test = _filter_math(tfds_builders.math_split(cfg.data_dir, "test", tfds_dir), **kw)
    if tfds_dir is None:
      train = hendrycks_math.load_math(os.path.join(cfg.data_dir, "train"), **kw)
    else:
      train = _filter_math(tfds_builders.math_split(cfg.data_dir, "train", tfds_dir), **kw)
    return train, test
  if cfg.name == "humaneval":
    if tfds_dir is not None:
      problems = tfds_builders.humaneval_problems(tfds_dir)
    else:
      problems = [CodeProblem(id=p["task_id"], prompt=p["prompt"], test=p["test"],
                              entry_point=p["entry_point"],
                              canonical_solution=p["canonical_solution"])
                  for p in humaneval.load_humaneval()]
    order = np.random.default_rng(cfg.seed).permutation(len(problems))
    problems = [problems[i] for i in order]
    return problems[cfg.num_test:], problems[: cfg.num_test]
  raise ValueError(f"config.task.name={cfg.name!r} is unknown; choose one of {NAMES}")


def _filter_math(problems: Sequence[Any], *, levels: Sequence[int],
                 subjects: Sequence[str] | None) -> list[Any]:
  """`hendrycks_math.load_math`'s level and subject filters on loaded problems."""
  keys = None if subjects is None else {hendrycks_math.subject_key(s) for s in subjects}
  out = [p for p in problems
         if p.level in levels and (keys is None or p.subject in keys)]
  if not out:
    raise ValueError(f"no MATH problems left with levels={levels}, subjects={subjects}")
  return out
