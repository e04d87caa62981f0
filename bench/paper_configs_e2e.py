"""Every paper config end to end from `python -m bon_jax.main`, at Gemma 2 width and vocabulary.

Runs configs/math_bon32.py, math_pass32.py and humaneval_pass16.py with
every stage they configure (verifier training where configured, BoN-aware
RL with microbatching, evaluation, checkpoints), each twice: the second run
resumes from the first's workdir and must redo nothing (same compare.json).
Overrides shrink only counts (problems, samples, steps, new tokens, few-shot
exemplars) and the depth: the policy is `gemma2_2b_depth2` (Gemma 2 2B's
vocabulary of 256128, width 2304 and attention layout, 2 of its 26 layers),
restored from a random checkpoint in the released layout
(`models.write_random_checkpoint`), on the configs' (1, 8, 1) mesh over 8
simulated CPU devices. Inputs are fixtures: MATH problems in the released
folder layout, and a stand-in for the Gemma tokenizer (a small BPE model of
the fixture texts padded to 256128 pieces: `tokenizer.padded_tokenizer`;
only the vocabulary size matters to the model).

Prints, and with --json writes, wall time and peak RSS per run (the peak of
the whole `bon_jax.main` process: every stage of the run).

  python bench/paper_configs_e2e.py --dir /tmp/e2e                   # LoRA (rank 16)
  python bench/paper_configs_e2e.py --dir /tmp/e2e_full --lora_rank 0  # full fine-tuning
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from bon_jax import models  # pylint: disable=g-import-not-at-top
from bon_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top

PRESET = "gemma2_2b_depth2"
GiB = 2**30
MATH = {
    "train/algebra/1.json": ("Level 2", "Algebra", "What is $1+1$?", "2"),
    "train/prealgebra/2.json": ("Level 1", "Prealgebra", "What is $3 \\cdot 2$?", "6"),
    "test/algebra/3.json": ("Level 3", "Algebra", "Solve $2x = 1$.", r"\frac{1}{2}"),
    "test/number_theory/4.json": ("Level 5", "Number Theory", "What is $7 \\bmod 4$?", "3"),
    "test/geometry/5.json": ("Level 4", "Geometry", "How many sides has a square?", "4"),
}


def write_fixtures(root: str) -> dict[str, str]:
  """MATH folder, stand-in tokenizer, random released-layout checkpoint under `root`."""
  from bon_jax.tasks import hendrycks_math  # pylint: disable=g-import-not-at-top
  from bon_jax.tasks import registry  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  math_dir = os.path.join(root, "MATH")
  texts = []
  for rel, (level, type_, problem, answer) in MATH.items():
    path = os.path.join(math_dir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    item = {"problem": problem, "level": level, "type": type_, "solution": f"So it is $\\boxed{{{answer}}}$."}
    with open(path, "w") as f:
      json.dump(item, f)
  train, test = registry.load_splits(ml_collections.ConfigDict(dict(
      name="hendrycks_math", data_dir=math_dir, test_path="", levels=(), subjects=())))
  texts += [hendrycks_math.few_shot_prompt(p, num_shots=4) for p in train + test]
  human = registry.load_splits(ml_collections.ConfigDict(dict(name="humaneval", seed=0, num_test=82,
                                                               num_train=82)))
  texts += [p.prompt + p.canonical_solution for split in human for p in split]
  tok = tokenizer_lib.padded_tokenizer(tokenizer_lib.build_task_tokenizer(texts, vocab_size=2048), 256128)
  tok_path = os.path.join(root, "tokenizer.model")
  tok.save(tok_path)
  ckpt = os.path.join(root, "ckpt")
  models.write_random_checkpoint(ckpt, preset=PRESET, dtype=jnp.bfloat16)
  return {"math": math_dir, "tokenizer": tok_path, "ckpt": ckpt}


def overrides(name: str, fix: dict[str, str], lora_rank: int, dtype: str, devices: int) -> list[str]:
  out = [f"--config.mesh.shape=(1, {devices}, 1)", f"--config.model.preset={PRESET}", f"--config.model.dtype={dtype}", f"--config.model.ckpt_path={fix['ckpt']}",
         f"--config.tokenizer.path={fix['tokenizer']}", f"--config.model.lora_rank={lora_rank}",
         "--config.task.num_train=2", "--config.task.num_test=2",
         "--config.rl.steps=2", "--config.rl.prompts_per_step=1", "--config.rl.N_prime=4",
         "--config.rl.N=4", "--config.rl.max_new_tokens=4", "--config.rl.warmup_steps=0",
         "--config.rl.checkpoint_every=1", "--config.rl.microbatch_rows=2",
         "--config.eval.num_prompts=2", "--config.eval.num_samples=2", "--config.eval.max_new_tokens=4",
         "--config.eval.prompts_per_batch=2"]
  if name.startswith("math"):
    out += [f"--config.task.data_dir={fix['math']}", "--config.task.num_shots=1"]
  if name == "math_bon32":
    out += ["--config.verifier.steps=2", "--config.verifier.num_prompts=2",
            "--config.verifier.holdout_prompts=2", "--config.verifier.num_samples=2",
            "--config.verifier.max_new_tokens=4", "--config.verifier.batch_size=4",
            "--config.verifier.warmup_steps=0", "--config.verifier.ks=(1, 2)",
            "--config.verifier.prompts_per_batch=2"]
  return out


def run_main(args: list[str], log: str, devices: int) -> dict:
  flag = f" --xla_force_host_platform_device_count={devices}"
  env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + flag,
             PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  t0 = time.perf_counter()
  with open(log, "w") as f:
    proc = subprocess.Popen([sys.executable, "-m", "bon_jax.main", *args], cwd=ROOT, env=env,
                            stdout=f, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
  with open(log, errors="replace") as f:  # The pipeline's "stage NAME: S s, peak RSS so far G GiB" lines.
    stages = [{"stage": m[1], "seconds": float(m[2]), "peak_rss_gib": float(m[3])}
              for m in re.finditer(r"^stage (.+): ([\d.]+) s, peak RSS so far ([\d.]+) GiB$", f.read(), re.M)]
  return {"seconds": time.perf_counter() - t0, "peak_rss": usage.ru_maxrss * 1024,
          "exit": os.waitstatus_to_exitcode(status), "log": log, "stages": stages}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--dir", required=True)
  ap.add_argument("--configs", default="math_bon32,math_pass32,humaneval_pass16")
  ap.add_argument("--lora_rank", type=int, default=16)
  ap.add_argument("--dtype", default="bfloat16", help="config.model.dtype (the checkpoint is bf16)")
  ap.add_argument("--devices", type=int, default=8,
                  help="simulated CPU devices = the FSDP axis of the mesh (1, devices, 1); the configs' is 8."
                       " The simulated devices share the host's RAM: each holds its own gathered layers")
  ap.add_argument("--json", default="")
  args = ap.parse_args()
  os.makedirs(args.dir, exist_ok=True)
  fix_dir = os.path.join(args.dir, "fixtures")
  if os.path.exists(os.path.join(fix_dir, "ckpt")):
    fix = {"math": os.path.join(fix_dir, "MATH"), "tokenizer": os.path.join(fix_dir, "tokenizer.model"),
           "ckpt": os.path.join(fix_dir, "ckpt")}
  else:
    fix = write_fixtures(fix_dir)
  rows = []
  for name in args.configs.split(","):
    tag = f"{name}_r{args.lora_rank}_{args.dtype}_d{args.devices}"
    wd = os.path.join(args.dir, tag)
    cmd = [f"--config=configs/{name}.py", f"--workdir={wd}", *overrides(name, fix, args.lora_rank, args.dtype, args.devices)]
    row = {"config": name, "lora_rank": args.lora_rank, "dtype": args.dtype, "devices": args.devices,
           "command": "python -m bon_jax.main " + " ".join(cmd)}
    for attempt in ("first", "resume"):
      r = run_main(cmd, os.path.join(args.dir, f"{tag}.{attempt}.log"), args.devices)
      row[attempt] = r
      print(f"{name} (lora_rank={args.lora_rank}) {attempt}: exit {r['exit']}, {r['seconds']:.0f} s,"
            f" peak RSS {r['peak_rss'] / GiB:.2f} GiB ({r['log']})", flush=True)
      for st in r["stages"]:
        print(f"  {st['stage']}: {st['seconds']:.0f} s, peak RSS so far {st['peak_rss_gib']:.2f} GiB", flush=True)
      if r["exit"]:
        break
      path = os.path.join(wd, "compare.json")
      row[f"{attempt}_compare"] = open(path).read() if os.path.exists(path) else None
    row["resume_equal"] = row.get("first_compare") is not None and row.get("first_compare") == row.get(
        "resume_compare")
    rows.append(row)
    if args.json:
      with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
  print(json.dumps([{k: v for k, v in r.items() if not k.endswith("_compare")} for r in rows], indent=1))


if __name__ == "__main__":
  main()
