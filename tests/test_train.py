"""train.py: exact loss, fused chunks vs single steps, determinism, exact resume, and convergence to the optimum."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbigram import config, data
from jaxbigram.checkpoint import Store
from jaxbigram.model import init_params, logits_table, loss_fn
from jaxbigram.train import batch_key, create_train_state, exact_loss, fit, train_chunk, train_step
from reference import np_mean_cross_entropy


def leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def run_fit(workdir, cfg, corpus, **kwargs):
    store = Store(workdir, keep=cfg.checkpoint.keep)
    try:
        return fit(cfg, corpus, store, out=io.StringIO(), err=io.StringIO(), **kwargs)
    finally:
        store.close()


@pytest.fixture(scope="module")
def tiny_cfg(repo_root):
    return config.load(repo_root / "configs" / "tiny.toml")


# ----------------------------------------------------------------------------- exact loss

def test_exact_loss_equals_mean_cross_entropy_over_every_position(corpus):
    vocab = corpus.tokenizer.vocab_size
    _, val = data.split(corpus.ids, 0.1)
    params = init_params(jax.random.key(3), vocab)
    params = jax.tree_util.tree_map(lambda w: w * 5.0, params)  # a sharper, non-trivial table
    expected = np_mean_cross_entropy(logits_table(params), val)
    got = exact_loss(params, data.bigram_counts(val, vocab))
    assert got == pytest.approx(expected, rel=1e-6)
    # and it is loss_fn over the whole split as one window
    whole = jnp.asarray(np.asarray(val, dtype=np.int32))
    assert float(loss_fn(params, whole[None, :-1], whole[None, 1:])) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- the fused chunk

def test_train_chunk_equals_separate_jitted_steps(corpus):
    cfg = config.TrainConfig(batch_size=8, block_size=4, learning_rate=0.05, lr_schedule="cosine", warmup_steps=3,
                             steps=20, min_lr_ratio=0.1, grad_clip=1.0)
    vocab = corpus.tokenizer.vocab_size
    train_data = jnp.asarray(data.split(corpus.ids, 0.1)[0])
    base_key = jax.random.key(11)
    sizes = dict(batch_size=cfg.batch_size, block_size=cfg.block_size)

    step = jax.jit(train_step)
    stepwise = create_train_state(jax.random.key(0), vocab, cfg)
    ref_losses = []
    for s in range(12):
        x, y = data.get_batch(batch_key(base_key, s), train_data, **sizes)
        stepwise, loss = step(stepwise, x, y)
        ref_losses.append(float(loss))

    fused = create_train_state(jax.random.key(0), vocab, cfg)
    fused, losses_a = train_chunk(fused, train_data, base_key, 7, max_steps=10, **sizes)  # 7 of at most 10
    fused, losses_b = train_chunk(fused, train_data, base_key, 5, max_steps=10, **sizes)  # continues at step 7
    losses_a, losses_b = np.asarray(losses_a), np.asarray(losses_b)
    assert np.isnan(losses_a[7:]).all() and np.isnan(losses_b[5:]).all()
    np.testing.assert_allclose(np.concatenate([losses_a[:7], losses_b[:5]]), ref_losses, rtol=1e-5)
    assert int(fused.step) == int(stepwise.step) == 12
    for got, want in zip(jax.tree_util.tree_leaves((fused.params, fused.opt_state)),
                         jax.tree_util.tree_leaves((stepwise.params, stepwise.opt_state))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the driver

@pytest.fixture(scope="module")
def full_run(tmp_path_factory, corpus):
    """One uninterrupted 220-step run (chunks of 30 steps, evals and checkpoints every 100) → (config, FitResult)."""
    cfg = config.load(None, [f"{k}={v}" for k, v in {
        "train.steps": 220, "train.batch_size": 16, "train.block_size": 8, "train.learning_rate": 0.05,
        "train.steps_per_call": 30, "eval.interval": 100, "eval.iters": 5, "checkpoint.interval": 100,
        "checkpoint.keep": 2}.items()])
    return cfg, run_fit(tmp_path_factory.mktemp("full"), cfg, corpus)


def test_full_run_trains_and_checkpoints(full_run):
    cfg, a = full_run
    assert int(a.state.step) == 220
    assert [h["step"] for h in a.history] == [0, 100, 200, 220]
    assert a.history[-1]["val_loss"] < a.history[0]["val_loss"] - 1.0
    assert a.report["step"] == 220


def test_same_seed_identical_params_other_seed_differs_and_fresh_starts_over(tmp_path, full_run, corpus):
    cfg, a = full_run
    other = run_fit(tmp_path, config.replace(cfg, "train", seed=7), corpus)
    assert not leaves_equal(other.state.params, a.state.params)
    # --fresh discards the seed-7 run (otherwise its step-220 checkpoint would be "resumed") and, with the same
    # config and seed, reproduces the first run bit for bit
    again = run_fit(tmp_path, cfg, corpus, fresh=True)
    assert leaves_equal(again.state.params, a.state.params)
    assert leaves_equal(again.state.opt_state, a.state.opt_state)
    assert again.history == a.history
    assert again.report == a.report


def test_exact_resume_half_then_half_equals_one_go(tmp_path, full_run, corpus):
    """220 steps in one go == 110 steps, then resume to 220 (other chunk boundaries: ...100, 110 | 140, 170, 200)."""
    cfg, a = full_run
    half = run_fit(tmp_path, config.replace(cfg, "train", steps=110), corpus)
    assert int(half.state.step) == 110
    assert Store(tmp_path, create=False).steps() == [100, 110]
    resumed = run_fit(tmp_path, cfg, corpus)
    assert int(resumed.state.step) == 220
    assert leaves_equal(resumed.state.params, a.state.params)
    assert leaves_equal(resumed.state.opt_state, a.state.opt_state)
    assert [h for h in resumed.history if h["step"] in (0, 100, 200, 220)] == a.history
    assert resumed.report == a.report


def test_default_config_reaches_the_closed_form_optimum(tmp_path, repo_root, corpus):
    cfg = config.load(repo_root / "configs" / "default.toml")
    result = run_fit(tmp_path, cfg, corpus)
    report = result.report
    assert report["step"] == cfg.train.steps
    # the reported exact loss is the mean cross-entropy of the final table over the whole val split
    _, val = data.split(corpus.ids, cfg.data.val_fraction)
    assert report["val_loss"] == pytest.approx(np_mean_cross_entropy(logits_table(result.state.params), val),
                                               rel=1e-6)
    assert report["val_loss"] - report["optimum_val_loss"] < 0.01
    assert report["val_bpc"] == pytest.approx(report["val_loss"] / np.log(2))
