"""SentencePiece tokenizers with Gemma's special ids (pad 0, eos 1, bos 2).

`Tokenizer` wraps any SentencePiece model: the Gemma 2 tokenizer for real
checkpoints, or the embedded task's small model (`task_tokenizer`), trained
on the task's own texts with digits split into single tokens. Pad must be 0
because Gemma derives its attention mask from ``tokens != 0``.

Example::

  tok = task_tokenizer()
  ids = tok.encode("3 4 7 9 -> 60:")   # no bos/eos added
  tok.decode(ids + [tok.eos_id, 0, 0]) # "3 4 7 9 -> 60:"
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from bon_jax.tasks import countdown

PAD_ID = 0
EOS_ID = 1
BOS_ID = 2
UNK_ID = 3

TASK_VOCAB_SIZE = 128
TASK_TOKENIZER_PATH = os.path.join(
    os.path.dirname(__file__), "assets", "task_tokenizer.model"
)


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
  """A thin wrapper of a SentencePiece model (its serialized proto).

  Attributes:
    model_proto: the serialized SentencePiece `ModelProto`.
  """

  model_proto: bytes = dataclasses.field(repr=False)
  _sp: spm.SentencePieceProcessor = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    try:
      sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
    except RuntimeError as e:  # sentencepiece's C++ parse error, several lines.
      reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else "unparsable"
      raise ValueError(f"not a SentencePiece model ({reason})") from None
    ids = (sp.pad_id(), sp.eos_id(), sp.bos_id())
    if ids != (PAD_ID, EOS_ID, BOS_ID):
      raise ValueError(
          f"tokenizer has (pad, eos, bos) ids {ids}; bon_jax needs"
          f" {(PAD_ID, EOS_ID, BOS_ID)} (Gemma's convention)"
      )
    object.__setattr__(self, "_sp", sp)

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def bos_id(self) -> int:
    return BOS_ID

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without bos or eos."""
    return self._sp.encode(text, out_type=int)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of `ids` up to the first eos; pad and bos ids are dropped."""
    ids = np.asarray(ids, np.int64).ravel().tolist()
    if EOS_ID in ids:
      ids = ids[: ids.index(EOS_ID)]
    return self._sp.decode([i for i in ids if i not in (PAD_ID, BOS_ID)])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def save(self, path: str) -> None:
    """Writes the `.model` file."""
    with open(path, "wb") as f:
      f.write(self.model_proto)


def build_task_tokenizer(
    texts: Iterable[str], *, vocab_size: int, seed: int = 0
) -> Tokenizer:
  """Trains a small BPE SentencePiece model in memory, deterministically.

  Digits are split into single tokens, whitespace and characters are kept
  verbatim (identity normalisation, no dummy prefix), so `decode(encode(t))
  == t` for texts made of corpus characters. The trainer runs on one thread
  without sampling; `seed` only fixes the order the sentences are fed in.

  Raises:
    ValueError: if the texts cannot support `vocab_size` pieces.
  """
  texts = [t for t in texts if t]
  order = np.random.default_rng(seed).permutation(len(texts))
  out = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([texts[i] for i in order]),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        split_digits=True,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        bos_id=BOS_ID,
        unk_id=UNK_ID,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
  except RuntimeError as e:
    reason = str(e).splitlines()[-1].rsplit("] ", 1)[-1]
    raise ValueError(
        f"sentencepiece could not train a {vocab_size}-piece model on"
        f" {len(texts)} texts: {reason}"
    ) from None
  return Tokenizer(out.getvalue())


def load_tokenizer(path: str, *, field: str = "tokenizer.path") -> Tokenizer:
  """Loads a SentencePiece `.model` file (e.g. Gemma 2's tokenizer.model).

  Raises:
    FileNotFoundError: a one-line message naming what to download and the
      config field to set, when `path` does not exist.
    ValueError: if the file is not a SentencePiece model or its pad/eos/bos
      ids are not 0/1/2 (one line naming the file).
  """
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(
        f"tokenizer {path!r} not found: download the Gemma 2 tokenizer"
        " (tokenizer.model, e.g. from Kaggle google/gemma-2) and set"
        f" --config.{field}=/path/to/tokenizer.model"
    )
  with open(path, "rb") as f:
    proto = f.read()
  try:
    return Tokenizer(proto)
  except ValueError as e:
    raise ValueError(f"tokenizer {path!r}: {e}; set --config.{field} to a SentencePiece"
                     " .model file (e.g. Gemma 2's tokenizer.model)") from None


def rebuild_task_tokenizer() -> Tokenizer:
  """Retrains the embedded task's tokenizer from its pinned corpus (~3 s)."""
  return build_task_tokenizer(
      countdown.tokenizer_corpus(), vocab_size=TASK_VOCAB_SIZE, seed=0
  )


@functools.cache
def padded_tokenizer(base: Tokenizer, vocab_size: int) -> Tokenizer:
  """`base` with unused pieces appended up to `vocab_size` (ids of `base` kept).

  A stand-in for a large tokenizer where only its vocabulary size matters,
  e.g. ``padded_tokenizer(task_tokenizer(), 256128)`` for the Gemma 2
  tokenizer in end-to-end runs of the paper configs without the released
  files: it encodes text as `base` does, and the model gets Gemma's
  256128-row embedding.
  """
  proto = sentencepiece_model_pb2.ModelProto.FromString(base.model_proto)
  if vocab_size < len(proto.pieces):
    raise ValueError(f"vocab_size={vocab_size} is below the base tokenizer's {len(proto.pieces)}")
  for i in range(len(proto.pieces), vocab_size):
    piece = proto.pieces.add()
    piece.piece, piece.score = f"<unused{i}>", 0.0
    piece.type = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
  return Tokenizer(proto.SerializeToString())


def task_tokenizer() -> Tokenizer:
  """The embedded task's tokenizer: the shipped asset, else rebuilt.

  The asset is `rebuild_task_tokenizer()` saved; a test checks they agree.
  """
  if os.path.isfile(TASK_TOKENIZER_PATH):
    return load_tokenizer(TASK_TOKENIZER_PATH)
  return rebuild_task_tokenizer()
