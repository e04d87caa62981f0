"""Released-checkpoint restore on 8 simulated CPU devices (run by test_checkpoints.py).

Run as a script in its own process (XLA_FLAGS must give 8 host devices before
JAX starts). Writes a random `tiny` checkpoint in the released layout,
restores it onto meshes (1, 8, 1) and (2, 2, 2) and checks that
every array lands in `sharding.param_specs`' sharding, each device holding
only its block, with the values of the one-device restore, cast to the
requested dtype. Prints one line per mesh; an AssertionError on any mismatch.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/checkpoint_restore_check.py /tmp/dir
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from bon_jax import models
from bon_jax import sharding

from mesh_parity_check import check_sharded, device_bytes  # pylint: disable=g-bad-import-order


def main(out_dir: str) -> None:
  assert jax.device_count() == 8, jax.devices()
  path = os.path.join(out_dir, "tiny")
  models.write_random_checkpoint(path, preset="tiny", vocab_size=512, dtype=jnp.float32, seed=3)
  one = models.load_params(path, preset="tiny", vocab_size=512)  # First device, stored dtype.
  assert all(x.dtype == jnp.float32 and len(x.devices()) == 1 for x in jax.tree.leaves(one))
  whole = sum(x.nbytes for x in jax.tree.leaves(one))
  for shape in ((1, 8, 1), (2, 2, 2)):
    mesh = sharding.make_mesh(shape)
    got = models.load_params(path, preset="tiny", vocab_size=512, dtype="bfloat16", mesh=mesh)
    specs = sharding.param_specs(got, mesh)
    check_sharded(got, specs, mesh, f"mesh {shape}: ")
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(one)):
      assert x.dtype == jnp.bfloat16, x.dtype
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y.astype(jnp.bfloat16)))
    held = device_bytes(got)
    assert held == sharding.per_device_bytes(got, specs, mesh), (held, specs)
    assert held < whole / 2 / 2, (held, whole)  # bf16 halves; the fsdp split at least halves again.
    print(f"mesh {shape}: restored sharded in bfloat16, {held} of {whole // 2} bytes per device,"
          " equal to the one-device restore")


if __name__ == "__main__":
  main(sys.argv[1])
