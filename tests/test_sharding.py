"""bon_jax.sharding: partition rules, and sharded programs on simulated CPU devices.

The rules are checked here on abstract Gemma 2 trees (no devices needed). The
programs need a known number of devices, which this pytest process (JAX
started with the host's devices: one, or 8 when CI sets XLA_FLAGS) cannot
choose, so they run in subprocesses with
`--xla_force_host_platform_device_count`: tests/mesh_parity_check.py (8
devices, meshes (8,1,1), (2,4,1), (2,2,2)), tests/multiprocess_check.py (one
RL step) and tests/multiprocess_pipeline_check.py (the whole pipeline), both
on 2 processes x 2 devices on localhost, gloo collectives.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from bon_jax import config_lib
from bon_jax import models
from bon_jax import sharding
from bon_jax import trainer_lib

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
# These subprocesses compile ~20 small programs and run each once: LLVM's
# optimisation passes would take most of their time (3x), for nothing.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
DIST_ENV = (sharding.ENV_COORDINATOR, sharding.ENV_NUM_PROCESSES, sharding.ENV_PROCESS_ID,
            "SLURM_JOB_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


def _env(num_devices: int) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices} {FAST_COMPILE}",
             PYTHONPATH=os.pathsep.join([REPO, env.get("PYTHONPATH", "")]))
  return env


def _axes(entry) -> tuple[str, ...]:
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


# ----------------------------------------------------------------------------
# Meshes and rules (no devices).


def test_resolve_mesh_shape_fills_the_free_axis_and_rejects_impossible_shapes():
  assert sharding.resolve_mesh_shape((-1, 2, 1), 8) == (4, 2, 1)
  assert sharding.resolve_mesh_shape((2, 2, 2), 8) == (2, 2, 2)
  for bad in [(3, -1, 1), (2, 2, 1), (-1, -1, 2), (0, 8, 1), (8, 1)]:
    with pytest.raises(config_lib.UserError, match="config.mesh.shape"):
      sharding.resolve_mesh_shape(bad, 8)


def test_abstract_mesh_needs_no_devices():
  mesh = sharding.abstract_mesh((1, 8, 1))
  assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  with pytest.raises(ValueError, match="3 positive sizes"):
    sharding.abstract_mesh((-1, 8, 1))


@pytest.mark.parametrize("preset", ["gemma2_2b", "gemma2_9b"])
def test_param_specs_put_fsdp_on_embed_dim_and_tensor_on_heads_hidden_vocab(preset):
  p = models.PRESETS[preset]
  abstract = models.abstract_params(models.make_model(preset=preset, dtype=jnp.bfloat16))
  specs = sharding.param_specs(abstract, (2, 2, 2))
  # What the tensor axis splits, by the module's rules, from the preset's own sizes.
  tensor_size = {"q_einsum": p.num_heads, "attn_vec_einsum": p.num_heads, "kv_einsum": p.num_kv_heads,
                 "gating_einsum": p.hidden_dim, "linear": p.hidden_dim, "input_embedding": p.vocab_size}
  seen = set()
  for (path, x), spec in zip(jax.tree_util.tree_leaves_with_path(abstract), jax.tree.leaves(specs)):
    names = [getattr(k, "key", str(k)) for k in path]
    entries = tuple(spec) + (None,) * (x.ndim - len(tuple(spec)))
    if x.ndim <= 1:
      assert spec == P(), (names, spec)
      continue
    kind = names[-2] if names[-1] == "w" else names[-1]
    dims = {a: d for d, e in enumerate(entries) for a in _axes(e)}
    assert set(dims) == {"fsdp", "tensor"}, (names, spec)
    assert x.shape[dims["fsdp"]] == p.embed_dim, (names, spec)
    assert x.shape[dims["tensor"]] == tensor_size[kind], (names, spec)
    seen.add(kind)
  assert seen == set(tensor_size)


def test_param_specs_only_use_axes_that_divide_the_dimension():
  abstract = models.abstract_params(models.make_model(preset="micro", vocab_size=512))
  specs = sharding.param_specs(abstract, (1, 1, 4))
  attn = specs["layer_0"]["attn"]
  assert attn["q_einsum"]["w"] == P("tensor")  # 4 heads split 4 ways
  assert "tensor" not in jax.tree.leaves(tuple(attn["kv_einsum"]["w"]))  # 2 kv heads stay whole
  # FSDP moves to the largest dimension it divides; size-1 axes are dropped.
  tree = {"mlp": {"linear": jax.ShapeDtypeStruct((16, 12), jnp.float32)}}
  assert sharding.param_specs(tree, (1, 8, 1))["mlp"]["linear"] == P("fsdp")
  assert sharding.param_specs(tree, (1, 4, 2))["mlp"]["linear"] == P("tensor", "fsdp")
  assert sharding.param_specs(tree, (8, 1, 1))["mlp"]["linear"] == P()
  for (_, x), spec in zip(jax.tree_util.tree_leaves_with_path(abstract), jax.tree.leaves(specs)):
    for size, entry in zip(x.shape, tuple(spec)):
      assert all(size % {"data": 1, "fsdp": 1, "tensor": 4}[a] == 0 for a in _axes(entry))


def test_lora_adapters_are_replicated_and_base_kernels_keep_their_specs():
  plain = models.abstract_params(models.make_model(preset="micro", vocab_size=512))
  lora = models.abstract_params(models.make_model(preset="micro", vocab_size=512, lora_rank=4))
  specs = sharding.param_specs(lora, (1, 2, 2))
  base = sharding.param_specs(plain, (1, 2, 2))
  adapters = 0
  for (path, _), spec in zip(jax.tree_util.tree_leaves_with_path(lora), jax.tree.leaves(specs)):
    names = [getattr(k, "key", str(k)) for k in path]
    if "lora" in names:
      adapters += 1
      assert spec == P(), names
    else:
      node = base
      for n in names:
        node = node[n]
      assert spec == node, names
  assert adapters > 0


def test_state_specs_give_adam_moments_their_parameters_specs():
  model = models.make_model(preset="micro", vocab_size=512)
  optimizer = trainer_lib.make_optimizer(ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=1, steps=10, weight_decay=0.01, grad_clip_norm=1.0)))

  def init():
    params = models.init_params(model, jax.random.key(0))
    return trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

  abstract = jax.eval_shape(init)
  specs = sharding.state_specs(abstract, (1, 2, 2))
  pspecs = sharding.param_specs(abstract.params, (1, 2, 2))
  assert specs.params == pspecs
  adam = specs.opt_state[1][0]
  assert adam.mu == pspecs and adam.nu == pspecs
  assert adam.count == P() and specs.step == P()
  assert any(s != P() for s in jax.tree.leaves(pspecs))


def test_per_device_bytes_counts_the_largest_block_of_every_leaf():
  tree = {"a": jax.ShapeDtypeStruct((16, 12), jnp.float32),
          "b": jax.ShapeDtypeStruct((10,), jnp.bfloat16),
          "c": jax.ShapeDtypeStruct((10, 3), jnp.float32)}
  specs = {"a": P("tensor", "fsdp"), "b": P(), "c": P(("data", "fsdp"))}
  # a: (16/2) x (12/4) float32 = 96; b: 10 x 2 = 20; c: ceil(10/8) x 3 x 4 = 24.
  assert sharding.per_device_bytes(tree, specs, (2, 4, 2)) == 96 + 20 + 24
  # Unsharded on one device: everything.
  assert sharding.per_device_bytes(tree, jax.tree.map(lambda _: P(), tree), (1, 1, 1)) == 16 * 12 * 4 + 20 + 120


def test_batch_specs_split_prompts_else_samples_else_replicate():
  assert sharding.batch_spec(3) == P(("data", "fsdp"), None, None)
  assert sharding.batch_spec_for((8, 3, 5), (2, 4, 1), groups=True) == P(("data", "fsdp"))
  assert sharding.batch_spec_for((2, 8, 5), (2, 4, 1), groups=True) == P(None, ("data", "fsdp"))
  assert sharding.batch_spec_for((2, 8, 5), (2, 4, 1)) == P()
  assert sharding.batch_spec_for((2, 3), (2, 2, 2), groups=True) == P()


def test_initialize_distributed_is_a_noop_alone_and_rejects_half_settings(monkeypatch):
  for k in DIST_ENV:
    monkeypatch.delenv(k, raising=False)
  assert sharding.initialize_distributed(None) is False
  cfg = ml_collections.ConfigDict({"distributed": {"coordinator_address": "", "num_processes": 0,
                                                   "process_id": -1}})
  assert sharding.initialize_distributed(cfg) is False
  cfg.distributed.coordinator_address = "localhost:1234"
  with pytest.raises(config_lib.UserError, match="process_id"):
    sharding.initialize_distributed(cfg)
  cfg.distributed.num_processes, cfg.distributed.process_id = 2, 2
  with pytest.raises(config_lib.UserError, match=r"process_id=2 must be in \[0, 2\)"):
    sharding.initialize_distributed(cfg)
  assert not jax.distributed.is_initialized()


def test_mesh_for_run_is_none_on_one_device_and_checks_the_shape(monkeypatch):
  # On this host's devices, however many there are (CI runs the suite on 1 and 8).
  n = jax.device_count()
  config = ml_collections.ConfigDict({"mesh": {"shape": (-1, 1, 1)}})
  mesh = sharding.mesh_for_run(config)
  if n == 1:
    assert mesh is None  # The unsharded code path.
  else:
    assert dict(mesh.shape) == {"data": n, "fsdp": 1, "tensor": 1}
  config.mesh.shape = (n + 1, 1, 1)
  with pytest.raises(config_lib.UserError, match=f"needs {n + 1} devices, but {n} are available"):
    sharding.mesh_for_run(config)
  # And as on a one-device host.
  one = jax.devices()[:1]
  monkeypatch.setattr(jax, "devices", lambda *a: one)
  config.mesh.shape = (-1, 1, 1)
  assert sharding.mesh_for_run(config) is None
  config.mesh.shape = (2, 1, 1)
  with pytest.raises(config_lib.UserError, match="needs 2 devices, but 1 are available"):
    sharding.mesh_for_run(config)


# ----------------------------------------------------------------------------
# Sharded programs (subprocesses).


def test_sharded_programs_match_one_device_on_8_cpu_devices(tmp_path):
  """Sampler, verifier, policy update and SFT step on (8,1,1), (2,4,1), (2,2,2);
  real shardings and per-device bytes; a checkpoint restored on other meshes."""
  proc = subprocess.run([sys.executable, os.path.join(TESTS, "mesh_parity_check.py"), str(tmp_path)],
                        env=_env(8), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
  assert ("mesh (2, 2, 2): sampler, verifier scoring and training, policy update, SFT step match one device"
          in proc.stdout)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(script: str, args, num_devices: int) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, os.path.join(TESTS, script), *map(str, args)], env=_env(num_devices),
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen], timeout: int, meanwhile=lambda: None):
  """Runs `meanwhile` here, then waits for every process; (its result, their outputs); each must exit 0."""
  try:
    result = meanwhile()
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-5000:]
  return result, outs


def test_two_processes_match_one_process(tmp_path):
  """rl_step on a (2,2,1) mesh over 2 processes x 2 CPU devices equals it unsharded here."""
  import multiprocess_check  # pylint: disable=g-import-not-at-top  (tests/ is on sys.path)

  port = _free_port()
  procs = [_start("multiprocess_check.py", (i, 2, port, tmp_path), 2) for i in range(2)]
  # Meanwhile, the reference.
  (state, metrics), _ = _finish(procs, 300, meanwhile=lambda: multiprocess_check.rl_step(None))
  want = {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
  for i in range(2):
    got = np.load(os.path.join(tmp_path, f"process_{i}.npz"))
    np.testing.assert_allclose(got["metric_loss"], metrics["loss"], atol=1e-5)
    np.testing.assert_allclose(got["metric_reward_mean"], metrics["reward_mean"], atol=0)
    assert set(got.files) - {"metric_loss", "metric_reward_mean"} == set(want)
    for name, value in want.items():
      np.testing.assert_allclose(got[name], value, atol=1e-5, err_msg=name)


def _files(root) -> dict[str, int]:
  """{relative path: count} of the files under `root`: an Orbax checkpoint (its files differ with the
  number of processes) as one entry, TensorBoard event files by directory."""
  out = {}
  for d, dirs, names in os.walk(root):
    rel_dir = os.path.relpath(d, root)
    if "_CHECKPOINT_METADATA" in names:
      out[rel_dir + "/"] = 1
      dirs.clear()
      continue
    for name in names:
      key = os.path.join(rel_dir, "events.out.tfevents.*" if "tfevents" in name else name)
      out[key] = out.get(key, 0) + 1
  return out


def test_two_processes_run_the_whole_pipeline_like_one(tmp_path):
  """SFT -> verifier -> BoN-RL-V -> evaluation over 2 processes x 2 CPU devices, sharing one workdir:
  the same evaluations and comparison as one process on 4 devices, and the same files (one writer)."""
  script = "multiprocess_pipeline_check.py"
  two, one = tmp_path / "two", tmp_path / "one"
  port = _free_port()
  procs = [_start(script, (i, 2, port, two), 2) for i in range(2)] + [_start(script, (0, 1, 0, one), 4)]
  _, outs = _finish(procs, 600)
  assert "process 1/2 on 4 devices: done" in outs[1]
  for rel in ("compare.json", "eval/step_2.json", "rl/bon_rl_v/eval/step_2.json", "verifier/report.json"):
    with open(two / rel) as f, open(one / rel) as g:
      got, want = json.load(f), json.load(g)
    if rel == "verifier/report.json":  # Wall time differs; the loss by the reduction order (gloo) only.
      got["report"].pop("seconds"), want["report"].pop("seconds")
      np.testing.assert_allclose(got["report"].pop("final_loss"), want["report"].pop("final_loss"), rtol=1e-6)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), rel  # NaN == NaN here.
  # Process 1 wrote no file of its own: no second runs.jsonl line, metrics line or evaluation.
  assert _files(two) == _files(one)
  for rel in ("runs.jsonl", "metrics.jsonl", "rl/bon_rl_v/metrics.jsonl", "verifier/train/metrics.jsonl"):
    with open(two / rel) as f, open(one / rel) as g:
      assert len(f.readlines()) == len(g.readlines()), rel


def test_jit_sharded_lowers_abstract_arguments_without_running():
  mesh = sharding.make_mesh((-1, 1, 1))  # This host's devices, however many.
  fn = sharding.jit_sharded(lambda p, b: (jax.tree.map(lambda w: 2 * w, p), jnp.sum(b)), mesh,
                            ("params", "batch"), ("params", "replicated"))
  n = mesh.size
  params = {"w": jax.ShapeDtypeStruct((4, 16), jnp.float32)}
  batch = jax.ShapeDtypeStruct((8 * n, 3), jnp.float32)
  compiled = fn.lower(params, batch).compile()
  _, in_batch = compiled.input_shardings[0]
  assert in_batch.spec == sharding.batch_spec_for(batch.shape, mesh)
  assert compiled.memory_analysis().argument_size_in_bytes == (4 * 16 + 8 * 3) * 4  # Per device.
  out = fn({"w": jnp.ones((4, 16))}, jnp.ones((8 * n, 3)))  # And the same cache entry runs.
  assert float(out[1]) == 24 * n and float(out[0]["w"][0, 0]) == 2.0
