"""What a task is (`Task`), and grading B groups of N completions, written once.

Training, evaluation and the verifier take a task: a frozen dataclass with
the methods of `Task` (`registry.CountdownTask`, `registry.MathTask`,
`registry.HumanEvalTask`), whose problems have a ``level`` (evaluation
reports per level). `grade_completions` is the one place completions become
rewards and maj@k answer classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np


class Task(Protocol):
  """A task: prompts, reference completions, grading and answer classes."""

  def prompt_text(self, problem: Any) -> str:
    """The prompt (without BOS)."""

  def sft_targets(self, problem: Any, rng: np.random.Generator) -> str:
    """A reference completion (without EOS)."""

  def grade(self, problem: Any, completion: str) -> bool:
    """The environment reward of one completion."""

  def grade_batch(self, problems: Sequence[Any], completions: Sequence[Sequence[str]]) -> np.ndarray:
    """float32[B, N] 0/1 rewards of B groups of N completions (e.g. judged in parallel)."""

  def answer_key(self, problem: Any, completion: str) -> str | None:
    """The final answer that maj@k votes on (None: no answer)."""


def grade_each(grade: Callable[[Any, str], bool], problems: Sequence[Any],
               completions: Sequence[Sequence[str]]) -> np.ndarray:
  """float32[B, N]: `grade` of every completion, one after another (a task's `grade_batch`)."""
  return np.asarray([[float(grade(p, c)) for c in group] for p, group in zip(problems, completions, strict=True)],
                    np.float32)


def grade_completions(task: Task, problems: Sequence[Any],
                      texts: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
  """float32[B, N] grades and int32[B, N] answer-class ids (-1 = no answer) of B groups of N texts.

  Grades through ``task.grade_batch`` (all B x N at once); answers with the
  same ``task.answer_key`` share a class id within their group.
  """
  labels = np.asarray(task.grade_batch(problems, texts), np.float32)
  if len(problems):
    labels = labels.reshape(len(problems), -1)
  answers = []
  for problem, group in zip(problems, texts, strict=True):
    keys: dict[str, int] = {}
    row = []
    for t in group:
      key = task.answer_key(problem, t)
      row.append(-1 if key is None else keys.setdefault(key, len(keys)))
    answers.append(row)
  return labels, np.asarray(answers, np.int32)
