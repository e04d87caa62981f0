"""SentencePiece wrapper: special ids, digits, round trips, the shipped model."""

import io
import os

import numpy as np
import pytest
import sentencepiece as spm

from bon_jax import tokenizer as tokenizer_lib
from bon_jax.tasks import countdown


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.task_tokenizer()


@pytest.fixture(scope="module")
def texts():
  train, test = countdown.make_splits(
      seed=11,
      num_train=300,
      num_test=100,
      families={"countdown": 2, "arith": 1, "mod": 1, "linear": 1},
  )
  rng = np.random.default_rng(0)
  out = []
  for p in train + test:
    out += [p.problem, p.solution, p.answer]
    out += [countdown.prompt_text(p), countdown.sft_targets(p, rng)]
  return out


def test_special_ids_follow_gemma(tok):
  assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
  assert [tok.id_to_piece(i) for i in range(3)] == ["<pad>", "<eos>", "<bos>"]
  assert 100 <= tok.vocab_size <= 512


def test_round_trips_every_task_text(tok, texts):
  for text in texts:
    ids = tok.encode(text)
    assert 3 not in ids, text  # no <unk>
    assert tok.decode(ids) == text


def test_digits_are_single_tokens(tok, texts):
  digit_ids = {d: tok.encode(d) for d in "0123456789"}
  assert all(len(ids) == 1 for ids in digit_ids.values())
  assert len({ids[0] for ids in digit_ids.values()}) == 10
  for text in texts:
    for i in tok.encode(text):
      piece = tok.id_to_piece(i)
      assert not any(c.isdigit() for c in piece) or len(piece) == 1, (piece, text)
  assert tok.encode("1234567890") == [digit_ids[d][0] for d in "1234567890"]


def test_decode_stops_at_eos_and_drops_pad_and_bos(tok):
  ids = tok.encode(r"\boxed{3*(4+7+9)}")
  junk = tok.encode("junk")
  assert tok.decode([tok.bos_id, *ids, tok.eos_id, *junk, 0, 0]) == r"\boxed{3*(4+7+9)}"
  assert tok.decode(np.array([[*ids, 0, 0]])) == r"\boxed{3*(4+7+9)}"
  assert tok.decode([tok.eos_id, *ids]) == ""


def test_task_prompts_and_completions_are_short(tok, texts):
  train, _ = countdown.make_splits(seed=0, num_train=300, num_test=0)
  rng = np.random.default_rng(0)
  for p in train:
    assert len(tok.encode(countdown.prompt_text(p))) <= 24
    assert len(tok.encode(countdown.sft_targets(p, rng))) <= 24


def test_building_is_deterministic():
  texts = [f"{a} + {b} = \\boxed{{{a + b}}}" for a in range(40) for b in range(0, 40, 3)]
  a = tokenizer_lib.build_task_tokenizer(texts, vocab_size=32, seed=0)
  b = tokenizer_lib.build_task_tokenizer(texts, vocab_size=32, seed=0)
  assert a.model_proto == b.model_proto
  assert a.vocab_size == 32


def test_shipped_model_is_the_rebuilt_one(tok):
  assert os.path.isfile(tokenizer_lib.TASK_TOKENIZER_PATH)
  assert os.path.getsize(tokenizer_lib.TASK_TOKENIZER_PATH) < 16_000
  # After changing task texts or generators, re-save the asset with
  #   python -c "from bon_jax import tokenizer as t;
  #              t.rebuild_task_tokenizer().save(t.TASK_TOKENIZER_PATH)"
  assert tokenizer_lib.rebuild_task_tokenizer().model_proto == tok.model_proto


def test_load_tokenizer_reads_a_saved_model(tok, tmp_path):
  path = str(tmp_path / "tok.model")
  tok.save(path)
  loaded = tokenizer_lib.load_tokenizer(path)
  assert loaded.encode("7 8 9 -> 65:") == tok.encode("7 8 9 -> 65:")


def test_missing_tokenizer_file_names_download_and_config_field(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    tokenizer_lib.load_tokenizer(str(tmp_path / "nope.model"))
  msg = str(e.value)
  assert "\n" not in msg and "Gemma 2" in msg and "tokenizer.path" in msg


def test_model_with_other_special_ids_is_rejected(tmp_path):
  out = io.BytesIO()
  # sentencepiece's defaults: unk 0, bos 1, eos 2, no pad.
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(["a b c d e f", "abc def"] * 20),
      model_writer=out,
      vocab_size=12,
      model_type="bpe",
      minloglevel=2,
  )
  with pytest.raises(ValueError, match="pad, eos, bos"):
    tokenizer_lib.Tokenizer(out.getvalue())


def test_too_large_vocab_is_a_value_error():
  with pytest.raises(ValueError, match="could not train") as e:
    tokenizer_lib.build_task_tokenizer(["ab ab ab"], vocab_size=500)
  assert "Vocabulary size too high" in str(e.value) and "\n" not in str(e.value)


def test_padded_tokenizer_keeps_ids_and_reaches_the_vocab_size():
  base = tokenizer_lib.task_tokenizer()
  tok = tokenizer_lib.padded_tokenizer(base, 256128)  # The Gemma 2 stand-in of bench/paper_configs_e2e.py.
  assert tok.vocab_size == 256128
  text = "3 4 7 9 -> 60: (3 + 4) * 9 - 7"
  assert tok.encode(text) == base.encode(text) and tok.decode(tok.encode(text)) == text
  assert tok.id_to_piece(256127) == "<unused256127>"
  with pytest.raises(ValueError, match="below the base tokenizer"):
    tokenizer_lib.padded_tokenizer(base, 10)
