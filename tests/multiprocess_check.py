"""One BoN-RL step on a global (2, 2, 1) mesh, as one of several processes (run by test_sharding.py).

  python tests/multiprocess_check.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR

Each process sees its local CPU devices (XLA_FLAGS sets how many; 4 devices in
all) and joins the others through `sharding.initialize_distributed` (CPU
collectives: gloo). It runs `rl.rl_step` with the mesh: every process encodes
only its rows of the prompts, the sampler and the policy update run sharded,
the completions are gathered to every host for the rewards and BoN weights.
Then it writes the state with Orbax (one checkpoint, all processes
cooperating) and restores it onto a (1, 4, 1) mesh. Every process saves what
it gathered to OUT_DIR/process_<id>.npz; the test compares those files with
`rl_step(None)` in its own (single-device) process.
"""

import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from bon_jax import defaults
from bon_jax import models
from bon_jax import rl
from bon_jax import sharding
from bon_jax import tokenizer as tokenizer_lib
from bon_jax import trainer_lib
from bon_jax.tasks import countdown
from bon_jax.tasks import registry


def even_token_reward(problems, texts, tokens):
  """A dense toy reward (fraction of even token ids), so the update has a signal."""
  del problems, texts
  real = tokens != models.PAD_ID
  return ((tokens % 2 == 0) & real).sum(-1) / np.maximum(real.sum(-1), 1)


def rl_step(mesh):
  """One `rl.rl_step` of a micro policy on `mesh` (None: one device, unsharded)."""
  tok = tokenizer_lib.task_tokenizer()
  model = models.make_model(preset="micro", vocab_size=tok.vocab_size)
  cfg = defaults.rl_config()
  cfg.algorithm, cfg.N_prime, cfg.N, cfg.max_new_tokens = "rloo", 4, 4, 6
  cfg.learning_rate, cfg.kl_coef = 1e-3, 0.1
  # AdamW with eps raised from 1e-8 (see mesh_parity_check.py): near-zero gradients
  # would turn reduction-order noise into update differences of up to the learning rate.
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(cfg.learning_rate, eps=1e-5))
  update = rl.make_policy_update(model, optimizer, kl_coef=cfg.kl_coef, mesh=mesh)
  params = models.init_params(model, jax.random.key(0))  # The same on every process.
  state = trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.copy, params),
                           opt_state=optimizer.init(params))
  if mesh is not None:
    state = sharding.shard(state, mesh, sharding.state_specs(state, mesh))
    params = sharding.shard(params, mesh, sharding.param_specs(params, mesh))
  problems, _ = countdown.make_splits(seed=0, num_train=8, num_test=1)
  return rl.rl_step(
      state, params, problems[:4], model=model, update_fn=update, tokenizer=tok, task=registry.COUNTDOWN,
      cfg=cfg, rng=jax.random.key(1), reward_fn=even_token_reward, prompt_len=32, mesh=mesh)


def main(process_id: int, num_processes: int, port: int, out_dir: str) -> None:
  config = ml_collections.ConfigDict({"distributed": {
      "coordinator_address": f"localhost:{port}", "num_processes": num_processes,
      "process_id": process_id}})
  assert sharding.initialize_distributed(config)
  assert jax.process_count() == num_processes and jax.device_count() == 4, jax.devices()

  mesh = sharding.make_mesh((2, 2, 1))
  state, metrics = rl_step(mesh)
  emb = state.params["embedder"]["input_embedding"]
  assert emb.sharding.spec == sharding.param_specs(state.params, mesh)["embedder"]["input_embedding"]
  assert emb.sharding.spec != jax.sharding.PartitionSpec()
  # A process holds only the blocks of its own devices.
  assert len(emb.addressable_shards) == 4 // num_processes

  # One checkpoint written by all processes together, restored onto another mesh shape.
  ckpt = os.path.join(out_dir, "ckpt")
  with ocp.CheckpointManager(ckpt, item_handlers=ocp.StandardCheckpointHandler(),
                             options=ocp.CheckpointManagerOptions(create=True)) as mngr:
    mngr.save(1, args=ocp.args.StandardSave(state))
    mngr.wait_until_finished()
    other = sharding.make_mesh((1, 4, 1))
    target = sharding.shard(state, other, sharding.state_specs(state, other))
    restored = trainer_lib.restore_or_init(mngr, target)
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                      sharding.to_host(restored), sharding.to_host(state))
  assert all(jax.tree.leaves(same)), same
  assert restored.params["embedder"]["input_embedding"].sharding.mesh.shape["fsdp"] == 4

  flat = {jax.tree_util.keystr(p): v for p, v in
          jax.tree_util.tree_leaves_with_path(sharding.to_host(state.params))}
  np.savez(os.path.join(out_dir, f"process_{process_id}.npz"),
           metric_loss=metrics["loss"], metric_reward_mean=metrics["reward_mean"], **flat)
  print(f"process {process_id}/{num_processes}: loss {metrics['loss']:.6f}"
        f" reward {metrics['reward_mean']:.4f}", flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
