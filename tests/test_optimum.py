"""optimum.py: the closed-form bigram losses against dense numpy count tables."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxbigram import data
from jaxbigram.optimum import optimum_report, smoothed_loss, train_optimum
from jaxbigram.train import exact_loss
from reference import np_bigram_counts


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


def params_of(table):
    return {"token_embedding_table": {"embedding": jnp.asarray(table, dtype=jnp.float32)}}


@pytest.fixture(scope="module")
def shakespeare_splits(corpus):
    train, val = data.split(corpus.ids, 0.1)
    vocab = corpus.tokenizer.vocab_size
    return train, val, vocab


def test_train_optimum_equals_dense_entropy(shakespeare_splits):
    train, _, vocab = shakespeare_splits
    expected = dense_entropy(np_bigram_counts(train, vocab))
    assert train_optimum(data.bigram_counts(train, vocab)) == pytest.approx(expected, rel=1e-12)


def test_train_optimum_random_small_vocab():
    ids = np.random.default_rng(0).integers(0, 5, 300)
    assert train_optimum(data.bigram_counts(ids, 9)) == pytest.approx(dense_entropy(np_bigram_counts(ids, 9)), rel=1e-12)


def test_log_count_model_table_attains_the_optimum(shakespeare_splits):
    """W = log P(count model) is a minimiser: exact_loss(W) equals the optimum, and perturbing W makes it worse."""
    train, _, vocab = shakespeare_splits
    table = np_bigram_counts(train, vocab)
    rows = table.sum(axis=1, keepdims=True)
    probs = table / np.where(rows > 0, rows, 1)
    log_probs = np.where(probs > 0, np.log(np.where(probs > 0, probs, 1)), -1e9)
    counts = data.bigram_counts(train, vocab)
    optimum = train_optimum(counts)
    assert exact_loss(params_of(log_probs), counts) == pytest.approx(optimum, abs=1e-5)
    # adding a constant to a row changes nothing (softmax is shift-invariant)...
    shifted = log_probs + np.arange(vocab)[:, None]
    assert exact_loss(params_of(shifted), counts) == pytest.approx(optimum, abs=1e-5)
    # ...but any other perturbation raises the loss
    noise = 0.05 * np.random.default_rng(0).standard_normal((vocab, vocab))
    assert exact_loss(params_of(np.maximum(log_probs, -30) + noise), counts) > optimum + 1e-4


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_smoothed_val_loss_equals_dense_numpy(shakespeare_splits, alpha):
    train, val, vocab = shakespeare_splits
    expected = dense_smoothed(np_bigram_counts(train, vocab), np_bigram_counts(val, vocab), alpha)
    got = smoothed_loss(data.bigram_counts(train, vocab), data.bigram_counts(val, vocab), alpha)
    assert got == pytest.approx(expected, rel=1e-12)


def test_smoothed_loss_with_pairs_and_rows_unseen_in_train():
    vocab = 8
    train = np.array([0, 1, 2, 0, 1, 2, 1, 1, 0])  # ids 3..7 never appear in train
    val = np.array([0, 3, 4, 7, 7, 1, 0, 2, 2, 5])
    expected = dense_smoothed(np_bigram_counts(train, vocab), np_bigram_counts(val, vocab), 1.0)
    got = smoothed_loss(data.bigram_counts(train, vocab), data.bigram_counts(val, vocab), 1.0)
    assert got == pytest.approx(expected, rel=1e-12)


def test_optimum_report_on_tinyshakespeare(shakespeare_splits):
    train, val, vocab = shakespeare_splits
    report = optimum_report(data.bigram_counts(train, vocab), data.bigram_counts(val, vocab))
    assert report["optimum_val_loss"] == pytest.approx(2.482, abs=5e-4)  # the reference value
    assert report["optimum_train_loss"] < report["optimum_val_loss"]
    assert report["optimum_train_loss"] == pytest.approx(dense_entropy(np_bigram_counts(train, vocab)), rel=1e-12)


def test_uniform_table_scores_log_vocab(shakespeare_splits):
    train, _, vocab = shakespeare_splits
    counts = data.bigram_counts(train, vocab)
    assert exact_loss(params_of(np.zeros((vocab, vocab))), counts) == pytest.approx(np.log(vocab), rel=1e-6)
