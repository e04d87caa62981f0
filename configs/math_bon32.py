r"""BoN-RL-V on Hendrycks MATH: Gemma 2 2B, N = N' = 32, learned verifier.

The paper's MATH Bo32 experiment (BON_NOTES.md section 7: 26.8% -> 30.8%
Bo32). Settings the notes record are marked (paper); every other value is our
choice and says why.

Needs, on local disk (the run stops with one line naming what is missing):

  --config.model.ckpt_path    the Gemma 2 2B Orbax checkpoint (Kaggle google/gemma-2/flax/gemma2-2b)
  --config.tokenizer.path     its tokenizer.model
  --config.task.data_dir      the Hendrycks MATH folder (github.com/hendrycks/math: MATH/train, MATH/test)

  python -m bon_jax.main --config=configs/math_bon32.py --workdir=/ckpt/math_bon32 \
      --config.model.ckpt_path=... --config.tokenizer.path=... --config.task.data_dir=...

Check what a device must hold first (no weights, no accelerator needed):

  python -m bon_jax.main --config=configs/math_bon32.py --dry_run
"""

from configs import common


def get_config():
  config = common.base_config()

  # --- Problems: Hendrycks MATH (bon_jax/tasks/registry.py).
  config.task.name = "hendrycks_math"
  config.task.data_dir = ""  # MATH root holding train/ and test/ (required).
  config.task.test_path = ""  # "" = <data_dir>/test; or e.g. a MATH-500 .jsonl.
  config.task.levels = ()  # () = levels 1-5 (the few "Level ?" problems are left out).
  config.task.subjects = ()  # () = all seven subjects.
  # The released 2B checkpoint is a base model: Minerva 4-shot prompt.
  config.task.prompt_format = "fewshot"
  config.task.num_shots = 4
  # The capacity plan's prompt length P (Gemma tokens): the 4-shot prefix is
  # ~600 tokens, the longest MATH problems a few hundred more.
  config.task.max_prompt_tokens = 1024
  config.task.num_train = 7500  # MATH's split sizes.
  config.task.num_test = 5000

  # --- Policy: Gemma 2 2B (paper: "Gemma 2B", most likely Gemma 2), bf16
  # weights + float32 Adam moments, FSDP over one 8-chip host, no SFT stage
  # (the paper's "base" numbers are the checkpoint's): common.gemma2_2b_policy.
  common.gemma2_2b_policy(config)

  # --- The learned verifier (paper: a learned verifier picks the Bo32
  # answer). Trained first on the base policy's graded samples of training
  # problems; a Gemma 2 2B backbone (from the policy) + a scalar head.
  config.verifier.steps = 2000
  config.verifier.init = "policy"
  config.verifier.num_prompts = 4096
  config.verifier.holdout_prompts = 256
  config.verifier.num_samples = 8  # 32k labelled samples; both labels occur at T = 1.
  config.verifier.temperature = 1.0
  config.verifier.max_new_tokens = 512
  config.verifier.batch_size = 64
  # 8 sequences (one per chip of the 8-chip mesh) of activations at a time: the step's
  # 64 at once would need ~104 GiB per chip (`--dry_run`, bench/compiled_memory.py);
  # rematerialised blocks, as in the RL update: one layer's weights and activations alive.
  config.verifier.microbatch_groups = 8
  config.verifier.remat_blocks = True
  config.verifier.learning_rate = 5e-6  # Full backbone fine-tuning: small steps.
  config.verifier.warmup_steps = 100
  config.verifier.ks = (1, 4, 16, 32)
  config.verifier.prompts_per_batch = 16

  # --- BoN-RL-V (paper: N' = 32, Bo32).
  config.algorithms = ("bon_rl_v",)
  config.rl.algorithm = "bon_rl_v"
  config.rl.N_prime = 32  # (paper)
  config.rl.N = 32  # (paper) Bo32: each group of 32 samples is one BoN draw.
  config.rl.verifier = "learned"  # (paper) The verifier stage's; or set verifier_ckpt.
  config.rl.verifier_ckpt = ""
  config.rl.temperature = 1.0  # Train and test at T = 1.
  config.rl.max_new_tokens = 512  # MATH solutions of a 2B model rarely need more.
  config.rl.prompts_per_step = 16  # 512 samples per update.
  config.rl.steps = 500  # ~1 pass over the 7.5k training problems.
  config.rl.learning_rate = 1e-6  # Full fine-tuning of a 2B model with RL.
  config.rl.warmup_steps = 20
  config.rl.weight_decay = 0.0
  config.rl.grad_clip_norm = 1.0
  config.rl.kl_coef = 0.0  # Not reported; 0 keeps no reference copy of the policy.
  config.rl.entropy_coef = 0.0
  # Gradient accumulation over 8 of the 512 rows at a time (1 per device of the
  # 8-way mesh, the least): one row's float32 [1535, 256128] log-softmax is
  # 1.5 GiB; the update log-softmaxes it 16k vocabulary entries at a time
  # (rl.VOCAB_CHUNK). Rematerialised blocks keep one layer's gathered weights
  # and activations alive at a time: the compiled full fine-tuning update of 2B
  # holds 8.57 GiB per device on XLA:CPU (34.95 without), BENCHMARKS.md — it
  # fits 16 GB chips. See --dry_run (--dry_run_compile=update to compile it).
  config.rl.microbatch_rows = 8
  config.rl.remat_blocks = True
  config.rl.log_every = 1
  config.rl.checkpoint_every = 25
  config.rl.keep_checkpoints = 2

  # --- Evaluation: the whole MATH test set, 32 samples each (Bo-k and pass@k
  # for k = 1 ... 32 from the same samples), at the training temperature.
  config.eval.num_prompts = 5000
  config.eval.num_samples = 32
  config.eval.temperature = 1.0
  config.eval.max_new_tokens = 512
  config.eval.prompts_per_batch = 16
  return config
