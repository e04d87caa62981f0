"""Hendrycks MATH: loading, prompts and answer grading.

Two layouts load (`load_math`):

* the released MATH folder, one split at a time: ``<split>/<subject>/<n>.json``
  (e.g. ``MATH/test/algebra/1.json``), each file a JSON object with
  ``problem``, ``level`` ("Level 1" ... "Level 5", a few "Level ?"), ``type``
  ("Counting & Probability", ...) and ``solution``;
* JSONL files with the same fields, one problem a line (e.g. the MATH-500
  subset, whose lines also carry ``subject``, an integer ``level``,
  ``answer`` and ``unique_id``; those are used when present).

The reference answer is the last ``\\boxed{...}`` of the solution (or the
``answer`` field). A file or line that cannot be read is reported with its
path (and line) and skipped, or fails with a one-line ValueError when
``on_error="raise"``; the other problems are unaffected.

Grading (`grade_math`) extracts the last ``\\boxed{...}``/``\\fbox{...}`` of
a completion and compares it with the reference answer:

1. normalised strings (`normalize_answer`, the Hendrycks-style cleanup:
   spaces, ``\\left``/``\\right``, ``\\!``, ``\\dfrac``, units in
   ``\\text{ ...}``, dollars, degrees, percent, ``x =``, trailing ``.0`` ...)
   equal: correct. This is the documented fallback, used alone when
   math-verify is not installed;
2. otherwise math-verify's symbolic check (``parse`` + ``verify``: fractions
   vs decimals, radicals, intervals, sets, expressions, units stripped). A
   math-verify error or time-out counts as incorrect.

math-verify bounds its work with ``signal.alarm``, which only works in the
main thread. Off the main thread `grade_math` turns that time-out off (so a
pathological expression could take long); grade in the main thread or in
worker processes (e.g. ``concurrent.futures.ProcessPoolExecutor``) when time
must be bounded.

Example::

  problems = hendrycks_math.load_math("MATH/test", levels=[3, 4, 5])
  prompt = hendrycks_math.few_shot_prompt(problems[0].problem)  # base model
  prompt = hendrycks_math.chat_prompt(problems[0].problem)  # instruction-tuned
  correct = hendrycks_math.grade_math(completion, problems[0].answer)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from collections.abc import Iterator, Sequence

from absl import logging

from bon_jax import grading

SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
LEVELS = (1, 2, 3, 4, 5)

# Base-model generations continue with the next exemplar; stop there.
FEW_SHOT_STOP = "\n\nProblem:"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MathProblem:
  """One MATH problem.

  Attributes:
    id: where it came from, e.g. "test/algebra/1.json" (folder layout, the
      MATH-500 ``unique_id`` style) or the JSONL ``unique_id`` /
      "<file>:<line>".
    problem: the problem statement (LaTeX).
    level: difficulty 1-5; None for the few "Level ?" problems.
    subject: one of `SUBJECTS`, e.g. "counting_and_probability".
    solution: the reference solution (LaTeX), ending in a boxed answer.
    answer: the reference answer: the ``answer`` field, else the content of
      the solution's last ``\\boxed{...}``.
  """

  id: str
  problem: str
  level: int | None
  subject: str
  solution: str
  answer: str


class _BadRecord(ValueError):
  """A problem file or line that cannot be used; the message says why."""


def subject_key(name: str) -> str:
  """"Counting & Probability" or "counting_and_probability" -> the latter."""
  key = name.strip().lower().replace("&", " and ")
  return re.sub(r"[^a-z0-9]+", "_", key).strip("_")


def _parse_level(value) -> int | None:
  if isinstance(value, bool):
    raise _BadRecord(f"level must be an int or 'Level N', got {value!r}")
  if isinstance(value, int):
    level = value
  elif isinstance(value, str):
    m = re.fullmatch(r"\s*(?:level\s*)?(\d+|\?)\s*", value, re.IGNORECASE)
    if not m:
      raise _BadRecord(f"level must be an int or 'Level N', got {value!r}")
    if m.group(1) == "?":
      return None
    level = int(m.group(1))
  else:
    raise _BadRecord(f"level must be an int or 'Level N', got {value!r}")
  if level not in LEVELS:
    raise _BadRecord(f"level {level} is outside 1-5")
  return level


def _make_problem(record, *, id_: str, folder_subject: str | None) -> MathProblem:
  if not isinstance(record, dict):
    raise _BadRecord(f"expected a JSON object, got {type(record).__name__}")
  for field in ("problem", "solution"):
    if not isinstance(record.get(field), str) or not record[field].strip():
      raise _BadRecord(f"missing or empty string field {field!r}")
  if "level" not in record:
    raise _BadRecord("missing field 'level'")
  subject = record.get("type", record.get("subject", folder_subject))
  if not isinstance(subject, str):
    raise _BadRecord("missing field 'type' (or 'subject')")
  subject = subject_key(subject)
  if subject not in SUBJECTS:
    raise _BadRecord(f"unknown subject {subject!r}; expected one of {SUBJECTS}")
  answer = record.get("answer")
  if not isinstance(answer, str) or not answer.strip():
    answer = grading.extract_boxed(record["solution"])
  if answer is None or not answer.strip():
    raise _BadRecord("the solution has no \\boxed{...} answer")
  return MathProblem(
      id=str(record.get("unique_id", id_)),
      problem=record["problem"],
      level=_parse_level(record["level"]),
      subject=subject,
      solution=record["solution"],
      answer=answer.strip(),
  )


def _folder_records(path: str) -> Iterator[tuple[str, object]]:
  """(where, problem or _BadRecord) for <path>/<subject>/<n>.json."""
  split = os.path.basename(os.path.normpath(path))
  files = []
  for subject in sorted(os.listdir(path)):
    subject_dir = os.path.join(path, subject)
    if os.path.isdir(subject_dir):
      for name in os.listdir(subject_dir):
        if name.endswith(".json"):
          stem = name[: -len(".json")]
          order = (0, int(stem), "") if stem.isdigit() else (1, 0, stem)
          files.append((subject, order, name))
  if not files:
    raise ValueError(
        f"no <subject>/<n>.json files under {path}: MATH is read one split at a time (e.g."
        " MATH/test) or from a .jsonl file; set config.task.data_dir to the MATH folder (with"
        " train/ and test/) or config.task.test_path to the .jsonl file"
    )
  for subject, _, name in sorted(files):
    file = os.path.join(path, subject, name)
    try:
      with open(file, encoding="utf-8") as f:
        record = json.load(f)
      yield file, _make_problem(
          record, id_=f"{split}/{subject}/{name}", folder_subject=subject
      )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      yield file, _BadRecord(f"unreadable JSON: {e}")
    except _BadRecord as e:
      yield file, e


def _jsonl_records(path: str) -> Iterator[tuple[str, object]]:
  """(where, problem or _BadRecord) for each non-blank line of a JSONL file."""
  base = os.path.basename(path)
  with open(path, encoding="utf-8", errors="replace") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        yield where, _make_problem(
            json.loads(line), id_=f"{base}:{lineno}", folder_subject=None
        )
      except json.JSONDecodeError as e:
        yield where, _BadRecord(f"unreadable JSON: {e}")
      except _BadRecord as e:
        yield where, e


def load_math(
    path: str,
    *,
    levels: Sequence[int] | None = None,
    subjects: Sequence[str] | None = None,
    on_error: str = "skip",
) -> list[MathProblem]:
  """Loads MATH problems from a split folder or a JSONL file.

  Args:
    path: a split folder (``MATH/test``: ``<subject>/<n>.json`` inside) or a
      ``.jsonl`` file.
    levels: keep only these levels (1-5); None keeps all, including "Level ?".
    subjects: keep only these subjects, as `SUBJECTS` or as the dataset's
      ``type`` ("Number Theory"); None keeps all.
    on_error: "skip" logs each bad file or line (path, line, reason) and goes
      on; "raise" raises ValueError for the first one.

  Returns:
    The problems in file order (subject, then problem number, for folders).
  """
  if on_error not in ("skip", "raise"):
    raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
  if levels is not None:
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad:
      raise ValueError(f"levels must be in {LEVELS}, got {bad}")
  if subjects is not None:
    keys = {subject_key(s) for s in subjects}
    bad = sorted(keys - set(SUBJECTS))
    if bad:
      raise ValueError(f"unknown subjects {bad}; expected some of {SUBJECTS}")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"MATH data not found at {path!r}: download the Hendrycks MATH dataset"
        " (github.com/hendrycks/math) or a JSONL subset such as MATH-500, and"
        " set config.task.data_dir to the MATH folder (with train/ and test/) or"
        " config.task.test_path to the .jsonl file"
    )
  records = _folder_records(path) if os.path.isdir(path) else _jsonl_records(path)
  problems, skipped = [], 0
  for where, item in records:
    if isinstance(item, _BadRecord):
      if on_error == "raise":
        raise ValueError(f"bad MATH problem {where}: {item}")
      logging.warning("Skipping bad MATH problem %s: %s", where, item)
      skipped += 1
      continue
    if levels is not None and item.level not in levels:
      continue
    if subjects is not None and item.subject not in keys:
      continue
    problems.append(item)
  if skipped:
    logging.warning("Skipped %d bad MATH problem(s) in %s", skipped, path)
  if not problems:
    raise ValueError(
        f"no MATH problems left in {path} with levels={levels},"
        f" subjects={subjects} ({skipped} bad skipped)"
    )
  return problems


# The four exemplars of the Minerva MATH prompt (Lewkowycz et al., 2022),
# with the answers boxed as in the MATH solutions.
FEW_SHOT_EXAMPLES = (
    (
        r"Find the domain of the expression $\frac{\sqrt{x-2}}{\sqrt{5-x}}$.",
        r"The expressions inside each square root must be non-negative."
        r" Therefore, $x-2 \ge 0$, so $x\ge2$, and $5 - x \ge 0$, so"
        r" $x \le 5$. Also, the denominator cannot be equal to zero, so"
        r" $5-x>0$, which gives $x<5$. Therefore, the domain of the"
        r" expression is $\boxed{[2,5)}$.",
    ),
    (
        r"If $\det \mathbf{A} = 2$ and $\det \mathbf{B} = 12,$ then find"
        r" $\det (\mathbf{A} \mathbf{B}).$",
        r"We have that $\det (\mathbf{A} \mathbf{B}) = (\det \mathbf{A})"
        r"(\det \mathbf{B}) = (2)(12) = \boxed{24}.$",
    ),
    (
        "Terrell usually lifts two 20-pound weights 12 times. If he uses two"
        " 15-pound weights instead, how many times must Terrell lift them in"
        " order to lift the same total weight?",
        r"If Terrell lifts two 20-pound weights 12 times, he lifts a total of"
        r" $2\cdot 12\cdot20=480$ pounds of weight. If he lifts two 15-pound"
        r" weights instead for $n$ times, he will lift a total of"
        r" $2\cdot15\cdot n=30n$ pounds of weight. Equating this to 480"
        r" pounds, we can solve for $n$: \begin{align*} 30n&=480\\"
        r" \Rightarrow\qquad n&=480/30=\boxed{16} \end{align*}",
    ),
    (
        r"If the system of equations \begin{align*} 6x-4y&=a,\\ 6y-9x &=b."
        r" \end{align*}has a solution $(x, y)$ where $x$ and $y$ are both"
        r" nonzero, find $\frac{a}{b},$ assuming $b$ is nonzero.",
        r"If we multiply the first equation by $-\frac{3}{2}$, we obtain"
        r" $$6y-9x=-\frac{3}{2}a.$$Since we also know that $6y-9x=b$, we have"
        r" $$-\frac{3}{2}a=b\Rightarrow\frac{a}{b}=\boxed{-\frac{2}{3}}.$$",
    ),
)

CHAT_INSTRUCTION = (
    "Solve the following math problem step by step. Put the final answer in"
    " \\boxed{}.\n\n"
)


def _text(problem: MathProblem | str) -> str:
  return problem.problem if isinstance(problem, MathProblem) else problem


def few_shot_prompt(problem: MathProblem | str, *, num_shots: int = 4) -> str:
  """The Minerva-style few-shot prompt for base models.

  ``Problem:\\n...\\n\\nSolution:\\n...`` blocks for the first `num_shots`
  exemplars, then the problem and an open ``Solution:``; stop generation at
  `FEW_SHOT_STOP`.
  """
  if not 0 <= num_shots <= len(FEW_SHOT_EXAMPLES):
    raise ValueError(
        f"num_shots must be in [0, {len(FEW_SHOT_EXAMPLES)}], got {num_shots}"
    )
  shots = "".join(
      f"Problem:\n{q}\n\nSolution:\n{a}\n\n"
      for q, a in FEW_SHOT_EXAMPLES[:num_shots]
  )
  return f"{shots}Problem:\n{_text(problem)}\n\nSolution:\n"


def chat_prompt(problem: MathProblem | str) -> str:
  """One Gemma user turn asking for a boxed answer, then the model turn.

  The tokenizer adds ``<bos>``; it is not part of the string.
  """
  return (
      f"<start_of_turn>user\n{CHAT_INSTRUCTION}{_text(problem)}<end_of_turn>\n"
      "<start_of_turn>model\n"
  )


def _strip_text_command(s: str, command: str) -> str:
  r"""Removes unit text (``\text{ cm}``) and unwraps other ``\text{X}``."""
  out, i = [], 0
  token = command + "{"
  while (j := s.find(token, i)) >= 0:
    depth, k = 0, j + len(command)
    for k in range(j + len(command), len(s)):
      depth += {"{": 1, "}": -1}.get(s[k], 0)
      if depth == 0:
        break
    inner = s[j + len(token) : k]
    out.append(s[i:j])
    # A leading space marks units after a number ("5\text{ cm}"), as in MATH.
    if not (inner.startswith(" ") and s[:j].strip()):
      out.append(inner)
    i = k + 1
  out.append(s[i:])
  return "".join(out)


def normalize_answer(answer: str) -> str:
  r"""Hendrycks-style canonical string of a LaTeX answer (the fallback check).

  ``normalize_answer(r"\left( \dfrac12, 5.0 \right)") == r"(\frac{1}{2},5)"``
  """
  s = answer.strip().replace("\n", "")
  for cmd in ("\\text", "\\textbf", "\\mbox", "\\mathrm"):
    s = _strip_text_command(s, cmd)
  for old, new in (
      ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", ""),
      ("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"),
      ("\\tfrac", "\\frac"), ("^{\\circ}", ""), ("^\\circ", ""),
      ("\\%", ""), ("%", ""), ("\\$", ""), ("$", ""), (" ", ""),
  ):
    s = s.replace(old, new)
  # "x=3" -> "3" (a short variable on the left, as in the MATH cleanup).
  if s.count("=") == 1 and len(s.split("=")[0]) <= 2:
    s = s.split("=")[1]
  s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\frac(\d)", r"\\frac{\1}", s)
  s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
  s = re.sub(r"^(-?\d+)/(\d+)$", r"\\frac{\1}{\2}", s)
  if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
    s = s.replace(",", "")  # thousands separators
  s = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s)  # ".5" -> "0.5"
  s = re.sub(r"(\d)\.0*(?!\d)", r"\1", s)  # "5.0", "5." -> "5"
  return s


def _math_verify_equal(pred: str, gold: str) -> bool:
  """math-verify's check of two boxed contents; errors and time-outs -> False."""
  import math_verify  # pylint: disable=g-import-not-at-top

  # signal.alarm-based time-outs only work in the main thread (module doc).
  t = 5 if threading.current_thread() is threading.main_thread() else None
  try:
    gold_parsed = math_verify.parse("\\boxed{" + gold + "}", parsing_timeout=t)
    pred_parsed = math_verify.parse("\\boxed{" + pred + "}", parsing_timeout=t)
    if not gold_parsed or not pred_parsed:
      return False
    return bool(math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=t))
  except Exception as e:  # pylint: disable=broad-except
    logging.log_every_n(logging.WARNING, "math-verify failed: %r", 100, e)
    return False


try:
  import math_verify as _  # pylint: disable=g-import-not-at-top,unused-import

  HAVE_MATH_VERIFY = True
except ImportError:
  HAVE_MATH_VERIFY = False
  logging.warning(
      "math-verify is not installed: MATH grading falls back to normalised"
      " string comparison (pip install 'math-verify[antlr4_13_2]')"
  )


def grade_math(completion: str, answer: str) -> bool:
  """Whether the last boxed answer of `completion` equals `answer`.

  See the module doc: normalised string equality, else math-verify's
  symbolic equivalence. No box in the completion: False.

  ``grade_math(r"so $\\boxed{0.5}$", r"\\frac{1}{2}") is True``
  """
  pred = grading.extract_boxed(completion)
  if pred is None or not pred.strip():
    return False
  norm_pred, norm_gold = normalize_answer(pred), normalize_answer(answer)
  if norm_pred and norm_pred == norm_gold:
    return True
  if not HAVE_MATH_VERIFY:
    return False
  return _math_verify_equal(pred, answer)
