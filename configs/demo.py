"""The embedded CPU demo: the whole BoN-aware pipeline on Countdown, small model.

  python -m bon_jax.main --config=configs/demo.py --workdir=/tmp/bon_demo

About 15-20 minutes on 2 CPU cores (14.7 min measured from a fresh clone at
load 2-4, 17.4 min at load 3-6; plus the install):

1. SFT of a small Gemma-2 policy (~0.5M parameters, 2000 steps, ~9 min);
2. a learned outcome verifier (the SFT policy's backbone + a scalar head)
   trained on 512 x 8 graded SFT samples (~2 min);
3. three fine-tuning stages from the SFT policy through the one RL loop, with
   the same sample budget (60 steps x 16 prompts x 8 samples): `rloo` (RL for
   pass@1, the paper's "RL N'=1" baseline), `bon_rlb_p` (BoN-RLB(P), N=8: the
   algorithm that raised pass@8 in docs/RESULTS.md) and `bon_rl_v` (BoN-RL
   with the learned verifier, N=8; with this small verifier it hurts — see
   docs/RESULTS.md) (~4 min);
4. every policy evaluated on 256 held-out prompts x 32 samples (pass@k, Bo-k
   with the learned verifier, maj@k), one table and one plot in the workdir
   (`compare.{md,json,png}`) (~3 min).

Run fewer or other algorithms with e.g. `--config.algorithms="('rloo',)"`
(any name of bon_jax.bon.WEIGHT_FNS), or SFT only with
`--config.algorithms="()" --config.verifier.steps=0`. The multi-seed
reproduction with every algorithm is configs/countdown_bon.py.

Calibration (docs/RESULTS.md): the SFT policy reaches pass@1 ~ 11% and
pass@32 ~ 72% at temperature 1 — a wide Best-of-N gap to fine-tune for.
"""

from configs import common


def get_config():
  config = common.base_config()
  config.task.num_train = 5000
  config.task.num_test = 256
  # Puzzles drawn with weight num_solutions ** 2.5: mostly prompts with several
  # valid answers (where Best-of-N pays), still spread over levels 1-5.
  config.task.target_weighting = 2.5
  config.task.solution_format = "steps"

  # Gemma-2 architecture at the size of the prototype (~0.5M
  # parameters): ~4 SFT steps/s on 2 cores, so 2000 steps fit the budget.
  config.model.preset = "small"

  config.train.steps = 2000
  config.train.batch_size = 64
  config.train.learning_rate = 3e-3
  config.train.warmup_steps = 50
  config.train.log_every = 50
  config.train.checkpoint_every = 250

  config.verifier.steps = 300
  config.verifier.num_prompts = 512
  config.verifier.num_samples = 8
  config.verifier.learning_rate = 3e-4
  config.verifier.max_new_tokens = 40

  config.algorithms = ("rloo", "bon_rlb_p", "bon_rl_v")
  config.rl.N_prime = 8
  config.rl.N = 8
  config.rl.prompts_per_step = 16
  config.rl.steps = 60
  config.rl.learning_rate = 5e-4
  config.rl.checkpoint_every = 20
  config.rl.max_new_tokens = 40
  config.rl_overrides.bon_rl_v = dict(verifier="learned")

  config.eval.num_prompts = 256
  config.eval.num_samples = 32
  config.eval.temperature = 1.0
  config.eval.max_new_tokens = 40
  return config
