"""One writer, agreed decisions: the workdir rules of a multi-process run.

On a pod every process runs the same program over one shared workdir (shared
storage, as Orbax's checkpoints need). Two rules keep that safe:

* One writer. Files — configs, metrics, datasets, evaluations, tables — are
  written by process 0 only (`is_writer`). Orbax checkpoints are the
  exception: every process takes part in saving them.
* Check, then write, in order. A block that inspects the workdir and may
  write to it (is this a resumed run? is the dataset prepared?) runs on
  process 0 first and on the others after it (`writer_first`), so no process
  reads a file while another writes it, and every process takes the same
  branch: none skips a collective the others run.

With one process every function here is free: `is_writer` is True and the
barriers do nothing.

Example::

  with multihost.writer_first("prepare workdir"):
    config_lib.prepare_workdir(config, workdir)  # Checks on every process, writes on 0.
  if multihost.is_writer():
    write_report(results, out_dir)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
from jax.experimental import multihost_utils


def is_writer() -> bool:
  """Whether this process writes the workdir's files (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (nothing on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def writer_first(name: str) -> Iterator[None]:
  """Runs the block on process 0, then on every other process.

  Also when process 0's block raises: the others then run it on the same
  workdir (and raise the same one-line error, e.g. a refused config).
  """
  if jax.process_count() == 1:
    yield
    return
  if not is_writer():
    barrier(name)
  try:
    yield
  finally:
    if is_writer():
      barrier(name)
