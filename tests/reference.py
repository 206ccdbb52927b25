"""Independent numpy references the tests compare jaxbigram against (float64, no JAX, no jaxbigram code): softmax,
cross-entropy, dense bigram counts, the lecture's tokenizer.

Import from a test module with ``from reference import ...`` (pytest puts tests/ on sys.path).
"""

import numpy as np


def np_log_softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """log softmax(logits / temperature) along the last axis."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_softmax(logits, temperature: float = 1.0) -> np.ndarray:
    return np.exp(np_log_softmax(logits, temperature))


def np_mean_cross_entropy(table, ids) -> float:
    """Mean −log softmax(W[ids[t]])[ids[t+1]] over every position of ``ids``."""
    ids = np.asarray(ids, dtype=np.int64)
    return float(-np_log_softmax(table)[ids[:-1], ids[1:]].mean())


def np_bigram_counts(ids, vocab_size: int) -> np.ndarray:
    """Dense (V, V) table: entry [i, j] counts how often id j follows id i."""
    ids = np.asarray(ids, dtype=np.int64)
    table = np.zeros((vocab_size, vocab_size), dtype=np.int64)
    np.add.at(table, (ids[:-1], ids[1:]), 1)
    return table


def np_dense_counts(counts) -> np.ndarray:
    """The dense (V, V) table of a sparse ``optimum.BigramCounts``."""
    table = np.zeros((counts.vocab_size, counts.vocab_size), dtype=np.int64)
    table[np.asarray(counts.rows, np.int64), np.asarray(counts.cols, np.int64)] = counts.counts
    return table


def naive_encode(text: str) -> tuple[str, list[int]]:
    """The lecture's tokenizer: sorted unique characters, a dict lookup per character → (vocabulary, ids)."""
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    return "".join(chars), [stoi[c] for c in text]
