"""Released checkpoints: the random-checkpoint writer, sharded restore, bad checkpoints.

`models.write_random_checkpoint` writes the released Orbax layout, which
`gm.ckpts.load_params` reads; `models.load_params` restores it in the
configured dtype into a mesh's shardings (checked on 8 simulated devices in a
subprocess, tests/checkpoint_restore_check.py). A checkpoint of another
preset or vocabulary, a truncated checkpoint and a mesh the devices cannot
form are one `error:` line from `python -m bon_jax.main`, nothing written.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gemma import gm

from bon_jax import models

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
VOCAB = 128  # The task tokenizer's (configs/demo.py).


@pytest.fixture(scope="module")
def micro_ckpt(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("ckpt") / "micro")
  n = models.write_random_checkpoint(path, preset="micro", vocab_size=VOCAB, dtype=jnp.float32, seed=5)
  return path, n


def test_random_checkpoint_is_what_gemma_loads(micro_ckpt):
  path, n = micro_ckpt
  abstract = models.abstract_params(models.make_model(preset="micro", vocab_size=VOCAB))
  assert n == models.num_params(abstract)
  raw = gm.ckpts.load_params(path)  # The released-checkpoint reader itself.
  assert jax.tree.structure(raw) == jax.tree.structure(abstract)
  for x, a in zip(jax.tree.leaves(raw), jax.tree.leaves(abstract)):
    assert x.shape == a.shape and x.dtype == jnp.float32
    x = np.asarray(x)
    if x.ndim >= 2:  # Random kernels and embeddings of scale 1 / sqrt(D = 64); zero norm scales.
      assert 0.1 < x.std() < 0.15 and len(np.unique(x)) > x.size // 2
    else:
      assert not x.any()
  # Ours: the same values, cast to the configured dtype as they are read.
  got = models.load_params(path, preset="micro", vocab_size=VOCAB, dtype="bfloat16")
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(raw)):
    assert x.dtype == jnp.bfloat16 and list(x.devices()) == jax.devices()[:1]
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y.astype(jnp.bfloat16)))
  with pytest.raises(FileExistsError):
    models.write_random_checkpoint(path, preset="micro", vocab_size=VOCAB)


def test_released_layout_is_gemmas_flat_layout():
  flat = models.released_layout(models.abstract_params(models.make_model(preset="gemma2_2b")))
  assert flat["transformer/embedder"]["input_embedding"].shape == (256128, 2304)
  assert flat["transformer/layer_25/mlp/linear"]["w"].shape == (9216, 2304)
  assert flat["transformer/layer_0/attn/q_einsum"]["w"].shape == (8, 2304, 256)
  assert set(flat["transformer/layer_0/pre_attention_norm"]) == {"scale"}
  assert len(flat) == 1 + 1 + 26 * 9  # Embedder, final norm; per layer 3 attention, 2 MLP kernels, 4 norms.


def test_bad_checkpoints_are_one_line_errors(micro_ckpt, tmp_path):
  path, _ = micro_ckpt
  with pytest.raises(models.CheckpointError, match="holds a micro-shaped model .* not the small preset") as e:
    models.load_params(path, preset="small", vocab_size=VOCAB)
  assert "\n" not in str(e.value)
  with pytest.raises(models.CheckpointError, match="128-token vocabulary but the tokenizer has 256") as e:
    models.load_params(path, preset="micro", vocab_size=256)
  assert "\n" not in str(e.value)
  # Truncated: one array's data file cut short.
  cut = str(tmp_path / "cut")
  models.write_random_checkpoint(cut, preset="micro", vocab_size=VOCAB, dtype=jnp.float32)
  data = os.path.join(cut, "ocdbt.process_0", "d")
  biggest = max((os.path.join(data, f) for f in os.listdir(data)), key=os.path.getsize)
  os.truncate(biggest, 100)
  with pytest.raises(models.CheckpointError, match="cannot be restored, it may be truncated") as e:
    models.load_params(cut, preset="micro", vocab_size=VOCAB)
  assert "\n" not in str(e.value)
  with pytest.raises(models.CheckpointError, match="is unreadable") as e:
    models.load_params(str(tmp_path), preset="micro", vocab_size=VOCAB)  # Not a checkpoint.
  assert "\n" not in str(e.value)


def _main(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", "bon_jax.main", "--config=configs/demo.py", *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


def test_cli_refuses_bad_checkpoints_and_meshes_writing_nothing(micro_ckpt, tmp_path):
  path, _ = micro_ckpt
  wd = tmp_path / "wd"
  line = _main(f"--workdir={wd}", "--config.model.preset=small", f"--config.model.ckpt_path={path}")
  assert "holds a micro-shaped model" in line and "--config.model.preset" in line
  assert not os.path.exists(wd / "checkpoints") and not os.path.exists(wd / "rl")
  n = jax.device_count()  # Whatever this host has: n + 1 devices it has not.
  line = _main(f"--workdir={tmp_path / 'wd2'}", f"--config.mesh.shape=({n + 1}, 1, 1)")
  assert f"needs {n + 1} devices, but {n} are available" in line
  assert not os.path.exists(tmp_path / "wd2")


def test_sharded_restore_on_8_cpu_devices(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=os.pathsep.join([REPO, TESTS, env.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, os.path.join(TESTS, "checkpoint_restore_check.py"), str(tmp_path)],
                        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
  for shape in ("(1, 8, 1)", "(2, 2, 2)"):
    assert f"mesh {shape}: restored sharded in bfloat16" in proc.stdout, proc.stdout
