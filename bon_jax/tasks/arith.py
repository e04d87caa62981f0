"""Unique-answer families that can be mixed into the countdown task.

* ``arith``: two-step arithmetic, ``(23+45)*3=`` ->
  ``23+45=68, 68*3=\\boxed{204}``.
* ``mod``: a product modulo m, ``17*23 mod 7=`` ->
  ``17*23=391, 391 mod 7=\\boxed{6}``.
* ``linear``: one linear equation, ``3x+7=25, x=`` -> ``3x=18, x=\\boxed{6}``.

Each has exactly one answer, an integer; the grader compares it numerically.
The worked solution is also the SFT target, so it stays within ~24 tokens
of the task tokenizer (the final value is written only inside the box).
Level ``l`` (1..5) scales the operand sizes.

Example::

  fields = sample("mod", np.random.default_rng(0), level=2)
  parse_answer(" 6 ")   # 6
"""

from __future__ import annotations

import re

import numpy as np

FAMILIES = ("arith", "mod", "linear")

_ANSWER_RE = re.compile(r"\s*(?:x\s*=\s*)?([+-]?\d{1,12})\s*\.?\s*")


def parse_answer(text: str) -> int | None:
  """The integer in a boxed answer (``6``, ``-4``, ``x = 6``), else None."""
  m = _ANSWER_RE.fullmatch(text)
  return int(m.group(1)) if m else None


def _apply(a: int, op: str, b: int) -> int:
  return a + b if op == "+" else a - b if op == "-" else a * b


def _arith(rng: np.random.Generator, level: int) -> dict[str, str]:
  hi = (9, 20, 40, 60, 99)[level - 1]
  # Level 5 has the largest operands, so no products: results stay short.
  ops = "+-*" if level in (3, 4) else "+-"
  op1, op2 = rng.choice(list(ops), size=2).tolist()
  a, b = rng.integers(2, hi + 1, size=2).tolist()
  # A multiplier stays one digit, so intermediate results stay short.
  c = int(rng.integers(2, 10 if op2 == "*" else hi + 1))
  if op1 == "*":
    b = int(rng.integers(2, 10))
  r1 = _apply(a, op1, b)
  r2 = _apply(r1, op2, c)
  left = f"({a}{op1}{b})" if op2 == "*" and op1 in "+-" else f"{a}{op1}{b}"
  expr = f"{left}{op2}{c}"
  return {
      "key": f"arith/{expr}",
      "problem": f"Compute {expr}.",
      "prompt": f"{expr}=",
      "solution": f"{a}{op1}{b}={r1}, {r1}{op2}{c}=\\boxed{{{r2}}}",
      "answer": str(r2),
  }


def _mod(rng: np.random.Generator, level: int) -> dict[str, str]:
  hi = (9, 12, 16, 22, 31)[level - 1]
  a, b = rng.integers(2, hi + 1, size=2).tolist()
  m = int(rng.integers(3, min(9, 4 + level) + 1))
  p, r = a * b, (a * b) % m
  return {
      "key": f"mod/{a}*{b}%{m}",
      "problem": f"What is the remainder when {a}*{b} is divided by {m}?",
      "prompt": f"{a}*{b} mod {m}=",
      "solution": f"{a}*{b}={p}, {p} mod {m}=\\boxed{{{r}}}",
      "answer": str(r),
  }


def _signed(v: int) -> str:
  return f"+{v}" if v >= 0 else str(v)


def _linear(rng: np.random.Generator, level: int) -> dict[str, str]:
  a = int(rng.integers(2, 3 + level))
  x_lo = 0 if level <= 2 else -5 * level
  x = int(rng.integers(x_lo, 5 * level + 1))
  b = int(rng.integers(-10 * level, 10 * level + 1))
  b = b or 1
  c = a * x + b
  eq = f"{a}x{_signed(b)}={c}"
  return {
      "key": f"linear/{eq}",
      "problem": f"Solve {eq} for x.",
      "prompt": f"{eq}, x=",
      "solution": f"{a}x={c - b}, x=\\boxed{{{x}}}",
      "answer": str(x),
  }


_SAMPLERS = {"arith": _arith, "mod": _mod, "linear": _linear}


def sample(family: str, rng: np.random.Generator, level: int) -> dict[str, str]:
  """One instance: key (unique id), problem, prompt, solution, answer."""
  if family not in _SAMPLERS:
    raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
  if not 1 <= level <= 5:
    raise ValueError(f"level must be in 1..5, got {level}")
  return _SAMPLERS[family](rng, level)
