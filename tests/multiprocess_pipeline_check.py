"""The whole pipeline as one of several processes (run by test_sharding.py).

  python tests/multiprocess_pipeline_check.py PROCESS_ID NUM_PROCESSES PORT WORKDIR

SFT -> learned verifier -> one BoN-aware stage (BoN-RL-V, selecting with that
verifier) -> evaluation of both policies -> comparison, on the micro preset,
over a (-1, 1, 1) mesh of every process's devices (XLA_FLAGS sets how many per
process). With NUM_PROCESSES > 1 the processes join through
`sharding.initialize_distributed` (gloo collectives on CPU) and share WORKDIR:
process 0 writes its files, all write the checkpoints together
(`bon_jax.multihost`). NUM_PROCESSES = 1 is the reference run. Process 0
prints the comparison table.
"""

import sys

import jax
import ml_collections

from bon_jax import pipeline
from bon_jax import sharding
import test_pipeline  # pylint: disable=g-bad-import-order  (this directory is on sys.path)


def config() -> ml_collections.ConfigDict:
  c = test_pipeline._pipeline_config()  # pylint: disable=protected-access
  c.algorithms = ("bon_rl_v",)
  c.eval.extra_temperatures = ()
  c.mesh.shape = (-1, 1, 1)
  return c


def main(process_id: int, num_processes: int, port: int, workdir: str) -> None:
  if num_processes > 1:
    assert sharding.initialize_distributed(ml_collections.ConfigDict({"distributed": {
        "coordinator_address": f"localhost:{port}", "num_processes": num_processes,
        "process_id": process_id}}))
  assert jax.process_count() == num_processes, jax.process_count()
  results = pipeline.train_and_evaluate(config(), workdir)
  assert sorted(results) == ["base", "bon_rl_v"], sorted(results)
  print(f"process {process_id}/{num_processes} on {jax.device_count()} devices: done", flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
