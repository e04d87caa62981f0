"""Pieces shared by every experiment config.

Each experiment is one file in `configs/` whose `get_config()` returns a
`ConfigDict`, readable top to bottom; this module only holds the defaults they
start from. Override any field from the command line, e.g.
`--config.train.steps=200`.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Defaults for a single SFT + evaluation run; experiments override them."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Problems. `countdown` is the embedded verifiable-math task.
  c.task = ml_collections.ConfigDict()
  c.task.name = "countdown"
  c.task.seed = 0
  c.task.num_train = 5000
  c.task.num_test = 256
  # Countdown difficulty (bon_jax.tasks.countdown.make_splits): puzzle sizes,
  # target range, and a target's draw weight num_solutions ** target_weighting
  # (0: every reachable target alike; > 0: more puzzles with many answers).
  c.task.num_digits = (3, 4, 5)
  c.task.target_range = (10, 99)
  c.task.target_weighting = 0.0

  # `task`: the embedded task's sentencepiece model (shipped in the package);
  # `sentencepiece`: a .model file at `tokenizer.path` (e.g. Gemma 2's).
  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.kind = "task"
  c.tokenizer.path = ""

  # The policy: a gemma `Transformer` preset (see bon_jax/models.py).
  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"
  c.model.dtype = "float32"
  c.model.ckpt_path = ""  # Orbax params to start from; "" = random init.

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 64
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 50
  c.train.weight_decay = 0.01
  c.train.grad_clip_norm = 1.0
  c.train.max_len = 0  # Tokens per SFT sequence; 0 = longest in the data.
  c.train.log_every = 25
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 3

  # Evaluation on the test split: n samples per prompt, curves for k = 1, 2, 4 ... n.
  c.eval = ml_collections.ConfigDict()
  c.eval.num_prompts = 256
  c.eval.num_samples = 32
  c.eval.temperature = 1.0
  c.eval.top_k = 0  # 0 = off.
  c.eval.top_p = 1.0  # 1.0 = off.
  c.eval.max_new_tokens = 32
  c.eval.prompts_per_batch = 32

  # The device mesh (bon_jax/sharding.py): sizes of the (data, fsdp, tensor)
  # axes; one may be -1 = all remaining devices. data: replicated params,
  # split batches; fsdp: split batches and every weight matrix (ZeRO-3 style);
  # tensor: split attention heads, FFN hidden units and vocabulary. Their
  # product must equal the number of devices of all processes. A checkpoint
  # restores onto any other mesh shape.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)

  # Multi-process runs (one process per host): jax.distributed settings.
  # Unset fields come from $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES and
  # $JAX_PROCESS_ID, or are auto-detected on Cloud TPU pods, SLURM and Open
  # MPI; with none of them the run is single-process.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""  # "host:port" of process 0; "" = env / auto.
  c.distributed.num_processes = 0  # 0 = env / auto.
  c.distributed.process_id = -1  # -1 = env / auto.
  return c
