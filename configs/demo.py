"""The embedded CPU demo: SFT a small Gemma-2 policy on Countdown, then evaluate.

  python -m bon_jax.main --config=configs/demo.py --workdir=/tmp/bon_demo

About 10 minutes on 2 CPU cores. Prints pass@k / Bo-k / maj@k for k = 1 ... 32
on 256 held-out prompts; the workdir gets checkpoints, TensorBoard events,
metrics.jsonl, the eval JSON and a plot of the curves.

Calibration (docs/RESULTS.md): with these settings the SFT policy reaches
pass@1 ~ 11% and pass@32 ~ 72% at temperature 1 — a wide Best-of-N gap.
"""

from configs import common


def get_config():
  config = common.base_config()
  config.task.num_train = 5000
  config.task.num_test = 256
  # Puzzles drawn with weight num_solutions ** 2.5: mostly prompts with several
  # valid answers (where Best-of-N pays), still spread over levels 1-5.
  config.task.target_weighting = 2.5

  # Gemma-2 architecture at the size of the prototype (~0.5M
  # parameters): ~4 SFT steps/s on 2 cores, so 2000 steps fit the budget.
  config.model.preset = "small"

  config.train.steps = 2000
  config.train.batch_size = 64
  config.train.learning_rate = 3e-3
  config.train.warmup_steps = 50
  config.train.log_every = 50
  config.train.checkpoint_every = 250

  config.eval.num_prompts = 256
  config.eval.num_samples = 32
  config.eval.temperature = 1.0
  return config
