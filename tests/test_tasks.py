"""The embedded Countdown task: enumeration, grading, splits, SFT sampling."""

import ast
import collections
import functools
import itertools
import operator
import re

import numpy as np
import pytest

from bon_jax.tasks import arith
from bon_jax.tasks import countdown

_AST_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _ast_value(text: str) -> int:
  """Independent evaluator: Python's own parser, +, -, * and ints only."""

  def ev(node):
    if isinstance(node, ast.Expression):
      return ev(node.body)
    if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
      return _AST_OPS[type(node.op)](ev(node.left), ev(node.right))
    if isinstance(node, ast.Constant) and type(node.value) is int:
      return node.value
    raise ValueError(f"not whitelisted: {ast.dump(node)}")

  return ev(ast.parse(text.strip(), mode="eval"))


def _trees(items):
  """Every binary tree with leaves `items` in order and ops from + - *."""
  if len(items) == 1:
    yield items[0]
    return
  for k in range(1, len(items)):
    for left in _trees(items[:k]):
      for right in _trees(items[k:]):
        for op in "+-*":
          yield (op, left, right)


def _full_brackets(tree) -> str:
  if isinstance(tree, int):
    return str(tree)
  op, left, right = tree
  return f"({_full_brackets(left)}{op}{_full_brackets(right)})"


def _minimal_print(tree) -> str:
  """Drops every bracket that the value does not need (test's own printer)."""
  if isinstance(tree, int):
    return str(tree)
  op, left, right = tree
  ls, rs = _minimal_print(left), _minimal_print(right)
  is_sum = lambda t: not isinstance(t, int) and t[0] in "+-"
  if op == "*" and is_sum(left):
    ls = f"({ls})"
  if op in "-*" and is_sum(right):
    rs = f"({rs})"
  return ls + op + rs


@functools.cache
def _brute_force(digits):
  """{target: set of minimal strings} from permutations x trees, via ast."""
  out = collections.defaultdict(set)
  for perm in set(itertools.permutations(digits)):
    for tree in _trees(list(perm)):
      full = _full_brackets(tree)
      v = _ast_value(full)
      minimal = _minimal_print(tree)
      assert _ast_value(minimal) == v, (full, minimal)
      out[v].add(minimal)
  return out


@pytest.mark.parametrize("digits", [(1, 2), (2, 3, 5), (2, 2, 3), (1, 3, 4, 6), (2, 2, 5, 5)])
def test_target_stats_match_ast_brute_force(digits):
  brute = _brute_force(digits)
  stats = countdown.target_stats(digits)
  assert set(stats) == set(brute)
  for target, strings in brute.items():
    forms = [f for cls in countdown.solutions(digits, target) for f in cls]
    assert sorted(forms) == sorted(strings), target
    classes = {countdown.normal_form(countdown.parse(s)) for s in strings}
    assert stats[target] == (len(classes), len(strings)), target


@pytest.mark.parametrize("digits", [(1, 2, 2, 3, 3), (1, 1, 2, 3, 9), (2, 4, 5, 7, 8)])
def test_hashed_classes_match_exact_normal_form(digits):
  # (1, 2, 2, 3, 3) has classes whose signed terms cancel, e.g. 1+2*3-2*3 vs
  # 1+2-2+3-3: a multiset hash that let +t and -t cancel would merge them.
  stats = countdown.target_stats(digits)
  for target in sorted(stats)[:: max(1, len(stats) // 25)]:
    got = countdown.solutions(digits, target)
    groups = collections.defaultdict(list)
    for form in (f for cls in got for f in cls):
      assert countdown.value(countdown.parse(form)) == target
      groups[countdown.normal_form(countdown.parse(form))].append(form)
    assert got == tuple(sorted(tuple(sorted(g)) for g in groups.values()))
    assert stats[target] == (len(got), sum(map(len, got)))


def test_template_counts_match_minimal_printing_of_all_trees():
  for n in range(1, 5):
    printed = {_minimal_print(t) for t in _trees([10 + i for i in range(n)])}
    templates = {t.format(*range(10, 10 + n)) for t in countdown.templates(n)}
    assert templates == printed
    assert len(countdown.templates(n)) == len(templates)


def _random_expression(rng, depth=0) -> str:
  """Random well-formed text: spaces, redundant brackets, multi-digit ints."""
  r = rng.random()
  if depth > 3 or r < 0.3:
    return str(int(rng.integers(0, 30)))
  if r < 0.4:
    return f"( {_random_expression(rng, depth + 1)} )"
  op = str(rng.choice(["+", "-", "*"]))
  return f"{_random_expression(rng, depth + 1)}{op} {_random_expression(rng, depth + 1)}"


def test_parser_agrees_with_ast():
  rng = np.random.default_rng(0)
  for _ in range(500):
    text = _random_expression(rng)
    assert countdown.value(countdown.parse(text)) == _ast_value(text), text
  # Random junk: whatever the parser accepts, Python evaluates the same way.
  pieces = ["(", ")", "+", "-", "*", " ", "3", "12", "0", "/", "x"]
  accepted = 0
  for _ in range(3000):
    text = "".join(rng.choice(pieces, size=rng.integers(1, 10)))
    try:
      got = countdown.value(countdown.parse(text))
    except countdown.ParseError:
      continue
    accepted += 1
    assert got == _ast_value(text), text
  assert accepted > 50


def test_normal_form_merges_reorderings_and_sign_folding_only():
  nf = lambda s: countdown.normal_form(countdown.parse(s))
  assert nf("9-(4-3)") == nf("9-4+3") == nf("3+9-4")
  assert nf("(3+4)*9") == nf("9*(4+3)")
  assert nf("3*4*7") == nf("7*(4*3)")
  assert nf("9-4+3") != nf("9-(4+3)")
  assert nf("(9-4)*3") != nf("9-4*3")


P = countdown.make_problem((3, 4, 7, 9), 60)


@pytest.mark.parametrize(
    "completion",
    [
        r"\boxed{3*(4+7+9)}",
        r"\boxed{(9+7+4)*3}",
        r"\boxed{ ( ( 3 ) * ( (4+7) + 9 ) ) }",
        r"\boxed{3×(4+7+9)}",
        r"\boxed{3 \times (4+7+9)}",
        r"\boxed{3\cdot(4+(7+9))}",
        r"\boxed{(9+7+4)*3}",
        r"first \boxed{1}, then \boxed{(4+7+9)*3} at last",
    ],
)
def test_grade_accepts_any_correct_expression(completion):
  assert countdown.grade(P, completion)
  assert countdown.answer_key(P, completion) == "60"


@pytest.mark.parametrize(
    "completion",
    [
        r"\boxed{4*(9+7)-3}",  # 61
        r"\boxed{6*(9+1)}",  # 60 from other digits
        r"\boxed{7*9-3}",  # 60 but leaves the 4 unused
        r"\boxed{3*(4+4+9)+9}",  # 60 reusing 4 and 9, no 7
        r"\boxed{3*(4+7+9)+0}",  # 60 with an extra number
        r"\boxed{(3*(4+7+9)}",  # unbalanced
        r"\boxed{3*(4+7+9))}",
        r"\boxed{3**(4+7+9)}",
        r"\boxed{-3*(4-7-9)}",  # unary minus
        r"\boxed{}",
        r"3*(4+7+9)",  # no box
        r"\boxed{3*(4+7+9)",  # box never closed
        r"\boxed{(9*4*7/3-24)}",  # division
        r"\boxed{3*(4+7+9)/1}",
        r"\boxed{3*(4+7+9)=60}",
        r"\boxed{3*(4+7+9)^1}",
        r"\boxed{3*(4+7+9)} and finally \boxed{61}",  # the last box counts
        r"\boxed{3*(4+7+٩)}",  # a non-ASCII digit
    ],
)
def test_grade_rejects_wrong_or_malformed_answers(completion):
  assert not countdown.grade(P, completion)


def test_grade_rejects_concatenated_digits():
  p = countdown.make_problem((1, 2, 3), 9)
  assert countdown.grade(p, r"\boxed{(1+2)*3}")
  assert not countdown.grade(p, r"\boxed{12-3}")


def test_answer_key_is_the_value_of_any_well_formed_expression():
  assert countdown.answer_key(P, r"\boxed{4*(9+7)-3}") == "61"
  assert countdown.answer_key(P, r"\boxed{7*9-3}") is None  # wrong digits
  assert countdown.answer_key(P, "no box") is None
  forms = [f for cls in countdown.solutions(P.digits, 60) for f in cls]
  assert {countdown.answer_key(P, rf"\boxed{{{f}}}") for f in forms} == {"60"}


@pytest.fixture(scope="module")
def splits():
  return countdown.make_splits(seed=3, num_train=400, num_test=120)


def test_every_generated_solution_and_sft_target_grades_correct(splits):
  rng = np.random.default_rng(0)
  for p in splits[0] + splits[1]:
    assert p.solution.endswith(rf"\boxed{{{p.answer}}}")
    assert countdown.grade(p, p.solution), p
    for _ in range(3):
      assert countdown.grade(p, countdown.sft_targets(p, rng)), p


def test_problem_fields_are_consistent(splits):
  for p in splits[0] + splits[1]:
    assert p.family == "countdown" and 1 <= p.level <= 5
    assert p.id == f"countdown/{'-'.join(map(str, p.digits))}/{p.target}"
    assert str(p.target) in p.problem and str(p.target) in countdown.prompt_text(p)
    sols = countdown.solutions(p.digits, p.target)
    assert (p.num_solutions, p.num_forms) == (len(sols), sum(map(len, sols)))
    assert 3 <= len(p.digits) <= 5 and 10 <= p.target <= 99
    assert p.level == countdown.level(p.digits, p.num_forms)


def test_splits_are_disjoint_distinct_and_deterministic(splits):
  train, test = splits
  assert len(train) == 400 and len(test) == 120
  ids = [p.id for p in train + test]
  assert len(set(ids)) == len(ids)
  again = countdown.make_splits(seed=3, num_train=400, num_test=120)
  assert again == splits
  other = countdown.make_splits(seed=4, num_train=400, num_test=120)
  assert [p.id for p in other[1]] != [p.id for p in test]


def test_test_split_does_not_depend_on_num_train(splits):
  _, test = countdown.make_splits(seed=3, num_train=7, num_test=120)
  assert test == splits[1]


def test_sft_targets_sample_solution_classes_uniformly():
  # 6 classes of 2 to 42 forms: sampling forms uniformly would put 60% of
  # the mass on one class.
  digits, target = (2, 3, 4, 5), 10
  sols = countdown.solutions(digits, target)
  sizes = sorted(map(len, sols))
  assert len(sols) == 6 and sizes[-1] >= 10 * sizes[0]
  p = countdown.make_problem(digits, target)
  rng = np.random.default_rng(1)
  n = 4000
  cls_of = {f: i for i, cls in enumerate(sols) for f in cls}
  counts = np.zeros(len(sols))
  forms = collections.Counter()
  for _ in range(n):
    form = countdown.sft_targets(p, rng)[len(r"\boxed{") : -1]
    counts[cls_of[form]] += 1
    forms[form] += 1
  expected = n / len(sols)
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 30, counts  # 5 degrees of freedom: P(chi2 > 30) ~ 1e-5.
  assert len(forms) == sum(sizes)  # every form of every class shows up


def test_families_mix_and_unique_answer_grading():
  train, test = countdown.make_splits(
      seed=0,
      num_train=200,
      num_test=60,
      families={"countdown": 1, "arith": 1, "mod": 1, "linear": 1},
  )
  fams = collections.Counter(p.family for p in train)
  assert set(fams) == {"countdown", "arith", "mod", "linear"}
  rng = np.random.default_rng(0)
  for p in train + test:
    assert countdown.grade(p, countdown.sft_targets(p, rng)), p
    if p.family != "countdown":
      assert p.num_solutions == 1
      ans = int(p.answer)
      assert countdown.grade(p, rf"so \boxed{{ {ans} }}")
      assert not countdown.grade(p, rf"\boxed{{{ans + 1}}}")
      assert not countdown.grade(p, rf"\boxed{{{ans}.5}}")
      assert not countdown.grade(p, str(ans))
      assert countdown.answer_key(p, rf"\boxed{{{ans + 1}}}") == str(ans + 1)


def test_unique_family_answers_are_right():
  rng = np.random.default_rng(0)
  for _ in range(200):
    level = int(rng.integers(1, 6))
    f = arith.sample("arith", rng, level)
    assert _ast_value(f["prompt"].rstrip("=")) == int(f["answer"])
    f = arith.sample("mod", rng, level)
    a, rest = f["prompt"].split("*")
    b, m = rest.rstrip("=").split(" mod ")
    assert int(a) * int(b) % int(m) == int(f["answer"])
    f = arith.sample("linear", rng, level)
    coef, const, rhs = re.fullmatch(r"(\d+)x([+-]\d+)=(-?\d+), x=", f["prompt"]).groups()
    assert int(coef) * int(f["answer"]) + int(const) == int(rhs)
  assert arith.parse_answer("x = -4") == -4
  assert arith.parse_answer("6.5") is None


def test_task_knobs_shape_the_puzzles():
  train, _ = countdown.make_splits(
      seed=0, num_train=80, num_test=0, num_digits=(4,), target_range=(50, 60), max_solutions=2
  )
  assert all(len(p.digits) == 4 and 50 <= p.target <= 60 and p.num_solutions <= 2 for p in train)
  kw = dict(seed=0, num_train=150, num_test=0, num_digits=(5,))
  easy, _ = countdown.make_splits(target_weighting=2.0, **kw)
  hard, _ = countdown.make_splits(target_weighting=-2.0, **kw)
  assert np.median([p.num_solutions for p in easy]) > 2 * np.median([p.num_solutions for p in hard])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(families={"sudoku": 1.0}),
        dict(families={"countdown": 0.0}),
        dict(num_digits=(7,)),
        dict(digit_range=(0, 10)),
        dict(target_range=(50, 10)),
        dict(num_digits=(3, 4), num_digits_weights=(1.0,)),
        dict(num_digit=(3, 4)),  # a typo
    ],
)
def test_bad_task_settings_raise_value_error(kwargs):
  with pytest.raises(ValueError):
    countdown.make_splits(seed=0, num_train=5, num_test=5, **kwargs)


def test_too_few_puzzles_for_the_settings_raise_value_error():
  with pytest.raises(ValueError, match="distinct countdown puzzles"):
    countdown.make_splits(
        seed=0, num_train=50, num_test=0, num_digits=(3,), digit_range=(1, 2), target_range=(5, 8)
    )


# ---------------------------------------------------------------------------
# The "steps" solution format: one binary operation per step with its result.

PS = countdown.make_problem((3, 4, 7, 9), 60, solution_format="steps")


@pytest.mark.parametrize(
    "completion",
    [
        "4+7=11, 11+9=20, 3*20=60",
        "9+7=16, 16+4=20, 20*3=60",
        "7+9=16, 16+4=20, 20×3=60",  # an alias of *
        " 4 + 7 = 11 ,11+9=20,3*20=60 ",  # spacing
        "9+7=16, 4+16=20, 3*20=60",  # operands in any order
    ],
)
def test_steps_grade_accepts_true_chains_that_use_each_digit_once(completion):
  assert countdown.grade(PS, completion)
  assert countdown.answer_key(PS, completion) == "60"


@pytest.mark.parametrize(
    "completion",
    [
        "4+7=11, 11+9=20, 3*20=61",  # a false last step (claims a wrong result)
        "4+7=11, 11+9=21, 3*21=63",  # a false middle step
        "4+7=11, 11+9=20, 20*3=60, 60-0=60",  # a number that was never given
        "4+7=11, 11+9=20",  # the 3 unused
        "4+4=8, 8+7=15, 15*4=60",  # a digit used twice
        "4+7=11, 11+9=20, 3*20=60,",  # trailing comma
        "4+7=11; 11+9=20; 3*20=60",  # other separators
        "4+7=11, 11+9=20, 3*20",  # no result
        "4+07=11, 11+9=20, 3*20=60",  # a leading zero
        "4/7=0, 11+9=20, 3*20=60",
        r"\boxed{3*(4+7+9)}",  # the other format is not accepted
        "",
        "4+7=11, " * 40 + "3*20=60",  # too long
    ],
)
def test_steps_grade_rejects_false_incomplete_or_malformed_chains(completion):
  assert not countdown.grade(PS, completion)


def test_steps_answer_key_is_the_value_of_any_valid_chain():
  assert countdown.answer_key(PS, "4+7=11, 11*9=99, 99-3=96") == "96"
  assert countdown.answer_key(PS, "3-4=-1, -1+7=6, 6*9=54") == "54"  # negative intermediates are valid
  assert countdown.answer_key(PS, "4+7=11, 11*9=99, 99-3=95") is None  # false step
  assert countdown.answer_key(PS, "4+7=11, 11*9=99") is None  # incomplete


def test_steps_of_every_form_recompute_its_value_with_the_given_digits():
  # Each form of every target of a 5-digit multiset: the steps are true, use
  # each digit once, and (where the form's sums are not negative) stay >= 0.
  digits = (1, 3, 4, 6, 8)
  for target in (10, 24, 57, 99):
    for cls in countdown.solutions(digits, target):
      for form in cls:
        steps = countdown.steps_of(countdown.parse(form))
        assert len(steps) == len(digits) - 1
        assert all(c == {"+": a + b, "-": a - b, "*": a * b}[op] for a, op, b, c in steps)
        text = countdown.format_steps(steps)
        assert countdown.parse_steps(text) == steps
        assert countdown.steps_value(text, digits) == target == _ast_value(form)


def test_steps_sums_take_positive_terms_first():
  assert countdown.steps_of(countdown.parse("9-4+3")) == [(9, "+", 3, 12), (12, "-", 4, 8)]
  assert countdown.steps_of(countdown.parse("3*(4+7+9)")) == [
      (4, "+", 7, 11), (11, "+", 9, 20), (3, "*", 20, 60)]
  assert countdown.steps_of(countdown.parse("8-(3-9)*2")) == [
      (3, "-", 9, -6), (-6, "*", 2, -12), (8, "-", -12, 20)]


def test_steps_splits_keep_the_puzzles_and_every_sft_target_grades():
  kw = dict(seed=3, num_train=300, num_test=100, target_weighting=2.5)
  expr_train, expr_test = countdown.make_splits(**kw)
  train, test = countdown.make_splits(solution_format="steps", **kw)
  assert [p.id for p in train + test] == [p.id for p in expr_train + expr_test]
  rng = np.random.default_rng(0)
  negative = 0
  for p in train + test:
    assert p.solution_format == "steps" and countdown.grade(p, p.solution.split(", so")[0])
    for _ in range(3):
      y = countdown.sft_targets(p, rng)
      assert countdown.grade(p, y), (p.id, y)
      negative += "=-" in y
  assert negative == 0  # every puzzle here has a solution with natural intermediates


def test_unknown_solution_format_is_a_value_error():
  with pytest.raises(ValueError, match="solution_format"):
    countdown.make_splits(seed=0, num_train=1, num_test=1, solution_format="prose")


def test_verifier_examples_are_right_chains_and_false_last_steps():
  rng = np.random.default_rng(0)
  train, _ = countdown.make_splits(seed=5, num_train=60, num_test=0, solution_format="steps")
  for p in train:
    examples = countdown.verifier_examples(p, rng, 6)
    assert [label for _, label in examples] == [1.0, 0.0] * 3
    for text, label in examples:
      assert countdown.grade(p, text) == bool(label), (p.id, text)
      steps = countdown.parse_steps(text)
      assert steps[-1][3] == p.target  # Both claim the target at the end...
      if not label:  # ...the wrong ones through a false last step after true ones.
        assert all(c == {"+": a + b, "-": a - b, "*": a * b}[op] for a, op, b, c in steps[:-1])
        a, op, b, c = steps[-1]
        assert c != {"+": a + b, "-": a - b, "*": a * b}[op]
  assert countdown.verifier_examples(countdown.make_problem((3, 4, 7, 9), 60), rng, 4) == []


def _prefix_ok(p, prefix):
  """Reference: whether `prefix` of a step answer is still free of faults, by brute force.

  Its closed steps must replay (numbers available, results true); an open
  step's written result so far must be a prefix of the true one.
  """
  closed, comma, open_part = prefix.rpartition(",")
  try:
    steps = countdown.parse_steps(closed) if comma else []
  except countdown.ParseError:
    return False
  apply = lambda a, op, b: {"+": a + b, "-": a - b, "*": a * b}[op]
  pool = list(p.digits)
  for a, op, b, c in steps:
    for x in (a, b):
      if x not in pool:
        return False
      pool.remove(x)
    if c != apply(a, op, b):
      return False
    pool.append(c)
  if not open_part:
    return True
  m = re.fullmatch(r"\s*(\d+)\s*([-+*])\s*(\d+)\s*=\s*(\d*)", open_part)
  if m is None:
    return False
  a, op, b = int(m[1]), m[2], int(m[3])
  if a not in pool or b not in pool or (a == b and pool.count(a) < 2):
    return False
  return str(apply(a, op, b)).startswith(m[4])


def test_step_labels_mark_the_first_fault_and_end_with_the_grade():
  train, _ = countdown.make_splits(seed=2, num_train=60, num_test=0, solution_format="steps")
  rng = np.random.default_rng(0)
  seen = collections.Counter()
  for p in train:
    right = countdown.sample_steps(p.digits, p.target, rng)
    wrong_last = countdown.false_last_step(p.digits, p.target, rng)
    first_false = right.replace("=", "=1", 1)  # A false first result.
    unavailable = f"{max(p.digits) + 50}+1={max(p.digits) + 51}, " + right
    for text in filter(None, (right, wrong_last, first_false, unavailable, right + ",", "garbage, 1+1=2")):
      got = countdown.step_labels(p, text)
      assert got[-1] == (len(text), float(countdown.grade(p, text)))
      commas = [i + 1 for i, ch in enumerate(text) if ch == ","]
      assert set(commas) <= {e for e, _ in got[:-1]}
      for end, label in got[:-1]:
        assert label == float(_prefix_ok(p, text[:end])), (text, end, got)
      labels = [l for _, l in got]
      assert labels[:-1] == sorted(labels[:-1], reverse=True)  # Once a fault appears, it stays.
      seen[(text is wrong_last, min(labels[:-1], default=1.0))] += 1
  # A false last step is flagged before its verdict: at its first false digit.
  assert seen[(True, 0.0)] > 0 and seen[(True, 1.0)] == 0
  expr, _ = countdown.make_splits(seed=2, num_train=2, num_test=0)
  assert countdown.step_labels(expr[0], "\\boxed{1+2}") == []
