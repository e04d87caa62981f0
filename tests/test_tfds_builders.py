"""bon_jax.tfds_builders: tfds.load / tfds.data_source give exactly the trainers' problems."""

import json
import logging

import pytest
import tensorflow_datasets as tfds

from bon_jax import defaults
from bon_jax import experiment
from bon_jax import tfds_builders
from bon_jax.tasks import countdown
from bon_jax.tasks import hendrycks_math
from bon_jax.tasks import humaneval
from bon_jax.tasks import registry
from configs import demo


def _problems(name, split, data_dir, **kw):
  return tfds_builders.problems(tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir, **kw)),
                                name)


def test_builders_are_in_tfds_listing():
  assert {"bon_countdown", "bon_hendrycks_math", "bon_humaneval"} <= set(tfds.list_builders())


def test_tfds_load_of_the_embedded_task_equals_the_default_tasks_problems(tmp_path):
  config = defaults.base_config()
  train_set, test_set = experiment.make_task_splits(config.task)  # What the trainers read.
  assert _problems("bon_countdown", "test", tmp_path) == test_set
  assert _problems("bon_countdown", "train", tmp_path) == train_set
  # The pipeline's path with the default task's options: its registered config, by name.
  assert experiment.make_task_splits(config.task, str(tmp_path)) == (train_set, test_set)
  # The records are the task module's own prompt and SFT target functions.
  rec = next(iter(tfds.as_numpy(tfds.load("bon_countdown", split="test", data_dir=tmp_path))))
  assert rec["prompt"].decode() == countdown.prompt_text(test_set[0])
  assert rec["reference"].decode() == countdown.sft_targets(
      test_set[0], tfds_builders.np.random.default_rng(0))


def test_data_source_and_other_task_options_get_their_own_config(tmp_path):
  config = demo.get_config()
  config.task.num_train, config.task.num_test, config.task.seed = 40, 12, 7
  cfg = tfds_builders.countdown_config(config.task.to_dict())
  builder = tfds_builders.BonCountdown(config=cfg, data_dir=tmp_path, file_format="array_record")
  builder.download_and_prepare()
  src = builder.as_data_source(split="test")
  want_train, want_test = experiment.make_task_splits(config.task)
  assert len(src) == 12 and tfds_builders.problems(src) == want_test
  assert tfds_builders.problems(builder.as_data_source(split="train")) == want_train
  assert cfg.name != "demo" and cfg.name == tfds_builders.countdown_config(config.task.to_dict()).name


def test_math_from_the_manual_dir_reports_bad_records_one_line_each(tmp_path, caplog):
  root = tmp_path / "MATH"
  good = {"problem": "What is $1+1$?", "level": "Level 1", "type": "Algebra",
          "solution": r"It is $\boxed{2}$."}
  for split in ("train", "test"):
    (root / split / "algebra").mkdir(parents=True)
    for n in range(3):
      (root / split / "algebra" / f"{n}.json").write_text(json.dumps({**good, "problem": f"{split} {n}"}))
  bad = root / "test" / "algebra" / "9.json"
  bad.write_text('{"problem": "cut off')
  with caplog.at_level(logging.WARNING):
    got = _problems("bon_hendrycks_math", "test", tmp_path / "tfds", download_and_prepare_kwargs={
        "download_config": tfds.download.DownloadConfig(manual_dir=str(root))})
  assert got == hendrycks_math.load_math(str(root / "test"))
  assert [p.problem for p in got] == ["test 0", "test 1", "test 2"]
  assert [l for l in caplog.text.splitlines() if str(bad) in l], caplog.text


def test_humaneval_from_the_installed_package(tmp_path):
  got = _problems("bon_humaneval", "test", tmp_path)
  assert [p.as_dict() for p in got] == [
      {k: d[k] for k in ("task_id", "prompt", "test", "entry_point", "canonical_solution")}
      for d in humaneval.load_humaneval()]


def _math_folder(root, bad=None):
  good = {"problem": "What is $1+1$?", "level": "Level 1", "type": "Algebra",
          "solution": r"It is $\boxed{2}$."}
  for split in ("train", "test"):
    for n, (level, subject) in enumerate([("Level 1", "Algebra"), ("Level 3", "Geometry"),
                                          ("Level ?", "Algebra"), ("Level 3", "Algebra")]):
      path = root / split / subject.lower() / f"{n}.json"
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps({**good, "level": level, "type": subject, "problem": f"{split} {n}"}))


@pytest.mark.parametrize("name", ["countdown", "hendrycks_math", "humaneval"])
def test_trainers_read_through_tfds_the_same_problems(tmp_path, name):
  from configs import humaneval_pass16, math_bon32  # pylint: disable=g-import-not-at-top

  config = {"countdown": demo, "hendrycks_math": math_bon32, "humaneval": humaneval_pass16}[name].get_config()
  if name == "countdown":
    config.task.num_train, config.task.num_test = 50, 10
  if name == "hendrycks_math":
    _math_folder(tmp_path / "MATH")
    config.task.data_dir, config.task.levels, config.task.subjects = str(tmp_path / "MATH"), (3,), ("algebra",)
  if name == "humaneval":
    config.task.seed, config.task.num_test = 3, 20
  direct = registry.load_splits(config.task)
  via_tfds = experiment.make_task_splits(config.task, str(tmp_path / "tfds"))
  assert via_tfds == direct and len(direct[1]) > 0
  assert any((tmp_path / "tfds").iterdir())
  if name == "hendrycks_math":
    assert [p.problem for p in direct[1]] == ["test 3"]
