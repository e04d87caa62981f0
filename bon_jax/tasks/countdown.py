"""Countdown: make a target from given digits, each once, with +, -, *, ().

A puzzle is a digit multiset and a target: from 3, 4, 7, 9 make 60.
``3*(4+7+9)`` is right (so is ``(9+7+4)*3``, the same solution in another
form); ``4*(9+7)-3`` makes 61 and ``7*9-3`` leaves the 4 unused.

Definitions this module fixes:

* **Form**: an expression over the digits (each exactly once) without
  redundant brackets -- the printing of a parse tree with the fewest brackets
  that keep its value: ``3+4+7`` but never ``3+(4+7)`` or ``(3*4)+7``.
  Distinct forms are distinct strings; `num_forms` counts them.
* **Solution** (what `num_solutions` counts): a class of forms equal up to
  associativity and commutativity of + and *, with subtraction folded into
  signed sums (``9-(4-3)`` ~ ``9-4+3`` ~ ``3+9-4``); `normal_form` is the exact
  class key. Distributivity is not applied (``3*(4+7)`` and ``3*4+3*7`` need
  different digits anyway).

The grader accepts any correct expression (redundant brackets, any order,
spaces, ``×``/``\\times``/``−``), not only forms. All forms of a multiset are
enumerated by a vectorised interval DP over bracket templates, evaluated for
every ordering of the digits at once, with hashed solution classes.

The task API used by training and evaluation (`Problem`, `make_splits`,
`prompt_text`, `sft_targets`, `grade`, `answer_key`, `describe`) closes the
module; `bon_jax.tasks` re-exports it.

Example::

  digits_value("(3+4)*9 - 7", (3, 4, 7, 9))   # 56; None if the digits differ
  target_stats((3, 4, 7, 9))[60]              # (num_solutions, num_forms)
  solutions((3, 4, 7, 9), 60)                 # forms grouped by class
  sample_form((3, 4, 7, 9), 60, rng)          # uniform class, then form
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
import dataclasses
import functools
import itertools
import re
from typing import Any, Union

import numpy as np

from bon_jax import grading
from bon_jax.tasks import arith

# A parse tree: an int leaf, or (op, left, right) with op in "+-*".
Node = Union[int, tuple[str, "Node", "Node"]]

MAX_DIGITS = 6
# Completions are short; anything longer is rejected before parsing, which
# also bounds the parser's recursion depth.
MAX_EXPR_CHARS = 128

_ALIASES = (
    ("\\times", "*"),
    ("\\cdot", "*"),
    ("×", "*"),
    ("·", "*"),
    ("−", "-"),
    ("–", "-"),
)
# ASCII digits only: `\d` would also take e.g. Arabic-Indic digits.
_TOKEN_RE = re.compile(r"\s*(?:([0-9]+)|([-+*()]))")


class ParseError(ValueError):
  """The text is not an expression of digits, +, -, * and brackets."""


def tokenize(text: str) -> list[str]:
  """Splits `text` into number, operator and bracket tokens.

  Raises:
    ParseError: on any other character (e.g. "/", "^", "="), numbers with
      leading zeros, or text longer than `MAX_EXPR_CHARS`.
  """
  if len(text) > MAX_EXPR_CHARS:
    raise ParseError(f"expression longer than {MAX_EXPR_CHARS} characters")
  for alias, op in _ALIASES:
    text = text.replace(alias, op)
  tokens, pos = [], 0
  text = text.rstrip()
  while pos < len(text):
    m = _TOKEN_RE.match(text, pos)
    if m is None:
      raise ParseError(f"unexpected character {text[pos:].lstrip()[:1]!r}")
    number, op = m.groups()
    if number is not None and len(number) > 1 and number[0] == "0":
      raise ParseError(f"number with a leading zero: {number!r}")
    tokens.append(number if number is not None else op)
    pos = m.end()
  return tokens


def parse(text: str) -> Node:
  """Parses +, -, * (usual precedence, left-associative), brackets, integers.

  No unary minus and no eval(): ``parse("(3+4)*9-7") == ("-", ("*", ("+", 3,
  4), 9), 7)``.

  Raises:
    ParseError: if `text` is not such an expression.
  """
  tokens = tokenize(text)
  pos = 0

  def peek() -> str | None:
    return tokens[pos] if pos < len(tokens) else None

  def take() -> str:
    nonlocal pos
    if pos >= len(tokens):
      raise ParseError("expression ends early")
    pos += 1
    return tokens[pos - 1]

  def expr() -> Node:
    node = term()
    while peek() in ("+", "-"):
      op = take()
      node = (op, node, term())
    return node

  def term() -> Node:
    node = factor()
    while peek() == "*":
      take()
      node = ("*", node, factor())
    return node

  def factor() -> Node:
    tok = take()
    if tok == "(":
      node = expr()
      if take() != ")":
        raise ParseError("unbalanced brackets")
      return node
    if tok[0] in "0123456789":
      return int(tok)
    raise ParseError(f"expected a number or '(' but got {tok!r}")

  node = expr()
  if pos != len(tokens):
    raise ParseError(f"unexpected {tokens[pos]!r} after a complete expression")
  return node


def value(node: Node) -> int:
  """The integer value of a parse tree."""
  if isinstance(node, int):
    return node
  op, left, right = node
  a, b = value(left), value(right)
  return a + b if op == "+" else a - b if op == "-" else a * b


def leaves(node: Node) -> list[int]:
  """The numbers of a parse tree, left to right."""
  if isinstance(node, int):
    return [node]
  return leaves(node[1]) + leaves(node[2])


def digits_value(text: str, digits: tuple[int, ...]) -> int | None:
  """Value of `text` if it is an expression using exactly `digits`, else None.

  "Exactly" is as a multiset: every given digit once, nothing else (so no
  concatenated numbers like 34 and no reused digits).
  """
  try:
    node = parse(text)
  except ParseError:
    return None
  if sorted(leaves(node)) != sorted(digits):
    return None
  return value(node)


def normal_form(node: Node) -> tuple:
  """Canonical key of the solution class of `node` (see module docstring).

  Sums flatten to a sorted tuple of (sign, term) pairs, products to a sorted
  tuple of factors, so ``normal_form(parse("9-(4-3)")) ==
  normal_form(parse("3+9-4"))``.
  """
  if isinstance(node, int):
    return ("d", node)
  op, left, right = node
  if op == "*":
    factors = []
    for child in (left, right):
      form = normal_form(child)
      factors.extend(form[1] if form[0] == "p" else (form,))
    return ("p", tuple(sorted(factors)))
  terms = []
  for sign, child in ((1, left), (1 if op == "+" else -1, right)):
    form = normal_form(child)
    if form[0] == "s":
      terms.extend((sign * s, t) for s, t in form[1])
    else:
      terms.append((sign, form))
  return ("s", tuple(sorted(terms)))


# Grammar of forms (bracket-minimal trees). Node types: "d" digit, "s" sum or
# difference, "p" product. Operators associate left to right, so the right
# child of "+" is never a sum (a+(b-c) prints as a+b-c) and the right child of
# "*" never a product; the right child of "-" may be a bracketed sum.
_TYPES = ("d", "s", "p")
_RULES = (
    ("+", "s", _TYPES, ("d", "p")),
    ("-", "s", _TYPES, _TYPES),
    ("*", "p", _TYPES, ("d", "s")),
)


def _interval_dp(leaf, combine, concat, n: int) -> list:
  """Runs the form grammar over intervals of `n` leaves.

  Every backend (template strings, values, class hashes) goes through this
  one loop, so column j of every backend describes the same form.

  Args:
    leaf: i -> the batch of the one-leaf interval at position i.
    combine: (op, left, right, left_type, right_type) -> the batch of all
      `left op right` forms (left-major order).
    concat: (batches, type, final) -> one batch of that type; `final` marks
      the full interval, where a backend may drop what only parents need.
    n: number of leaves.

  Returns:
    The batches of the full interval, types in `_TYPES` order.
  """
  table = {(i, 1): {"d": leaf(i)} for i in range(n)}
  for length in range(2, n + 1):
    for start in range(n - length + 1):
      pieces = {t: [] for t in _TYPES}
      for a in range(1, length):
        left, right = table[start, a], table[start + a, length - a]
        for op, out_type, left_types, right_types in _RULES:
          for lt in left_types:
            for rt in right_types:
              if lt in left and rt in right:
                pieces[out_type].append(
                    combine(op, left[lt], right[rt], lt, rt)
                )
      table[start, length] = {
          t: concat(p, t, length == n) for t, p in pieces.items() if p
      }
  return [table[0, n][t] for t in _TYPES if t in table[0, n]]


@functools.cache
def templates(n: int) -> tuple[str, ...]:
  """All forms over placeholders ``{0}..{n-1}`` in this order (cached).

  ``templates(2) == ("{0}+{1}", "{0}-{1}", "{0}*{1}")``; there are 1, 3, 15,
  93, 645, 4791 of them for n = 1..6.
  """
  _check_num_digits(n)

  def combine(op, lb, rb, lt, rt):
    if op == "*" and lt == "s":
      lb = [f"({s})" for s in lb]
    if op in "-*" and rt == "s":
      rb = [f"({s})" for s in rb]
    return [ls + op + rs for ls in lb for rs in rb]

  batches = _interval_dp(
      lambda i: ["{%d}" % i], combine, lambda p, t, final: sum(p, []), n
  )
  return tuple(itertools.chain(*batches))


# Class hashes: a vectorised, probabilistic `normal_form`. A sum keeps the
# additive multiset hashes (P, N) of its positive and negative terms (so
# subtraction of a sum swaps them), a product the multiset hash A of its
# factors; each node's own hash mixes these. uint64 arithmetic wraps.
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_SUM_SALT = np.uint64(0x9E3779B97F4A7C15)
_PROD_SALT = np.uint64(0xD1B54A32D192ED03)
_DIGIT_HASH = np.random.default_rng(20250101).integers(
    0, 2**63, size=10, dtype=np.uint64
)


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: a bijective scramble of uint64."""
  x = x ^ (x >> np.uint64(30))
  x = x * _M1
  x = x ^ (x >> np.uint64(27))
  x = x * _M2
  return x ^ (x >> np.uint64(31))


def _outer_sum(x, y, shape: tuple[int, int, int]) -> np.ndarray:
  """x[:, i] + y[:, j] as uint64[P, I*J], where None is an all-zero operand."""
  num, i, j = shape
  if x is None and y is None:
    return np.zeros((num, i * j), np.uint64)
  if x is None:
    return np.tile(y, (1, i))
  if y is None:
    return np.repeat(x, j, axis=1)
  return (x[:, :, None] + y[:, None, :]).reshape(num, -1)


def _value_and_class(perms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Values int64[P, T] and class hashes uint64[P, T] of every template.

  Row p fills the template placeholders with the digits `perms[p]`.
  """
  num = len(perms)

  def leaf(i):
    d = perms[:, i : i + 1]
    return {"v": d, "h": _DIGIT_HASH[d]}

  def outer(x, y, fn):
    return fn(x[:, :, None], y[:, None, :]).reshape(num, -1)

  def combine(op, lb, rb, lt, rt):
    if op == "*":
      la = lb["a"] if lt == "p" else lb["h"]
      ra = rb["a"] if rt == "p" else rb["h"]
      return {"v": outer(lb["v"], rb["v"], np.multiply), "a": outer(la, ra, np.add)}
    # A non-sum child is a single positive term; None stands for an empty
    # negative multiset (hash 0) and saves the arithmetic on zeros.
    lpos, lneg = (lb["pos"], lb["neg"]) if lt == "s" else (lb["h"], None)
    rpos, rneg = (rb["pos"], rb["neg"]) if rt == "s" else (rb["h"], None)
    if op == "-":
      rpos, rneg = rneg, rpos
    v = outer(lb["v"], rb["v"], np.subtract if op == "-" else np.add)
    shape = (num, lb["v"].shape[1], rb["v"].shape[1])
    return {
        "v": v,
        "pos": _outer_sum(lpos, rpos, shape),
        "neg": _outer_sum(lneg, rneg, shape),
    }

  def concat(pieces, node_type, final):
    # Node hashes are mixed once per interval rather than per piece.
    batch = {k: np.concatenate([p[k] for p in pieces], axis=1) for k in pieces[0]}
    if node_type == "p":
      batch["h"] = _mix(batch["a"] + _PROD_SALT)
    else:
      batch["h"] = _mix(batch["pos"] ^ _mix(batch["neg"] + _SUM_SALT))
    return {"v": batch["v"], "h": batch["h"]} if final else batch

  batches = _interval_dp(leaf, combine, concat, perms.shape[1])
  values = np.concatenate([b["v"] for b in batches], axis=1)
  hashes = np.concatenate([b["h"] for b in batches], axis=1)
  return values, hashes


def _check_num_digits(n: int) -> None:
  if not 1 <= n <= MAX_DIGITS:
    raise ValueError(f"number of digits must be in 1..{MAX_DIGITS}, got {n}")


def _check_digits(digits) -> tuple[int, ...]:
  """The digits as a sorted tuple (the cache key), validated."""
  digits = tuple(sorted(int(d) for d in digits))
  _check_num_digits(len(digits))
  if not all(0 <= d <= 9 for d in digits):
    raise ValueError(f"countdown digits must be in 0..9, got {digits}")
  return digits


@functools.lru_cache(maxsize=None)
def orderings(digits: tuple[int, ...]) -> np.ndarray:
  """Distinct orderings of a sorted digit tuple, int64[P, n], sorted."""
  return np.array(sorted(set(itertools.permutations(digits))), np.int64)


def tables(multisets) -> list[tuple[np.ndarray, np.ndarray]]:
  """(values int64[P, T], class hashes uint64[P, T]) per sorted digit tuple.

  Row p is the ordering ``orderings(digits)[p]``, column t the template
  ``templates(n)[t]``. Multisets of one size share one vectorised DP, which
  amortises its ~100 numpy calls (a lone 5-digit multiset costs ~5 ms, one
  in a batch of 32 ~2 ms).
  """
  multisets = [_check_digits(m) for m in multisets]
  out = [None] * len(multisets)
  by_size = collections.defaultdict(list)
  for i, m in enumerate(multisets):
    by_size[len(m)].append(i)
  for idx in by_size.values():
    perms = [orderings(multisets[i]) for i in idx]
    values, hashes = _value_and_class(np.concatenate(perms))
    cuts = np.cumsum([len(p) for p in perms])[:-1]
    for i, v, h in zip(idx, np.split(values, cuts), np.split(hashes, cuts)):
      out[i] = (v, h)
  return out


@functools.lru_cache(maxsize=32)
def _tables(digits: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  return tables([digits])[0]


def range_stats(
    values: np.ndarray, hashes: np.ndarray, lo: int, hi: int
) -> dict[int, tuple[int, int]]:
  """{target: (num_solutions, num_forms)} for reachable targets in [lo, hi]."""
  if not 0 <= hi - lo < 2**23:
    raise ValueError(f"target range [{lo}, {hi}] must be non-empty and < 2**23")
  mask = (values >= lo) & (values <= hi)
  offset = values[mask] - lo
  # One sort of (value, 40 hash bits) keys counts the distinct classes.
  keys = np.unique((offset.astype(np.uint64) << np.uint64(40)) | (hashes[mask] >> np.uint64(24)))
  num_classes = np.bincount((keys >> np.uint64(40)).astype(np.int64), minlength=hi - lo + 1)
  num_forms = np.bincount(offset, minlength=hi - lo + 1)
  return {
      lo + i: (int(num_classes[i]), int(num_forms[i]))
      for i in np.flatnonzero(num_forms).tolist()
  }


def _range_forms(values: np.ndarray, lo: int, hi: int) -> dict[int, int]:
  """{target: num_forms} for reachable targets in [lo, hi]."""
  v = values[(values >= lo) & (values <= hi)] - lo
  counts = np.bincount(v, minlength=hi - lo + 1)
  return {lo + i: int(counts[i]) for i in np.flatnonzero(counts).tolist()}


def target_stats(digits) -> dict[int, tuple[int, int]]:
  """{value: (num_solutions, num_forms)} for every value the digits reach."""
  values, hashes = _tables(_check_digits(digits))
  return range_stats(values, hashes, int(values.min()), int(values.max()))


_SOLUTION_INDEX: dict[tuple[tuple[int, ...], int], tuple] = {}


def _solution_index(
    digits: tuple[int, ...], target: int, tabs=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(rows, cols, class_starts) of the forms making `target`, class-sorted.

  Form i is ``templates(n)[cols[i]].format(*orderings(digits)[rows[i]])``;
  class c holds forms ``class_starts[c]:class_starts[c + 1]``. `tabs` is
  `_tables(digits)` when the caller has it. A few KB per puzzle, so it is
  cached for fast `sample_form` calls during SFT.
  """
  key = (digits, target)
  if key not in _SOLUTION_INDEX:
    values, hashes = _tables(digits) if tabs is None else tabs
    rows, cols = np.nonzero(values == target)
    h = hashes[rows, cols]
    order = np.argsort(h, kind="stable")
    rows, cols, h = rows[order], cols[order], h[order]
    starts = np.flatnonzero(np.r_[True, h[1:] != h[:-1]])
    _SOLUTION_INDEX[key] = (
        rows.astype(np.int32),
        cols.astype(np.int32),
        np.r_[starts, len(h)].astype(np.int32),
    )
  return _SOLUTION_INDEX[key]


def _form(digits: tuple[int, ...], row: int, col: int) -> str:
  return templates(len(digits))[col].format(*orderings(digits)[row].tolist())


def solutions(digits, target: int) -> tuple[tuple[str, ...], ...]:
  """The solutions of a puzzle: its forms grouped by solution class.

  Classes and the forms within each are sorted, so the result is canonical.
  Empty when `target` is unreachable.
  """
  digits = _check_digits(digits)
  rows, cols, starts = _solution_index(digits, int(target))
  groups = (
      sorted(_form(digits, r, c) for r, c in zip(rows[a:b], cols[a:b]))
      for a, b in zip(starts[:-1], starts[1:])
  )
  return tuple(sorted(tuple(g) for g in groups))


def sample_form(digits, target: int, rng: np.random.Generator) -> str:
  """A solution class uniformly at random, then one of its forms uniformly.

  Raises:
    ValueError: if no form of `digits` makes `target`.
  """
  digits = _check_digits(digits)
  rows, cols, starts = _solution_index(digits, int(target))
  if len(rows) == 0:
    raise ValueError(f"digits {digits} cannot make {target}")
  c = rng.integers(len(starts) - 1)
  i = rng.integers(starts[c], starts[c + 1])
  return _form(digits, int(rows[i]), int(cols[i]))


# Level edges in bits (see `level`): about a fifth of the default test split
# falls in each level.
_LEVEL_EDGES_BITS = (4.5, 6.0, 7.5, 9.0)


def blind_bits(digits, num_forms: int) -> float:
  """-log2 of the chance that a uniformly random form over `digits` is right.

  The number of forms over the digits grows fast with their count (90 for
  three distinct digits, 2232 for four, 77400 for five), so this combines
  puzzle size and solution count in one difficulty scale.
  """
  digits = _check_digits(digits)
  total = len(templates(len(digits))) * len(orderings(digits))
  return float(np.log2(total / num_forms))


def level(digits, num_forms: int) -> int:
  """MATH-style difficulty 1..5 from `blind_bits`.

  Levels start at 4.5, 6, 7.5 and 9 bits: e.g. 3 distinct digits with 4
  right forms (out of 90) are level 1, 5 digits with 40 (of 77400) level 5.
  """
  bits = blind_bits(digits, num_forms)
  return 1 + sum(bits >= e for e in _LEVEL_EDGES_BITS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Puzzle:
  """A countdown instance with its difficulty statistics."""

  digits: tuple[int, ...]  # sorted
  target: int
  num_solutions: int
  num_forms: int

  @property
  def level(self) -> int:
    return level(self.digits, self.num_forms)


# Multisets per DP batch: bounds the memory of the tables in flight (~40 MB).
_ROUND = 32


def sample_puzzles(
    rng: np.random.Generator,
    num: int,
    *,
    num_digits: tuple[int, ...] = (3, 4, 5),
    num_digits_weights: tuple[float, ...] | None = None,
    digit_range: tuple[int, int] = (1, 9),
    target_range: tuple[int, int] = (10, 99),
    target_weighting: float = 0.0,
    max_solutions: int | None = None,
    exclude=frozenset(),
) -> list[Puzzle]:
  """Draws `num` distinct puzzles, none with a (digits, target) in `exclude`.

  Each draw picks a size from `num_digits` (probabilities
  `num_digits_weights`, default uniform), digits iid uniform in `digit_range`,
  then a target among the reachable ones in `target_range` not yet used, with
  probability proportional to ``num_solutions ** target_weighting`` (0: every
  reachable target alike, which already spreads solution counts from 1 to
  dozens; > 0 favours easy targets, < 0 hard ones). Targets with more than
  `max_solutions` solutions are skipped. A draw whose multiset has no target
  left is redrawn, so sizes whose puzzles run out become rarer.

  Draws are made a round at a time and grouped by multiset, so each
  multiset's tables are computed once per round (each draw's target comes
  from its own pre-drawn uniform); the solutions of every puzzle are indexed
  on the way, for fast `sample_form`.

  Raises:
    ValueError: on bad settings, or when the settings admit too few puzzles.
  """
  sizes = np.asarray(num_digits, np.int64)
  if sizes.ndim != 1 or len(sizes) == 0:
    raise ValueError(f"num_digits must be a non-empty tuple, got {num_digits}")
  for n in sizes:
    _check_num_digits(int(n))
  p = np.ones(len(sizes)) if num_digits_weights is None else np.asarray(num_digits_weights, float)
  if p.shape != sizes.shape or (p < 0).any() or p.sum() <= 0:
    raise ValueError(
        f"num_digits_weights {num_digits_weights} must be {len(sizes)}"
        " non-negative numbers, not all 0"
    )
  p = p / p.sum()
  dlo, dhi = digit_range
  if not 0 <= dlo <= dhi <= 9:
    raise ValueError(f"digit_range must satisfy 0 <= lo <= hi <= 9, got {digit_range}")
  tlo, thi = (int(t) for t in target_range)
  if tlo > thi:
    raise ValueError(f"target_range must satisfy lo <= hi, got {target_range}")

  need_classes = target_weighting != 0 or max_solutions is not None
  used = set(exclude)
  out: list[Puzzle] = []
  max_draws, draws = 50 * num + 1000, 0
  while len(out) < num:
    if draws > max_draws:
      raise ValueError(
          f"only {len(out)} of {num} distinct countdown puzzles found in"
          f" {draws} draws; widen target_range/digit_range/num_digits or ask"
          " for fewer problems"
      )
    need = num - len(out)
    ks = rng.choice(sizes, p=p, size=need)
    raw = rng.integers(dlo, dhi + 1, size=(need, int(sizes.max())))
    us = rng.random(need)
    draws += need
    by_multiset = collections.defaultdict(list)
    for i, k in enumerate(ks.tolist()):
      by_multiset[tuple(sorted(raw[i, :k].tolist()))].append(i)
    found: dict[int, Puzzle] = {}
    multisets = sorted(by_multiset)
    for c in range(0, len(multisets), _ROUND):
      chunk = multisets[c : c + _ROUND]
      for m, tabs in zip(chunk, tables(chunk)):
        if need_classes:
          stats = range_stats(*tabs, tlo, thi)
        else:  # Only the chosen target's classes are counted, further down.
          stats = {t: (1, nf) for t, nf in _range_forms(tabs[0], tlo, thi).items()}
        for i in by_multiset[m]:
          cands = [
              (t, nc)
              for t, (nc, _) in stats.items()
              if (m, t) not in used and (max_solutions is None or nc <= max_solutions)
          ]
          if not cands:
            continue
          # Inverse-CDF choice with the draw's own uniform.
          cdf = np.cumsum(np.array([nc for _, nc in cands], float) ** target_weighting)
          j = int(np.searchsorted(cdf, us[i] * cdf[-1], side="right"))
          t = cands[min(j, len(cands) - 1)][0]
          used.add((m, t))
          rows, _, starts = _solution_index(m, t, tabs)
          found[i] = Puzzle(
              digits=m, target=t, num_solutions=len(starts) - 1, num_forms=len(rows)
          )
    out += [found[i] for i in sorted(found)]
  return out


def prepare(puzzles) -> None:
  """Indexes the solutions of many (digits, target) pairs in batched DPs.

  `sample_form` on an unindexed puzzle recomputes its multiset's tables
  (~5 ms for 5 digits); call this once on a training set instead.
  """
  todo = collections.defaultdict(set)
  for digits, target in puzzles:
    digits = _check_digits(digits)
    if (digits, int(target)) not in _SOLUTION_INDEX:
      todo[digits].add(int(target))
  multisets = sorted(todo)
  for i in range(0, len(multisets), _ROUND):
    chunk = multisets[i : i + _ROUND]
    for m, tabs in zip(chunk, tables(chunk)):
      for t in sorted(todo[m]):
        _solution_index(m, t, tabs)


# ---------------------------------------------------------------------------
# Step-by-step solutions: one binary operation per step, with its result.

SOLUTION_FORMATS = ("expression", "steps")
MAX_STEPS_CHARS = 256
_NUM = r"(-?(?:0|[1-9][0-9]*))"
_STEP_RE = re.compile(rf"\s*{_NUM}\s*([-+*])\s*{_NUM}\s*=\s*{_NUM}\s*")

Step = tuple[int, str, int, int]  # (a, op, b, the written result)


def _apply(a: int, op: str, b: int) -> int:
  return a + b if op == "+" else a - b if op == "-" else a * b


def steps_of(node: Node) -> list[Step]:
  """The steps that compute a parse tree, one binary operation each.

  A run of + and - is one signed sum, evaluated positive terms first (so
  ``9-4+3`` becomes ``9+3=12, 12-4=8``: no negative intermediate unless the
  sum itself is negative); a run of * is one product; terms that are
  expressions themselves are computed first, left to right.

  Example: ``steps_of(parse("3*(4+7+9)")) == [(4, "+", 7, 11), (11, "+", 9,
  20), (3, "*", 20, 60)]``.
  """
  steps: list[Step] = []

  def run(n: Node) -> int:
    if isinstance(n, int):
      return n
    terms: list[tuple[int, Node]] = []

    def flatten(m: Node, sign: int) -> None:
      if isinstance(m, tuple) and (m[0] == "*") == (n[0] == "*"):
        flatten(m[1], sign)
        flatten(m[2], -sign if m[0] == "-" else sign)
      else:
        terms.append((sign, m))

    flatten(n, 1)
    values = [(sign, run(t)) for sign, t in terms]
    if n[0] == "*":
      order = [("*", v) for _, v in values]
    else:  # The leftmost term of a sum is always positive.
      order = [("+", v) for s, v in values if s > 0] + [("-", v) for s, v in values if s < 0]
    acc = order[0][1]
    for op, v in order[1:]:
      steps.append((acc, op, v, _apply(acc, op, v)))
      acc = steps[-1][3]
    return acc

  run(node)
  return steps


def format_steps(steps: Sequence[Step]) -> str:
  """``"4+7=11, 11+9=20, 3*20=60"``: the text of a step list."""
  return ", ".join(f"{a}{op}{b}={c}" for a, op, b, c in steps)


def parse_steps(text: str) -> list[Step]:
  """Parses ``a op b = c`` steps separated by commas (no eval).

  Numbers are integers (a leading minus allowed, no leading zeros); ``×``,
  ``−`` and the other aliases of `tokenize` are accepted. Results are
  returned as written, true or not.

  Raises:
    ParseError: if `text` is not such a list or is longer than
      `MAX_STEPS_CHARS`.
  """
  if len(text) > MAX_STEPS_CHARS:
    raise ParseError(f"steps longer than {MAX_STEPS_CHARS} characters")
  for alias, op in _ALIASES:
    text = text.replace(alias, op)
  steps = []
  for part in text.split(","):
    m = _STEP_RE.fullmatch(part)
    if m is None:
      raise ParseError(f"not a step 'a op b = c': {part.strip()[:32]!r}")
    a, op, b, c = m.groups()
    steps.append((int(a), op, int(b), int(c)))
  return steps


def steps_value(text: str, digits: tuple[int, ...]) -> int | None:
  """The number a step solution makes from `digits`, or None if it is not one.

  Valid means: every step combines two numbers still available (the given
  digits, each once, and the results of earlier steps, each once), every
  written result is true, and one number is left at the end: the value.

  Example: ``steps_value("4+7=11, 11+9=20, 3*20=60", (3, 4, 7, 9)) == 60``;
  ``"4+7=11, 11+9=21, 3*21=63"`` (a false step) and ``"4+7=11, 11*3=33"``
  (the 9 unused) give None.
  """
  try:
    steps = parse_steps(text)
  except ParseError:
    return None
  pool = collections.Counter(digits)
  for a, op, b, c in steps:
    for x in (a, b):
      if pool[x] <= 0:
        return None
      pool[x] -= 1
    if c != _apply(a, op, b):
      return None
    pool[c] += 1
  left = list(pool.elements())
  return left[0] if len(left) == 1 else None


def sample_steps_form(digits, target: int, rng: np.random.Generator, tries: int = 16) -> str:
  """A `sample_form` draw whose `steps_of` have no negative intermediate.

  Draws up to `tries` forms and keeps the first such one (the last draw if
  none is), so step solutions stay in the natural numbers wherever the
  puzzle allows.
  """
  for _ in range(tries):
    form = sample_form(digits, target, rng)
    if all(c >= 0 for *_, c in steps_of(parse(form))):
      break
  return form


def sample_steps(digits, target: int, rng: np.random.Generator) -> str:
  """A step solution: a `sample_steps_form` draw written as `steps_of` its tree."""
  return format_steps(steps_of(parse(sample_steps_form(digits, target, rng))))


def false_last_step(digits, target: int, rng: np.random.Generator) -> str | None:
  """A step solution whose last written result is `target` but whose last step is false.

  The commonest error of a step-format policy that cannot reach the target:
  a true chain over the digits to some other reachable value, with its last
  result rewritten as the target (``4+7=11, 11*9=99, 99-3=60``). None when
  the digits reach no other value.
  """
  others = [v for v in target_stats(digits) if v != target and v >= 0]
  if not others:
    return None
  value = int(rng.choice(others))
  steps = steps_of(parse(sample_steps_form(digits, value, rng)))
  a, op, b, _ = steps[-1]
  return format_steps(steps[:-1] + [(a, op, b, target)])


def step_labels(problem: "Problem", completion: str) -> list[tuple[int, float]]:
  """Process labels of a step answer: ``(end, 1.0 if completion[:end] has no fault yet)``.

  Labels at every character of each written result (0 from the first digit
  that departs from the true result, or at once if the step is malformed or
  uses a number that is not available), at the comma closing each step (the
  whole step's check), then ``(len(completion), grade)``: the answer's
  verdict. Once 0, a label stays 0. A verifier trained on them is told where
  a false step goes wrong — for a false last step (``13+9=60``) at its first
  digit — which the outcome label alone never says. The exact grader gives
  them for free. Problems that are not step-format Countdown: none.

  Example: for ``3 4 7 9 -> 60``, ``"4+7=11, 11+9=21"`` gives
  ``[(5, 1.0), (6, 1.0), (7, 1.0), (14, 1.0), (15, 0.0), (15, 0.0)]``
  (after each digit of the results, after the comma, and the verdict).
  """
  if problem.family != "countdown" or problem.solution_format != "steps":
    return []
  out, ok, start = [], True, 0
  pool = collections.Counter(problem.digits)
  parts = completion.split(",")
  for i, part in enumerate(parts):
    closed = i < len(parts) - 1
    eq = part.rfind("=")
    checked = part
    for alias, op in _ALIASES:
      checked = checked.replace(alias, op)
    m = _STEP_RE.fullmatch(checked) if ok else None
    if m is None or len(checked) != len(part):  # Aliases change lengths: judge the step at its end only.
      ok = ok and m is not None
      if ok:
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        ok = pool[a] > 0 and pool[b] - (a == b) > 0 and c == _apply(a, op, b)
        pool.update({a: -1, b: -1, c: 1})
      if closed:
        out.append((start + len(part) + 1, float(ok)))
      start += len(part) + 1
      continue
    a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
    ok = pool[a] > 0 and pool[b] - (a == b) > 0
    pool.update({a: -1, b: -1, c: 1})
    true = str(_apply(a, op, b))
    written = part[eq + 1 :].strip()
    first = start + eq + 1 + (len(part[eq + 1 :]) - len(part[eq + 1 :].lstrip()))
    for k in range(len(written)):
      ok = ok and written[: k + 1] == true[: k + 1]
      out.append((first + k + 1, float(ok)))
    ok = ok and written == true
    if closed:
      out.append((start + len(part) + 1, float(ok)))
    start += len(part) + 1
  out.append((len(completion), float(grade(problem, completion))))
  return out


def verifier_examples(problem: "Problem", rng: np.random.Generator, num: int) -> list[tuple[str, float]]:
  """`num` task-made (completion, label) pairs to train a verifier on `problem`.

  "steps" countdown: alternately a right answer (`sample_steps`, label 1) and
  a `false_last_step` (label 0), so that a verifier sees, for every prompt,
  the exact check that separates them. Other problems: none (an empty list).
  """
  if problem.family != "countdown" or problem.solution_format != "steps":
    return []
  out = []
  for i in range(num):
    wrong = false_last_step(problem.digits, problem.target, rng) if i % 2 else None
    out.append((wrong, 0.0) if wrong else (sample_steps(problem.digits, problem.target, rng), 1.0))
  return out


# ---------------------------------------------------------------------------
# The task API used by training and evaluation.

FAMILIES = ("countdown",) + arith.FAMILIES


@dataclasses.dataclass(frozen=True, kw_only=True)
class Problem:
  """One task instance (MATH fields plus the data its grader needs)."""

  id: str  # stable, e.g. "countdown/3-4-7-9/60"
  problem: str  # human-readable MATH-style question
  level: int  # 1..5
  solution: str  # a reference solution ending in \boxed{answer}
  answer: str  # the reference answer (the content of that box)
  family: str  # "countdown", "arith", "mod" or "linear"
  # Distinct valid answers: countdown solution classes (see countdown.py),
  # 1 for the unique-answer families.
  num_solutions: int
  num_forms: int = 1  # countdown: distinct bracket-minimal answer strings
  prompt: str  # the short text the policy is conditioned on
  digits: tuple[int, ...] = ()  # countdown only (sorted)
  target: int | None = None  # countdown only
  solution_format: str = "expression"  # countdown only: see `TaskConfig`


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskConfig:
  """Task knobs; `make_splits(**kwargs)` builds one from its keyword args.

  Attributes:
    families: family -> mixing weight (e.g. {"countdown": 0.9, "mod": 0.1}).
    num_digits: countdown puzzle sizes to draw.
    num_digits_weights: their draw probabilities (None: uniform).
    digit_range: countdown digits are drawn uniformly from [lo, hi].
    target_range: countdown targets lie in [lo, hi].
    target_weighting: a reachable target is drawn with probability
      proportional to num_solutions ** target_weighting (0: uniform over
      reachable targets; > 0 easier, < 0 harder).
    max_solutions: skip countdown targets with more solution classes.
    solution_format: what a countdown completion is (`SOLUTION_FORMATS`):
      "expression", one boxed expression (``\\boxed{3*(4+7+9)}``); or
      "steps", one binary operation per step with its result
      (``4+7=11, 11+9=20, 3*20=60``), so that a wrong answer shows a
      locally checkable error: a false step, or a last result that is not
      the target.
  """

  families: Mapping[str, float] = dataclasses.field(
      default_factory=lambda: {"countdown": 1.0}
  )
  num_digits: tuple[int, ...] = (3, 4, 5)
  num_digits_weights: tuple[float, ...] | None = None
  digit_range: tuple[int, int] = (1, 9)
  target_range: tuple[int, int] = (10, 99)
  target_weighting: float = 0.0
  max_solutions: int | None = None
  solution_format: str = "expression"

  def __post_init__(self):
    if self.solution_format not in SOLUTION_FORMATS:
      raise ValueError(
          f"unknown solution_format {self.solution_format!r}; choose from {SOLUTION_FORMATS}"
      )
    fams = dict(self.families)
    unknown = sorted(set(fams) - set(FAMILIES))
    if unknown:
      raise ValueError(f"unknown task families {unknown}; choose from {FAMILIES}")
    if any(w < 0 for w in fams.values()) or sum(fams.values()) <= 0:
      raise ValueError(f"family weights must be >= 0 and not all 0, got {fams}")
    object.__setattr__(self, "families", fams)
    for name in ("num_digits", "num_digits_weights", "digit_range", "target_range"):
      value = getattr(self, name)
      if value is not None:
        object.__setattr__(self, name, tuple(value))

  def countdown_kwargs(self) -> dict[str, Any]:
    return dict(
        num_digits=self.num_digits,
        num_digits_weights=self.num_digits_weights,
        digit_range=self.digit_range,
        target_range=self.target_range,
        target_weighting=self.target_weighting,
        max_solutions=self.max_solutions,
    )


def _countdown_problem(puzzle: Puzzle, reference: str, solution_format: str = "expression") -> Problem:
  digits, target = puzzle.digits, puzzle.target
  listed = ", ".join(map(str, digits))
  worked = f"{reference}={target}"
  if solution_format == "steps":
    worked = format_steps(steps_of(parse(reference)))
  return Problem(
      id=f"countdown/{'-'.join(map(str, digits))}/{target}",
      problem=(
          f"Use each of the digits {listed} exactly once, with +, - and *"
          f" and brackets, to make {target}."
      ),
      level=puzzle.level,
      solution=f"{worked}, so the answer is \\boxed{{{reference}}}",
      answer=reference,
      family="countdown",
      num_solutions=puzzle.num_solutions,
      num_forms=puzzle.num_forms,
      prompt=f"{' '.join(map(str, digits))} -> {target}:",
      digits=digits,
      target=target,
      solution_format=solution_format,
  )


def make_problem(
    digits, target: int, rng: np.random.Generator | None = None, *,
    solution_format: str = "expression",
) -> Problem:
  """The countdown `Problem` of given digits and target (for demos, tests).

  Raises:
    ValueError: if the digits cannot make the target.
  """
  digits = _check_digits(digits)
  stats = target_stats(digits).get(int(target))
  if stats is None:
    raise ValueError(f"digits {digits} cannot make {target}")
  puzzle = Puzzle(
      digits=digits, target=int(target), num_solutions=stats[0], num_forms=stats[1]
  )
  rng = np.random.default_rng(0) if rng is None else rng
  return _countdown_problem(puzzle, sample_form(digits, target, rng), solution_format)


def _unique_problems(
    family: str, rng: np.random.Generator, num: int, used: set[str]
) -> list[Problem]:
  out = []
  for _ in range(100 * num + 1000):
    if len(out) == num:
      return out
    level = int(rng.integers(1, 6))
    fields = arith.sample(family, rng, level)
    if fields["key"] in used:
      continue
    used.add(fields["key"])
    out.append(
        Problem(
            id=fields["key"],
            problem=fields["problem"],
            level=level,
            solution=fields["solution"],
            answer=fields["answer"],
            family=family,
            num_solutions=1,
            prompt=fields["prompt"],
        )
    )
  raise ValueError(f"could not draw {num} distinct {family!r} problems")


def _generate(
    cfg: TaskConfig,
    num: int,
    rng: np.random.Generator,
    ref_rng: np.random.Generator,
    used: set,
) -> list[Problem]:
  """`num` problems mixed by family weight, none whose key is in `used`."""
  names = sorted(cfg.families)
  w = np.array([cfg.families[n] for n in names], float)
  counts = rng.multinomial(num, w / w.sum())
  out: list[Problem] = []
  for name, count in zip(names, counts.tolist()):
    if count == 0:
      continue
    if name == "countdown":
      puzzles = sample_puzzles(
          rng, count, exclude=used, **cfg.countdown_kwargs()
      )
      used.update((p.digits, p.target) for p in puzzles)
      out += [
          _countdown_problem(p, sample_form(p.digits, p.target, ref_rng), cfg.solution_format)
          for p in puzzles
      ]
    else:
      out += _unique_problems(name, rng, count, used)
  return [out[i] for i in rng.permutation(len(out))]


def make_splits(
    *, seed: int, num_train: int, num_test: int, **task_kwargs
) -> tuple[list[Problem], list[Problem]]:
  """Deterministic train/test problems, disjoint by instance.

  Instances are countdown (digits, target) pairs and the unique families'
  questions. The test split is drawn first from its own stream, so it does
  not change with `num_train`. `task_kwargs` are `TaskConfig` fields.

  Raises:
    ValueError: on unknown or bad settings.
  """
  if num_train < 0 or num_test < 0:
    raise ValueError(f"split sizes must be >= 0, got {num_train}, {num_test}")
  known = {f.name for f in dataclasses.fields(TaskConfig)}
  unknown = sorted(set(task_kwargs) - known)
  if unknown:
    raise ValueError(f"unknown task settings {unknown}; choose from {sorted(known)}")
  cfg = TaskConfig(**task_kwargs)
  test_rng, train_rng, ref_rng = (
      np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
  )
  used: set = set()
  test = _generate(cfg, num_test, test_rng, ref_rng, used)
  train = _generate(cfg, num_train, train_rng, ref_rng, used)
  return train, test


def prompt_text(problem: Problem) -> str:
  """The short text the policy is conditioned on, e.g. ``3 4 7 9 -> 60:``."""
  return problem.prompt


def sft_targets(problem: Problem, rng: np.random.Generator) -> str:
  """An SFT completion (without EOS).

  Countdown: ``\\boxed{expr}`` with a solution class drawn uniformly, then a
  form of it uniformly, so SFT learns the diversity Best-of-N needs; in the
  "steps" format that form's `sample_steps`. The other families: their
  worked solution.
  """
  if problem.family == "countdown" and problem.solution_format == "steps":
    return sample_steps(problem.digits, problem.target, rng)
  if problem.family == "countdown":
    return f"\\boxed{{{sample_form(problem.digits, problem.target, rng)}}}"
  return problem.solution


def answer_key(problem: Problem, completion: str) -> str | None:
  """The final answer's equivalence class, for majority voting.

  Countdown: the value of the last boxed expression if it is well formed and
  uses exactly the given digits ("steps" format: the `steps_value` of the
  whole completion); unique families: the boxed integer. None when there is
  no such answer.
  """
  if problem.family == "countdown" and problem.solution_format == "steps":
    v = steps_value(completion, problem.digits)
    return None if v is None else str(v)
  boxed = grading.extract_boxed(completion)
  if boxed is None:
    return None
  if problem.family == "countdown":
    v = digits_value(boxed, problem.digits)
  else:
    v = arith.parse_answer(boxed)
  return None if v is None else str(v)


def grade(problem: Problem, completion: str) -> bool:
  """Whether the last ``\\boxed{...}`` of `completion` is a correct answer.

  Countdown answers are parsed (no eval) and must use each given digit once
  and make the target (in the "steps" format: with every step true); others
  must equal the reference integer.
  """
  key = answer_key(problem, completion)
  if problem.family == "countdown":
    return key == str(problem.target)
  return key is not None and key == str(int(problem.answer))


def _histogram(values: Sequence[int]) -> dict[int, int]:
  return dict(sorted(collections.Counter(values).items()))


_SOLUTION_BUCKETS = ((1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 10**9))


def describe(problems: Sequence[Problem], tokenizer=None, seed: int = 0) -> dict:
  """Summary statistics: families, levels, solution counts, token lengths.

  With a `tokenizer` (anything with `encode`), adds the mean and max token
  lengths of prompts and of SFT targets (without the EOS the trainer adds).
  """
  sols = np.array([p.num_solutions for p in problems])
  out = {
      "num_problems": len(problems),
      "families": _histogram([p.family for p in problems]),
      "levels": _histogram([p.level for p in problems]),
      "num_digits": _histogram([len(p.digits) for p in problems if p.digits]),
      "num_solutions": {
          (f"{lo}" if lo == hi else f"{lo}+" if hi > 10**6 else f"{lo}-{hi}"): int(
              ((sols >= lo) & (sols <= hi)).sum()
          )
          for lo, hi in _SOLUTION_BUCKETS
      },
      "num_solutions_median": float(np.median(sols)) if len(sols) else 0.0,
      "num_forms_median": float(np.median([p.num_forms for p in problems]))
      if problems
      else 0.0,
  }
  if tokenizer is not None:
    rng = np.random.default_rng(seed)
    plen = [len(tokenizer.encode(prompt_text(p))) for p in problems]
    clen = [len(tokenizer.encode(sft_targets(p, rng))) for p in problems]
    out.update(
        prompt_tokens_mean=float(np.mean(plen)),
        prompt_tokens_max=int(np.max(plen)),
        completion_tokens_mean=float(np.mean(clen)),
        completion_tokens_max=int(np.max(clen)),
    )
  return out


# The tokenizer corpus is pinned here, independent of the task defaults, so
# the shipped tokenizer stays reproducible when those are tuned. It covers
# every family, so every character the task can emit.
_CORPUS_SPLITS = dict(
    seed=0,
    num_train=2000,
    num_test=0,
    families={"countdown": 0.7, "arith": 0.1, "mod": 0.1, "linear": 0.1},
    num_digits=(3, 4, 5),
    target_range=(1, 199),
)


def tokenizer_corpus() -> list[str]:
  """Texts the task tokenizer is trained on (deterministic).

  Changing the task's texts or generators changes this corpus: re-save the
  shipped model then (``tokenizer.rebuild_task_tokenizer().save(
  tokenizer.TASK_TOKENIZER_PATH)``); a test checks the two agree.
  """
  problems, _ = make_splits(**_CORPUS_SPLITS)
  rng = np.random.default_rng(0)
  texts = []
  for p in problems:
    texts += [p.problem, p.solution, prompt_text(p), sft_targets(p, rng)]
  return texts
