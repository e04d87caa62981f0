"""The first reproduction (expression answers): every fine-tuning algorithm from one SFT base.

  python -m bon_jax.main --config=configs/countdown_bon.py --workdir=/tmp/bon_repro/s0 \
      --config.rl.seed=0

The first experiment of docs/RESULTS.md, on Countdown with one boxed
expression per answer (`task.solution_format="expression"`): a `small` policy
SFT'd for 2000 steps (the demo of that time, whose settings are pinned here so
that later demos do not change this experiment). Every algorithm then gets the
same sample budget (rl.steps x rl.prompts_per_step x rl.N_prime samples) and
is evaluated on the same 256 held-out prompts with the same keys, at the
training temperature and one lower and one higher. docs/RESULTS.md reports
three seeds of it; `python -m bon_jax.report` pools them with paired intervals.
"""

from configs import common


def get_config():
  config = common.base_config()
  config.task.num_train = 5000
  config.task.num_test = 256
  config.task.target_weighting = 2.5
  config.task.solution_format = "expression"
  config.model.preset = "small"
  config.train.steps = 2000
  config.train.batch_size = 64
  config.train.learning_rate = 3e-3
  config.train.warmup_steps = 50
  config.train.log_every = 50
  config.train.checkpoint_every = 250
  config.verifier.learning_rate = 3e-4
  config.rl.N_prime = 8
  config.rl.N = 8
  config.rl.prompts_per_step = 16
  config.rl.learning_rate = 5e-4
  config.rl_overrides.bon_rl_v = dict(verifier="learned")

  # Both selectors are needed: Bo-N with the learned verifier is reported for
  # every policy, and BoN-RL-V trains against it.
  config.verifier.steps = 600
  config.verifier.num_prompts = 1024

  config.algorithms = ("sft", "rloo", "bon_sft", "bon_rl_v", "bon_rl_s", "bon_rlb", "bon_rlb_p",
                       "pass_at_k")
  # Variants run after the first reproduction (docs/RESULTS.md), by name:
  # --config.algorithms="('bon_rlb_gain8','pass_at_4','bon_rlb_p_300')".
  # BoN-RLB with its gains clipped at N instead of 10 N: the reported gain
  # g- = N p / (1 - p) reaches 10 N on the many prompts the policy fails, and
  # those all-negative updates wrecked the default run.
  config.rl_overrides.bon_rlb_gain8 = dict(algorithm="bon_rlb", max_gain=8.0)
  # The subset pass@k estimator proper: k = 4 out of n = N' = 8 samples (with
  # k = n it equals BoN-RL-S).
  config.rl_overrides.pass_at_4 = dict(algorithm="pass_at_k", N=4)
  # The best BoN-aware stage trained twice as long (same settings otherwise).
  config.rl_overrides.bon_rlb_p_300 = dict(algorithm="bon_rlb_p", steps=300, checkpoint_every=100)
  # N' = 8 samples per prompt, 16 prompts per step, N = 8.
  config.rl.steps = 150
  config.rl.checkpoint_every = 50
  # BoN-RL-V selects with the learned verifier; BoN-RL-S with the grader.

  config.eval.num_prompts = 256
  config.eval.num_samples = 32
  config.eval.temperature = 1.0
  config.eval.extra_temperatures = (0.5, 1.5)
  return config
