"""HumanEval grading: canonical solutions pass, wrong and hostile ones fail."""

import pytest

from bon_jax import sandbox
from bon_jax.tasks import humaneval

# CPU limit above the wall clock, so endless programs end as "timeout".
FAST = sandbox.Limits(wall_s=2.0, cpu_s=5, max_procs=8)


@pytest.fixture(scope="module")
def problems():
  return humaneval.load_humaneval()


def test_load_humaneval_has_the_164_problems_in_task_order(problems):
  assert [p["task_id"] for p in problems] == [
      f"HumanEval/{i}" for i in range(164)
  ]
  for p in problems:
    assert p["entry_point"] in p["prompt"] and "def check" in p["test"]


def test_canonical_solutions_pass_every_problem(problems):
  results = humaneval.evaluate(
      problems, [[p["canonical_solution"]] for p in problems], workers=2
  )
  failures = [r[0] for r in results if not r[0].passed]
  assert not failures, failures[:3]
  assert [r[0].task_id for r in results] == [p["task_id"] for p in problems]


def test_program_for_runs_the_checks_on_the_completion(problems):
  p = problems[0]
  program = humaneval.program_for(p, "    return 'marker'\n")
  assert program.startswith(p["prompt"] + "    return 'marker'\n")
  assert program.rstrip().endswith(f"check({p['entry_point']})")


def test_wrong_solutions_fail_with_the_reason(problems):
  p = problems[0]  # has_close_elements: its checks expect True and False
  completions = [
      "    return True\n",  # an assertion fails
      "    return undefined_name\n",  # NameError
      "    return (\n",  # SyntaxError
      p["canonical_solution"],
  ]
  results = humaneval.evaluate([p], [completions], limits=FAST)[0]
  assert [r.status for r in results] == ["failed", "error", "error", "passed"]
  assert [r.passed for r in results] == [False, False, False, True]
  assert "NameError" in results[1].output
  assert "SyntaxError" in results[2].output


def test_hostile_completions_are_failures_and_evaluation_goes_on(problems):
  p = problems[0]
  hostile = [
      "    while True:\n        pass\n",
      "    import os\n    while True:\n        try:\n            os.fork()\n"
      "        except OSError:\n            pass\n",
      "    x = bytearray(2**40)\n",
      "    import sys\n    while True:\n        sys.stdout.write('x' * 65536)\n",
  ]
  results = humaneval.evaluate(
      [p, problems[1]],
      [hostile, [problems[1]["canonical_solution"]]],
      limits=FAST,
      workers=2,
  )
  # The program's output is discarded (as in the reference harness), so a
  # flood runs into the wall clock. More in test_humaneval_forgery.py.
  assert [r.status for r in results[0]] == [
      "timeout", "timeout", "error", "timeout",
  ]
  assert not any(r.passed for r in results[0])
  assert results[1][0].passed


def test_evaluate_rejects_mismatched_lengths(problems):
  with pytest.raises(ValueError, match="one list of completions per problem"):
    humaneval.evaluate(problems[:2], [["x"]])
