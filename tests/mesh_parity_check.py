"""Sharded vs single-device parity on 8 simulated CPU devices (run by test_sharding.py).

Run as a script in its own process: XLA_FLAGS must give 8 host devices before
JAX starts, which the pytest process (1 device) cannot do. Exits non-zero
(an AssertionError with the failing check) on any mismatch; prints one line
per check.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/mesh_parity_check.py /tmp/ckpt
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import PartitionSpec as P

from bon_jax import defaults
from bon_jax import evaluate
from bon_jax import models
from bon_jax import pipeline
from bon_jax import rl
from bon_jax import sampling
from bon_jax import sharding
from bon_jax import train
from bon_jax import trainer_lib
from bon_jax import tokenizer as tokenizer_lib
from bon_jax import verifier
from bon_jax.tasks import countdown
from bon_jax.tasks import registry
import test_pipeline  # pylint: disable=g-bad-import-order  (this directory is on sys.path)

MESHES = ((8, 1, 1), (2, 4, 1), (2, 2, 2))
B, N, T, L = 4, 8, 6, 12  # prompts, samples per prompt, new tokens, sequence length


def close(a, b, atol, what):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    err = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
    assert x.shape == y.shape and err <= atol, f"{what}{jax.tree_util.keystr(path)}: max |diff| {err} > {atol}"


def check_sharded(tree, specs, mesh, what):
  """Every leaf carries the spec's NamedSharding and holds the right block per device."""
  for (path, x), spec in zip(jax.tree_util.tree_leaves_with_path(tree),
                             jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))):
    name = what + jax.tree_util.keystr(path)
    assert x.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, spec), x.ndim), (
        f"{name}: sharding {x.sharding} != {spec}")
    want = list(x.shape)
    for dim, entry in enumerate(tuple(spec)):
      for axis in () if entry is None else (entry,) if isinstance(entry, str) else entry:
        want[dim] //= mesh.shape[axis]
    for shard in x.addressable_shards:
      assert shard.data.shape == tuple(want), f"{name}: shard {shard.data.shape} != {tuple(want)}"


def device_bytes(tree) -> int:
  """The most bytes of `tree` any device really holds."""
  per = {}
  for x in jax.tree.leaves(tree):
    for shard in x.addressable_shards:
      per[shard.device] = per.get(shard.device, 0) + shard.data.nbytes
  return max(per.values())


def main(ckpt_dir: str) -> None:
  t_start = time.perf_counter()
  assert jax.device_count() == 8, jax.devices()
  model = models.make_model(preset="micro", vocab_size=512)
  params = models.init_params(model, jax.random.key(0))
  # trainer_lib.make_optimizer's AdamW, with eps raised from 1e-8: at eps 1e-8 Adam's first step
  # g / (|g| + eps) turns float-noise differences of near-zero gradients (~1e-9, from the
  # sharded reduction order) into update differences of up to the learning rate.
  optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adamw(1e-3, eps=1e-5, weight_decay=0.01))
  host = lambda tree: jax.tree.map(np.asarray, jax.device_get(tree))
  params = host(params)
  state = host(trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=optimizer.init(params)))
  vparams = host(verifier.init_verifier(model, jax.random.key(3), backbone=params))

  rng = np.random.default_rng(0)
  prompts = rng.integers(3, 512, (B, 5)).astype(np.int32)
  prompts[1, 3:] = 0  # Prompts of different lengths in one batch.
  # Eight prompts: their prefill is split over the batch axes of every mesh (4 only on (2, 2, 2)).
  prompts8 = rng.integers(3, 512, (8, 7)).astype(np.int32)
  prompts8[2, 4:] = 0
  prompts8[5, 2:] = 0
  tokens = rng.integers(3, 512, (B, 2, L)).astype(np.int32)
  tokens[:, :, 0] = models.BOS_ID
  tokens[0, 1, 9:] = 0
  cmask = np.zeros((B, 2, L - 1), np.float32)
  cmask[:, :, 4:] = (tokens[:, :, 5:] != 0)
  pg_batch = {"tokens": tokens, "completion_mask": cmask,
              "weights": rng.normal(size=(B, 2)).astype(np.float32),
              "sample_mask": np.ones((B, 2), np.float32)}
  sft_tokens = tokens.reshape(2 * B, L)
  sft_batch = {"tokens": sft_tokens, "loss_mask": (sft_tokens[:, 1:] != 0).astype(np.float32)}
  score_tokens = rng.integers(3, 512, (B, N, L)).astype(np.int32)
  score_tokens[:, :, 0] = models.BOS_ID
  score_tokens[1, 2, 7:] = 0  # A shorter sequence: pooling reads its last real token.
  v_batch = {"tokens": score_tokens, "labels": (rng.random((B, N)) < 0.5).astype(np.float32)}
  v_state = host(trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=vparams,
                                        opt_state=optimizer.init(vparams)))

  def run_all(mesh):
    upd = rl.make_policy_update(model, optimizer, kl_coef=0.1, entropy_coef=0.01, mesh=mesh)
    sft = train.make_sft_step(model, optimizer, mesh=mesh)
    if mesh is None:
      st = jax.tree.map(jnp.asarray, state)
      ref = params
    else:
      st = sharding.shard(state, mesh, sharding.state_specs(state, mesh))
      ref = sharding.shard(params, mesh, sharding.param_specs(params, mesh))
    t = time.perf_counter()
    samples = sampling.sample(model, st.params, prompts, jax.random.key(1), num_samples=N,
                              max_new_tokens=T, temperature=1.0, mesh=mesh)
    samples8 = sampling.sample(model, st.params, prompts8, jax.random.key(2), num_samples=2,
                               max_new_tokens=T, temperature=1.0, mesh=mesh)
    jax.block_until_ready((samples, samples8))
    t1 = time.perf_counter()
    logits = jax.block_until_ready(verifier.score(model, vparams, score_tokens, mesh=mesh))
    t2 = time.perf_counter()
    pg_state, pg_metrics = jax.block_until_ready(upd(st, ref, pg_batch))
    t3 = time.perf_counter()
    st2 = (jax.tree.map(jnp.asarray, state) if mesh is None
           else sharding.shard(state, mesh, sharding.state_specs(state, mesh)))
    sft_state, _ = jax.block_until_ready(sft(st2, sft_batch))
    t4 = time.perf_counter()
    # The verifier stage's training step (BCE + within-prompt ranking) and batched scoring.
    vstep = verifier.make_verifier_step(model, optimizer, rank_weight=0.5, mesh=mesh)
    vst = (jax.tree.map(jnp.asarray, v_state) if mesh is None
           else sharding.shard(v_state, mesh, sharding.state_specs(v_state, mesh)))
    v_trained, v_metrics = jax.block_until_ready(vstep(vst, v_batch))
    v_scores = verifier.score_batched(model, v_trained.params, score_tokens, batch_size=16, mesh=mesh)
    # Gradient accumulation over microbatches of 2 groups: the same step.
    vstep_mb = verifier.make_verifier_step(model, optimizer, rank_weight=0.5, mesh=mesh, microbatch_groups=2)
    vst = (jax.tree.map(jnp.asarray, v_state) if mesh is None
           else sharding.shard(v_state, mesh, sharding.state_specs(v_state, mesh)))
    v_mb, _ = jax.block_until_ready(vstep_mb(vst, v_batch))
    close(v_mb.params, v_trained.params, 1e-5, f"{mesh and mesh.devices.shape} microbatched verifier step")
    print(f"  sample {t1 - t:.1f}s score {t2 - t1:.1f}s update {t3 - t2:.1f}s sft {t4 - t3:.1f}s"
          f" verifier step+scoring {time.perf_counter() - t4:.1f}s")
    return (samples, samples8), logits, pg_state, pg_metrics, sft_state, (v_trained, v_metrics, v_scores)

  t0 = time.perf_counter()
  ref = run_all(None)
  print(f"single device: {time.perf_counter() - t0:.1f}s", flush=True)

  for shape in MESHES:
    t0 = time.perf_counter()
    mesh = sharding.make_mesh(shape)
    samples, logits, pg_state, pg_metrics, sft_state, (v_trained, v_metrics, v_scores) = run_all(mesh)
    r_samples, r_logits, r_pg, r_metrics, r_sft, (r_vtrained, r_vmetrics, r_vscores) = ref
    (samples, samples8), (r_samples, r_samples8) = samples, r_samples
    for got, want, what in ((samples, r_samples, "4 prompts"), (samples8, r_samples8, "8 prompts")):
      np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens), f"{shape} {what} tokens")
      np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(want.lengths))
      close(got.logprobs, want.logprobs, 1e-5, f"{shape} {what} logprobs")
      close(got.logprobs_t1, want.logprobs_t1, 1e-5, f"{shape} {what} logprobs_t1")
    assert samples.tokens.sharding.mesh == mesh
    close(logits, r_logits, 1e-5, f"{shape} verifier logits")
    close(pg_state.params, r_pg.params, 1e-5, f"{shape} policy update params")
    close(pg_state.opt_state, r_pg.opt_state, 1e-5, f"{shape} policy update opt_state")
    close(pg_metrics["loss"], r_metrics["loss"], 1e-5, f"{shape} policy loss")
    close(sft_state.params, r_sft.params, 1e-5, f"{shape} sft params")
    close(v_trained.params, r_vtrained.params, 1e-5, f"{shape} verifier step params")
    close(v_metrics["loss"], r_vmetrics["loss"], 1e-5, f"{shape} verifier loss")
    close(v_scores, r_vscores, 1e-5, f"{shape} verifier batched scores")
    check_sharded(v_trained, sharding.state_specs(v_trained, mesh), mesh, f"{shape} verifier state")
    # The updated states stay sharded by the rules, and the rules really shard.
    specs = sharding.state_specs(pg_state, mesh)
    check_sharded(pg_state, specs, mesh, f"{shape} policy state")
    check_sharded(sft_state, specs, mesh, f"{shape} sft state")
    emb = pg_state.params["embedder"]["input_embedding"]
    want_rows = 512 // shape[2]
    want_cols = 64 // shape[1]
    assert emb.addressable_shards[0].data.shape == (want_rows, want_cols), emb.sharding
    assert device_bytes(pg_state) == sharding.per_device_bytes(pg_state, specs, shape), (
        device_bytes(pg_state), sharding.per_device_bytes(pg_state, specs, shape))
    print(f"mesh {shape}: sampler, verifier scoring and training, policy update, SFT step match one device;"
          f" {device_bytes(pg_state)} bytes of state per device"
          f" ({time.perf_counter() - t0:.1f}s)", flush=True)

  # The pipeline's evaluation and verifier data sample on the run's mesh: the same graded samples.
  t0 = time.perf_counter()
  tok = tokenizer_lib.task_tokenizer()
  task_model = models.make_model(preset="micro", vocab_size=tok.vocab_size)
  task_params = host(models.init_params(task_model, jax.random.key(5)))
  _, problems = countdown.make_splits(seed=0, num_train=4, num_test=6)  # Two batches, the last one padded.
  eval_cfg = defaults.base_config().eval
  eval_cfg.update(dict(num_samples=4, max_new_tokens=6, prompts_per_batch=4))

  def graded_on(mesh):
    p = task_params if mesh is None else sharding.shard(task_params, mesh, sharding.param_specs(task_params, mesh))
    graded = evaluate.sample_and_grade(model=task_model, params=p, tokenizer=tok, problems=problems,
                                       task=registry.COUNTDOWN, cfg=eval_cfg, rng=jax.random.key(6),
                                       keep_texts=True, mesh=mesh)
    data = verifier.make_verifier_data(task_model, p, tokenizer=tok, problems=problems, task=registry.COUNTDOWN,
                                       num_samples=4, max_new_tokens=6, rng=jax.random.key(7),
                                       prompts_per_batch=4, mesh=mesh)
    return graded, data

  ref_graded, ref_data = graded_on(None)
  for shape in ((8, 1, 1), (2, 2, 2)):
    graded, data = graded_on(sharding.make_mesh(shape))
    assert graded["texts"] == ref_graded["texts"], f"{shape} evaluation samples"
    for k in ("correct", "answer_id", "length"):
      np.testing.assert_array_equal(graded[k], ref_graded[k], f"{shape} evaluation {k}")
    close(graded["mean_logprob"], ref_graded["mean_logprob"], 1e-5, f"{shape} evaluation mean_logprob")
    for k in ref_data:
      np.testing.assert_array_equal(data[k], ref_data[k], f"{shape} verifier data {k}")
  print(f"evaluation and verifier data on (8, 1, 1), (2, 2, 2): the same graded samples as one device"
        f" ({time.perf_counter() - t0:.1f}s)", flush=True)

  # bfloat16 LoRA adapters sharded like a released checkpoint's weights fold into them (the
  # sampler's and the verifier's view of a LoRA policy) as on one device, in float32.
  t0 = time.perf_counter()
  lora_model = models.make_model(preset="micro", vocab_size=64, lora_rank=4, dtype=jnp.bfloat16)
  lora_params = models.add_lora(lora_model, host(models.init_params(models.base_model(lora_model),
                                                                    jax.random.key(8))), jax.random.key(9))
  lora_params = jax.tree.map(lambda x: x + jnp.asarray(0.1, x.dtype), lora_params)  # B != 0: adapters matter.
  merge = jax.jit(models.merge_lora, static_argnums=0)
  ref_merged = merge(lora_model, lora_params)
  for shape in ((1, 8, 1), (2, 2, 2)):
    mesh = sharding.make_mesh(shape)
    merged = merge(lora_model, sharding.shard(lora_params, mesh, sharding.param_specs(lora_params, mesh)))
    close(jax.tree.map(lambda x: x.astype(jnp.float32), merged),
          jax.tree.map(lambda x: x.astype(jnp.float32), ref_merged), 0.0, f"{shape} bf16 LoRA merge")
  print(f"bfloat16 LoRA merge on (1, 8, 1), (2, 2, 2): equal to one device ({time.perf_counter() - t0:.1f}s)",
        flush=True)

  # A checkpoint written on one mesh restores onto others (Orbax reshards).
  t0 = time.perf_counter()
  src = sharding.make_mesh((2, 2, 2))
  saved = sharding.shard(state, src, sharding.state_specs(state, src))
  saved = saved.replace(params=r_pg.params)  # Non-initial values.
  saved = sharding.shard(saved, src, sharding.state_specs(saved, src))
  with ocp.CheckpointManager(os.path.join(ckpt_dir, "ckpt"), item_handlers=ocp.StandardCheckpointHandler(),
                             options=ocp.CheckpointManagerOptions(create=True)) as mngr:
    mngr.save(1, args=ocp.args.StandardSave(saved))
    mngr.wait_until_finished()
    for shape in ((8, 1, 1), (1, 2, 4)):
      mesh = sharding.make_mesh(shape)
      target = sharding.shard(state, mesh, sharding.state_specs(state, mesh))
      restored = trainer_lib.restore_or_init(mngr, target)
      close(restored, saved, 0.0, f"restore on {shape}")
      check_sharded(restored, sharding.state_specs(restored, mesh), mesh, f"restored on {shape}")
  print(f"checkpoint (2, 2, 2) -> (8, 1, 1), (1, 2, 4): equal values, target shardings"
        f" ({time.perf_counter() - t0:.1f}s)")
  # The whole job on the 8-device mesh: SFT, the verifier, RL stages and every evaluation run sharded
  # (each piece matches one device above; this checks they are wired to the mesh end to end).
  t0 = time.perf_counter()
  config = test_pipeline._pipeline_config()  # pylint: disable=protected-access
  config.mesh.shape = (-1, 1, 1)
  results = pipeline.train_and_evaluate(config, os.path.join(ckpt_dir, "pipeline"))
  assert sorted(results) == sorted(["base", *config.algorithms]), sorted(results)
  for name, r in results.items():
    assert r["verifier"] == "learned" and r["overall"]["num_prompts"] == config.eval.num_prompts, name
  print(f"pipeline on mesh (8, 1, 1): SFT, verifier, {len(config.algorithms)} RL stages and"
        f" {len(results)} evaluations ({time.perf_counter() - t0:.1f}s)")
  print(f"total {time.perf_counter() - t_start:.1f}s")


if __name__ == "__main__":
  main(sys.argv[1])
