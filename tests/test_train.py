"""The SFT driver: masking, exact resume, workdir safety, the report."""

import json
import os

import jax
import numpy as np
import pytest

from bon_jax import config_lib
from bon_jax import input_pipeline
from bon_jax import pipeline
from bon_jax import trainer_lib
from bon_jax import validation
from configs import demo


def _tiny_config(steps=4, **eval_overrides):
  c = demo.get_config()
  c.model.preset = "micro"
  c.task.num_train = 200
  c.task.num_test = 8
  c.train.steps = steps
  c.train.batch_size = 4
  c.train.warmup_steps = 1
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.eval.num_prompts = 4
  c.eval.num_samples = 4
  c.eval.prompts_per_batch = 4
  c.eval.max_new_tokens = 8
  c.algorithms = ()  # SFT + eval only; the full pipeline is pinned in test_pipeline.py.
  c.verifier.steps = 0
  for k, v in eval_overrides.items():
    c.eval[k] = v
  return c


class _CharTokenizer:
  def encode(self, text):
    return [3 + ord(ch) % 50 for ch in text]


def test_sft_loss_mask_covers_exactly_the_completion_and_eos():
  batch = input_pipeline.encode_sft(_CharTokenizer(), ["ab", "abcd"], ["xyz", "q"], length=10)
  tokens, mask = batch["tokens"], batch["loss_mask"]
  # Row 0: [BOS a b x y z EOS 0 0 0]; targets t+1 for t = 2..5 are x y z EOS.
  np.testing.assert_array_equal(mask[0], [0, 0, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(mask[1], [0, 0, 0, 0, 1, 1, 0, 0, 0])
  assert tokens[0, 6] == 1 and tokens[0, 7] == 0 and tokens[1, 6] == 1


def test_sft_batch_is_a_function_of_seed_and_step():
  kw = dict(tokenizer=_CharTokenizer(), prompt_fn=str, target_fn=lambda p, rng: str(rng.integers(9)),
            batch_size=8, length=8, seed=3)
  problems = list(range(100))
  a = input_pipeline.sft_batch(problems, step=5, **kw)["tokens"]
  b = input_pipeline.sft_batch(problems, step=5, **kw)["tokens"]
  c = input_pipeline.sft_batch(problems, step=6, **kw)["tokens"]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_resumed_run_matches_uninterrupted_run(tmp_path, monkeypatch):
  full = str(tmp_path / "full")
  pipeline.train_and_evaluate(_tiny_config(steps=4), full)

  # "Preempt" a run while it builds the batch of step index 3: steps 1-3 ran,
  # the last checkpoint is step 2, so the rerun must redo step 3 exactly.
  real_batch = input_pipeline.sft_batch

  def preempted(*args, step, **kwargs):
    if step == 3:
      raise KeyboardInterrupt("preempted")
    return real_batch(*args, step=step, **kwargs)

  cut = str(tmp_path / "cut")
  monkeypatch.setattr(input_pipeline, "sft_batch", preempted)
  with pytest.raises(KeyboardInterrupt):
    pipeline.train_and_evaluate(_tiny_config(steps=4), cut)
  monkeypatch.setattr(input_pipeline, "sft_batch", real_batch)
  assert trainer_lib.checkpoint_manager(cut, _tiny_config().train).latest_step() == 2
  pipeline.train_and_evaluate(_tiny_config(steps=4), cut)

  restore = lambda d: trainer_lib.checkpoint_manager(d, _tiny_config().train)
  a = restore(full).restore(4)
  b = restore(cut).restore(4)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a["params"], b["params"])
  assert int(b["step"]) == 4


def test_run_writes_metrics_events_and_report(tmp_path):
  wd = str(tmp_path)
  results = pipeline.train_and_evaluate(_tiny_config(steps=2), wd)
  lines = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert [l["step"] for l in lines] == [1, 2] and all(np.isfinite(l["loss"]) for l in lines)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd))
  assert os.path.getsize(os.path.join(wd, "eval", "step_2.png")) > 1000
  saved = json.load(open(os.path.join(wd, "eval", "step_2.json")))
  assert saved["ks"] == [1, 2, 4] and saved["overall"]["num_prompts"] == 4
  for curve in ("pass@k", "bo@k", "maj@k"):
    vals = saved["overall"][curve]
    assert all(0.0 <= v <= 1.0 for v in vals), curve
  # pass@k never decreases with k; with the grader as verifier bo@k equals it.
  assert all(a <= b + 1e-9 for a, b in zip(saved["overall"]["pass@k"], saved["overall"]["pass@k"][1:]))
  np.testing.assert_allclose(saved["overall"]["bo@k"], saved["overall"]["pass@k"], atol=1e-6)
  assert results["base"]["overall"]["pass@k"] == saved["overall"]["pass@k"]


def test_workdir_of_another_model_is_refused_and_left_intact(tmp_path):
  wd = str(tmp_path)
  pipeline.train_and_evaluate(_tiny_config(steps=2), wd)
  before = {f: os.path.getmtime(os.path.join(wd, f)) for f in ("config.json", "metrics.jsonl")}
  other = _tiny_config(steps=2)
  other.model.preset = "tiny"
  with pytest.raises(config_lib.UserError, match="different config.*model.preset"):
    pipeline.train_and_evaluate(other, wd)
  assert before == {f: os.path.getmtime(os.path.join(wd, f)) for f in before}


def test_checkpoint_of_another_shape_without_config_is_refused(tmp_path):
  wd = str(tmp_path)
  pipeline.train_and_evaluate(_tiny_config(steps=2), wd)
  os.remove(os.path.join(wd, "config.json"))
  with pytest.raises(config_lib.UserError, match="holds checkpoints"):
    pipeline.train_and_evaluate(_tiny_config(steps=2), wd)


def test_restore_refuses_parameters_of_another_shape(tmp_path):
  import jax.numpy as jnp
  from bon_jax import models
  cfg = _tiny_config()
  mngr = trainer_lib.checkpoint_manager(str(tmp_path), cfg.train)
  opt = trainer_lib.make_optimizer(cfg.train)

  def state_for(preset):
    p = models.init_params(models.make_model(preset=preset, vocab_size=64), jax.random.key(0))
    return trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=opt.init(p))

  mngr.save(2, args=trainer_lib.ocp.args.StandardSave(state_for("micro")), force=True)
  mngr.wait_until_finished()
  with pytest.raises(config_lib.UserError, match="another model shape"):
    trainer_lib.restore_or_init(mngr, state_for("tiny"))


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("train.steps", -1, "train.steps must be an integer >= 0"),
        ("model.preset", "huge", "model.preset='huge' is unknown"),
        ("eval.temperature", -0.5, "eval.temperature must be >= 0"),
        ("model.ckpt_path", "/no/such/ckpt", "does not exist"),
        ("eval.num_prompts", 10_000, "exceeds config.task.num_test"),
    ],
)
def test_bad_config_values_are_one_line_user_errors(field, value, match):
  c = _tiny_config()
  section, key = field.split(".")
  c[section][key] = value
  with pytest.raises(config_lib.UserError, match=match) as e:
    validation.validate(c)
  assert "\n" not in str(e.value)
