"""bon_jax.trainer_lib.train_loop: resumable, and a non-finite loss stops it cleanly."""

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bon_jax import config_lib
from bon_jax import trainer_lib


def _state():
  return trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.ones(3)},
                                opt_state={"m": jnp.zeros(3)})


def _mngr(workdir):
  return trainer_lib.checkpoint_manager(
      str(workdir), ml_collections.ConfigDict(dict(checkpoint_every=1, keep_checkpoints=10)))


def _step_fn(nan_at=None):
  def step_fn(state, step):
    bad = step + 1 == nan_at
    params = {"w": state.params["w"] + (jnp.nan if bad else 1.0)}
    metrics = {"loss": jnp.float32(jnp.nan if bad else 1.0 / (step + 1)), "grad_norm": jnp.float32(1.0)}
    return state.replace(step=state.step + 1, params=params), metrics
  return step_fn


def _run(workdir, steps, nan_at=None):
  mngr = _mngr(workdir)
  state = trainer_lib.restore_or_init(mngr, _state())
  return trainer_lib.train_loop(state, step_fn=_step_fn(nan_at), steps=steps, workdir=str(workdir),
                                mngr=mngr, log_every=1, desc="sft", log_fn=lambda m, s, r: {})


def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
  with pytest.raises(config_lib.UserError) as e:
    _run(tmp_path, steps=10, nan_at=4)
  msg = str(e.value)
  assert "\n" not in msg and "non-finite loss=nan at step 4" in msg
  assert "last good checkpoint, step 3" in msg
  assert _mngr(tmp_path).latest_step() == 3  # The bad step was not saved.
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2, 3]
  restored = trainer_lib.restore_or_init(_mngr(tmp_path), _state())
  assert int(restored.step) == 3 and np.all(np.isfinite(restored.params["w"]))

  # Rerun (e.g. with a smaller learning rate): resumes from the kept step.
  state, history = _run(tmp_path, steps=5)
  assert int(state.step) == 5 and [h["step"] for h in history] == [4, 5]
  np.testing.assert_array_equal(state.params["w"], np.full(3, 6.0))


def test_non_finite_gradient_is_caught_before_it_reaches_a_checkpoint(tmp_path):
  def step_fn(state, step):
    return state.replace(step=state.step + 1), {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(jnp.inf)}

  with pytest.raises(config_lib.UserError, match="non-finite grad_norm=inf at step 1.*no checkpoint was written"):
    trainer_lib.train_loop(_state(), step_fn=step_fn, steps=3, workdir=str(tmp_path), mngr=_mngr(tmp_path),
                           log_every=10, desc="rloo", log_fn=lambda m, s, r: {})
  assert _mngr(tmp_path).latest_step() is None
