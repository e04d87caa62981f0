"""The embedded CPU demo: the whole BoN-aware pipeline on step-by-step Countdown, small model.

  python -m bon_jax.main --config=configs/demo.py --workdir=/tmp/bon_demo

About 20 minutes on 2 quiet CPU cores, plus the install:

1. SFT of a small Gemma-2 policy (~0.5M parameters, 2000 steps) on Countdown
   answers written as steps (`4+7=11, 11+9=20, 3*20=60`), each step checkable;
2. a learned verifier (the SFT policy's backbone + a linear head read at
   every token, soft minimum: an error anywhere vetoes the answer) trained on
   2048 x 8 graded SFT samples plus 2048 x 8 task-made ones (right chains and
   false last steps), with process labels: after every digit of every
   written result, whether the answer has gone wrong yet;
3. three fine-tuning stages from the SFT policy through the one RL loop, with
   the same sample budget (200 steps x 16 prompts x 8 samples) and a KL
   penalty to the SFT policy: `rloo` (RL for pass@1, the paper's "RL N'=1"
   baseline), `bon_rlb_p` (BoN-RLB(P), N=8) and `bon_rl_v` (BoN-RL with the
   learned verifier, N=8);
4. every policy evaluated on 256 held-out prompts x 32 samples (pass@k, Bo-k
   with the learned verifier, maj@k), one table and one plot in the workdir
   (`compare.{md,json,png}`).

Run fewer or other algorithms with e.g. `--config.algorithms="('rloo',)"`
(any name of bon_jax.algorithms.REGISTRY), or SFT only with
`--config.algorithms="()" --config.verifier.steps=0`. The multi-seed
reproduction with every algorithm is configs/countdown_steps.py (the first
experiment, with expression answers, is configs/countdown_bon.py).

Calibration and what the run shows: docs/RESULTS.md ("Step-by-step
Countdown"): the SFT policy reaches pass@1 ~13% and pass@32 ~80% at
temperature 1, the verifier a within-prompt AUC of ~0.92 (Bo-8 38% vs pass@8
53%); BoN-RLB(P) raises pass@8 (~+4 points), RLOO raises pass@1 most and not
pass@8, BoN-RL-V raises Bo-8 with the verifier by ~2 points.
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

  # The verifier reads every token (soft-min pooling): a false step anywhere
  # can veto the answer. Data was its limit (docs/RESULTS.md), and sampling is
  # cheap: 2048 prompts x 8 SFT samples, plus 2048 x 8 task-made examples.
  config.verifier.pooling = "min"
  config.verifier.steps = 1000
  config.verifier.num_prompts = 2048
  config.verifier.synthetic_prompts = 2048
  config.verifier.num_samples = 8
  config.verifier.learning_rate = 1e-3
  config.verifier.max_new_tokens = 40  # Step answers: up to 35 tokens.
  # Process labels from the exact grader (countdown.step_labels): the head is
  # told at which digit a false step goes wrong, which outcome labels never
  # say. Within-prompt AUC 0.74 -> 0.92 (docs/RESULTS.md).
  config.verifier.step_weight = 1.0

  config.algorithms = ("rloo", "bon_rlb_p", "bon_rl_v")
  config.rl.N_prime = 8
  config.rl.N = 8
  config.rl.prompts_per_step = 16
  config.rl.steps = 200
  # Outcome rewards also push on the true steps of wrong answers; without a KL
  # anchor, lr 5e-4 wrecked the SFT policy's arithmetic (KL 2-9 nats in 60
  # steps, pass@1 12.9% -> 9.1%). At lr 1e-4 / KL 0.1 every stage barely moves.
  config.rl.learning_rate = 2e-4
  config.rl.kl_coef = 0.05
  config.rl.checkpoint_every = 100
  config.rl.max_new_tokens = 40
  # BoN-RL-V at N' = N credits only the verifier's pick, with weights +-1 (RLOO's
  # are <= 1/N): at the others' lr it drifts 0.5 nats and loses Bo-8; at half the
  # lr and twice the KL it stays within 0.25 nats and gains (docs/RESULTS.md).
  config.rl_overrides.bon_rl_v = dict(verifier="learned", learning_rate=1e-4, kl_coef=0.1)

  config.eval.num_prompts = 256
  config.eval.num_samples = 32
  config.eval.temperature = 1.0
  config.eval.max_new_tokens = 40
  return config
