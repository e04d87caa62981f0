"""MATH loading (both layouts, malformed files), prompts and grading."""

import json
import logging
import threading

import pytest

from bon_jax import grading
from bon_jax.tasks import hendrycks_math as hm


def _problem(level, type_, answer, n=0):
  return {
      "problem": f"Problem {n}?",
      "level": level,
      "type": type_,
      "solution": f"Work. So the answer is $\\boxed{{{answer}}}$.",
  }


@pytest.fixture
def math_split(tmp_path):
  """A MATH split folder with good problems and three bad files."""
  split = tmp_path / "MATH" / "test"
  files = {
      "algebra/1.json": _problem("Level 2", "Algebra", r"\frac{1}{2}", 1),
      "algebra/10.json": _problem("Level 5", "Algebra", "10", 10),
      "algebra/2.json": _problem("Level 3", "Algebra", r"\sqrt{2}", 2),
      "counting_and_probability/3.json": _problem(
          "Level 3", "Counting & Probability", "6", 3
      ),
      "geometry/4.json": _problem("Level ?", "Geometry", "90^\\circ", 4),
      "number_theory/5.json": _problem("Level 1", "Number Theory", "7", 5),
  }
  for rel, record in files.items():
    path = split / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
  bad = {
      "algebra/3.json": '{"problem": "cut off',  # not JSON
      "geometry/6.json": json.dumps(
          {"problem": "p", "level": "Level 1", "type": "Geometry"}
      ),  # no solution
      "number_theory/7.json": json.dumps(
          {**_problem("Level 2", "Number Theory", "1"), "solution": "no box"}
      ),
  }
  for rel, text in bad.items():
    (split / rel).write_text(text)
  (split / "algebra" / "README.txt").write_text("not a problem")
  return split, sorted(str(split / rel) for rel in bad)


@pytest.fixture
def math_jsonl(tmp_path):
  """A MATH-500-style JSONL file, a Hendrycks-style line and two bad lines."""
  lines = [
      json.dumps({
          "problem": "What is 1+1?", "solution": r"It is $\boxed{2}$.",
          "answer": "2", "subject": "Prealgebra", "level": 1,
          "unique_id": "test/prealgebra/12.json",
      }),
      "",
      json.dumps(_problem("Level 4", "Intermediate Algebra", r"\{1,2\}", 9)),
      '{"problem": "oops"',
      json.dumps({**_problem("Level 2", "Algebra", "1"), "level": "hard"}),
  ]
  path = tmp_path / "math500.jsonl"
  path.write_text("\n".join(lines) + "\n")
  return path, [f"{path}:4", f"{path}:5"]


def test_load_math_reads_the_split_folder_and_skips_bad_files(
    math_split, caplog
):
  split, bad_files = math_split
  with caplog.at_level(logging.WARNING):
    problems = hm.load_math(str(split))
  assert [p.id for p in problems] == [
      "test/algebra/1.json", "test/algebra/2.json", "test/algebra/10.json",
      "test/counting_and_probability/3.json", "test/geometry/4.json",
      "test/number_theory/5.json",
  ]
  first = problems[0]
  assert (first.problem, first.level, first.subject) == ("Problem 1?", 2, "algebra")
  assert first.answer == r"\frac{1}{2}"
  assert problems[3].subject == "counting_and_probability"
  assert problems[4].level is None  # "Level ?"
  for path in bad_files:
    assert path in caplog.text


def test_load_math_raises_naming_the_first_bad_file(math_split):
  split, bad_files = math_split
  with pytest.raises(ValueError, match="bad MATH problem .*algebra/3.json"):
    hm.load_math(str(split), on_error="raise")
  assert bad_files[0].endswith("algebra/3.json")


def test_load_math_filters_by_level_and_subject(math_split):
  split, _ = math_split
  by_level = hm.load_math(str(split), levels=[3])
  assert {p.id for p in by_level} == {
      "test/algebra/2.json", "test/counting_and_probability/3.json"
  }
  by_subject = hm.load_math(
      str(split), subjects=["Number Theory", "counting_and_probability"]
  )
  assert [p.subject for p in by_subject] == [
      "counting_and_probability", "number_theory"
  ]
  both = hm.load_math(str(split), levels=[2, 5], subjects=["algebra"])
  assert [p.level for p in both] == [2, 5]


def test_load_math_reads_jsonl_and_reports_bad_lines(math_jsonl, caplog):
  path, bad_lines = math_jsonl
  with caplog.at_level(logging.WARNING):
    problems = hm.load_math(str(path))
  assert [p.id for p in problems] == ["test/prealgebra/12.json", "math500.jsonl:3"]
  assert [(p.level, p.subject, p.answer) for p in problems] == [
      (1, "prealgebra", "2"), (4, "intermediate_algebra", r"\{1,2\}")
  ]
  for where in bad_lines:
    assert where in caplog.text
  with pytest.raises(ValueError, match="math500.jsonl:4"):
    hm.load_math(str(path), on_error="raise")


def test_load_math_errors_say_what_to_fix(tmp_path, math_split):
  split, _ = math_split
  with pytest.raises(FileNotFoundError, match="config.task.data_dir"):
    hm.load_math(str(tmp_path / "missing"))
  with pytest.raises(ValueError, match="one split"):
    hm.load_math(str(split.parent))  # the MATH root, not a split
  with pytest.raises(ValueError, match="levels"):
    hm.load_math(str(split), levels=[6])
  with pytest.raises(ValueError, match="unknown subjects"):
    hm.load_math(str(split), subjects=["calculus"])
  with pytest.raises(ValueError, match="on_error"):
    hm.load_math(str(split), on_error="ignore")
  with pytest.raises(ValueError, match="no MATH problems left"):
    hm.load_math(str(split), levels=[4])


def test_few_shot_prompt_ends_with_an_open_solution():
  prompt = hm.few_shot_prompt("What is $2+2$?")
  assert prompt.endswith("Problem:\nWhat is $2+2$?\n\nSolution:\n")
  assert prompt.count("Problem:\n") == 5
  exemplar_answers = [grading.extract_boxed(a) for _, a in hm.FEW_SHOT_EXAMPLES]
  assert exemplar_answers == ["[2,5)", "24", "16", r"-\frac{2}{3}"]
  assert hm.few_shot_prompt("Q", num_shots=0) == "Problem:\nQ\n\nSolution:\n"
  with pytest.raises(ValueError, match="num_shots"):
    hm.few_shot_prompt("Q", num_shots=5)


def test_chat_prompt_is_one_gemma_user_turn_then_the_model_turn():
  problem = hm.MathProblem(
      id="x", problem="What is $2+2$?", level=1, subject="prealgebra",
      solution=r"$\boxed{4}$", answer="4",
  )
  prompt = hm.chat_prompt(problem)
  assert prompt.startswith("<start_of_turn>user\n")
  assert prompt.endswith("What is $2+2$?<end_of_turn>\n<start_of_turn>model\n")
  assert "\\boxed{}" in prompt and prompt.count("<start_of_turn>") == 2


EQUIVALENT = [
    (r"The answer is $\boxed{0.5}$.", r"\frac{1}{2}"),
    (r"$\boxed{\dfrac12}$", r"\frac{1}{2}"),
    (r"$\boxed{2\sqrt{2}}$", r"\sqrt{8}"),
    (r"$\boxed{[2, 5)}$", "[2,5)"),
    (r"$\boxed{10 \text{ cm}}$", "10"),
    (r"$\boxed{\text{Monday}}$", r"\text{Monday}"),
    (r"$\boxed{\{2,1\}}$", r"\{1,2\}"),
    (r"$\boxed{(x+1)^2}$", "x^2+2x+1"),
    (r"$\boxed{5.}$", "5"),
    (r"wrong \boxed{3}, fixed: \fbox{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}"),
]
NOT_EQUIVALENT = [
    (r"$\boxed{3}$", "4"),
    (r"$\boxed{(2,1)}$", "(1,2)"),
    (r"$\boxed{[2,5]}$", "[2,5)"),
    (r"$\boxed{\frac{1}{3}}$", "0.33"),
    (r"\boxed{4} then \boxed{3}", "4"),  # the last box counts
    ("The answer is 4.", "4"),  # no box
    (r"$\boxed{}$", "4"),
]


@pytest.mark.parametrize("completion,answer", EQUIVALENT)
def test_grade_math_accepts_equivalent_answers(completion, answer):
  assert hm.grade_math(completion, answer)


@pytest.mark.parametrize("completion,answer", NOT_EQUIVALENT)
def test_grade_math_rejects_different_answers(completion, answer):
  assert not hm.grade_math(completion, answer)


def test_grade_math_falls_back_to_normalised_strings(monkeypatch):
  monkeypatch.setattr(hm, "HAVE_MATH_VERIFY", False)
  assert hm.grade_math(r"$\boxed{\left( \dfrac12, 5.0 \right)}$", r"(\frac{1}{2},5)")
  assert hm.grade_math(r"$\boxed{10\text{ cm}}$", "10")
  assert not hm.grade_math(r"$\boxed{0.5}$", r"\frac{1}{2}")  # needs sympy
  assert not hm.grade_math(r"$\boxed{3}$", "4")


def test_grade_math_treats_math_verify_errors_as_fallback(monkeypatch):
  import math_verify  # pylint: disable=g-import-not-at-top

  def broken(*args, **kwargs):
    raise RuntimeError("parser exploded")

  monkeypatch.setattr(math_verify, "parse", broken)
  assert hm.grade_math(r"$\boxed{\dfrac12}$", r"\frac{1}{2}")  # string match
  assert not hm.grade_math(r"$\boxed{0.5}$", r"\frac{1}{2}")


def test_grade_math_works_off_the_main_thread():
  results = []
  thread = threading.Thread(
      target=lambda: results.extend([
          hm.grade_math(r"$\boxed{2\sqrt{2}}$", r"\sqrt{8}"),
          hm.grade_math(r"$\boxed{3}$", "4"),
      ])
  )
  thread.start()
  thread.join()
  assert results == [True, False]
