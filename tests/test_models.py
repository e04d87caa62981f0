"""Model presets: Gemma 2 shapes, the tiny policy, missing checkpoints."""

import dataclasses

import jax
import pytest
from gemma import gm

from bon_jax import models


@pytest.mark.parametrize("preset,reference", [("gemma2_2b", gm.nn.Gemma2_2B), ("gemma2_9b", gm.nn.Gemma2_9B)])
def test_gemma2_presets_equal_the_gemma_library_configs(preset, reference):
  ours = dataclasses.asdict(models.transformer_config(preset))
  theirs = dataclasses.asdict(reference.config)
  assert ours == theirs


def test_gemma2_2b_builds_abstractly_with_its_parameter_count():
  model = models.make_model(preset="gemma2_2b")
  params = models.abstract_params(model)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))
  # Gemma 2 2B: 2.61 B parameters (embedding tied with the output layer).
  assert 2.6e9 < models.num_params(params) < 2.62e9


def test_tiny_preset_is_a_few_million_parameter_gemma2():
  config = models.transformer_config("tiny", vocab_size=128)
  assert config.num_kv_heads < config.num_heads  # grouped-query attention
  assert {t.name for t in config.attention_types} == {"LOCAL_SLIDING", "GLOBAL"}
  assert config.attn_logits_soft_cap and config.final_logit_softcap
  assert config.use_post_attn_norm and config.use_post_ffw_norm
  n = models.num_params(models.abstract_params(models.make_model(preset="tiny", vocab_size=128)))
  assert 1e6 < n < 1e7


def test_unknown_preset_and_vocab_mismatch_are_clear_errors():
  with pytest.raises(ValueError, match="unknown model preset 'huge'"):
    models.transformer_config("huge")
  with pytest.raises(ValueError, match="256128-token vocabulary"):
    models.transformer_config("gemma2_2b", vocab_size=128)


def test_missing_checkpoint_names_what_to_download_and_the_field(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    models.load_params(str(tmp_path / "nope"), preset="gemma2_2b")
  msg = str(e.value)
  assert "Gemma 2 2B" in msg and "--config.model.ckpt_path" in msg and "\n" not in msg
