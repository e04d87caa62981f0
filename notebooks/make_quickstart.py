"""Builds notebooks/bon_quickstart.ipynb (kept as a script so the notebook is reviewable)."""
import os

import nbformat as nbf

# Where bon_jax is published: the Colab link and the notebook's install cell use it.
REPO = os.environ.get("BON_JAX_REPO", "bon-jax/bon_jax")
COLAB_URL = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/bon_quickstart.ipynb"

cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))

md(f"""
# bon_jax quickstart: Best-of-N math and inference-aware fine-tuning

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB_URL})

This notebook (1) shows the Best-of-N (BoN) math of `bon_jax.bon` on a toy
distribution where everything is exact, and (2) loads the workdir of the embedded
demo pipeline (`python -m bon_jax.main --config=configs/demo.py --workdir=...`) and
plots pass@k / Bo-k per fine-tuning algorithm.

**On Colab** (Python 3.12+, any runtime: CPU, GPU or TPU) run the cells in order:
the first installs bon_jax with the versions of `constraints.txt` and the jax
extra of the runtime's accelerator (a few minutes; it may restart the runtime
once, then run it again). Where bon_jax is already installed (a local checkout,
CI) it does nothing.

Set `WORKDIR` to a finished demo workdir. Left empty, the notebook runs a *very*
short pipeline (micro model, a few steps: the numbers are meaningless, the plumbing
is real) into a temporary directory.
""")
code(f"""
# Install bon_jax where it is missing (Colab); a no-op where it is installed.
import importlib.metadata, importlib.util, os, shutil, subprocess, sys

REPO = "{REPO}"
if importlib.util.find_spec("bon_jax") is not None:
  print("bon_jax", importlib.metadata.version("bon_jax"), "is installed; nothing to install")
else:
  if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi"], capture_output=True).returncode == 0:
    extra = "[cuda12]"
  elif os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME") or os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0"):
    extra = "[tpu]"
  else:
    extra = ""
  before = {{m: sys.modules[m].__version__ for m in ("numpy", "jax") if m in sys.modules}}
  subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                  "-c", f"https://raw.githubusercontent.com/{{REPO}}/main/constraints.txt",
                  f"bon_jax{{extra}} @ git+https://github.com/{{REPO}}"], check=True)
  print("installed bon_jax" + extra)
  if any(importlib.metadata.version(m) != v for m, v in before.items()):
    # Packages already imported in this process were replaced: restart the runtime.
    print("restarting the runtime to load the new versions; then run the notebook again")
    os.kill(os.getpid(), 9)
""")
code("""
import os, json, tempfile
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import jax
import numpy as np
import matplotlib.pyplot as plt
from bon_jax import bon

# Which accelerator this runtime has: the pipeline below runs on it.
devices = jax.devices()
kind = {"gpu": "GPU", "tpu": "TPU"}.get(devices[0].platform, "no accelerator (CPU only)")
print(f"JAX {jax.__version__} on {kind}: {len(devices)} x {devices[0].device_kind}")

WORKDIR = os.environ.get("BON_WORKDIR", "")  # e.g. "/tmp/bon_demo"
""")
md("""
## 1. Best-of-N on a toy policy

A policy over K = 6 responses with probabilities `probs`; a verifier scores them
(`scores`), two of them are correct (`rewards`). Best-of-N draws N responses and keeps
the best-scored one, so its output distribution is π_bon(y) ∝ F(y)^N − F⁻(y)^N in the
score CDF (ties split). `bon.bon_distribution` computes it exactly; we check it
against Monte Carlo.
""")
code("""
probs = np.array([0.40, 0.25, 0.15, 0.10, 0.06, 0.04])
scores = np.array([0.1, 0.3, 0.9, 0.2, 0.8, 0.5])   # the verifier's preference
rewards = np.array([0, 0, 1, 0, 1, 0], float)        # which responses are correct

rng = np.random.default_rng(0)
for N in (1, 4, 16):
  exact = np.asarray(bon.bon_distribution(probs, scores, N))
  draws = rng.choice(len(probs), size=(20000, N), p=probs)
  picked = draws[np.arange(len(draws)), np.argmax(scores[draws], axis=1)]
  mc = np.bincount(picked, minlength=len(probs)) / len(picked)
  print(f"N={N:2d}  exact π_bon={np.round(exact, 3)}  Monte Carlo max |diff|={np.abs(mc - exact).max():.4f}"
        f"  Bo-N accuracy={exact @ rewards:.3f}")
  assert np.abs(mc - exact).max() < 0.02
""")
md("""
The metrics are unbiased estimators from n ≥ k samples: pass@k (some of k correct),
Bo-k (the verifier's pick among k is correct) and maj@k. With n = 32 samples of the
toy policy:
""")
code("""
n, ks = 32, [1, 2, 4, 8, 16, 32]
sample = rng.choice(len(probs), size=(2000, n), p=probs)   # 2000 "prompts"
correct, s = rewards[sample], scores[sample]
for k in ks:
  p_k = float(np.mean(bon.pass_at_k(correct, k)))
  b_k = float(np.mean(bon.best_of_k(correct, s, k)))
  exact_bo = float(np.asarray(bon.bon_distribution(probs, scores, k)) @ rewards)
  exact_pass = 1 - (1 - probs @ rewards) ** k
  print(f"k={k:2d}  pass@k {p_k:.3f} (exact {exact_pass:.3f})   Bo-k {b_k:.3f} (exact {exact_bo:.3f})")
""")
md("""
## 2. Fine-tuning for Best-of-N: the demo pipeline's results

The pipeline fine-tunes the SFT policy with each algorithm through one loop
(`bon_jax.rl.train_rl`: sample N', score, weight with `algorithms.weights_fn(name)`, one
jitted update) and evaluates every policy on the same held-out prompts.
""")
code("""
if not WORKDIR:
  from bon_jax import pipeline
  from configs import demo
  cfg = demo.get_config()
  # Tiny, for a quick look (and the notebook's smoke test): not a meaningful run.
  cfg.model.preset = "micro"
  cfg.task.num_train, cfg.task.num_test = 64, 8
  cfg.train.steps, cfg.train.batch_size, cfg.train.checkpoint_every = 2, 4, 2
  cfg.verifier.update(dict(steps=2, num_prompts=4, synthetic_prompts=4, holdout_prompts=4, num_samples=2, max_new_tokens=8,
                           batch_size=4, warmup_steps=0, ks=(1, 2), prompts_per_batch=4))
  cfg.algorithms = ("rloo", "pass_at_k")
  cfg.rl.update(dict(N_prime=2, N=2, prompts_per_step=2, steps=2, checkpoint_every=2))
  cfg.eval.update(dict(num_prompts=4, num_samples=4, prompts_per_batch=4, max_new_tokens=8))
  WORKDIR = tempfile.mkdtemp(prefix="bon_quickstart_")
  pipeline.train_and_evaluate(cfg, WORKDIR)
print("workdir:", WORKDIR)
""")
code("""
with open(os.path.join(WORKDIR, "compare.json")) as f:
  compare = json.load(f)
print(compare["table"])
""")
code("""
results = compare["results"]
curves = ["pass@k", "bo@k_verifier" if "bo@k_verifier" in next(iter(results.values())) else "bo@k", "maj@k"]
fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), sharey=True)
for ax, curve in zip(axes, curves):
  for name, res in results.items():
    ax.plot(res["ks"], 100 * np.asarray(res[curve]), marker="o", label=name,
            linestyle="--" if name == "base" else "-")
  ax.set_xscale("log", base=2); ax.set_xticks(res["ks"], [str(k) for k in res["ks"]])
  ax.set_title(curve); ax.set_xlabel("k"); ax.grid(alpha=0.3)
axes[0].set_ylabel("accuracy on held-out prompts (%)"); axes[-1].legend()
plt.tight_layout(); plt.show()
""")
md("""
## 3. Training curves

Each stage logs per step: loss, reward, pass@1 / pass@N' of its training groups,
entropy, KL to the SFT reference and weight statistics (`rl/<name>/metrics.jsonl`,
also in TensorBoard).
""")
code("""
fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
for name in sorted(os.listdir(os.path.join(WORKDIR, "rl"))):
  rows = {}
  for line in open(os.path.join(WORKDIR, "rl", name, "metrics.jsonl")):
    row = json.loads(line); rows[row["step"]] = row   # The last line of a step wins (resumes).
  steps = sorted(rows)
  for ax, key in zip(axes, ("reward_mean", "entropy", "kl")):
    ax.plot(steps, [rows[s].get(key, np.nan) for s in steps], label=name)
    ax.set_title(key); ax.set_xlabel("step"); ax.grid(alpha=0.3)
axes[0].legend(); plt.tight_layout(); plt.show()
""")

nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"},
                                                "language_info": {"name": "python"},
                                                "colab": {"provenance": []}})
nbf.write(nb, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bon_quickstart.ipynb"))
