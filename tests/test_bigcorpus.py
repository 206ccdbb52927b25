"""Big vocabularies on small generated corpora: thousands of characters from many scripts (accents, CJK, emoji,
'\\r\\n' and '\\n'), uint16 memory-mapped ids, training, exact evaluation and sampling with V > 512.

The 100 MB / 10,000-character case is ``scripts/bench_scaling.py`` (numbers in the README), not a test.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxbigram import config, data, generate, train  # noqa: E402
from jaxbigram.checkpoint import Store  # noqa: E402
from jaxbigram.model import logits_table  # noqa: E402

VOCAB = 1500


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory, make_corpus):
    path = tmp_path_factory.mktemp("bigcorpus") / "multi.txt"
    stats = make_corpus(str(path), 400_000, vocab=VOCAB, seed=11)
    assert stats["bytes"] == path.stat().st_size and 390_000 <= stats["bytes"] <= 400_000
    return path


@pytest.fixture(scope="module")
def text(corpus_path):
    return corpus_path.read_bytes().decode("utf-8")  # bytes → str: no newline translation


def test_generated_corpus_mixes_scripts_and_newlines(text):
    chars = set(text)
    assert len(chars) > 1000
    assert "\r\n" in text and "\n" in text.replace("\r\n", "")  # both line ends
    assert any(0x1F300 <= ord(c) <= 0x1F64F for c in chars)  # emoji (4-byte UTF-8)
    assert any(0x4E00 <= ord(c) <= 0x9FFF for c in chars)  # CJK
    assert any(0xC0 <= ord(c) <= 0x17F for c in chars)  # accented Latin
    assert {len(c.encode("utf-8")) for c in chars} == {1, 2, 3, 4}


def test_tokenizer_round_trips_every_character(corpus_path, text):
    first = data.load_corpus(corpus_path)
    assert first.tokenizer.chars == "".join(sorted(set(text)))
    assert first.ids.dtype == np.uint16 and len(first.ids) == len(text)
    assert first.tokenizer.decode(first.ids) == text
    every = first.tokenizer.chars
    np.testing.assert_array_equal(first.tokenizer.encode(every), np.arange(len(every)))
    cached = data.load_corpus(corpus_path)  # second load: the memory-mapped cache
    assert isinstance(cached.ids, np.memmap)
    assert cached.tokenizer.decode(cached.ids) == text


def test_get_batch_on_uint16_memmap(corpus_path):
    corpus = data.load_corpus(corpus_path)
    ids = np.asarray(corpus.ids)
    x, y = data.get_batch(jax.random.key(5), jnp.asarray(corpus.ids), 16, 16)
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == np.int32 and x.max() > 255  # ids above uint8 survive
    windows = np.lib.stride_tricks.sliding_window_view(ids, 17)
    for row_x, row_y in zip(x, y):
        match = np.flatnonzero((windows[:, :16] == row_x).all(axis=1) & (windows[:, 1:] == row_y).all(axis=1))
        assert match.size > 0


def test_bigram_counts_chunked_large_vocab(corpus_path):
    corpus = data.load_corpus(corpus_path)
    ids, vocab = corpus.ids, corpus.tokenizer.vocab_size
    counts = data.bigram_counts(ids, vocab, chunk=10_007)  # many chunks; V² > 4·chunk takes the np.unique path
    dense = np.zeros((vocab, vocab), dtype=np.int64)
    np.add.at(dense, (np.asarray(ids[:-1], np.int64), np.asarray(ids[1:], np.int64)), 1)
    np.testing.assert_array_equal(counts.dense(), dense)


@pytest.fixture(scope="module")
def trained(corpus_path, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bigrun")
    cfg = config.from_dict({"train": {"steps": 30, "batch_size": 32, "block_size": 16, "learning_rate": 0.1,
                                      "steps_per_call": 15},
                            "eval": {"interval": 15, "iters": 2}, "checkpoint": {"interval": 15, "keep": 1}})
    corpus = data.load_corpus(corpus_path)
    with open(os.devnull, "w") as quiet:
        result = train.fit(cfg, corpus, Store(workdir), fresh=True, out=quiet, err=quiet)
    return corpus, cfg, result, workdir


def test_train_and_exact_eval_with_big_vocab(trained):
    corpus, cfg, result, workdir = trained
    vocab = corpus.tokenizer.vocab_size
    assert vocab > 1000 and result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # exact val loss against numpy: mean over every val position of -log softmax(W)[x, y]
    table = np.asarray(logits_table(result.state.params), dtype=np.float64)
    log_probs = table - np.log(np.exp(table - table.max(1, keepdims=True)).sum(1, keepdims=True)) - table.max(1, keepdims=True)
    _, val = data.split(np.asarray(corpus.ids, dtype=np.int64), cfg.data.val_fraction)
    expected = -log_probs[val[:-1], val[1:]].mean()
    assert abs(result.report["val_loss"] - expected) < 1e-4
    # the checkpoint's params (read alone, without the AdamW state) are the trained ones
    params, meta = Store(workdir, create=False).restore_params()
    np.testing.assert_array_equal(np.asarray(logits_table(params)), np.asarray(logits_table(result.state.params)))
    assert meta["vocab"] == corpus.tokenizer.chars


def test_sampling_with_big_vocab_is_an_exact_chain_walk(trained):
    """V > 512 takes the binary-search path: compare with numpy's searchsorted on the same uniforms."""
    corpus, _, result, _ = trained
    params, vocab = result.state.params, corpus.tokenizer.vocab_size
    key, n = jax.random.key(42), 300
    out = np.asarray(generate.generate(params, key, [0], n))[0]
    cdf = np.asarray(generate.next_char_cdf(params, 1.0, 0, 1.0))
    uniforms = np.asarray(generate._uniforms(key, 1, 0, n))[:, 0]
    prev, expected = 0, []
    for u in uniforms:
        prev = min(int(np.searchsorted(cdf[prev], u, side="right")), vocab - 1)
        expected.append(prev)
    assert out[0] == 0 and out[1:].tolist() == expected
    text = corpus.tokenizer.decode(out)
    assert len(text) == n + 1 and set(text) <= set(corpus.tokenizer.chars)
    top = np.asarray(generate.generate(params, key, [0], n, 1.0, 5))[0]  # top-k: every draw among the row's top 5
    table = np.asarray(logits_table(params))
    for a, b in zip(top[:-1], top[1:]):
        assert table[a, b] >= np.sort(table[a])[-5]
