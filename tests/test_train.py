"""train.py: the optimizer, fused chunks vs single jitted steps, the loss estimate, determinism, exact resume,
convergence to the closed-form optimum, and a big vocabulary end to end."""

import dataclasses
import io
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbigram import config, data, models, optimizer, progress, train
from jaxbigram.checkpoint import Store
from jaxbigram.config import TrainConfig
from jaxbigram.models.bigram import Bigram, logits_table
from conftest import same_tree
from reference import np_mean_cross_entropy


def run_fit(workdir, cfg, corpus, **kwargs):
    store = Store(workdir, keep=cfg.checkpoint.keep)
    try:
        return train.fit(cfg, corpus, store, out=io.StringIO(), err=io.StringIO(), **kwargs)
    finally:
        store.close()


def steps(workdir):
    store = Store(workdir, read_only=True)
    try:
        return store.steps()
    finally:
        store.close()


# ----------------------------------------------------------------------------- the fused chunk

@pytest.fixture(scope="module")
def ids() -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(0).integers(0, 17, 5000).astype(np.uint8))


@pytest.mark.parametrize("buffer", [train.DEFAULT_BATCH_BUFFER, 2 * 4 * 3 * 2])  # one draw / a draw every 2 steps
def test_train_chunk_equals_separate_jitted_steps(ids, buffer):
    """Two fused calls (7 then 4 steps of at most 8; batches drawn up front, all at once or a few steps at a time)
    give bit-identical losses, params and AdamW state to 11 jitted single steps (cosine warmup, clipping)."""
    cfg = TrainConfig(batch_size=4, block_size=3, learning_rate=0.05, lr_schedule="cosine", warmup_steps=2,
                      steps=20, min_lr_ratio=0.1, grad_clip=1.0)
    model, base_key, dropout_key = Bigram(17), jax.random.key(5), jax.random.key(6)
    step = jax.jit(train.train_step)
    ref = train.create_train_state(jax.random.key(0), model, cfg)
    ref_losses = []
    for s in range(11):
        x, y = data.get_batch(train.step_key(base_key, s), ids, 4, 3)
        ref, loss = step(ref, x, y, train.step_key(dropout_key, s))
        ref_losses.append(float(loss))

    state = train.create_train_state(jax.random.key(0), model, cfg)
    sizes = dict(batch_size=4, block_size=3, max_steps=8, batch_buffer=buffer)
    state, a = train.train_chunk(state, ids, base_key, dropout_key, 7, **sizes)
    state, b = train.train_chunk(state, ids, base_key, dropout_key, 4, **sizes)  # continues at step 7
    a, b = np.asarray(a), np.asarray(b)
    assert np.isnan(a[7:]).all() and np.isnan(b[4:]).all()
    np.testing.assert_array_equal(np.concatenate([a[:7], b[:4]]), np.float32(ref_losses))
    assert int(state.step) == int(ref.step) == 11
    assert same_tree((state.params, state.opt_state), (ref.params, ref.opt_state))


def test_create_train_state_starts_at_an_int32_step_zero_with_the_flax_apply():
    """``apply_fn`` is the Flax module's ``apply`` (as in the Flax examples), and ``train_step``'s loss is the model's."""
    state = train.create_train_state(jax.random.key(0), Bigram(9), TrainConfig())
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    assert same_tree(state.params, Bigram(9).init(jax.random.key(0)))
    x = jnp.asarray([[1, 2, 3], [4, 5, 6]], jnp.int32)
    assert np.array_equal(state.apply_fn({"params": state.params}, x), Bigram(9).logits(state.params, x))
    _, loss = train.train_step(state, x, x)
    assert float(loss) == float(Bigram(9).loss(state.params, x, x))


def test_learning_rate_schedules():
    constant = optimizer.learning_rate_schedule(TrainConfig(learning_rate=0.1))
    assert float(constant(0)) == float(constant(1000)) == pytest.approx(0.1)
    warm = optimizer.learning_rate_schedule(TrainConfig(learning_rate=0.1, warmup_steps=10))
    assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(0.05) and float(warm(50)) == pytest.approx(0.1)
    cosine = optimizer.learning_rate_schedule(TrainConfig(learning_rate=0.1, lr_schedule="cosine", warmup_steps=10,
                                                      steps=110, min_lr_ratio=0.1))
    assert float(cosine(10)) == pytest.approx(0.1) and float(cosine(110)) == pytest.approx(0.01)
    assert float(cosine(60)) == pytest.approx(0.055)


def test_run_keys_are_a_function_of_the_seed():
    a, b, c = train.run_keys(3), train.run_keys(3), train.run_keys(4)
    data_of = {k: np.asarray(jax.random.key_data(v)) for k, v in a.items()}
    assert set(a) == {"init", "batch", "eval", "dropout", "sample"}
    assert all(np.array_equal(data_of[k], jax.random.key_data(b[k])) for k in a)
    assert not any(np.array_equal(data_of[k], jax.random.key_data(c[k])) for k in a)
    assert len({data_of[k].tobytes() for k in a}) == 5  # five different keys


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
    assert a.report["step"] == 220 and a.report["model"] == "bigram"
    assert a.steps_per_second > 0


def test_same_seed_identical_params_other_seed_differs_and_fresh_starts_over(tmp_path, full_run, corpus):
    cfg, a = full_run
    other = run_fit(tmp_path, config.replace(cfg, "train", seed=7), corpus)
    assert not same_tree(other.state.params, a.state.params)
    # fresh discards the seed-7 run (otherwise its step-220 checkpoint would be "resumed") and, with the same
    # config and seed, reproduces the first run bit for bit
    again = run_fit(tmp_path, cfg, corpus, fresh=True)
    assert same_tree(again.state.params, a.state.params)
    assert same_tree(again.state.opt_state, a.state.opt_state)
    assert again.history == a.history
    assert again.report == a.report
    store = Store(tmp_path, read_only=True)  # every seed-7 step is gone
    assert [store.read_meta(s)["config"]["train"]["seed"] for s in store.steps()] == [cfg.train.seed] * 2
    store.close()


def test_exact_resume_half_then_half_equals_one_go(tmp_path, full_run, corpus):
    """220 steps in one go == 110 steps, then resume to 220 (other chunk boundaries: ...100, 110 | 140, 170, 200)."""
    cfg, a = full_run
    half = run_fit(tmp_path, config.replace(cfg, "train", steps=110), corpus)
    assert int(half.state.step) == 110
    assert steps(tmp_path) == [100, 110]
    resumed = run_fit(tmp_path, cfg, corpus)
    assert int(resumed.state.step) == 220
    assert same_tree(resumed.state.params, a.state.params)
    assert same_tree(resumed.state.opt_state, a.state.opt_state)
    assert [h for h in resumed.history if h["step"] in (0, 100, 200, 220)] == a.history
    assert resumed.report == a.report


def test_default_config_reaches_the_closed_form_optimum(tmp_path, corpus):
    cfg = config.load("default")
    result = run_fit(tmp_path, cfg, corpus)
    report = result.report
    assert report["step"] == cfg.train.steps
    # the reported exact loss is the mean cross-entropy of the final table over the whole val split
    _, val = data.split(corpus.ids, cfg.data.val_fraction)
    assert report["val_loss"] == pytest.approx(np_mean_cross_entropy(logits_table(result.state.params), val),
                                               rel=1e-6)
    assert report["val_loss"] - report["optimum_val_loss"] < 0.01
    assert report["val_bpc"] == pytest.approx(report["val_loss"] / np.log(2))


def test_big_vocabulary_trains_and_evaluates_exactly(big_corpus_path, tmp_path):
    """1,500 characters (uint16 memory-mapped ids): the loss falls, the exact val loss equals numpy's, and the
    checkpoint's params (read alone, without the AdamW state) are the trained ones."""
    cfg = config.from_dict({"train": {"steps": 30, "batch_size": 32, "block_size": 16, "learning_rate": 0.1,
                                      "steps_per_call": 15},
                            "eval": {"interval": 15, "iters": 2}, "checkpoint": {"interval": 15, "keep": 1}})
    corpus = data.load_corpus(big_corpus_path)
    result = run_fit(tmp_path, cfg, corpus, fresh=True)
    assert corpus.tokenizer.vocab_size > 1000
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    _, val = data.split(np.asarray(corpus.ids, dtype=np.int64), cfg.data.val_fraction)
    assert abs(result.report["val_loss"] - np_mean_cross_entropy(logits_table(result.state.params), val)) < 1e-4
    store = Store(tmp_path, read_only=True)
    params, meta = store.restore_params(store.steps()[-1])
    store.close()
    np.testing.assert_array_equal(np.asarray(logits_table(params)), np.asarray(logits_table(result.state.params)))
    assert meta["vocab"] == corpus.tokenizer.chars and meta["model"] == "bigram"
    assert meta["num_params"] == corpus.tokenizer.vocab_size ** 2


def test_train_and_evaluate_resumes_with_the_checkpoint_config_and_data(tmp_path, data_path, monkeypatch):
    """No config and no data on a resume: the run's own config (only train.steps changed) and recorded text."""
    workdir = tmp_path / "run"
    out, err = io.StringIO(), io.StringIO()
    first = train.train_and_evaluate(workdir, config_path="tiny", overrides=["train.steps=100"], data=str(data_path),
                                     out=out, err=err)
    assert first.report["step"] == 100
    monkeypatch.setenv("JAXBIGRAM_DATA", str(tmp_path / "elsewhere.txt"))  # would fail if it were read
    err = io.StringIO()
    second = train.train_and_evaluate(workdir, overrides=["train.steps=200"], out=io.StringIO(), err=err)
    assert second.report["step"] == 200
    assert "from checkpoint" in err.getvalue() and "resuming from step 100" in err.getvalue()
    assert Store(workdir, read_only=True).read_meta(200)["config"] == config.load("tiny").to_dict()


# ----------------------------------------------------------------------------- the GPT through the same loop

GPT_TINY = """
[model]
kind = "gpt"
n_layer = 1
n_head = 2
n_embd = 16
dropout = 0.2
[train]
seed = 5
steps = 30
batch_size = 4
block_size = 8
learning_rate = 0.01
steps_per_call = 10
[eval]
interval = 10
iters = 2
[checkpoint]
interval = 10
keep = 5
"""


def test_gpt_stop_and_resume_with_dropout_is_bit_identical(tmp_path, corpus):
    """Dropout keys are step keys: 15 steps, then a resume to 30, equals 30 in one go, bit for bit."""
    (tmp_path / "cfg.toml").write_text(GPT_TINY)
    cfg = config.load(tmp_path / "cfg.toml")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    whole = run_fit(tmp_path / "one", cfg, corpus)
    half = run_fit(tmp_path / "two", config.replace(cfg, "train", steps=15), corpus)
    assert int(half.state.step) == 15 and steps(tmp_path / "two") == [10, 15]
    resumed = run_fit(tmp_path / "two", cfg, corpus)
    assert int(resumed.state.step) == 30
    assert same_tree(resumed.state.params, whole.state.params)
    assert same_tree(resumed.state.opt_state, whole.state.opt_state)
    assert resumed.report["val_loss"] == whole.report["val_loss"] and resumed.report["train_loss"] is None
    # dropout is really on: the same run without it trains to other params
    (tmp_path / "three").mkdir()
    no_dropout = run_fit(tmp_path / "three", config.replace(cfg, "model", dropout=0.0), corpus)
    assert not same_tree(no_dropout.state.params, whole.state.params)


def test_a_stop_before_the_first_step_writes_nothing_and_says_so(tmp_path, corpus):
    """SIGINT caught at the very first chunk boundary of a new run: no checkpoint, ``Interrupted(saved=False)``."""
    import os
    import signal

    from jaxbigram import progress
    from jaxbigram.errors import Interrupted

    class SignalOnStart(progress.Reporter):
        def __enter__(self):
            os.kill(os.getpid(), signal.SIGINT)  # StopRequest is already listening: recorded, not raised
            return super().__enter__()

    cfg = config.load("tiny")
    reporter = SignalOnStart(start_step=0, total_steps=cfg.train.steps, resumed=False, out=io.StringIO(),
                             err=io.StringIO())
    with pytest.raises(Interrupted) as stopped:
        run_fit(tmp_path, cfg, corpus, reporter=reporter)
    assert stopped.value.saved is False and stopped.value.step == 0 and stopped.value.exit_code == 130
    assert steps(tmp_path) == []


def test_the_training_call_compiles_once_per_run_ahead_of_the_loop(tmp_path, corpus, caplog):
    """``fit`` compiles ``train_chunk`` on a background thread while it builds the state and runs the first estimate;
    the loop's call must find that compile (same optimizer object, same shapes and layouts), new run and resume."""
    (tmp_path / "cfg.toml").write_text(GPT_TINY)
    cfg = config.replace(config.load(tmp_path / "cfg.toml"), "train", steps=15, steps_per_call=7)
    jax.clear_caches()
    for run_cfg in (cfg, config.replace(cfg, "train", steps=30)):  # a new run, then a resume (a restored state)
        caplog.clear()
        with jax.log_compiles(True), caplog.at_level("DEBUG", logger="jax"):
            run_fit(tmp_path, run_cfg, corpus)
        compiles = [r.getMessage() for r in caplog.records if "XLA compilation of jit(train_chunk)" in r.getMessage()]
        assert len(compiles) == 1, compiles
    assert optimizer.make_optimizer(cfg.train) is optimizer.make_optimizer(cfg.train)
    assert optimizer.make_optimizer(cfg.train) is optimizer.make_optimizer(dataclasses.replace(cfg.train, seed=7))


def test_samples_at_evals_change_nothing_and_repeat(tmp_path, corpus):
    """eval.sample_chars only reads the params: the same losses and params with and without samples, and the same
    samples (one key per run) run after run."""
    cfg = config.load("gpt-tiny", ["train.steps=20", "train.steps_per_call=10", "eval.interval=10", "eval.iters=2",
                                   "checkpoint.interval=20", "eval.sample_chars=40"])
    quiet = run_fit(tmp_path / "quiet", config.replace(cfg, "eval", sample_chars=0), corpus)
    runs = [run_fit(tmp_path / name, cfg, corpus) for name in ("a", "b")]
    for run in runs:
        assert same_tree(run.state.params, quiet.state.params) and same_tree(run.state.opt_state, quiet.state.opt_state)
        assert run.history == quiet.history
    logged = [[(r["step"], r["sample"]) for r in progress.read_metrics(tmp_path / name / progress.METRICS_FILE)]
              for name in ("a", "b")]
    assert logged[0] == logged[1] and [step for step, _ in logged[0]] == [0, 10, 20]
    first = corpus.tokenizer.chars[0]
    assert all(len(text) == 41 and text[0] == first and set(text) <= set(corpus.tokenizer.chars) for _, text in logged[0])
    assert "sample" not in progress.read_metrics(tmp_path / "quiet" / progress.METRICS_FILE)[0]
    key = train.run_keys(1337)["sample"]  # the run's sample key, and the params of the last eval, give its sample
    model = models.build(cfg.model, corpus.tokenizer.vocab_size, cfg.train.block_size)
    assert train.eval_sample(model, runs[0].state.params, key, corpus.tokenizer, 40) == logged[0][-1][1]


def test_an_eval_sample_is_bounded_and_the_longest_one_streams(tmp_path, cli_run, corpus):
    """Issue 26.11: ``eval.sample_chars=2147483647`` hung the first eval (one array of 2**31 ids); it is refused in one
    line before anything runs, and the longest allowed sample is the model's own stream, piece for piece."""
    proc = cli_run("train", "--config", "tiny", "--steps", "2", "--set", "eval.sample_chars=2147483647",
                   "--workdir", tmp_path / "w")
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1] == (
        f"error: config key eval.sample_chars must be between 0 and {config.MAX_EVAL_SAMPLE_CHARS} (0: no samples; a "
        "longer text: `sample --max-new-tokens N`), got 2147483647")
    assert "Traceback" not in proc.stderr and not (tmp_path / "w").exists()
    cfg = config.load("tiny")
    model = models.build(cfg.model, corpus.tokenizer.vocab_size, cfg.train.block_size)
    params, key, n = model.init(jax.random.key(0)), jax.random.key(1), config.MAX_EVAL_SAMPLE_CHARS
    text = train.eval_sample(model, params, key, corpus.tokenizer, n)
    assert text == corpus.tokenizer.decode([0]) + corpus.tokenizer.decode(model.sample(params, key, [0], n)[0])
    assert len(text) == n + 1


def test_run_keys_keep_their_values():
    keys = train.run_keys(1337)
    root = jax.random.key(1337)
    split = jax.random.split(root, 3)
    for name, expected in (("init", split[0]), ("batch", split[1]), ("eval", split[2]),
                           ("dropout", jax.random.fold_in(root, 3)), ("sample", jax.random.fold_in(root, 4))):
        assert np.array_equal(jax.random.key_data(keys[name]), jax.random.key_data(expected)), name


def test_fit_without_a_store_trains_in_memory_to_the_same_result(tmp_path, full_run, corpus):
    """No store: nothing is read or written, and the run is the same run (same params, same history)."""
    cfg, result = full_run
    before = sorted(p.name for p in tmp_path.iterdir())
    in_memory = train.fit(cfg, corpus, None, out=io.StringIO(), err=io.StringIO())
    assert same_tree(in_memory.state.params, result.state.params)
    assert in_memory.history == result.history and in_memory.report["val_loss"] == result.report["val_loss"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ----------------------------------------------------------------------------- gradient accumulation

@pytest.mark.parametrize("kind", ["bigram", "gpt"])
def test_grad_accum_gives_the_one_batch_gradient_and_k1_is_todays_step(kind):
    """k = 4 microbatches (a lax.scan) give the one-batch loss and gradient to float rounding, for the logits' loss
    and the bigram's fast_loss (what a sweep trains with); a whole step with k = 1 is the plain step bit for bit."""
    sets = ["train.batch_size=8", "train.block_size=6"] + (
        ["model.kind='gpt'", "model.n_embd=8", "model.n_head=2", "model.n_layer=1"] if kind == "gpt" else [])
    cfg = config.load(None, sets)
    model = models.build(cfg.model, 13, 6)
    state = train.create_train_state(jax.random.key(0), model, cfg.train)
    x, y = (jax.random.randint(jax.random.key(i), (8, 6), 0, 13) for i in (1, 2))
    loss_fns = [None] + ([model.fast_loss] if kind == "bigram" else [])
    for loss_fn in loss_fns:
        one_loss, one_grad = jax.jit(jax.value_and_grad(loss_fn or model.loss))(state.params, x, y)
        loss, grad = jax.jit(partial(train.accumulated_grad, loss_fn=loss_fn, k=4, dropout_key=None))(state, x, y)
        np.testing.assert_allclose(loss, one_loss, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(one_grad)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    microbatch = np.asarray(train.microbatches(x, 4))
    np.testing.assert_array_equal(microbatch[1], np.asarray(x)[1::4])  # strided: rows 1, 5
    plain, _ = jax.jit(train.train_step)(state, x, y)
    k1, _ = jax.jit(partial(train.train_step, grad_accum=1))(state, x, y)
    assert same_tree(plain, k1)
    k4, _ = jax.jit(partial(train.train_step, grad_accum=4))(state, x, y)
    for a, b in zip(jax.tree.leaves(k4.params), jax.tree.leaves(plain.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_grad_accum_stop_and_resume_with_dropout_is_bit_identical(tmp_path, corpus):
    """k = 2 (dropout keys per microbatch): 15 steps then a resume to 30 equals 30 in one go, bit for bit."""
    (tmp_path / "cfg.toml").write_text(GPT_TINY)
    cfg = config.replace(config.load(tmp_path / "cfg.toml"), "train", grad_accum=2)
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    whole = run_fit(tmp_path / "one", cfg, corpus)
    run_fit(tmp_path / "two", config.replace(cfg, "train", steps=15), corpus)
    resumed = run_fit(tmp_path / "two", cfg, corpus)
    assert same_tree((resumed.state.params, resumed.state.opt_state), (whole.state.params, whole.state.opt_state))
    assert resumed.report["val_loss"] == whole.report["val_loss"]


def test_a_run_too_big_for_memory_names_the_grad_accum_that_fits(monkeypatch, corpus):
    """Activations dominate a wide batch of a GPT: the one line names the smallest grad_accum that fits, and that
    value passes the check (one below does not)."""
    from jaxbigram import memory
    from jaxbigram.errors import ResourceError

    cfg = config.load(None, ["model.kind='gpt'", "model.n_embd=32", "model.n_head=2", "model.n_layer=2",
                             "train.batch_size=64", "train.block_size=64"])
    model = models.build(cfg.model, corpus.tokenizer.vocab_size, 64)

    def need(k):
        terms = memory.estimate_for_config(config.replace(cfg, "train", grad_accum=k), corpus.tokenizer.vocab_size,
                                           len(corpus.ids), corpus.ids.itemsize, num_params=model.param_count(),
                                           activation_bytes=memory.activation_bytes(model, 64))
        return sum(terms.values())

    assert need(4) < need(2) < need(1)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device=None: (need(4) + need(2)) // 2)
    with pytest.raises(ResourceError, match=r"needs about .* set train.grad_accum = 4 \(the batch runs as 4 "
                                            r"microbatches of 16"):
        train.check_memory(cfg, corpus, model)
    train.check_memory(config.replace(cfg, "train", grad_accum=4), corpus, model)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device=None: 1000)  # nothing fits: the plain line
    with pytest.raises(ResourceError, match="this run needs about") as e:
        train.check_memory(cfg, corpus, model)
    assert "grad_accum" not in str(e.value)
