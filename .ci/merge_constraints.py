"""Writes constraints.txt from one `pip freeze` per Python line.

  python .ci/merge_constraints.py 3.11:freeze311.txt 3.12:freeze313.txt > constraints.txt

Each argument is `<lowest python>:<freeze file>`, in increasing order; a line
covers Pythons from its version up to the next one. A package pinned alike on
every line gets one plain pin, the others one pin per line with an environment
marker, so `pip install -c constraints.txt ...` is unchanged on every Python.
"""

import re
import sys

HEADER = """\
# Exact versions of a working CPU install on each supported Python line, used
# by the README and CI as pip constraints (`pip install -c constraints.txt ...`):
# resolution is then instant and reproducible. Python 3.10/3.11 get the gemma
# 3.3 line (jax 0.7), Python 3.12+ the gemma 4 line (current jax); the markers
# pick the line. Regenerate after changing setup.py: `pip freeze` in a fresh
# install on 3.11 and on 3.13, then
#   python .ci/merge_constraints.py 3.11:freeze311.txt 3.12:freeze313.txt > constraints.txt
"""
# Installer tooling: pinned by `pip install -U pip`, not by us.
SKIP = {"pip", "setuptools", "wheel", "bon-jax"}


def _read(path):
  pins = {}
  for line in open(path):
    m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
    if m:
      name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
      if name not in SKIP:
        pins[name] = (m.group(1), m.group(2))
  return pins


def main(args):
  lines = []
  for i, arg in enumerate(args):
    lo, path = arg.split(":", 1)
    hi = args[i + 1].split(":", 1)[0] if i + 1 < len(args) else None
    lines.append((lo, hi, _read(path)))
  print(HEADER)
  for name in sorted(set().union(*(pins for _, _, pins in lines))):
    versions = {pins[name][1] if name in pins else None for _, _, pins in lines}
    if len(versions) == 1:
      spelled, version = next(pins[name] for _, _, pins in lines)
      print(f"{spelled}=={version}")
      continue
    for lo, hi, pins in lines:
      if name not in pins:
        continue
      spelled, version = pins[name]
      marker = []
      if lo != lines[0][0]:
        marker.append(f'python_version >= "{lo}"')
      if hi:
        marker.append(f'python_version < "{hi}"')
      print(f"{spelled}=={version}; {' and '.join(marker)}")


if __name__ == "__main__":
  main(sys.argv[1:])
