"""The embedded CPU demo: SFT a tiny Gemma-2 policy on Countdown, then evaluate.

  python -m bon_jax.main --config=configs/demo.py --workdir=/tmp/bon_demo

Runs in about 10 minutes on 2 CPU cores and prints pass@k / Bo-k / maj@k for
k = 1 ... 32 on held-out prompts; the workdir gets checkpoints, TensorBoard
events, metrics.jsonl, eval JSON and a plot of the curves.
"""

from configs import common


def get_config():
  config = common.base_config()
  config.task.num_train = 5000
  config.task.num_test = 256

  config.model.preset = "tiny"

  config.train.steps = 600
  config.train.batch_size = 64
  config.train.learning_rate = 2e-3
  config.train.warmup_steps = 50

  config.eval.num_prompts = 256
  config.eval.num_samples = 32
  config.eval.temperature = 1.0
  return config
