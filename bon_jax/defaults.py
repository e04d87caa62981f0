"""Every config field with its default: the experiment configs start here.

`base_config()` is a whole pipeline run (SFT, verifier, fine-tuning stages,
evaluation) with every field the library reads declared once, with its
default and what it means; `rl_config()` and `verifier_config()` are its
``rl`` and ``verifier`` sections. configs/common.py builds on these and each
experiment in configs/ overrides what it needs. Task-specific fields (e.g.
``task.data_dir`` of hendrycks_math) are declared by the configs of that task.
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
  c.task.num_digits_weights = ml_collections.config_dict.placeholder(tuple)  # None = uniform
  c.task.target_range = (10, 99)
  c.task.target_weighting = 0.0
  # Countdown completions: "expression" (one boxed expression) or "steps"
  # (one operation per step with its result: `4+7=11, 11+9=20, 3*20=60`).
  c.task.solution_format = "expression"

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
  # > 0: train LoRA adapters of this rank only (bon_jax.models.policy_from_config).
  c.model.lora_rank = 0
  # Adam moments' dtype: "" = the params' dtype, or "float32" / "bfloat16"
  # (bon_jax.optim: bf16 moments of small updates underflow).
  c.model.opt_state_dtype = ""

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

  # Also evaluate every policy at these temperatures (eval/step_<s>_T<t>.json).
  c.eval.extra_temperatures = ()

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

  # The pipeline after SFT: `algorithms` are fine-tuned one by one from the SFT
  # policy with the shared `rl` settings (plus `rl_overrides.<algorithm>`), then
  # every policy is evaluated on the same prompts and compared in one table.
  c.algorithms = ()
  c.rl = rl_config()
  c.rl_overrides = ml_collections.ConfigDict()
  # The learned outcome verifier, trained on the SFT policy's graded samples
  # when `verifier.steps > 0`; used by `rl.verifier="learned"` and for Bo-k.
  c.verifier = verifier_config()
  return c


def rl_config() -> ml_collections.ConfigDict:
  """``config.rl``: one BoN-aware fine-tuning stage (bon_jax/rl.py)."""
  c = ml_collections.ConfigDict()
  # A name of bon_jax.algorithms.REGISTRY: sft, rloo, grpo, bon_sft, bon_rl_v,
  # bon_rl_s, bon_rlb, bon_rlb_p, best_of_k, pass_at_k, max_at_k, maj_at_k.
  c.algorithm = "rloo"
  c.N_prime = 8  # Samples per prompt per step (N').
  c.N = 4  # The BoN target: N of bon_*, k of the subset estimators.
  c.kl_coef = 0.0  # Sequence-level KL(pi || pi_sft), exact per prefix.
  c.entropy_coef = 0.0
  c.max_gain = ml_collections.config_dict.placeholder(float)  # bon_rlb clip; None = 10 N.
  c.lam = ml_collections.config_dict.placeholder(float)  # bon_sft lambda_N; None = lambda_for_n(N).
  c.prompts_per_step = 16
  c.steps = 200
  c.learning_rate = 1e-4
  c.warmup_steps = 0
  c.weight_decay = 0.0
  c.grad_clip_norm = 1.0
  c.temperature = 1.0  # Sampling temperature; log pi is taken at the same T.
  # Rows (of the prompts_per_step x N' samples) per gradient-accumulation
  # microbatch of the update: bounds its float32 [rows, L, vocab] log-softmax,
  # probs and reference log-probs. 0 = all rows in one pass. Same loss and
  # gradient either way (`rl.make_policy_update`).
  c.microbatch_rows = 0
  # Rematerialise every transformer block in the update (`rl.make_policy_update`):
  # the backward pass recomputes a block's activations and re-gathers its
  # FSDP-split weights, so one layer's are alive at a time instead of all.
  # Same gradient; about one more forward pass of compute. For full
  # fine-tuning at paper shape (BENCHMARKS.md: Gemma 2 2B's update 34.95 ->
  # ~9 GiB per device compiled).
  c.remat_blocks = False
  c.max_new_tokens = 32
  # The BoN selector r: "grader" (exact, BoN-RL-S), "learned" (the verifier
  # stage's, or `verifier_ckpt` when set) or "noisy" (the grader plus noise
  # fixed by the completion's text, calibrated to within-prompt AUC
  # `verifier_auc`: a verifier of controlled quality,
  # bon_jax.verifier.noisy_grader_verifier).
  c.verifier = "grader"
  c.verifier_ckpt = ""
  c.verifier_auc = 0.8
  c.verifier_noise_seed = 0
  c.log_every = 10
  c.checkpoint_every = 50
  c.keep_checkpoints = 2
  # Seed of the stage's prompts and samples; None = config.seed. Vary it to
  # repeat fine-tuning from one SFT policy (configs/countdown_bon.py).
  c.seed = ml_collections.config_dict.placeholder(int)
  return c


def verifier_config() -> ml_collections.ConfigDict:
  """``config.verifier``: the learned outcome verifier (bon_jax/verifier.py).

  Data: `num_prompts` training problems x `num_samples` samples of the SFT
  policy at `temperature`, graded by the task; `holdout_prompts` test problems
  for AUC and Bo-k. Training: `steps` AdamW steps of `batch_size` sequences.
  """
  c = ml_collections.ConfigDict()
  c.steps = 0  # 0 = no learned verifier (Bo-k uses the grader).
  c.init = "policy"  # Backbone from the SFT policy ("policy") or "random".
  c.num_prompts = 512
  c.holdout_prompts = 128
  c.num_samples = 8
  c.temperature = 1.0
  c.max_new_tokens = 32
  c.batch_size = 64
  c.learning_rate = 1e-4
  c.weight_decay = 0.0
  c.warmup_steps = 20
  # Weight of the within-prompt pairwise ranking loss added to BCE (0 = BCE
  # alone); > 0 trains on whole groups of num_samples per prompt.
  c.rank_weight = 0.0
  # How the head reads the sequence (bon_jax.verifier.POOLINGS): "last" token,
  # or a soft "min" over every position (an error anywhere vetoes the answer).
  c.pooling = "last"
  # Extra training groups made by the task instead of sampled (task.verifier_examples:
  # for step-format Countdown, right chains and false last steps), from this many
  # training prompts after the `num_prompts` sampled ones. 0 = none.
  c.synthetic_prompts = 0
  # Weight of the process loss: the head trained at labelled positions on
  # whether the answer has gone wrong yet (task.step_labels: for step-format
  # Countdown, after every digit of every result, from the exact grader;
  # needs pooling "min"). 0 = outcome labels only.
  c.step_weight = 0.0
  c.seed = 0
  c.ks = (1, 2, 4, 8)
  c.prompts_per_batch = 32  # Sampling and scoring chunk (one compiled shape each).
  # Groups (of num_samples sequences; single sequences when rank_weight = 0) per
  # gradient-accumulation microbatch of a training step: bounds the activations
  # live at once. 0 = the whole step in one pass. Same loss and gradient either
  # way (`verifier.make_verifier_step`); must divide the step's groups.
  c.microbatch_groups = 0
  # Rematerialise the backbone's blocks in a training step, as rl.remat_blocks
  # does in the policy update: the same step, about one layer's gathered
  # weights and activations alive at a time.
  c.remat_blocks = False
  # Orbax checkpoints of the training under workdir/verifier/train (0: the last
  # step only); a rerun resumes from the latest, on the samples saved beside it.
  c.checkpoint_every = 200
  c.keep_checkpoints = 2
  return c
