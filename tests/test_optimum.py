"""optimum.py: streamed bigram counts against a dense numpy count, and the closed-form bigram losses against dense
numpy count tables."""

import tracemalloc

import numpy as np
import pytest

from jaxbigram import data
from jaxbigram.models.bigram import Bigram
from jaxbigram.optimum import bigram_counts, optimum_report, smoothed_loss, train_optimum
from conftest import table_params
from reference import np_bigram_counts, np_dense_counts


def dense_entropy(table):
    """Mean −log p(next | prev) of the count model on its own counts."""
    rows = table.sum(axis=1, keepdims=True)
    nz = table > 0
    p = np.where(nz, table / np.where(rows > 0, rows, 1), 1.0)
    return float(-(table[nz] * np.log(p[nz])).sum() / table.sum())


def dense_smoothed(train_table, eval_table, alpha):
    vocab = train_table.shape[0]
    p = (train_table + alpha) / (train_table.sum(axis=1, keepdims=True) + alpha * vocab)
    return float(-(eval_table * np.log(p)).sum() / eval_table.sum())


@pytest.fixture(scope="module")
def shakespeare_splits(corpus):
    train, val = data.split(corpus.ids, 0.1)
    return train, val, corpus.tokenizer.vocab_size


# ----------------------------------------------------------------------------- bigram counts

@pytest.mark.parametrize("vocab, n, chunk", [
    (7, 1000, 1 << 22),  # one chunk, dense bincount
    (7, 1000, 1),  # one pair per chunk (np.unique path, 49 > 4)
    (7, 1000, 2),
    (7, 1000, 998),  # the last chunk holds one pair
    (7, 1000, 999),  # exactly the number of pairs
    (7, 1000, 1000),
    (7, 1000, 333),  # chunks end mid-stream; the boundary pair must be counted once
    (300, 5000, 64),  # big vocab: np.unique path across chunks
    (300, 5000, 1 << 22),
])
def test_bigram_counts_equal_naive_numpy_count(vocab, n, chunk):
    ids = np.random.default_rng(vocab + n + chunk).integers(0, vocab, n).astype(data.ids_dtype(vocab))
    counts = bigram_counts(ids, vocab, chunk=chunk)
    np.testing.assert_array_equal(np_dense_counts(counts), np_bigram_counts(ids, vocab))
    assert counts.total == n - 1
    assert (counts.counts > 0).all()
    codes = counts.rows.astype(np.int64) * vocab + counts.cols
    assert (np.diff(codes) > 0).all()  # sorted by row * V + col, each pair once


@pytest.mark.parametrize("ids", [[], [3]])
def test_bigram_counts_of_no_pairs(ids):
    counts = bigram_counts(np.asarray(ids, dtype=np.uint8), 5)
    assert counts.total == 0
    np.testing.assert_array_equal(np_dense_counts(counts), np.zeros((5, 5)))


def test_bigram_counts_on_tinyshakespeare(corpus):
    vocab = corpus.tokenizer.vocab_size
    np.testing.assert_array_equal(np_dense_counts(bigram_counts(corpus.ids, vocab, chunk=100_003)),
                                  np_bigram_counts(corpus.ids, vocab))


def test_bigram_counts_chunked_on_a_generated_big_vocabulary(big_corpus_path):
    corpus = data.load_corpus(big_corpus_path)  # a memory map of uint16 ids
    ids, vocab = corpus.ids, corpus.tokenizer.vocab_size
    counts = bigram_counts(ids, vocab, chunk=10_007)  # many chunks; V² > 4·chunk takes the np.unique path
    np.testing.assert_array_equal(np_dense_counts(counts), np_bigram_counts(np.asarray(ids), vocab))


def test_bigram_counts_of_a_big_vocabulary_merge_exactly():
    ids = np.random.default_rng(2).integers(0, 3000, 200_000).astype(np.uint16)
    counts = bigram_counts(ids, 3000, chunk=1 << 12)
    codes = ids[:-1].astype(np.int64) * 3000 + ids[1:]
    u, c = np.unique(codes, return_counts=True)
    np.testing.assert_array_equal(counts.rows.astype(np.int64) * 3000 + counts.cols, u)
    np.testing.assert_array_equal(counts.counts, c)


def test_bigram_counts_memory_does_not_grow_with_the_corpus():
    """Streaming in chunks: peak memory (numpy allocations, via tracemalloc) is the same for 0.5 M and 4 M ids,
    and far below the size of one int64 copy of the ids; the counts equal a dense numpy count."""
    rng = np.random.default_rng(1)
    peaks = []
    for n in (500_000, 4_000_000):
        ids = rng.integers(0, 65, n).astype(np.uint8)
        tracemalloc.start()
        counts = bigram_counts(ids, 65, chunk=1 << 16)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        np.testing.assert_array_equal(np_dense_counts(counts), np_bigram_counts(ids, 65))
    assert peaks[1] < 1.2 * peaks[0] + (1 << 20)
    assert peaks[1] < 4_000_000 * 8 / 8


# ----------------------------------------------------------------------------- the closed-form losses

def test_train_optimum_equals_dense_entropy(shakespeare_splits):
    train, _, vocab = shakespeare_splits
    expected = dense_entropy(np_bigram_counts(train, vocab))
    assert train_optimum(bigram_counts(train, vocab)) == pytest.approx(expected, rel=1e-12)


def test_train_optimum_random_small_vocab():
    ids = np.random.default_rng(0).integers(0, 5, 300)
    assert train_optimum(bigram_counts(ids, 9)) == pytest.approx(dense_entropy(np_bigram_counts(ids, 9)), rel=1e-12)


def test_log_count_model_table_attains_the_optimum(shakespeare_splits):
    """W = log P(count model) is a minimiser: the bigram's exact split loss of W equals the optimum, and perturbing W
    makes it worse."""
    train, _, vocab = shakespeare_splits
    model = Bigram(vocab)
    table = np_bigram_counts(train, vocab)
    rows = table.sum(axis=1, keepdims=True)
    probs = table / np.where(rows > 0, rows, 1)
    log_probs = np.where(probs > 0, np.log(np.where(probs > 0, probs, 1)), -1e9)
    optimum = train_optimum(bigram_counts(train, vocab))
    assert model.split_loss(table_params(log_probs), train) == pytest.approx(optimum, abs=1e-5)
    # adding a constant to a row changes nothing (softmax is shift-invariant)...
    shifted = log_probs + np.arange(vocab)[:, None]
    assert model.split_loss(table_params(shifted), train) == pytest.approx(optimum, abs=1e-5)
    # ...but any other perturbation raises the loss
    noise = 0.05 * np.random.default_rng(0).standard_normal((vocab, vocab))
    assert model.split_loss(table_params(np.maximum(log_probs, -30) + noise), train) > optimum + 1e-4


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_smoothed_val_loss_equals_dense_numpy(shakespeare_splits, alpha):
    train, val, vocab = shakespeare_splits
    expected = dense_smoothed(np_bigram_counts(train, vocab), np_bigram_counts(val, vocab), alpha)
    got = smoothed_loss(bigram_counts(train, vocab), bigram_counts(val, vocab), alpha)
    assert got == pytest.approx(expected, rel=1e-12)


def test_smoothed_loss_with_pairs_and_rows_unseen_in_train():
    vocab = 8
    train = np.array([0, 1, 2, 0, 1, 2, 1, 1, 0])  # ids 3..7 never appear in train
    val = np.array([0, 3, 4, 7, 7, 1, 0, 2, 2, 5])
    expected = dense_smoothed(np_bigram_counts(train, vocab), np_bigram_counts(val, vocab), 1.0)
    got = smoothed_loss(bigram_counts(train, vocab), bigram_counts(val, vocab), 1.0)
    assert got == pytest.approx(expected, rel=1e-12)


def test_optimum_report_on_tinyshakespeare(shakespeare_splits):
    train, val, vocab = shakespeare_splits
    report = optimum_report(bigram_counts(train, vocab), bigram_counts(val, vocab))
    assert report["optimum_val_loss"] == pytest.approx(2.482, abs=5e-4)  # the reference value
    assert report["optimum_train_loss"] < report["optimum_val_loss"]
    assert report["optimum_train_loss"] == pytest.approx(dense_entropy(np_bigram_counts(train, vocab)), rel=1e-12)


def test_uniform_table_scores_log_vocab(shakespeare_splits):
    train, _, vocab = shakespeare_splits
    assert Bigram(vocab).split_loss(table_params(np.zeros((vocab, vocab))), train) == \
        pytest.approx(np.log(vocab), rel=1e-6)
