"""The BoN-aware fine-tuning loop: the update's gradient, regularisers, every
algorithm end to end, exact resume, and a learning test that can fail."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bon_jax import algorithms
from bon_jax import config_lib
from bon_jax import defaults
from bon_jax import models
from bon_jax import rl
from bon_jax import sharding
from bon_jax import tokenizer as tokenizer_lib
from bon_jax import trainer_lib
from bon_jax import validation
from bon_jax.tasks import countdown
from bon_jax.tasks import registry
from configs import demo


@pytest.fixture(scope="module")
def setup():
  """The task tokenizer, a few problems, the micro policy and a fixed prompt length."""
  tok = tokenizer_lib.task_tokenizer()
  problems, _ = countdown.make_splits(seed=0, num_train=16, num_test=2)
  # dtype as train_rl spells it (jnp.dtype("float32")), so the model hashes alike and programs are shared.
  model = models.make_model(preset="micro", vocab_size=tok.vocab_size, dtype=jnp.dtype("float32"))
  params = jax.jit(models.init_params, static_argnums=0)(model, jax.random.key(0))  # One compile, not eager.
  prompt_len = max(len(tok.encode(countdown.prompt_text(p))) + 1 for p in problems)
  return tok, problems, model, params, prompt_len


def _batch(vocab, seed=0, b=2, n=3, p=4, t=5):
  """Random right-padded prompt+completion rows, their mask built by hand, random weights."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((b, n, p + t), np.int32)
  mask = np.zeros((b, n, p + t - 1), np.float32)
  for i in range(b):
    plen = int(rng.integers(1, p + 1))
    prompt = [models.BOS_ID, *rng.integers(3, vocab, plen - 1)]
    for j in range(n):
      clen = int(rng.integers(1, t + 1))
      seq = prompt + list(rng.integers(1, vocab, clen))
      tokens[i, j, : len(seq)] = seq
      mask[i, j, plen - 1 : plen - 1 + clen] = 1.0
  return {
      "tokens": jnp.asarray(tokens),
      "completion_mask": jnp.asarray(mask),
      "weights": jnp.asarray(rng.normal(size=(b, n)), jnp.float32),
      "sample_mask": jnp.ones((b, n), jnp.float32),
  }


def _state(params, optimizer):
  params = jax.tree.map(jnp.array, params)  # Donated by the update: a copy.
  state = trainer_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))
  return jax.device_put(state, jax.devices()[0])  # Committed, as in train_rl: the same compiled programs.


def _tree_allclose(a, b, **kw):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw), a, b)


def _sgd_step(model, params, ref, batch, lr, **coefs):
  """params - lr * grad(policy_loss), by plain (eager) autodiff."""
  g = jax.grad(lambda p: rl.policy_loss(model, p, ref, batch, **coefs)[0])(params)
  return jax.tree.map(lambda p, d: p - lr * d, params, g)


def test_update_gradient_is_weighted_sum_of_sequence_logprob_gradients(setup):
  model, params = setup[2], setup[3]
  batch = _batch(model.config.num_embed)
  b, n, length = batch["tokens"].shape

  def reference(p):  # (1/B) sum_r w_r sum_t mask log pi, by teacher forcing.
    logp = models.token_logprobs(model, p, batch["tokens"].reshape(b * n, length))
    seq = jnp.sum(logp * batch["completion_mask"].reshape(b * n, -1), axis=-1)
    return jnp.sum(batch["weights"].reshape(-1) * seq) / b

  want = jax.grad(reference)(params)
  got = jax.grad(lambda p: rl.policy_loss(model, p, None, batch)[0])(params)
  _tree_allclose(got, jax.tree.map(jnp.negative, want), rtol=1e-4, atol=1e-6)
  assert float(rl.policy_loss(model, params, None, batch)[0]) == pytest.approx(-float(reference(params)), rel=1e-5)


def test_kl_is_zero_at_the_reference_and_positive_after_an_update(setup):
  model, params = setup[2], setup[3]
  batch = _batch(model.config.num_embed, seed=1)
  _, at_ref = rl.policy_loss(model, params, params, batch, kl_coef=1.0)
  assert float(at_ref["kl"]) == pytest.approx(0.0, abs=1e-6)
  assert float(at_ref["kl_k3"]) == pytest.approx(0.0, abs=1e-6)
  stepped = _sgd_step(model, params, params, batch, 0.05, kl_coef=0.5)
  moved = rl.policy_loss(model, stepped, params, batch)[1]
  assert float(moved["kl"]) > 1e-4 and float(moved["kl_k3"]) > 0.0
  # The KL term pulls back: a KL-only step from the moved params lowers the KL.
  kl_only = dict(batch, weights=jnp.zeros_like(batch["weights"]))
  back = _sgd_step(model, stepped, params, kl_only, 0.05, kl_coef=1.0)
  assert float(rl.policy_loss(model, back, params, batch)[1]["kl"]) < float(moved["kl"])


def test_kl_gradient_is_exactly_zero_at_the_reference_so_adam_cannot_amplify_noise(setup):
  # With all weights 0 (e.g. every group all-correct) and pi == pi_ref, the only gradient
  # is the KL's: analytically 0, and it must be exactly 0 in float32 too, because Adam
  # normalises any float noise (~1e-9) up to a full-size step.
  model, params = setup[2], setup[3]
  batch = dict(_batch(model.config.num_embed, seed=4), weights=jnp.zeros((2, 3), jnp.float32))
  grads = jax.grad(lambda p: rl.policy_loss(model, p, params, batch, kl_coef=1.0)[0])(params)
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) == 0.0


def test_entropy_bonus_raises_and_its_negative_lowers_entropy(setup):
  model, params = setup[2], setup[3]
  batch = dict(_batch(model.config.num_embed, seed=2), weights=jnp.zeros((2, 3), jnp.float32))
  _, m0 = rl.policy_loss(model, params, None, batch)
  ents = {}
  for coef in (1.0, -1.0):
    # The loss is -coef * (sum of token entropies per policy sample).
    loss, m = rl.policy_loss(model, params, None, batch, entropy_coef=coef)
    assert float(loss) == pytest.approx(-coef * float(m["entropy_seq"]), rel=1e-6)
    stepped = _sgd_step(model, params, None, batch, 0.05, entropy_coef=coef)
    ents[coef] = float(rl.policy_loss(model, stepped, None, batch)[1]["entropy"])
  assert ents[1.0] > float(m0["entropy"]) > ents[-1.0]


# ----------------------------------------------------------------------------
# Whole steps on the micro policy with the task tokenizer.


def _rl_cfg(**kw):
  cfg = defaults.rl_config()
  cfg.N_prime, cfg.N, cfg.prompts_per_step, cfg.max_new_tokens = 4, 2, 2, 24
  cfg.learning_rate, cfg.weight_decay, cfg.log_every = 1e-2, 0.0, 1
  cfg.update(kw)
  return cfg


@pytest.fixture(scope="module")
def adam_update(setup):
  """One compiled AdamW update (no KL / entropy terms, no weight decay) shared by the step tests."""
  # train_rl's own cache: the driver test below runs with these settings and reuses the program.
  items = tuple(sorted(rl._optimizer_config(_rl_cfg()).items()))
  return rl._optimizer_and_update(setup[2], items, 0.0, 0.0, 1.0)


def _step(setup, adam_update, cfg, reward_fn):
  tok, problems, model, init, prompt_len = setup
  opt, update = adam_update
  return rl.rl_step(_state(init, opt), init, problems[: cfg.prompts_per_step], model=model, update_fn=update,
                    tokenizer=tok, task=registry.COUNTDOWN, cfg=cfg, rng=jax.random.key(1), reward_fn=reward_fn,
                    prompt_len=prompt_len, expert_rng=np.random.default_rng(1))


def test_compiled_update_applies_the_policy_loss_gradient(setup, adam_update):
  """The jitted AdamW update's gradient is policy_loss's: same norm, and a first Adam step of -lr * sign(g)."""
  model, params = setup[2], setup[3]
  opt, update = adam_update
  # The step tests' shapes ([B=2, n=4, prompt_len + 24]), so nothing new compiles.
  batch = _batch(model.config.num_embed, seed=3, b=2, n=4, p=setup[4], t=24)
  g = jax.grad(lambda p: rl.policy_loss(model, p, None, batch)[0])(params)
  state, metrics = update(_state(params, opt), params, batch)
  assert float(metrics["grad_norm"]) == pytest.approx(float(optax.tree.norm(g)), rel=1e-4)
  lr = _rl_cfg().learning_rate
  scale = min(1.0, 1.0 / float(optax.tree.norm(g)))  # trainer_lib.make_optimizer clips at global norm 1.
  for p0, p1, gi in zip(jax.tree.leaves(params), jax.tree.leaves(state.params), jax.tree.leaves(g)):
    big = np.abs(np.asarray(gi)) * scale > 1e-5  # Where Adam's eps (1e-8) is negligible.
    np.testing.assert_allclose(np.asarray(p1 - p0)[big], -lr * np.sign(np.asarray(gi))[big], rtol=1e-2)


@pytest.mark.parametrize("algorithm", ["rloo", "pass_at_k"])
@pytest.mark.parametrize("reward", [0.0, 1.0])
def test_equal_rewards_give_zero_weights_and_unchanged_params(setup, adam_update, algorithm, reward):
  const = lambda problems, texts, tokens: np.full(tokens.shape[:2], reward, np.float32)
  state, metrics = _step(setup, adam_update, _rl_cfg(algorithm=algorithm), const)
  assert metrics["weight_abs_max"] == 0.0 and metrics["grad_norm"] == 0.0
  _tree_allclose(state.params, setup[3], rtol=0, atol=0)


@pytest.mark.parametrize("algorithm", algorithms.NAMES)
def test_every_algorithm_runs_a_step_without_nans(setup, adam_update, algorithm):
  # A reward that is not constant within groups, so every weight function is exercised.
  reward = lambda problems, texts, tokens: (tokens[..., 0] % 3 == 0).astype(np.float32)
  # Expert algorithms add the demonstration as column 0: N' = 3 keeps the update's shapes.
  n_prime = 3 if algorithms.get(algorithm).expert else 4
  state, metrics = _step(setup, adam_update, _rl_cfg(algorithm=algorithm, N_prime=n_prime), reward)
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.params))
  for key in ("loss", "kl", "entropy", "reward_mean", "pass@1", f"pass@{n_prime}", "weight_max", "tokens_per_s"):
    assert key in metrics, key
  if algorithm == "sft":  # Weight 1 on the expert, 0 on the policy samples.
    assert metrics["weight_max"] == 1.0 and metrics["weight_min"] == 0.0
  if algorithm == "bon_rlb":
    assert 0.0 <= metrics["clipped_frac"] <= 1.0


def _first_token_prob(model, params, prompts, good):
  """Exact P(first generated token in `good`) under the sampler's policy (PAD masked), mean over prompts."""
  logits = model.apply({"params": params}, prompts, return_last_only=True).logits
  probs = jax.nn.softmax(logits.at[:, models.PAD_ID].set(-jnp.inf), axis=-1)
  return float(jnp.mean(jnp.sum(probs * good, axis=-1)))


def test_rloo_raises_an_easy_reward(setup, adam_update):
  tok, problems, model, init, prompt_len = setup
  good = (np.arange(tok.vocab_size) % 4 == 0).astype(np.float32)
  reward = lambda problems, texts, tokens: good[tokens[..., 0]]
  cfg = _rl_cfg(algorithm="rloo")  # The shapes of the tests above: nothing new to compile.
  opt, update = adam_update
  state = _state(init, opt)
  prompts = jnp.asarray(np.stack([
      np.pad(e := [models.BOS_ID, *tok.encode(countdown.prompt_text(p))], (0, prompt_len - len(e)))
      for p in problems]))
  before = _first_token_prob(model, init, prompts, good)
  rewards = []
  for step in range(25):
    chosen, _ = rl.step_problems(problems, seed=0, step=step, num=cfg.prompts_per_step)
    state, metrics = rl.rl_step(state, None, chosen, model=model, update_fn=update, tokenizer=tok,
                                task=registry.COUNTDOWN, cfg=cfg, rng=rl.step_key(0, step), reward_fn=reward,
                                prompt_len=prompt_len)
    rewards.append(metrics["reward_mean"])
  after = _first_token_prob(model, state.params, prompts, good)
  assert 0.1 < before < 0.4
  assert after > before + 0.4, (before, after, rewards)
  assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.3


# ----------------------------------------------------------------------------
# The driver.


class _Preempted(Exception):
  pass


def test_resumed_run_matches_uninterrupted_run(tmp_path, setup):
  init = setup[3]
  c = demo.get_config()
  c.model.preset = "micro"
  c.task.num_train = 16
  c.task.num_test = 2
  c.eval.num_prompts = 2
  # The shared AdamW settings (schedule over rl.steps = 200); both runs are cut after step 4.
  c.rl = _rl_cfg(algorithm="bon_rl_s", checkpoint_every=2)
  calls = []

  def reward(problems, texts, tokens, crash_at):
    calls.append(1)
    if len(calls) in crash_at:
      raise _Preempted
    return (tokens[..., 0] % 3 == 0).astype(np.float32)

  def run(name, crash_at):
    calls.clear()
    with pytest.raises(_Preempted):
      rl.train_rl(c, str(tmp_path / name), init_params=init, reward_fn=lambda *a: reward(*a, crash_at))

  run("full", crash_at=(5,))  # Steps 1..4, dies in step 5.
  run("cut", crash_at=(3,))  # Dies in step 3, after the checkpoint of step 2 ...
  run("cut", crash_at=(3,))  # ... resumes at step 3, dies in step 5.
  restore = lambda name: trainer_lib.checkpoint_manager(str(tmp_path / name), c.rl).restore(4)
  full, cut = restore("full"), restore("cut")
  assert int(cut["step"]) == 4
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               full["params"], cut["params"])
  lines = lambda name: [json.loads(l) for l in open(tmp_path / name / "metrics.jsonl")]
  assert [l["step"] for l in lines("full")] == [1, 2, 3, 4]
  assert [l["step"] for l in lines("cut")] == [1, 2, 3, 4]  # Step 3 failed before logging.
  assert lines("cut")[-1]["loss"] == lines("full")[-1]["loss"]
  assert lines("full")[0]["kl"] == pytest.approx(0.0, abs=1e-6) and lines("full")[-1]["kl"] > 0.0


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("algorithm", "ppo", "algorithm='ppo' is unknown"),
        ("N", 3, "N_prime=4 must be a multiple of config.rl.N=3"),
        ("N_prime", 0, "N_prime must be an integer >= 1"),
        ("temperature", 0.0, "temperature must be > 0"),
        ("verifier", "oracle", "must be 'grader', 'learned' or 'noisy'"),
    ],
)
def test_bad_rl_config_is_a_one_line_user_error(field, value, match):
  cfg = _rl_cfg(algorithm="bon_rl_v")
  cfg[field] = value
  with pytest.raises(config_lib.UserError, match=match) as e:
    validation.validate_rl_config(cfg)
  assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------
# Gradient accumulation over microbatches of rows.


def _one_sgd_update(model, params, ref, batch, microbatch_rows):
  """New params and metrics of one SGD(lr=1) update: params - grad, so params compare gradients."""
  opt = optax.sgd(1.0)
  update = rl.make_policy_update(model, opt, kl_coef=0.3, entropy_coef=0.1, microbatch_rows=microbatch_rows)
  state, metrics = update(_state(params, opt), ref, batch)
  return state.params, {k: float(v) for k, v in metrics.items()}


def _updates_close(params, got, want, rel=1e-5):
  """The updates (params - new params, i.e. the gradients) agree to float32 summation order.

  Reordered float32 sums err relative to the summands, not to each result: an
  element near 0 can be off by ~1e-6 of its leaf's largest gradient (the
  rounding also depends on how XLA splits the program, e.g. on a host with
  8 devices), so the tolerance is scaled by that.
  """
  def check(p, g, w):
    dg, dw = np.asarray(p) - np.asarray(g), np.asarray(p) - np.asarray(w)
    np.testing.assert_allclose(dg, dw, rtol=rel, atol=rel * float(np.max(np.abs(dw))))
  jax.tree.map(check, params, got, want)


def test_microbatched_update_equals_the_one_pass_update(setup):
  model, params = setup[2], setup[3]
  b, n = 4, 5  # 20 rows: microbatches of 4 divide them, of 7 leave a padded last microbatch.
  batch = _batch(model.config.num_embed, seed=7, b=b, n=n, p=6, t=8)
  rng = np.random.default_rng(7)
  # Positive weights: padding rows (weight 0) leaking into weight_min would show.
  batch["weights"] = jnp.asarray(rng.uniform(0.2, 2.0, (b, n)), jnp.float32)
  batch["sample_mask"] = batch["sample_mask"].at[:, 0].set(0.0)  # Column 0: expert rows (no KL / entropy).
  ref = jax.tree.map(lambda x: x + 0.02 * jnp.sign(x), params)  # A reference away from the policy: KL > 0.
  want_params, want = _one_sgd_update(model, params, ref, batch, 0)
  assert want["kl"] > 1e-3 and want["entropy"] > 0.0
  for k in (4, 7):
    got_params, got = _one_sgd_update(model, params, ref, batch, k)
    _updates_close(params, got_params, want_params)
    assert got.keys() == want.keys()
    for key in want:
      assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (k, key)
    for key in ("weight_max", "weight_min", "weight_mean", "weight_abs_mean", "completion_tokens"):
      assert got[key] == want[key], (k, key)


def test_vocab_chunked_loss_equals_the_full_vocabulary_loss(setup):
  """`_token_terms_chunked` (chunks that leave a padded last chunk, or divide V) is the same function."""
  model, params = setup[2], setup[3]
  v = model.config.num_embed
  batch = _batch(v, seed=3, b=2, n=3, p=5, t=6)
  ref = jax.tree.map(lambda x: x + 0.02 * jnp.sign(x), params)
  rows = rl._flat_rows(batch)
  norm = rl._normalisers(rows, 2)
  for r in (None, ref):
    def loss(p, chunk, r=r):
      return rl._rows_loss(model, p, r, rows, norm, kl_coef=0.3 if r is not None else 0.0, entropy_coef=0.1,
                           temperature=0.7, vocab_chunk=chunk)
    (want, want_m), want_g = jax.value_and_grad(loss, has_aux=True)(params, 0)
    for chunk in (v // 3 + 1, v // 4 if v % 4 == 0 else v // 2):
      assert 0 < chunk < v
      (got, got_m), got_g = jax.value_and_grad(loss, has_aux=True)(params, chunk)
      assert float(got) == pytest.approx(float(want), rel=1e-5, abs=1e-6)
      assert got_m.keys() == want_m.keys()
      for key in want_m:
        assert float(got_m[key]) == pytest.approx(float(want_m[key]), rel=1e-5, abs=1e-6), (chunk, key)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(
          np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * float(np.max(np.abs(np.asarray(b))))), got_g, want_g)


def test_sharded_vocab_chunked_update_equals_the_plain_update(setup):
  """On a mesh of this host's devices (1 or many), microbatched, rows constrained, vocabulary chunked."""
  model, params = setup[2], setup[3]
  b, n = 2, 8  # 16 rows: microbatches of 8 split over 1, 2, 4 or 8 devices.
  batch = _batch(model.config.num_embed, seed=5, b=b, n=n, p=6, t=7)
  batch["sample_mask"] = batch["sample_mask"].at[:, 0].set(0.0)
  ref = jax.tree.map(lambda x: x + 0.02 * jnp.sign(x), params)
  opt = optax.sgd(1.0)
  plain = rl.make_policy_update(model, opt, kl_coef=0.3, entropy_coef=0.1, vocab_chunk=0)
  want_state, want = plain(_state(params, opt), ref, batch)
  mesh = sharding.make_mesh((1, -1, 1))
  chunked = rl.make_policy_update(model, opt, kl_coef=0.3, entropy_coef=0.1, mesh=mesh, microbatch_rows=8,
                                  vocab_chunk=model.config.num_embed // 3 + 1)
  got_state, got = chunked(sharding.shard(_state(params, opt), mesh, sharding.state_specs(_state(params, opt), mesh)),
                           sharding.shard(ref, mesh, sharding.param_specs(ref, mesh)), batch)
  _updates_close(params, jax.device_get(got_state.params), jax.device_get(want_state.params))
  for key in want:
    assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("lora_rank", [0, 2])
@pytest.mark.parametrize("on_mesh", [False, True])
def test_rematerialised_blocks_give_the_same_update(setup, lora_rank, on_mesh):
  """`remat_blocks=True` (recomputed blocks, weights gathered per block) is the same update.

  Full fine-tuning and LoRA, one device and a mesh of this host's devices,
  microbatched (the params tied to each microbatch), with a KL reference
  (its forward pass goes through the same blocks).
  """
  _, _, micro, params, _ = setup
  model = micro
  if lora_rank:
    model = models.make_model(preset="micro", vocab_size=micro.config.num_embed, dtype=jnp.dtype("float32"),
                              lora_rank=lora_rank)
    params = models.add_lora(model, params, jax.random.key(1))
    params = jax.tree_util.tree_map_with_path(  # LoRA's B starts at 0: move it, so A gets a gradient.
        lambda path, x: x + 0.05 if "lora" in jax.tree_util.keystr(path) else x, params)
  b, n = 2, 8
  batch = _batch(micro.config.num_embed, seed=11, b=b, n=n, p=6, t=7)
  batch["sample_mask"] = batch["sample_mask"].at[:, 0].set(0.0)
  ref = jax.tree.map(lambda x: x + 0.02 * jnp.sign(x), params)
  opt = optax.sgd(1.0)
  mesh = sharding.make_mesh((1, -1, 1)) if on_mesh else None

  def run(remat):
    update = rl.make_policy_update(model, opt, kl_coef=0.3, entropy_coef=0.1, mesh=mesh, microbatch_rows=8,
                                   remat_blocks=remat)
    state, r = _state(params, opt), ref
    if mesh is not None:
      state = sharding.shard(state, mesh, sharding.state_specs(state, mesh))
      r = sharding.shard(ref, mesh, sharding.param_specs(ref, mesh))
    new, metrics = update(state, r, batch)
    return jax.device_get(new.params), {k: float(v) for k, v in metrics.items()}

  want_params, want = run(False)
  got_params, got = run(True)
  moved = jax.tree.map(lambda p, w: float(np.max(np.abs(np.asarray(p) - np.asarray(w)))), params, want_params)
  assert max(jax.tree.leaves(moved)) > 1e-4  # The update is not trivially zero.
  _updates_close(params, got_params, want_params)
  for key in want:
    assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


def test_rematerialised_blocks_are_recomputed_in_the_backward_pass(setup):
  """The remat update's backward pass runs each block's forward again (it is not the plain program)."""
  model, params = setup[2], setup[3]
  batch = _batch(model.config.num_embed, seed=2, b=2, n=2, p=4, t=4)
  rows = rl._flat_rows(batch)
  norm = rl._normalisers(rows, 2)

  def grad_jaxpr(remat):
    loss = lambda p: rl._rows_loss(model, p, None, rows, norm, kl_coef=0.0, entropy_coef=0.0, temperature=1.0,
                                   remat_blocks=remat)[0]
    return str(jax.make_jaxpr(jax.grad(loss))(params))

  layer_einsums = lambda text: text.count("dot_general")
  # Every layer's forward matmuls once more in the backward pass.
  assert layer_einsums(grad_jaxpr(True)) > layer_einsums(grad_jaxpr(False))


def test_bad_microbatch_rows_is_a_one_line_error(setup):
  with pytest.raises(ValueError, match="microbatch_rows must be an integer >= 0") as e:
    rl.make_policy_update(setup[2], optax.sgd(1.0), microbatch_rows=-2)
  assert "\n" not in str(e.value)
  for value in (-1, None):  # ConfigDict itself refuses other types.
    with pytest.raises(config_lib.UserError, match="config.rl.microbatch_rows must be an integer >= 0") as e:
      validation.validate_rl_config(_rl_cfg(microbatch_rows=value))
    assert "\n" not in str(e.value)
