"""The library API (docs/api.md): ``import jaxbigram`` loads submodules on first use, the page's example runs, and
every public function refuses a bad argument with one clear ValueError / TypeError ("What is checked")."""

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO_ROOT

import jaxbigram as jb
from jaxbigram.errors import JaxbigramError


def test_import_is_lazy_and_every_documented_submodule_loads():
    code = ("import sys, jaxbigram as jb; assert 'jax' not in sys.modules and 'jaxbigram.train' not in sys.modules; "
            "jb.data; assert 'jaxbigram.data' in sys.modules and 'jaxbigram.train' not in sys.modules; "
            "[getattr(jb, name) for name in ('config', 'models', 'train', 'evaluate', 'sampling', 'optimum')]; "
            "print(sorted(n for n in jb.SUBMODULES if 'jaxbigram.' + n in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import jaxbigram

    for name in jaxbigram.SUBMODULES:
        assert getattr(jaxbigram, name).__name__ == f"jaxbigram.{name}"


def test_the_documented_example_trains_and_samples(capfd):
    page = (REPO_ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    exec(compile(example, "docs/api.md", "exec"), {})
    loss, estimate, exact_val, optimum_val = map(float, capfd.readouterr().out.splitlines()[0].split())
    assert 3.5 < loss < 6  # one step from a random N(0, 1) table: about the lecture's 4.7
    assert exact_val < loss and abs(estimate - exact_val) < 0.2  # 151 steps learned something, the estimate agrees
    assert optimum_val < exact_val


# ----------------------------------------------------------------------------- what is checked (docs/api.md)
# Every case a hostile tester found (issue 26, "The library API"): the call, the error it must raise (a ValueError or
# a TypeError, and a JaxbigramError, so the CLI prints one `error:` line), and the argument its message names.

V = 6  # a tiny vocabulary: every model below is a 6 × 6 table (the GPT cases fail before they touch params)
CFG = jb.config.load("tiny")
BLOCK = CFG.train.block_size
IDS = np.random.default_rng(0).integers(0, V, 200).astype(np.uint8)
TOKENIZER = jb.data.Tokenizer("abcdef")


@pytest.fixture(scope="module")
def tiny():
    """A bigram over V ids, its fresh state, a batch of 4 and the data on the device."""
    model = jb.models.build(CFG.model, V, BLOCK)
    state = jb.train.create_train_state(jax.random.key(0), model, CFG.train)
    data = jnp.asarray(IDS)
    x, y = jb.data.get_batch(jax.random.key(1), data, 4, BLOCK)
    return {"model": model, "state": state, "data": data, "x": x, "y": y,
            "gpt": jb.models.build(jb.config.load("gpt-tiny").model, V, BLOCK)}


def _chunk(t, num_steps, max_steps):
    return jb.train.train_chunk(t["state"], t["data"], jax.random.key(2), jax.random.key(3), num_steps,
                                max_steps=max_steps, batch_size=4, block_size=BLOCK)


def _sample(model, t, prompt=(0,), **kw):
    return model.sample(t["state"].params, jax.random.key(4), list(prompt), 5, **kw)


def _make_train(t, ids=IDS, **hparams):
    train = jb.train.make_train(jb.config.replace(CFG, "train", steps=2), t["model"], ids)
    return train(jax.random.key(0), {**jb.optimizer.hparams_of(CFG.train), **hparams} if hparams else None)


def _stacked(t):
    return jax.tree.map(lambda a: jnp.stack([a, a + 1]), t["state"].params)


CASES = {  # id: (call, error type, the argument the message names)
    # silent wrong results
    "train_step x id >= V": (lambda t: jb.train.train_step(t["state"], t["x"].at[0, 0].set(V), t["y"]),
                             ValueError, "x"),
    "train_step y id >= V": (lambda t: jb.train.train_step(t["state"], t["x"], t["y"].at[1, 2].set(V)),
                             ValueError, "y"),
    "get_batch block longer than data": (lambda t: jb.data.get_batch(jax.random.key(0), t["data"][:BLOCK], 2, BLOCK),
                                         ValueError, "data"),
    "get_batch block_size 0": (lambda t: jb.data.get_batch(jax.random.key(0), t["data"], 2, 0), ValueError,
                               "block_size"),
    "split 1.5": (lambda t: jb.data.split(IDS, 1.5), ValueError, "val_fraction"),
    "split 0": (lambda t: jb.data.split(IDS, 0), ValueError, "val_fraction"),
    "train_chunk over max_steps": (lambda t: _chunk(t, 10, 5), ValueError, "num_steps"),
    "train_chunk negative": (lambda t: _chunk(t, -1, 5), ValueError, "num_steps"),
    "train_chunk float count": (lambda t: _chunk(t, 2.0, 5), TypeError, "num_steps"),
    "member 7 of 2": (lambda t: jb.sweep.member(_stacked(t), 7), ValueError, "k"),
    "member -1": (lambda t: jb.sweep.member(_stacked(t), -1), ValueError, "k"),
    "sample top_k > V": (lambda t: _sample(t["model"], t, top_k=V + 1), ValueError, "top_k"),
    "sample top_p 1.5": (lambda t: _sample(t["model"], t, top_p=1.5), ValueError, "top_p"),
    "sample temperature -1": (lambda t: _sample(t["model"], t, temperature=-1.0), ValueError, "temperature"),
    "sample temperature nan": (lambda t: _sample(t["model"], t, temperature=float("nan")), ValueError, "temperature"),
    "sample prompt id >= V": (lambda t: _sample(t["model"], t, prompt=(0, V)), ValueError, "prompt_ids"),
    "gpt sample prompt id >= V": (lambda t: _sample(t["gpt"], t, prompt=(V + 3,)), ValueError, "prompt_ids"),
    "gpt sample top_k > V": (lambda t: _sample(t["gpt"], t, top_k=V + 1), ValueError, "top_k"),
    "sample_stream negative length": (lambda t: t["model"].sample_stream(t["state"].params, jax.random.key(0), [0], -1),
                                      ValueError, "max_new_tokens"),
    "estimate_loss iters 0": (lambda t: jb.evaluate.estimate_loss(t["model"], t["state"].params, jax.random.key(0),
                                                                  t["data"], t["data"], iters=0, batch_size=2,
                                                                  block_size=BLOCK), ValueError, "iters"),
    "make_train unknown hyperparameter": (lambda t: _make_train(t, lr=0.1), ValueError, "hparams"),
    "make_train ids shorter than the block": (lambda t: _make_train(t, ids=IDS[:BLOCK]), ValueError, "train_ids"),
    "make_train ids >= V": (lambda t: _make_train(t, ids=np.append(IDS, V)), ValueError, "train_ids"),
    "bigram_counts id >= V": (lambda t: jb.optimum.bigram_counts(np.array([0, 1, V]), V), ValueError, "ids"),
    "bigram_counts negative id": (lambda t: jb.optimum.bigram_counts(np.array([0, -1]), V), ValueError, "ids"),
    "exact_report id >= V": (lambda t: jb.evaluate.exact_report(t["model"], t["state"].params, IDS, np.append(IDS, V)),
                             ValueError, "val_ids"),
    # wrong types, and values the library met with an AttributeError / KeyError / IndexError or deep in JAX
    "fit a dict": (lambda t: jb.train.fit(CFG.to_dict(), None), TypeError, "cfg"),
    "create_train_state the whole Config": (lambda t: jb.train.create_train_state(jax.random.key(0), t["model"], CFG),
                                            TypeError, "cfg"),
    "replace an unknown section": (lambda t: jb.config.replace(CFG, "trian", steps=5), ValueError, "section"),
    "partial hyperparameters": (lambda t: jb.train.make_train(CFG, t["model"], IDS)(
        jax.random.key(0), {"learning_rate": jnp.float32(0.1)}), ValueError, "hparams"),
    "decode an id >= V": (lambda t: TOKENIZER.decode([V]), ValueError, "ids"),
    "decode floats": (lambda t: TOKENIZER.decode([0.5]), TypeError, "ids"),
    "sample an empty prompt": (lambda t: _sample(t["model"], t, prompt=()), ValueError, "prompt_ids"),
    "gpt sample an empty prompt": (lambda t: _sample(t["gpt"], t, prompt=()), ValueError, "prompt_ids"),
    "an int for get_batch's key": (lambda t: jb.data.get_batch(0, t["data"], 2, BLOCK), TypeError, "key"),
    "an int for create_train_state's key": (lambda t: jb.train.create_train_state(0, t["model"], CFG.train),
                                            TypeError, "key"),
    "an int for sample's key": (lambda t: t["model"].sample(t["state"].params, 1337, [0], 5), TypeError, "key"),
    "train_step x and y of different shapes": (lambda t: jb.train.train_step(t["state"], t["x"], t["y"][:, :-1]),
                                               ValueError, "y"),
    "loss x and y of different shapes": (lambda t: t["model"].loss(t["state"].params, t["x"], t["y"][:2]),
                                         ValueError, "y"),
    "vocabulary 0": (lambda t: jb.models.build(CFG.model, 0, BLOCK), ValueError, "vocab_size"),
    "build the whole Config": (lambda t: jb.models.build(CFG, V, BLOCK), TypeError, "cfg"),
    "load overrides as one string": (lambda t: jb.config.load("tiny", "train.steps=5"), TypeError, "overrides"),
    "make_plan overrides as one string": (lambda t: jb.sweep.make_plan("tiny", "train.learning_rate=[0.1,0.2]", 1),
                                          TypeError, "overrides"),
    "run_keys negative seed": (lambda t: jb.train.run_keys(-1), ValueError, "seed"),
    "load_corpus an int": (lambda t: jb.data.load_corpus(5), TypeError, "path"),
    # the error type users catch is a ValueError: a config mistake is one too
    "an unknown config key": (lambda t: jb.config.load("tiny", ["train.stpes=5"]), ValueError, "train.stpes"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_argument_is_a_clear_value_or_type_error(tiny, case):
    call, kind, argument = CASES[case]
    with pytest.raises(kind) as raised:
        call(tiny)
    assert isinstance(raised.value, JaxbigramError)  # cli.main prints `error: …` and exits 2 for it
    text = str(raised.value)
    assert "\n" not in text and (f": {argument} must be " in text or raised.value.code != "api_argument"), text
    assert argument in text


def test_the_message_says_function_argument_what_and_got():
    with pytest.raises(ValueError) as raised:
        jb.data.split(IDS, 1.5)
    assert str(raised.value) == "split: val_fraction must be a finite number > 0 and < 1, got 1.5"
    with pytest.raises(TypeError) as raised:
        jb.config.load("tiny", "train.steps=5")
    assert str(raised.value).startswith("load: overrides must be a list of strings")


def test_valid_calls_at_the_boundaries_still_work(tiny):
    t = tiny
    ids = np.asarray(_sample(t["model"], t, prompt=(V - 1,), top_k=V, top_p=1.0, temperature=1e-30))  # the edges
    assert ids.shape == (1, 5) and ids.min() >= 0 and ids.max() < V
    state = jax.tree.map(jnp.copy, t["state"])  # train_chunk donates its state
    state, losses = jb.train.train_chunk(state, t["data"], jax.random.key(2), jax.random.key(3), 3, max_steps=3,
                                         batch_size=4, block_size=BLOCK)
    assert int(state.step) == 3 and np.isfinite(np.asarray(losses)).all()
    state, losses = jb.train.train_chunk(state, t["data"], jax.random.key(2), jax.random.key(3), 0, max_steps=3,
                                         batch_size=4, block_size=BLOCK)  # 0 steps: the same compiled call
    assert int(state.step) == 3 and np.isnan(np.asarray(losses)).all()
    x, y = jb.data.get_batch(jax.random.key(0), t["data"][:BLOCK + 1], 2, BLOCK)  # the shortest data that works
    assert np.array_equal(np.asarray(x[0]), IDS[:BLOCK]) and np.array_equal(np.asarray(y[0]), IDS[1:BLOCK + 1])
    stacked = _stacked(t)
    np.testing.assert_array_equal(jax.tree.leaves(jb.sweep.member(stacked, 1))[0],
                                  jax.tree.leaves(t["state"].params)[0] + 1)
    assert TOKENIZER.decode([V - 1, 0]) == "fa" and TOKENIZER.decode([]) == ""
    counts = jb.optimum.bigram_counts(np.array([V - 1, 0, V - 1]), V)
    assert counts.total == 2 and list(counts.rows) == [0, V - 1]
    assert [len(s) for s in jb.data.split(IDS, 0.5)] == [100, 100]
    assert jb.config.load("tiny", ("train.steps=5",)).train.steps == 5
