"""`bon_jax.judge`: order, statuses and the zygotes' lifecycle (HumanEval aside)."""

import os
import signal

import pytest

from bon_jax import judge
from bon_jax import sandbox

FAST = sandbox.Limits(wall_s=2.0, cpu_s=5, max_procs=8)
TEST = "def check(candidate):\n  for i in range(5):\n    assert candidate(i) == i * i\n"


def _job(body: str) -> judge.Job:
  return judge.Job(program=f"def f(x):\n  {body}\n", entry_point="f", test=TEST)


def test_verdicts_come_back_in_order_from_parallel_workers():
  # Job k squares correctly iff k is even; the rest are off by one at x = 3.
  jobs = [_job("return x * x" if k % 2 == 0 else "return x * x + (x == 3)")
          for k in range(24)]
  verdicts = judge.judge_many(jobs, limits=FAST, workers=3)
  assert [v.status for v in verdicts] == ["passed", "failed"] * 12
  assert [v.calls for v in verdicts] == [5, 4] * 12


def test_a_candidate_exception_is_an_error_the_test_cannot_swallow():
  swallow = judge.Job(program="def f(x):\n  raise ValueError('no')\n", entry_point="f",
                      test="def check(candidate):\n  try:\n    candidate(1)\n"
                           "  except Exception:\n    pass\n")
  v = judge.judge(swallow, limits=FAST)
  assert v.status == "error" and "ValueError: no" in v.detail


def test_helpers_run_in_the_checker_and_the_test_can_call_the_function_by_name():
  job = judge.Job(program="def g(x):\n  return -1\ndef f(x):\n  return g(x) * x\n",
                  entry_point="f", helpers="def g(x):\n  return 1\n",
                  test="def check(candidate):\n  assert f(3) == candidate(3) == -3 and g(0) == 1\n")
  v = judge.judge(job, limits=FAST)
  assert v.status == "passed" and v.calls == 2, v


@pytest.mark.skipif(sandbox.isolation() == "user", reason="zygotes hold uid slots as root")
def test_a_dead_zygote_is_replaced_and_the_job_still_judged():
  assert judge.judge(_job("return x * x"), limits=FAST).passed
  for z in list(judge._POOL._zygotes):  # pylint: disable=protected-access
    os.kill(z.proc.pid, signal.SIGKILL)
    z.proc.wait()
  verdicts = judge.judge_many([_job("return x * x"), _job("return x")], limits=FAST, workers=2)
  assert [v.status for v in verdicts] == ["passed", "failed"]
