"""Closed-form bigram losses from counts: the ground truth any bigram trainer can be checked against."""

from __future__ import annotations

import numpy as np

from .data import BigramCounts


def _row_totals(counts: BigramCounts) -> np.ndarray:
    return np.bincount(counts.rows, weights=counts.counts, minlength=counts.vocab_size)


def train_optimum(train: BigramCounts) -> float:
    """The lowest mean cross-entropy any (V, V) table can reach on the train split: the entropy of the count model."""
    row_totals = _row_totals(train)
    p = train.counts / row_totals[train.rows]
    return float(-(train.counts * np.log(p)).sum() / train.total)


def smoothed_loss(train: BigramCounts, evaluated: BigramCounts, alpha: float = 1.0) -> float:
    """Mean cross-entropy on ``evaluated`` of the train count model with add-``alpha`` smoothing."""
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
    return {"optimum_train_loss": train_optimum(train), "optimum_val_loss": smoothed_loss(train, val, 1.0)}
