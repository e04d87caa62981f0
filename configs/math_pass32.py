r"""BoN-RL-S on Hendrycks MATH: Gemma 2 2B, pass@32 (N = N' = 32, the grader selects).

The paper's MATH pass@32 experiment (BON_NOTES.md section 7: 60.0% -> 67.0%).
BoN-RL-S is BoN-RL with the environment reward as the selector, so no verifier
is trained. Settings the notes record are marked (paper); the others are our
choices (the same as configs/math_bon32.py, which explains them).

Needs, on local disk (the run stops with one line naming what is missing):

  --config.model.ckpt_path    the Gemma 2 2B Orbax checkpoint (Kaggle google/gemma-2/flax/gemma2-2b)
  --config.tokenizer.path     its tokenizer.model
  --config.task.data_dir      the Hendrycks MATH folder (github.com/hendrycks/math: MATH/train, MATH/test)

  python -m bon_jax.main --config=configs/math_pass32.py --workdir=/ckpt/math_pass32 \
      --config.model.ckpt_path=... --config.tokenizer.path=... --config.task.data_dir=...
  python -m bon_jax.main --config=configs/math_pass32.py --dry_run
"""

from configs import common


def get_config():
  config = common.base_config()

  # --- Problems: Hendrycks MATH, Minerva 4-shot prompts for the base model.
  config.task.name = "hendrycks_math"
  config.task.data_dir = ""  # MATH root holding train/ and test/ (required).
  config.task.test_path = ""  # "" = <data_dir>/test; or e.g. a MATH-500 .jsonl.
  config.task.levels = ()  # () = levels 1-5.
  config.task.subjects = ()  # () = all subjects.
  config.task.prompt_format = "fewshot"
  config.task.num_shots = 4
  config.task.max_prompt_tokens = 1024  # Capacity plan's P (4-shot prefix + problem).
  config.task.num_train = 7500
  config.task.num_test = 5000

  # --- Gemma 2 2B, bf16 weights, float32 Adam moments, full fine-tuning, FSDP
  # over one 8-chip host, from the released checkpoint.
  common.gemma2_2b_policy(config)
  config.verifier.steps = 0  # The grader selects: no learned verifier.

  # --- BoN-RL-S (paper: N' = 32, pass@32).
  config.algorithms = ("bon_rl_s",)
  config.rl.algorithm = "bon_rl_s"
  config.rl.N_prime = 32  # (paper)
  config.rl.N = 32  # (paper)
  config.rl.verifier = "grader"  # (paper) The environment reward selects.
  config.rl.temperature = 1.0
  config.rl.max_new_tokens = 512
  config.rl.prompts_per_step = 16
  config.rl.steps = 500
  config.rl.learning_rate = 1e-6
  config.rl.warmup_steps = 20
  config.rl.weight_decay = 0.0
  config.rl.grad_clip_norm = 1.0
  config.rl.kl_coef = 0.0  # Not reported.
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

  # --- Evaluation: pass@k for k = 1 ... 32 on the MATH test set.
  config.eval.num_prompts = 5000
  config.eval.num_samples = 32
  config.eval.temperature = 1.0
  config.eval.max_new_tokens = 512
  config.eval.prompts_per_batch = 16
  return config
