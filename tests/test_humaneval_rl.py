"""RL on HumanEval with hostile completions in the groups: they earn nothing.

A short run of `configs/humaneval_pass16.py`'s algorithm (BoN-RLB(P), N = N'
= 16) on the micro policy with the task tokenizer. Into every group of
sampled completions go the canonical solution and hostile completions that
forged a pass under the exit-status grader; the rewards the loop trains on
must be exactly the batch grader's verdicts: 1 for the canonical solution,
0 for every hostile one.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bon_jax import models
from bon_jax import rl
from bon_jax import tokenizer as tokenizer_lib
from bon_jax import trainer_lib
from bon_jax import verifier as verifier_lib
from bon_jax.tasks import base as task_lib
from bon_jax.tasks import humaneval
from bon_jax.tasks import registry
from configs import humaneval_pass16
import test_humaneval_forgery as forgery  # pylint: disable=g-bad-import-order

# Problem-agnostic forgeries (no argument names): early exits, tampering,
# impostor objects, forged protocol messages.
INJECTED = ("sys_exit_0", "os_exit_0", "exit_at_import", "exit_from_thread",
            "always_equal_object", "patch_assertion_error",
            "forged_verdicts_on_every_fd", "pre_answered_pipe")


class _Recording:
  """The HumanEval task, recording every batch it grades."""

  def __init__(self, task):
    self.task, self.calls = task, []

  def __getattr__(self, name):
    return getattr(self.task, name)

  def grade_batch(self, problems, completions):
    rewards = self.task.grade_batch(problems, completions)
    self.calls.append(([p.id for p in problems], [list(c) for c in completions], rewards))
    return rewards


@pytest.mark.skipif(forgery.sandbox.isolation() == "user",
                    reason="not root: verdicts are not forgery-proof (bon_jax.judge doc)")
def test_rl_rewards_are_the_batch_verdicts_and_hostile_completions_earn_zero(monkeypatch):
  config = humaneval_pass16.get_config()
  task_cfg = ml_collections.ConfigDict(dict(name="humaneval", seed=config.task.seed,
                                            num_test=config.task.num_test))
  task = _Recording(registry.make_task(task_cfg))
  train_problems, _ = registry.load_splits(task_cfg)
  tok = tokenizer_lib.task_tokenizer()
  # The shortest prompts keep the micro policy's sequences short.
  problems = sorted(train_problems, key=lambda p: len(p.prompt))[:4]
  prompt_len = max(len(tok.encode(p.prompt)) + 1 for p in problems)

  cfg = config.rl
  assert cfg.algorithm == "bon_rlb_p" and cfg.N == cfg.N_prime == 16
  cfg.prompts_per_step, cfg.max_new_tokens, cfg.learning_rate = 2, 16, 1e-2
  cfg.microbatch_rows = 0
  model = models.make_model(preset="micro", vocab_size=tok.vocab_size, dtype=jnp.dtype("float32"))
  params = jax.jit(models.init_params, static_argnums=0)(model, jax.random.key(0))
  items = tuple(sorted(rl._optimizer_config(cfg).items()))
  optimizer, update = rl._optimizer_and_update(model, items, 0.0, 0.0, 1.0)
  state = trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.array, params),
                          opt_state=optimizer.init(params))

  by_id = {p.id: p for p in problems}
  hostile = [dict(forgery.HOSTILE)[n] for n in INJECTED]
  decode = verifier_lib.decode_completions

  def injecting_decode(tokenizer, completions):
    # Slot 0: the canonical solution; slots 1..8: hostile ones; the rest: the policy's.
    texts = decode(tokenizer, completions)
    return [[p.canonical_solution, *hostile, *group[1 + len(hostile):]]
            for p, group in zip(injecting_decode.problems, texts)]

  monkeypatch.setattr(verifier_lib, "decode_completions", injecting_decode)
  logged = []
  for step in range(3):
    chosen, _ = rl.step_problems(problems, seed=0, step=step, num=cfg.prompts_per_step)
    injecting_decode.problems = chosen
    state, metrics = rl.rl_step(state, None, chosen, model=model, update_fn=update, tokenizer=tok,
                                task=task, cfg=cfg, rng=rl.step_key(0, step), prompt_len=prompt_len)
    logged.append(metrics)

  assert len(task.calls) == 3  # One batch per step: every group graded at once.
  for (ids, texts, rewards), metrics in zip(task.calls, logged):
    assert rewards.shape == (2, 16) and set(np.unique(rewards)) <= {0.0, 1.0}
    np.testing.assert_array_equal(rewards[:, 0], 1.0)  # The canonical solution.
    np.testing.assert_array_equal(rewards[:, 1:1 + len(hostile)], 0.0)  # Every forgery.
    # The rewards trained on are the verdicts of an independent batch judgement.
    again = humaneval.evaluate([by_id[i].as_dict() for i in ids],
                               [[registry.truncate_completion(t) for t in g] for g in texts])
    np.testing.assert_array_equal(rewards, [[float(r.passed) for r in g] for g in again])
    assert metrics["reward_mean"] == pytest.approx(float(rewards.mean()))


def test_training_grades_through_grade_batch_when_the_task_has_it():
  class Task:  # Per-sample grading would raise: only the batch path may run.

    def grade(self, problem, completion):
      raise AssertionError("graded one by one")

    def grade_batch(self, problems, completions):
      return np.asarray([[len(c) % 2 for c in g] for g in completions], np.float32)

    def answer_key(self, problem, completion):
      return completion[:1]

  labels, answers = task_lib.grade_completions(Task(), [0, 1], [["a", "bb", "c"], ["ddd", "ee", "dx"]])
  np.testing.assert_array_equal(labels, [[1, 0, 1], [1, 0, 0]])
  np.testing.assert_array_equal(answers, [[0, 1, 2], [0, 1, 0]])
