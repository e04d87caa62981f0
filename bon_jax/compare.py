"""The comparison of every policy of the pipeline: one table and one plot.

`write_comparison` writes ``compare.{md,json,png}`` into the workdir (never
over an earlier, different comparison).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from bon_jax import config_lib
from bon_jax import evaluate
from bon_jax import multihost


def write_comparison(results: dict[str, dict[str, Any]], workdir: str, *, temperature: float) -> str:
  """The table (markdown) and plot comparing every policy of the pipeline.

  Columns: pass@1, pass@N, Bo-N (learned verifier if present, else grader),
  maj@N at N = eval.num_samples, each with its 95% interval over prompts, and
  the paired difference of pass@N against `config_lib.BASE` (same prompts and keys, so
  the per-prompt differences give a much tighter interval). Files are written
  by process 0 only (`bon_jax.multihost`); every process returns the table.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  base = results[config_lib.BASE]
  ks, n = base["ks"], base["num_samples"]
  bo = evaluate.VERIFIER_CURVE if evaluate.VERIFIER_CURVE in base["overall"] else "bo@k"
  cols = [("pass@k", 1), ("pass@k", n), (bo, n), ("maj@k", n)]
  head = ("| policy | " + " | ".join(f"{c.replace('@k', '@' + str(k))}" for c, k in cols)
          + f" | Δpass@{n} vs {config_lib.BASE} (paired) |")
  lines = [f"Held-out evaluation, T={temperature:g}, {base['overall']['num_prompts']} prompts, n={n} samples each.", "",
           head, "|" + "---|" * (len(cols) + 2)]
  for name, res in results.items():
    cells = []
    for c, k in cols:
      i = ks.index(k)
      cells.append(f"{100 * res['overall'][c][i]:.1f} ± {100 * res['overall'][c + '_ci95'][i]:.1f}")
    d = np.asarray(res["per_prompt"]["pass@k"])[:, -1] - np.asarray(base["per_prompt"]["pass@k"])[:, -1]
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
    cells.append("—" if name == config_lib.BASE else f"{100 * d.mean():+.1f} ± {100 * half:.1f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  table = "\n".join(lines)

  payload = {"temperature": temperature, "table": table,
             "results": {k: {m: v["overall"][m] for m in evaluate.curve_names(v)} | {"ks": ks}
                         for k, v in results.items()}}
  if not multihost.is_writer():
    return table
  name = "compare"
  path = os.path.join(workdir, name + ".json")
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) == json.loads(json.dumps(payload)):
        print("\n" + table + f"\n\n(already in {os.path.join(workdir, name)}.{{md,json,png}})")
        return table
    name = f"compare_{int(time.time())}"  # Never overwrite an earlier comparison.
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, curve in zip(axes, ("pass@k", bo)):
    for policy, res in results.items():
      mean = 100 * np.asarray(res["overall"][curve])
      ax.plot(ks, mean, marker="o", label=policy, linestyle="--" if policy == config_lib.BASE else "-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples)")
    ax.set_title(curve + (" (learned verifier)" if curve == evaluate.VERIFIER_CURVE else ""))
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("accuracy on held-out prompts (%)")
  axes[1].legend(fontsize=8)
  fig.tight_layout()

  with open(os.path.join(workdir, name + ".json"), "w") as f:
    json.dump(payload, f, indent=1)
  with open(os.path.join(workdir, name + ".md"), "w") as f:
    f.write(table + "\n")
  fig.savefig(os.path.join(workdir, name + ".png"), dpi=120)
  plt.close(fig)
  print("\n" + table + f"\n\nWrote {os.path.join(workdir, name)}.{{md,json,png}}")
  return table
