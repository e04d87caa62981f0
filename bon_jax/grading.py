"""Answer extraction shared by every task: the last `\\boxed{...}` of a text."""

from __future__ import annotations

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def extract_boxed(text: str) -> str | None:
  """Returns the content of the last `\\boxed{...}` or `\\fbox{...}` in `text`.

  Braces nest: ``extract_boxed(r"so \\boxed{\\frac{1}{2}}") == r"\\frac{1}{2}"``.
  Returns None when there is no complete box (e.g. generation stopped inside).
  """
  start = max(text.rfind(cmd + "{") for cmd in _BOX_COMMANDS)
  while start >= 0:
    open_idx = text.index("{", start)
    depth = 0
    for i in range(open_idx, len(text)):
      if text[i] == "{":
        depth += 1
      elif text[i] == "}":
        depth -= 1
        if depth == 0:
          return text[open_idx + 1 : i]
    # Unclosed last box: fall back to the previous complete one.
    start = max(text.rfind(cmd + "{", 0, start) for cmd in _BOX_COMMANDS)
  return None
