"""The whole job: SFT -> verifier -> every algorithm through one loop -> comparison."""

import json
import os
import shutil

import numpy as np
import pytest

from bon_jax import config_lib
from bon_jax import pipeline
from bon_jax import validation
from configs import countdown_bon
from configs import demo


def _pipeline_config():
  c = countdown_bon.get_config()
  c.model.preset = "micro"
  c.task.num_train = 64
  c.task.num_test = 8
  c.train.steps = 2
  c.train.batch_size = 4
  c.train.warmup_steps = 1
  c.train.checkpoint_every = 2
  c.verifier.steps = 2
  c.verifier.num_prompts = 4
  c.verifier.holdout_prompts = 4
  c.verifier.num_samples = 2
  c.verifier.max_new_tokens = 8
  c.verifier.batch_size = 4
  c.verifier.warmup_steps = 0
  c.verifier.ks = (1, 2)
  c.verifier.prompts_per_batch = 4
  c.algorithms = ("rloo", "bon_rl_v", "sft")
  c.rl.N_prime = 2
  c.rl.N = 2
  c.rl.prompts_per_step = 2
  c.rl.steps = 2
  c.rl.max_new_tokens = 24  # Room for the expert demonstrations of `sft`.
  c.rl.checkpoint_every = 2
  c.eval.num_prompts = 4
  c.eval.num_samples = 4
  c.eval.prompts_per_batch = 4
  c.eval.max_new_tokens = 8
  c.eval.extra_temperatures = (0.5,)
  return c


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("pipeline"))
  results = pipeline.train_and_evaluate(_pipeline_config(), wd)
  return wd, results


def test_every_stage_runs_and_is_evaluated_on_the_same_prompts(pipeline_run):
  wd, results = pipeline_run
  assert list(results) == ["base", "rloo", "bon_rl_v", "sft"]
  for name in ("rloo", "bon_rl_v", "sft"):
    lines = [json.loads(l) for l in open(os.path.join(wd, "rl", name, "metrics.jsonl"))]
    assert lines[-1]["step"] == 2 and np.isfinite(lines[-1]["loss"])
    assert os.path.exists(os.path.join(wd, "rl", name, "eval", "step_2.json"))
    assert os.path.exists(os.path.join(wd, "rl", name, "eval", "step_2_T0.5.json"))
  assert os.path.exists(os.path.join(wd, "verifier", "verifier"))
  ids = {tuple(r["prompt_ids"]) for r in results.values()}
  assert len(ids) == 1  # Paired: every policy on the same prompts.
  for r in results.values():
    # The learned verifier's Bo-k is reported next to the grader's, within [0, 1].
    assert all(0.0 <= v <= 1.0 for v in r["overall"]["bo@k_verifier"])
    assert r["verifier"] == "learned"


def test_comparison_table_has_a_row_per_policy_and_paired_deltas(pipeline_run):
  wd, results = pipeline_run
  table = open(os.path.join(wd, "compare.md")).read()
  rows = [l for l in table.splitlines() if l.startswith("| ") and not l.startswith("| policy")]
  assert [r.split("|")[1].strip() for r in rows] == list(results)
  # The paired delta column is recomputed here from the per-prompt curves.
  d = (np.asarray(results["rloo"]["per_prompt"]["pass@k"])[:, -1]
       - np.asarray(results["base"]["per_prompt"]["pass@k"])[:, -1])
  assert f"{100 * d.mean():+.1f}" in rows[1]
  assert os.path.getsize(os.path.join(wd, "compare.png")) > 1000


def test_rerun_resumes_every_stage_without_rewriting(pipeline_run):
  wd, results = pipeline_run
  # A verifier saved before config.verifier.rank_weight existed loads as if at its default 0.
  report = os.path.join(wd, "verifier", "report.json")
  saved = json.load(open(report))
  del saved["config"]["verifier"]["rank_weight"]
  json.dump(saved, open(report, "w"))
  before = {}
  for root, _, files in os.walk(wd):
    for f in files:
      if f.endswith((".json", ".png", ".md")):
        before[os.path.join(root, f)] = os.path.getmtime(os.path.join(root, f))
  again = pipeline.train_and_evaluate(_pipeline_config(), wd)
  assert {k: v["overall"] for k, v in again.items()} == {k: v["overall"] for k, v in results.items()}
  after = {p: os.path.getmtime(p) for p in before}
  new = [os.path.join(r, f) for r, _, fs in os.walk(wd) for f in fs
         if f.endswith((".json", ".png", ".md")) and os.path.join(r, f) not in before]
  assert after == before and not new, new


def test_partly_trained_verifier_resumes_only_with_its_own_settings(pipeline_run, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(pipeline_run[0], wd)
  os.remove(os.path.join(wd, "verifier", "report.json"))  # As if stopped before the stage finished.
  c = _pipeline_config()
  c.verifier.learning_rate = 0.5
  with pytest.raises(config_lib.UserError, match="another config.verifier"):
    pipeline.train_and_evaluate(c, wd)
  c = _pipeline_config()
  c.verifier.checkpoint_every = 1  # How often it saves, not what it trains: resumes.
  again = pipeline.train_and_evaluate(c, wd)
  assert {k: v["overall"] for k, v in again.items()} == {k: v["overall"] for k, v in pipeline_run[1].items()}
  assert os.path.exists(os.path.join(wd, "verifier", "report.json"))


def test_another_extra_temperature_evaluates_only_that_temperature(pipeline_run):
  wd, results = pipeline_run
  before = {os.path.join(r, f) for r, _, fs in os.walk(wd) for f in fs if f.endswith(".json")}
  c = _pipeline_config()
  c.eval.extra_temperatures = (0.5, 1.5)
  again = pipeline.train_and_evaluate(c, wd)
  assert {k: v["overall"] for k, v in again.items()} == {k: v["overall"] for k, v in results.items()}
  new = {os.path.join(r, f) for r, _, fs in os.walk(wd) for f in fs if f.endswith(".json")} - before
  evals = sorted(os.path.relpath(p, wd) for p in new if "/eval/" in p)
  # One new evaluation per policy, at the new temperature; T = 1 and 0.5 are reused.
  assert evals == sorted(os.path.join(*d, "eval", f"step_{s}_T1.5.json") for d, s in
                         [((), 2), (("rl", "rloo"), 2), (("rl", "bon_rl_v"), 2), (("rl", "sft"), 2)]), evals


def test_stage_with_other_rl_settings_is_refused(pipeline_run):
  wd, _ = pipeline_run
  c = _pipeline_config()
  c.rl.learning_rate = 0.5
  with pytest.raises(config_lib.UserError, match="different config.*rl.learning_rate"):
    pipeline.train_and_evaluate(c, wd)


def test_workdir_identity_ignores_memory_settings_and_keeps_the_rest(tmp_path):
  fields = config_lib.IDENTITY_FIELDS + ("rl",)
  c = _pipeline_config()
  config_lib.prepare_workdir(c, str(tmp_path), fields)
  # Written before rl.microbatch_rows existed: the saved stage still resumes.
  saved = json.load(open(tmp_path / config_lib.CONFIG_FILE))
  del saved["rl"]["microbatch_rows"]
  json.dump(saved, open(tmp_path / config_lib.CONFIG_FILE, "w"))
  c.rl.microbatch_rows = 4  # Speed / memory only: another value resumes too.
  config_lib.prepare_workdir(c, str(tmp_path), fields)
  c.rl.kl_coef = 0.5
  with pytest.raises(config_lib.UserError, match="different config.*rl.kl_coef"):
    config_lib.prepare_workdir(c, str(tmp_path), fields)


def test_fields_added_later_count_at_their_old_defaults(tmp_path):
  fields = config_lib.IDENTITY_FIELDS + ("rl",)
  c = _pipeline_config()
  for section, added in config_lib.ADDED_LATER.items():  # A run made with the old defaults...
    c[section].update(added)
  config_lib.prepare_workdir(c, str(tmp_path), fields)
  saved = json.load(open(tmp_path / config_lib.CONFIG_FILE))
  for section, added in config_lib.ADDED_LATER.items():  # ...saved before the fields existed.
    for name in added:
      del saved[section][name]
  json.dump(saved, open(tmp_path / config_lib.CONFIG_FILE, "w"))
  config_lib.prepare_workdir(c, str(tmp_path), fields)  # At the defaults: resumes.
  c.task.solution_format = "steps"  # Not what the saved run did: refused.
  with pytest.raises(config_lib.UserError, match="different config.*task.solution_format"):
    config_lib.prepare_workdir(c, str(tmp_path), fields)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda c: setattr(c, "algorithms", ("rloo", "ppo")), "stage 'ppo'.*unknown"),
        (lambda c: setattr(c.verifier, "steps", 0), "stage 'bon_rl_v' uses rl.verifier='learned'"),
        (lambda c: setattr(c.verifier, "rank_weight", -1.0), "rank_weight must be a number >= 0"),
        (lambda c: setattr(c, "algorithms", ("rloo", "rloo")), "duplicates"),
        (lambda c: setattr(c.eval, "extra_temperatures", (0.0,)), "extra_temperatures"),
        (lambda c: setattr(c, "algorithms", ("base",)), "names the SFT starting policy"),
    ],
)
def test_bad_pipeline_config_is_one_line(edit, match):
  c = _pipeline_config()
  edit(c)
  with pytest.raises(config_lib.UserError, match=match) as e:
    validation.validate(c)
  assert "\n" not in str(e.value)


def test_overrides_pick_the_algorithm_and_settings_of_a_stage():
  c = demo.get_config()
  c.algorithms = ("rloo", "rl_n1")
  c.rl_overrides.rl_n1 = dict(algorithm="rloo", N_prime=2, learning_rate=1e-3)
  a, b = config_lib.stage_config(c, "rloo"), config_lib.stage_config(c, "rl_n1")
  assert (a.rl.algorithm, a.rl.N_prime) == ("rloo", c.rl.N_prime)
  assert (b.rl.algorithm, b.rl.N_prime, b.rl.learning_rate) == ("rloo", 2, 1e-3)
  assert c.rl.algorithm == "rloo" and c.rl.N_prime == 8  # The shared section is untouched.
