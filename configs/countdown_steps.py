"""Reproduction on step-by-step Countdown: every fine-tuning algorithm from the demo's SFT base.

  python -m bon_jax.main --config=configs/countdown_steps.py --workdir=/tmp/steps_repro/s0 \
      --config.rl.seed=0

The task, policy, SFT and learned verifier are the demo's (configs/demo.py),
so a demo workdir is a valid starting point: its SFT policy and verifier are
reused and only the missing stages run. Every algorithm gets the same sample
budget (rl.steps x rl.prompts_per_step x rl.N_prime samples) and is evaluated
on the same held-out prompts with the same keys. docs/RESULTS.md reports three
RL seeds of it from one demo workdir (`--config.rl.seed=1`, `=2` in copies of
it; seed 0 leaves rl.seed unset so the demo's own stages are reused), pooled
with `python -m bon_jax.report W0 W1 W2`.
"""

from configs import demo


def get_config():
  config = demo.get_config()
  config.algorithms = ("sft", "rloo", "bon_sft", "bon_rl_v", "bon_rl_s", "bon_rlb_p", "pass_at_4")
  # The subset pass@k estimator with k = 4 < n = N' = 8 (k = n equals BoN-RL-S).
  config.rl_overrides.pass_at_4 = dict(algorithm="pass_at_k", N=4)
  config.eval.extra_temperatures = (0.5, 1.5)
  return config
