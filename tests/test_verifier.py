"""The learned verifier: AUC, padding invariance, BCE training, token packing."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bon_jax import bon
from bon_jax import config_lib
from bon_jax import defaults
from bon_jax import models
from bon_jax import trainer_lib
from bon_jax import validation
from bon_jax import verifier
from bon_jax.tasks import base as task_lib
from bon_jax.tasks import registry

VOCAB = 64


@pytest.fixture(scope="module")
def model():
  return models.make_model(preset="micro", vocab_size=VOCAB)


def _pair_count_auc(scores, labels):
  pos = [s for s, l in zip(scores, labels) if l]
  neg = [s for s, l in zip(scores, labels) if not l]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pair_counting_with_ties(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 40))
  scores = rng.integers(0, 6, size=n).astype(float)  # Many ties.
  labels = rng.random(n) < 0.4
  labels[:2] = [True, False]
  assert verifier.auc(scores, labels) == pytest.approx(_pair_count_auc(scores, labels), abs=1e-12)


def test_auc_of_one_class_is_nan():
  assert np.isnan(verifier.auc([0.1, 0.2], [1, 1]))


def test_join_prompt_completion_matches_a_python_loop():
  rng = np.random.default_rng(0)
  b, n, p, t = 3, 2, 5, 4
  prompts = np.zeros((b, p), np.int32)
  comps = np.zeros((b, n, t), np.int32)
  want_tok = np.zeros((b, n, p + t), np.int32)
  want_mask = np.zeros((b, n, p + t - 1), np.float32)
  for i in range(b):
    plen = int(rng.integers(1, p + 1))
    prompts[i, :plen] = rng.integers(2, VOCAB, plen)
    for j in range(n):
      clen = int(rng.integers(0, t + 1))
      comps[i, j, :clen] = rng.integers(1, VOCAB, clen)
      seq = list(prompts[i, :plen]) + list(comps[i, j, :clen])
      want_tok[i, j, : len(seq)] = seq
      want_mask[i, j, plen - 1 : plen - 1 + clen] = 1.0
  tokens, mask = verifier.join_prompt_completion(jnp.asarray(prompts), jnp.asarray(comps))
  np.testing.assert_array_equal(tokens, want_tok)
  np.testing.assert_array_equal(mask, want_mask)


def test_score_reads_the_last_real_token_and_ignores_padding(model):
  params = verifier.init_verifier(model, jax.random.key(0))
  score = jax.jit(lambda p, t: verifier.score(model, p, t))
  tokens = jnp.array([[2, 5, 6, 7, 0, 0], [2, 9, 0, 0, 0, 0]])
  base = score(params, tokens)
  # More right padding, and the same rows with their last real token changed.
  longer = jnp.pad(jnp.concatenate([tokens, tokens.at[0, 3].set(8).at[1, 1].set(8)]), ((0, 0), (0, 7)))
  padded, changed = jnp.split(score(params, longer), 2)
  np.testing.assert_allclose(padded, base, rtol=1e-5, atol=1e-6)
  assert np.all(np.abs(np.asarray(changed - base)) > 1e-6)


def _synthetic(rng, num, length=10):
  """Sequences whose label is whether the last real token is even (separable)."""
  tokens = np.zeros((num, length), np.int32)
  labels = np.zeros(num, np.float32)
  for i in range(num):
    n = int(rng.integers(3, length - 2))
    tokens[i, 0] = models.BOS_ID
    tokens[i, 1:n] = rng.integers(3, VOCAB, n - 1)
    labels[i] = float(tokens[i, n - 1] % 2 == 0)
  return tokens, labels


def test_bce_training_separates_synthetic_data_and_bo_k_follows(model):
  rng = np.random.default_rng(0)
  tokens, labels = _synthetic(rng, 512)
  params = verifier.init_verifier(model, jax.random.key(1))
  held_tokens, held_labels = _synthetic(rng, 96)
  held = {"tokens": held_tokens.reshape(24, 4, -1), "labels": held_labels.reshape(24, 4)}
  before = verifier.evaluate_verifier(model, params, held, ks=(1, 4))
  params, hist = verifier.train_verifier(model, params, tokens, labels, steps=60, batch_size=32,
                                         learning_rate=3e-3, seed=0)
  assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
  after = verifier.evaluate_verifier(model, params, held, ks=(1, 4))
  assert after["auc"] > 0.95 and before["auc"] < 0.8
  # Bo-1 is the mean label whatever the verifier; Bo-4 approaches the oracle pass@4.
  assert after["bo@k"][0] == pytest.approx(held_labels.mean(), abs=1e-6)
  assert after["bo@k"][1] > after["pass@k"][1] - 0.1
  assert after["pass@k"][1] == pytest.approx(float(np.mean(bon.pass_at_k(held["labels"], 4))))


@pytest.mark.parametrize("seed", range(4))
def test_pairwise_ranking_loss_matches_pair_enumeration(seed):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(5, 6)).astype(np.float32)
  labels = (rng.random((5, 6)) < 0.4).astype(np.float32)
  labels[0] = 1.0  # A prompt with no wrong sample contributes no pair.
  terms = [np.logaddexp(0.0, logits[g, j] - logits[g, i])
           for g in range(5) for i in range(6) for j in range(6) if labels[g, i] and not labels[g, j]]
  got = float(verifier.pairwise_ranking_loss(logits, labels))
  assert got == pytest.approx(float(np.mean(terms)), rel=1e-5)
  assert float(verifier.pairwise_ranking_loss(logits, np.ones_like(labels))) == 0.0


def test_within_prompt_auc_sees_through_prompt_difficulty():
  rng = np.random.default_rng(0)
  easy = rng.random(40) < 0.5
  labels = (rng.random((40, 8)) < np.where(easy, 0.7, 0.1)[:, None]).astype(np.float32)
  by_prompt = np.repeat(easy[:, None].astype(float), 8, axis=1) + 1e-3 * rng.random((40, 8))
  # Scoring only "is this prompt easy" ranks samples well overall, but not within prompts.
  assert verifier.auc(by_prompt, labels) > 0.75
  mixed = [g for g in range(40) if 0 < labels[g].sum() < 8]
  want = np.mean([_pair_count_auc(by_prompt[g], labels[g]) for g in mixed])
  assert verifier.within_prompt_auc(by_prompt, labels) == pytest.approx(want)
  assert verifier.within_prompt_auc(labels + by_prompt, labels) == 1.0
  assert np.isnan(verifier.within_prompt_auc(np.zeros((2, 3)), np.ones((2, 3))))


def test_ranking_loss_trains_on_whole_groups(model):
  rng = np.random.default_rng(1)
  tokens, labels = _synthetic(rng, 512)
  params = verifier.init_verifier(model, jax.random.key(1))
  grouped_t, grouped_l = tokens.reshape(128, 4, -1), labels.reshape(128, 4)
  with pytest.raises(ValueError, match="needs grouped data"):
    verifier.train_verifier(model, params, tokens, labels, steps=1, rank_weight=1.0)
  params, hist = verifier.train_verifier(model, params, grouped_t, grouped_l, steps=60, batch_size=32,
                                         learning_rate=3e-3, rank_weight=1.0, seed=0)
  mixed = [h["rank"] for h in hist if h["rank"] > 0]
  assert np.mean(mixed[-10:]) < 0.5 * np.mean(mixed[:5])
  assert hist[0]["loss"] == pytest.approx(hist[0]["bce"] + hist[0]["rank"], rel=1e-5)
  held_t, held_l = _synthetic(rng, 96)
  got = verifier.evaluate_verifier(model, params, {"tokens": held_t.reshape(24, 4, -1),
                                                   "labels": held_l.reshape(24, 4)}, ks=(1, 4))
  assert got["within_prompt_auc"] > 0.9


def test_learned_verifier_scores_prompt_plus_completion(model):
  class Tok:
    def encode(self, text):
      return [3 + ord(c) % 50 for c in text]

  class Task:
    @staticmethod
    def prompt_text(p):
      return p

  params = verifier.init_verifier(model, jax.random.key(2))
  comps = np.array([[[7, 8, 1, 0], [9, 1, 0, 0]], [[4, 4, 4, 4], [1, 0, 0, 0]]], np.int32)
  fn = verifier.learned_verifier(model, params, tokenizer=Tok(), task=Task, batch_size=3)
  got = fn(["ab", "c"], None, comps)
  # The same sequences packed by hand: [BOS] prompt completion, PAD to the same length.
  want = np.zeros((2, 2, 3 + 4), np.int32)
  for b, prompt in enumerate(["ab", "c"]):
    for n in range(2):
      seq = [models.BOS_ID, *Tok().encode(prompt), *[int(x) for x in comps[b, n] if x]]
      want[b, n, : len(seq)] = seq
  np.testing.assert_allclose(got, verifier.score_batched(model, params, want, 3), rtol=1e-5, atol=1e-6)
  assert got.shape == (2, 2) and abs(got[0, 0] - got[0, 1]) > 1e-6


def test_grader_verifier_grades_with_the_task():
  from bon_jax.tasks import countdown
  p = countdown.make_problem((3, 4, 7, 9), 60)
  got = verifier.grader_verifier(registry.COUNTDOWN)([p], [["\\boxed{3*(4+7+9)}", "\\boxed{7*9-3}"]], None)
  np.testing.assert_array_equal(got, [[1.0, 0.0]])


def test_saved_verifier_restores_equal(model, tmp_path):
  params = verifier.init_verifier(model, jax.random.key(3))
  verifier.save_verifier(str(tmp_path / "v"), params)
  back = verifier.load_verifier(str(tmp_path / "v"), model)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, back)
  with pytest.raises(FileNotFoundError, match="not found"):
    verifier.load_verifier(str(tmp_path / "missing"), model)


def test_verifier_stage_trains_on_graded_policy_samples_and_saves(tmp_path):
  from bon_jax import tokenizer as tokenizer_lib
  from bon_jax.tasks import countdown
  tok = tokenizer_lib.task_tokenizer()
  train_set, test_set = countdown.make_splits(seed=0, num_train=4, num_test=2)
  model = models.make_model(preset="micro", vocab_size=tok.vocab_size)
  policy = verifier.init_verifier(model, jax.random.key(4))["backbone"]
  cfg = defaults.verifier_config()
  # steps=0: BCE training is pinned above; this checks the plumbing (sample, grade, pack, save).
  cfg.update(dict(num_prompts=4, holdout_prompts=2, num_samples=2, max_new_tokens=4, steps=0,
                  warmup_steps=0, ks=(1, 2, 4), prompts_per_batch=2))
  params, report = verifier.run_verifier_stage(
      cfg, model=model, policy_params=policy, tokenizer=tok, task=registry.COUNTDOWN,
      train_problems=train_set, test_problems=test_set, out_dir=str(tmp_path))
  # A random policy never solves countdown: all labels 0, AUC undefined, Bo-k = pass@k = 0.
  assert report["ks"] == [1, 2] and report["label_mean"] == 0.0 and np.isnan(report["auc"])
  assert report["bo@k"] == [0.0, 0.0] and np.isnan(report["final_loss"])
  back = verifier.load_verifier(str(tmp_path / "verifier"), model)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, back)
  with pytest.raises(ValueError, match="needs 4 train and 3 held-out"):
    cfg.holdout_prompts = 3
    verifier.run_verifier_stage(cfg, model=model, policy_params=policy, tokenizer=tok, task=registry.COUNTDOWN,
                                train_problems=train_set, test_problems=test_set)


def test_verifier_stage_stopped_mid_training_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
  from bon_jax import tokenizer as tokenizer_lib
  from bon_jax.tasks import countdown
  tok = tokenizer_lib.task_tokenizer()
  train_set, test_set = countdown.make_splits(seed=0, num_train=8, num_test=2, solution_format="steps")
  model = models.make_model(preset="micro", vocab_size=tok.vocab_size)
  policy = verifier.init_verifier(model, jax.random.key(4))["backbone"]
  cfg = defaults.verifier_config()
  # Task-made groups give both labels; process labels exercise every saved array.
  cfg.update(dict(num_prompts=4, synthetic_prompts=4, holdout_prompts=2, num_samples=2, max_new_tokens=40,
                  steps=4, checkpoint_every=2, warmup_steps=0, batch_size=4, ks=(1, 2), prompts_per_batch=2,
                  pooling="min", step_weight=1.0))
  run = lambda out: verifier.run_verifier_stage(
      cfg, model=model, policy_params=policy, tokenizer=tok, task=registry.COUNTDOWN,
      train_problems=train_set, test_problems=test_set, out_dir=str(out))
  full_params, full_report = run(tmp_path / "full")

  real_step = verifier.make_verifier_step

  def preempted_at_step_3(*args, **kwargs):
    update, calls = real_step(*args, **kwargs), []
    def step(state, batch):
      calls.append(1)
      if len(calls) == 3:
        raise KeyboardInterrupt("preempted")
      return update(state, batch)
    return step

  monkeypatch.setattr(verifier, "make_verifier_step", preempted_at_step_3)
  with pytest.raises(KeyboardInterrupt):
    run(tmp_path / "cut")
  monkeypatch.setattr(verifier, "make_verifier_step", real_step)
  assert trainer_lib.checkpoint_manager(str(tmp_path / "cut" / "train"), cfg).latest_step() == 2
  # The rerun trains on the saved samples: drawing new ones would be a different stage.
  monkeypatch.setattr(verifier, "make_verifier_data", lambda *a, **k: pytest.fail("samples drawn again"))
  cut_params, cut_report = run(tmp_path / "cut")
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), full_params, cut_params)
  same = lambda r: json.dumps(r, sort_keys=True)  # NaN AUCs (a random policy's held-out samples) compare equal.
  assert same(cut_report) == same(full_report) and np.isfinite(full_report["final_loss"])
  logged = [json.loads(line)["step"] for line in open(tmp_path / "cut" / "train" / "metrics.jsonl")]
  assert logged == [1, 2, 3, 4]


def test_min_pooling_is_a_soft_minimum_of_the_per_token_head_over_real_tokens(model):
  params = verifier.init_verifier(model, jax.random.key(0))
  tokens = jnp.array([[2, 5, 6, 7, 0, 0], [2, 9, 0, 0, 0, 0]])
  got = verifier.score(model, params, tokens, pooling="min")
  # Independently: the head on every position's hidden state, PAD excluded.
  h = model.apply({"params": params["backbone"]}, tokens, return_hidden_states=True).hidden_states
  per_token = np.asarray(h @ params["head"]["kernel"][:, 0] + params["head"]["bias"][0], np.float64)
  for row, toks in enumerate(np.asarray(tokens)):
    real = per_token[row][toks != 0]
    assert float(got[row]) == pytest.approx(-np.logaddexp.reduce(-real), rel=1e-4, abs=1e-4)
    assert float(got[row]) <= real.min() + 1e-5
  # Padding does not change it; a change at any real position (not only the last) does.
  longer = jnp.pad(tokens, ((0, 0), (0, 5)))
  np.testing.assert_allclose(verifier.score(model, params, longer, pooling="min"), got, rtol=1e-5, atol=1e-5)
  changed = verifier.score(model, params, tokens.at[0, 1].set(8), pooling="min")
  assert abs(float(changed[0] - got[0])) > 1e-6
  with pytest.raises(ValueError, match="pooling"):
    verifier.score(model, params, tokens, pooling="mean")


def _error_anywhere(rng, num, length=12):
  """Label 1 unless some token is 3 (a 'false step'), wherever it stands."""
  tokens = np.zeros((num, length), np.int32)
  labels = np.zeros(num, np.float32)
  for i in range(num):
    n = int(rng.integers(6, length))
    tokens[i, 0] = models.BOS_ID
    tokens[i, 1:n] = rng.integers(4, VOCAB, n - 1)
    if rng.random() < 0.5:
      tokens[i, int(rng.integers(1, n - 1))] = 3  # never the last real token
    labels[i] = float(3 not in tokens[i])
  return tokens, labels


def test_min_pooling_trains_to_veto_an_error_anywhere(model):
  rng = np.random.default_rng(0)
  tokens, labels = _error_anywhere(rng, 512)
  held_t, held_l = _error_anywhere(rng, 128)
  held = {"tokens": held_t.reshape(32, 4, -1), "labels": held_l.reshape(32, 4)}
  params = verifier.init_verifier(model, jax.random.key(1))
  before = verifier.evaluate_verifier(model, params, held, ks=(1, 4), pooling="min")
  params, hist = verifier.train_verifier(model, params, tokens, labels, steps=60, batch_size=32,
                                         learning_rate=3e-3, pooling="min", seed=0)
  after = verifier.evaluate_verifier(model, params, held, ks=(1, 4), pooling="min")
  assert before["auc"] < 0.8 and after["auc"] > 0.97, (before, after)
  assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]


@pytest.mark.parametrize("target", [0.6, 0.75, 0.9])
def test_noisy_grader_has_the_target_within_prompt_auc_and_is_a_function_of_the_text(target):
  class _Task:  # Right iff the text says so.
    grade = staticmethod(lambda problem, text: text.startswith("right"))
    grade_batch = staticmethod(lambda problems, texts: task_lib.grade_each(_Task.grade, problems, texts))
    answer_key = staticmethod(lambda problem, text: None)

  rng = np.random.default_rng(0)
  problems = [f"p{i}" for i in range(3000)]
  texts = [[("right" if rng.random() < 0.4 else "wrong") + f" {j} {rng.integers(1 << 30)}" for j in range(8)]
           for _ in problems]
  fn = verifier.noisy_grader_verifier(_Task, target_auc=target, seed=3)
  scores = fn(problems, texts, None)
  labels = np.array([[t.startswith("right") for t in g] for g in texts], np.float32)
  # Mean of ~2700 per-prompt AUCs: standard error < 0.005.
  assert verifier.within_prompt_auc(scores, labels) == pytest.approx(target, abs=0.015)
  np.testing.assert_array_equal(fn(problems, texts, None), scores)  # Same texts, same scores.
  other = verifier.noisy_grader_verifier(_Task, target_auc=target, seed=4)(problems, texts, None)
  assert not np.allclose(other, scores)
  exact = verifier.noisy_grader_verifier(_Task, target_auc=1.0)(problems, texts, None)
  np.testing.assert_array_equal(exact, labels)
  with pytest.raises(ValueError, match="target AUC"):
    verifier.noisy_grader_verifier(_Task, target_auc=0.5)


def test_task_made_data_packs_labelled_examples_like_sampled_data():
  from bon_jax import tokenizer as tokenizer_lib
  from bon_jax.tasks import countdown

  tok = tokenizer_lib.task_tokenizer()
  train, _ = countdown.make_splits(seed=1, num_train=5, num_test=0, solution_format="steps")
  data = verifier.task_made_data(tokenizer=tok, task=registry.COUNTDOWN, problems=train, num_samples=4,
                                 max_new_tokens=40, rng=np.random.default_rng(0))
  assert data["tokens"].shape[:2] == (5, 4) and data["labels"].tolist() == [[1.0, 0.0, 1.0, 0.0]] * 5
  for p, group, labels in zip(train, data["tokens"], data["labels"]):
    for seq, label in zip(group, labels):
      text = tok.decode(seq.tolist())  # [BOS] prompt completion, up to EOS.
      assert text.startswith(countdown.prompt_text(p))
      assert countdown.grade(p, text[len(countdown.prompt_text(p)):]) == bool(label)
  with pytest.raises(ValueError, match="verifier_examples"):
    expr = countdown.make_splits(seed=1, num_train=2, num_test=0)[0]
    verifier.task_made_data(tokenizer=tok, task=registry.COUNTDOWN, problems=expr, num_samples=2, max_new_tokens=8,
                            rng=np.random.default_rng(0))


def test_step_supervision_labels_the_token_that_completes_each_step():
  from bon_jax import input_pipeline
  from bon_jax import tokenizer as tokenizer_lib
  from bon_jax.tasks import countdown

  tok = tokenizer_lib.task_tokenizer()
  train, _ = countdown.make_splits(seed=1, num_train=6, num_test=0, solution_format="steps")
  data = verifier.task_made_data(tokenizer=tok, task=registry.COUNTDOWN, problems=train, num_samples=4,
                                 max_new_tokens=40, rng=np.random.default_rng(0), with_steps=True)
  tokens, labels, mask = data["tokens"], data["step_labels"], data["step_mask"]
  assert labels.shape == mask.shape == tokens.shape
  for p, group, glabels, gmask in zip(train, tokens, labels, mask):
    prompt = countdown.prompt_text(p)
    for seq, lab, m in zip(group, glabels, gmask):
      text = tok.decode(seq.tolist())[len(prompt):]
      *checks, (_, verdict) = countdown.step_labels(p, text)
      want = {}  # position -> label: each check at the first token whose prefix covers text[:end].
      for end, label in checks:
        t = next(t for t in range(len(seq)) if len(tok.decode(seq[: t + 1].tolist())) - len(prompt) >= end)
        assert tok.decode(seq[: t + 1].tolist())[len(prompt):].startswith(text[:end])
        want[t] = label
      eos = int(np.flatnonzero(seq == models.EOS_ID)[0])
      want[eos] = verdict
      pos = np.flatnonzero(m)
      assert pos.tolist() == sorted(want) and lab[pos].tolist() == [want[t] for t in sorted(want)]
  # A task without step labels: no supervision.
  plain = verifier.step_supervision(tok, object(), train, np.ones((6, 2, 3), np.int32),
                                    input_pipeline.encode_prompts(tok, ["1 2 -> 3:"] * 6), 9)
  assert not plain[1].any()


def test_step_loss_is_the_masked_bce_of_the_per_token_head_and_trains_it(model):
  rng = np.random.default_rng(0)
  tokens, labels = _error_anywhere(rng, 256)
  # Process labels: 0 from the first 'false step' (token 3) on, 1 before it, at every real token.
  real = tokens != 0
  step_labels = (np.cumsum(tokens == 3, axis=-1) == 0).astype(np.float32)
  step_mask = real.astype(np.float32)
  params = verifier.init_verifier(model, jax.random.key(1))
  optimizer = optax.sgd(0.0)
  own = jax.tree.map(jnp.array, params)  # The step donates its state.
  state = trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=own, opt_state=optimizer.init(own))
  step = verifier.make_verifier_step(model, optimizer, pooling="min", step_weight=0.5)
  batch = {"tokens": tokens[:8, None], "labels": labels[:8, None],
           "step_labels": step_labels[:8, None], "step_mask": step_mask[:8, None]}
  per_token = np.asarray(verifier.token_logits(model, params, tokens[:8]), np.float64)
  want = np.log1p(np.exp(-np.abs(per_token))) + np.maximum(per_token, 0) - per_token * step_labels[:8]
  want = (want * step_mask[:8]).sum() / step_mask[:8].sum()
  _, metrics = step(state, batch)
  assert float(metrics["step_bce"]) == pytest.approx(want, rel=1e-4)
  assert float(metrics["loss"]) == pytest.approx(float(metrics["bce"]) + 0.5 * want, rel=1e-4)
  # Trained on the process labels alone (outcome BCE is there too), the pooled score separates.
  held_t, held_l = _error_anywhere(rng, 128)
  held = {"tokens": held_t.reshape(32, 4, -1), "labels": held_l.reshape(32, 4)}
  params, hist = verifier.train_verifier(model, params, tokens, labels, steps=60, batch_size=32,
                                         learning_rate=3e-3, pooling="min", seed=0, step_weight=1.0,
                                         step_labels=step_labels, step_mask=step_mask)
  assert verifier.evaluate_verifier(model, params, held, ks=(1, 4), pooling="min")["auc"] > 0.97
  assert hist[-1]["step_bce"] < 0.5 * hist[0]["step_bce"]
  with pytest.raises(ValueError, match="pooling='min'"):
    verifier.make_verifier_step(model, optimizer, pooling="last", step_weight=1.0)
  with pytest.raises(ValueError, match="shaped like tokens"):
    verifier.train_verifier(model, params, tokens, labels, steps=1, pooling="min", step_weight=1.0)


@pytest.mark.parametrize("pooling,rank_weight,step_weight", [("last", 0.5, 0.0), ("min", 0.5, 0.7)])
def test_microbatched_step_equals_the_one_pass_step(model, pooling, rank_weight, step_weight):
  """Gradient accumulation over microbatches of whole groups (with or without rematerialised blocks):
  the same loss, metrics and update."""
  rng = np.random.default_rng(3)
  g, n, length = 8, 4, 12
  tokens = rng.integers(3, VOCAB, (g, n, length)).astype(np.int32)
  tokens[:, :, 0] = models.BOS_ID
  tokens[2, 1, 6:] = 0
  labels = (rng.random((g, n)) < 0.4).astype(np.float32)
  labels[0] = 1.0  # A group with no pair, and (below) one with no labelled position: the counts differ.
  step_mask = (tokens != 0).astype(np.float32) * (rng.random((g, n, length)) < 0.5)
  step_mask[5] = 0.0
  batch = {"tokens": tokens, "labels": labels}
  if step_weight:
    batch |= {"step_labels": (rng.random((g, n, length)) < 0.5).astype(np.float32), "step_mask": step_mask}
  params = verifier.init_verifier(model, jax.random.key(1))
  optimizer = optax.sgd(1.0)  # params - gradient: the update compares the gradients themselves.

  def run(k):
    own = jax.tree.map(jnp.array, params)  # The step donates its state.
    state = trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=own, opt_state=optimizer.init(own))
    remat = k == "remat"  # Rematerialised blocks, microbatches of 2 groups: the same step too.
    step = verifier.make_verifier_step(model, optimizer, rank_weight=rank_weight, pooling=pooling,
                                       step_weight=step_weight, microbatch_groups=2 if remat else k,
                                       remat_blocks=remat)
    return jax.device_get(step(state, batch))

  one_state, one = run(0)
  for k in (1, 2, 4, "remat"):
    state, metrics = run(k)
    for name in ("loss", "bce", "rank", "step_bce", "accuracy", "grad_norm"):
      assert float(metrics[name]) == pytest.approx(float(one[name]), rel=1e-5, abs=1e-7), (k, name)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(one_state.params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert float(one["rank"]) > 0 and (not step_weight or float(one["step_bce"]) > 0)
  with pytest.raises(ValueError, match="must divide the step's 8 groups"):
    run(3)


@pytest.mark.parametrize("value,expected", [
    (-1, "microbatch_groups must be an integer >= 0"),
    (3, "microbatch_groups=3 must divide the 64 sequences of a verifier step"),
])
def test_bad_microbatch_groups_is_a_one_line_config_error(value, expected):
  config = defaults.base_config()
  config.verifier.steps = 10
  config.verifier.microbatch_groups = value
  with pytest.raises(config_lib.UserError, match=expected) as e:
    validation.validate(config)
  assert "\n" not in str(e.value)
  config.verifier.microbatch_groups = 8  # Divides the 64 sequences: accepted.
  validation.validate(config)
