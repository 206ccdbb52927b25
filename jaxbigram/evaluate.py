"""Evaluation: the lecture's loss estimate over random batches (``estimate_loss``, pure), the exact losses over whole
splits next to the closed-form bigram optimum (``exact_report``), and from a checkpoint to what a user wants to know
about it (``evaluate_checkpoint``: the one path checkpoint → data → split → report).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import jax
import numpy as np

from . import data as data_lib
from . import checks, files, parallel, runs
from .errors import UsageError, message
from .optimum import bigram_counts, optimum_report

LN2 = math.log(2.0)


def exact_report(model, params, train_ids: np.ndarray, val_ids: np.ndarray, train: bool = True) -> dict:
    """Exact losses over every position of both splits (of val only when ``train`` is false: train's losses are then
    None), in nats and bits per character, next to the closed-form bigram optimum: for a bigram the gap to it is
    what training left on the table; for any other model the optimum is the baseline it must beat.

    A split of fewer than 2 ids has no character pair to score: its loss is NaN whatever the model (this is the one
    place that decides it; ``split_loss`` is only called with a pair to predict). The ids are 1-D, each from 0 to
    V - 1 (checked)."""
    for name, ids in (("train_ids", train_ids), ("val_ids", val_ids)):
        checks.check_ids("exact_report", name, ids, model.vocab_size)
    report = {"model": model.kind}
    report.update(optimum_report(bigram_counts(train_ids, model.vocab_size), bigram_counts(val_ids, model.vocab_size)))
    for split, ids in (("train", train_ids if train else None), ("val", val_ids)):
        loss = None if ids is None else split_loss(model, params, ids) if len(ids) >= 2 else math.nan
        report[f"{split}_loss"] = loss
        report[f"{split}_bpc"] = None if loss is None else loss / LN2
        report[f"gap_{split}"] = None if loss is None else loss - report[f"optimum_{split}_loss"]
    return report


def split_loss(model, params, ids: np.ndarray, batch_windows: int = 64) -> float:
    """Exact mean loss over every position of ``ids`` (at least 2), each predicting the next id.

    A model whose ``cheap_split_loss`` is set computes it itself (the bigram: from its pair counts). Otherwise the
    split is cut into consecutive windows of ``block_size`` (``models.gpt.context_windows``) and scored
    ``batch_windows`` windows per call, each call's windows split over this process's devices (every core of a CPU);
    a short last call is padded with masked windows so one compiled shape serves every call. The ids are checked."""
    checks.check_ids("split_loss", "ids", ids, model.vocab_size, min_length=2)
    if model.cheap_split_loss:
        return model.split_loss(params, ids)
    from .models.gpt import context_windows

    x, y, mask = context_windows(ids, model.block_size)
    n_win, t = x.shape
    devices = jax.local_devices()
    batch_windows = max(1, min(batch_windows, n_win))
    batch_windows = -(-batch_windows // len(devices)) * len(devices)
    n_batches = -(-n_win // batch_windows)
    pad = n_batches * batch_windows - n_win
    if pad:
        x, y, mask = (np.concatenate([a, np.zeros((pad, t), a.dtype)]) for a in (x, y, mask))
    dp = parallel.DataParallel.create(batch_windows, devices)
    params = jax.device_put(parallel.local_copy(params), dp.replicated)
    total = 0.0
    for b in range(n_batches):
        s = slice(b * batch_windows, (b + 1) * batch_windows)
        total += float(model.window_nll(params, *jax.device_put((x[s], y[s], mask[s]), dp.batch_sharding)))
    return total / (len(ids) - 1)


@partial(jax.jit, static_argnames=("model", "iters", "batch_size", "block_size", "sharding", "loss_fn"))
def estimate_loss(model, params, key, train_data, val_data, *, iters: int, batch_size: int, block_size: int,
                  sharding=None, loss_fn=None) -> dict:
    """The lecture's estimate: mean loss over ``iters`` random batches of each split, no dropout (pure; keys
    explicit). One batch at a time (``lax.map``): memory stays that of one batch, and on a CPU it measured faster
    than vectorising several batches per pass, for both models. ``loss_fn``: in place of ``model.loss`` (e.g. its
    ``fast_loss``). Checked at trace time (static, free): ``iters`` >= 1, one key, and the batches as ``get_batch``
    checks them; precondition (as ``model.loss``'s): every id of the data from 0 to V - 1."""
    checks.check_int("estimate_loss", "iters", iters, 1)
    checks.check_key("estimate_loss", "key", key)
    loss_fn = loss_fn or model.loss

    def mean_loss(split_key, split_data):
        keys = jax.random.split(split_key, iters)
        return jax.lax.map(lambda k: loss_fn(params, *parallel.constrain_batch(
            *data_lib.get_batch(k, split_data, batch_size, block_size), sharding)), keys).mean()

    train_key, val_key = jax.random.split(key)
    return {"train": mean_loss(train_key, train_data), "val": mean_loss(val_key, val_data)}


def evaluate_checkpoint(workdir: str | Path, step: int | None = None, data: str | None = None,
                        log=None) -> dict:
    """Exact report of a checkpoint on the text it was trained on (or ``data``), split as in training.

    Another text is encoded with the checkpoint's vocabulary; a text that is not the one trained on is said (sha256).
    """
    ckpt = runs.load_checkpoint(workdir, step)
    recorded = ckpt.meta["data"]
    path, source = data_lib.resolve_data_path(data, recorded=recorded["path"])
    corpus = data_lib.load_corpus(path)
    same = corpus.sha256 == recorded["sha256"]
    if not same and log is not None:
        log(message("note_other_text", path=path, source=source, step=ckpt.step, sha256=corpus.sha256[:12],
                    trained_sha256=recorded["sha256"][:12], trained_path=recorded["path"]))
    if corpus.tokenizer.chars == ckpt.tokenizer.chars:
        ids = corpus.ids
    else:  # another text: encode it with the checkpoint's vocabulary
        try:
            ids = ckpt.tokenizer.encode(files.decode_utf8(files.read_bytes(path), path))
        except data_lib.UnknownCharacters as e:
            raise UsageError("eval_unknown_chars", path=path, n=len(e.chars),
                             chars=", ".join(repr(c) for c in e.chars[:20])) from None
    train_ids, val_ids = data_lib.split(ids, ckpt.meta["config"]["data"]["val_fraction"])
    report = exact_report(ckpt.model, ckpt.params, train_ids, val_ids)
    report.update(step=ckpt.step, data=str(path), sha256=corpus.sha256, same_data_as_training=same)
    return report
