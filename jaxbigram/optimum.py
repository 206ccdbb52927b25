"""The bigram statistics of a text: its pair counts (streamed, bounded memory) and the closed-form losses they give,
the ground truth any bigram trainer can be checked against (and the baseline any other model must beat)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import checks


@dataclass(frozen=True)
class BigramCounts:
    """Sparse bigram counts: ``counts[k]`` pairs of (``rows[k]`` followed by ``cols[k]``); sorted by row*V+col."""

    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray
    vocab_size: int

    @property
    def total(self) -> int:
        return int(self.counts.sum())


def bigram_counts(ids: np.ndarray, vocab_size: int, chunk: int = 1 << 22) -> BigramCounts:
    """Count every adjacent pair of ``ids`` in bounded memory (chunks of ``chunk`` pairs).

    Memory is O(chunk + distinct pairs), whatever the length of ``ids`` (a memory map is read chunk by chunk).
    Small vocabularies count into a dense V×V table per chunk; big ones collect each chunk's distinct pairs and merge
    them into the running total only once the pending ones outnumber it, so merging costs O(n log n) overall.
    ``ids`` are 1-D integers, each from 0 to ``vocab_size - 1`` (checked chunk by chunk, as they are read).
    """
    vocab_size = checks.check_int("bigram_counts", "vocab_size", vocab_size, 1)
    ids = checks.check_ids("bigram_counts", "ids", ids, values=False)
    codes_acc = np.zeros(0, dtype=np.int64)
    counts_acc = np.zeros(0, dtype=np.int64)
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    pending_size = 0

    def merge():
        nonlocal codes_acc, counts_acc, pending, pending_size
        merged, inverse = np.unique(np.concatenate([codes_acc, *(u for u, _ in pending)]), return_inverse=True)
        weights = np.concatenate([counts_acc, *(c for _, c in pending)]).astype(np.float64)  # exact below 2**53
        counts_acc = np.bincount(inverse, weights=weights, minlength=len(merged)).astype(np.int64)
        codes_acc, pending, pending_size = merged, [], 0

    n_pairs = max(len(ids) - 1, 0)
    for start in range(0, n_pairs, chunk):
        stop = min(start + chunk, n_pairs)
        window = np.asarray(checks.check_ids("bigram_counts", "ids", ids[start:stop + 1], vocab_size), dtype=np.int64)
        codes = window[:-1] * vocab_size + window[1:]
        if vocab_size * vocab_size <= 4 * chunk:
            binned = np.bincount(codes, minlength=vocab_size * vocab_size)
            u = np.flatnonzero(binned)
            c = binned[u]
        else:
            u, c = np.unique(codes, return_counts=True)
        pending.append((u, c))
        pending_size += len(u)
        if pending_size > max(len(codes_acc), 1 << 12):
            merge()
    if pending:
        merge()
    return BigramCounts(rows=(codes_acc // vocab_size).astype(np.int32), cols=(codes_acc % vocab_size).astype(np.int32),
                        counts=counts_acc, vocab_size=vocab_size)



def _row_totals(counts: BigramCounts) -> np.ndarray:
    return np.bincount(counts.rows, weights=counts.counts, minlength=counts.vocab_size)


def train_optimum(train: BigramCounts) -> float:
    """The lowest mean cross-entropy any (V, V) table can reach on the train split: the entropy of the count model."""
    if train.total == 0:  # no character pair: nothing to score (NaN, without numpy's 0/0 warning on stderr)
        return math.nan
    row_totals = _row_totals(train)
    p = train.counts / row_totals[train.rows]
    return float(-(train.counts * np.log(p)).sum() / train.total)


def smoothed_loss(train: BigramCounts, evaluated: BigramCounts, alpha: float = 1.0) -> float:
    """Mean cross-entropy on ``evaluated`` of the train count model with add-``alpha`` smoothing."""
    if evaluated.total == 0:  # no character pair to score (NaN, without numpy's 0/0 warning on stderr)
        return math.nan
    vocab = train.vocab_size
    row_totals = _row_totals(train)
    train_codes = train.rows.astype(np.int64) * vocab + train.cols
    eval_codes = evaluated.rows.astype(np.int64) * vocab + evaluated.cols
    pos = np.minimum(np.searchsorted(train_codes, eval_codes), max(len(train_codes) - 1, 0))
    seen = train_codes[pos] == eval_codes if len(train_codes) else np.zeros(len(eval_codes), bool)
    pair_counts = np.where(seen, train.counts[pos] if len(train_codes) else 0, 0)
    p = (pair_counts + alpha) / (row_totals[evaluated.rows] + alpha * vocab)
    return float(-(evaluated.counts * np.log(p)).sum() / evaluated.total)


def optimum_report(train: BigramCounts, val: BigramCounts) -> dict:
    """``optimum_train_loss`` (exact minimum) and ``optimum_val_loss`` (add-one smoothed count model on val)."""
    for name, counts in (("train", train), ("val", val)):
        checks.check_type("optimum_report", name, counts, BigramCounts, "BigramCounts (bigram_counts)")
    return {"optimum_train_loss": train_optimum(train), "optimum_val_loss": smoothed_loss(train, val, 1.0)}
