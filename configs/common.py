"""Pieces shared by every experiment config.

Each experiment is one file in `configs/` whose `get_config()` returns a
`ConfigDict`, readable top to bottom. Every field and its default is declared
once, in bon_jax/defaults.py (`base_config`, `rl_config`, `verifier_config`,
re-exported here); this module adds the paper configs' shared policy. Override
any field from the command line, e.g. `--config.train.steps=200`.
"""

import ml_collections

from bon_jax import defaults

base_config = defaults.base_config
rl_config = defaults.rl_config
verifier_config = defaults.verifier_config


def gemma2_2b_policy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The paper configs' policy: Gemma 2 2B from a local checkpoint, no SFT stage.

  bf16 weights (as released) with float32 Adam moments (the moments of small
  updates underflow in bf16); full fine-tuning (`model.lora_rank=16` trains
  LoRA adapters only); FSDP over one 8-chip host ((-1, 8, 1) for several);
  `train.steps=0` fine-tunes the released checkpoint directly. Tokenizer and
  checkpoint paths are required (the run names them when missing).
  """
  config.tokenizer.kind = "sentencepiece"
  config.tokenizer.path = ""  # Gemma 2's tokenizer.model (required).
  config.model.preset = "gemma2_2b"
  config.model.ckpt_path = ""  # Orbax checkpoint (required).
  config.model.dtype = "bfloat16"
  config.model.opt_state_dtype = "float32"
  config.model.lora_rank = 0
  config.mesh.shape = (1, 8, 1)
  config.train.steps = 0
  return config
