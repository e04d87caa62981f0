"""bon_jax.gemma_internals: the private gemma pieces bon_jax uses, on the installed gemma line.

CI runs this on Python 3.11 (gemma 3.3) and on Python 3.13 (gemma 4.x), so each
supported line is checked; a new gemma release that changes its internals
fails here, naming bon_jax/gemma_internals.py.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax import gemma_internals as gi
from bon_jax import models

# The gemma line setup.py installs on this Python.
EXPECTED_LINE = "3.3." if sys.version_info < (3, 12) else "4."


def test_installed_gemma_is_the_line_setup_py_pins_for_this_python():
  assert gi.GEMMA_VERSION.startswith(EXPECTED_LINE), (sys.version, gi.GEMMA_VERSION)
  assert EXPECTED_LINE in gi.SUPPORTED_LINES


def test_check_passes_on_the_installed_line():
  gi.check()


def test_check_names_the_piece_that_changed(monkeypatch):
  monkeypatch.setattr(gi, "_ATTENTION_ATTRS", gi._ATTENTION_ATTRS + ("renamed_in_gemma_9",))
  with pytest.raises(gi.GemmaInternalsError, match=r"Attention\.renamed_in_gemma_9.*gemma_internals\.py"):
    gi.check()


def test_rope_and_mask_behave_as_the_sampler_assumes():
  # apply_rope at position 0 is the identity; K_MASK is far below any soft-capped logit.
  x = jax.random.normal(jax.random.key(0), (1, 1, 2, 8))
  out = gi.apply_rope(x, positions=jnp.zeros((1, 1), jnp.int32), base_frequency=10_000)
  np.testing.assert_allclose(out, x, rtol=1e-6)
  moved = gi.apply_rope(x, positions=jnp.full((1, 1), 3), base_frequency=10_000)
  np.testing.assert_allclose(jnp.linalg.norm(moved), jnp.linalg.norm(x), rtol=1e-5)
  assert not np.allclose(moved, x)
  assert gi.K_MASK < -1e6


def test_lora_einsum_rewrite_is_the_one_merge_lora_reads():
  eqn, _, _ = gi.get_lora_einsum_str_and_shapes(einsum_str="BTD,NDH->BTNH",
                                                  weights_shape=(4, 8, 16), rank=2)
  inputs = eqn.split("->")[0].split(",")
  assert len(inputs) == 3 and inputs[0] == "BTD"


def test_attention_types_follow_the_preset():
  config = models.transformer_config("micro", vocab_size=32)
  assert config.attention_types[:2] == (gi.LOCAL_SLIDING, gi.GLOBAL)


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_forward_is_the_jitted_call_and_sees_every_interceptor(lora_rank):
  # gi.forward computes gemma's Transformer.__call__ without its nn.jit, so a
  # flax method interceptor (sharding.apply_rows_split's constraints) applies to
  # the call it wraps and to no later one; gemma's jitted __call__ reuses a
  # trace whatever interceptor was active when it was made.
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  model = models.make_model(preset="micro", vocab_size=32, lora_rank=lora_rank)
  tokens = jnp.array([[2, 5, 6, 7], [2, 9, 0, 0]])
  variables = jax.tree.map(lambda x: x + 0.05, model.init(jax.random.key(0), tokens))
  plain = model.apply(variables, tokens).logits

  def shift_final_norm(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    return out + 1.0 if context.module.name == "final_norm" else out

  with nn.intercept_methods(shift_final_norm):
    shifted = model.apply(variables, tokens, method=gi.forward).logits
  again = model.apply(variables, tokens, method=gi.forward).logits
  np.testing.assert_allclose(again, plain, atol=1e-5)
  assert not np.allclose(shifted, plain, atol=1e-2)
