"""Evaluation: the lecture's loss estimate over random batches (``estimate_loss``, pure), the exact losses over whole
splits next to the closed-form bigram optimum (``exact_report``), and from a checkpoint to what a user wants to know
about it (the one path checkpoint → data → split → report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import numpy as np

from . import config as config_lib
from . import data as data_lib
from . import files, models, parallel, progress
from .checkpoint import Store
from .errors import CheckpointError, UsageError, message
from .optimum import bigram_counts, optimum_report

LN2 = math.log(2.0)


def exact_report(model, params, train_ids: np.ndarray, val_ids: np.ndarray, train: bool = True) -> dict:
    """Exact losses over every position of both splits (of val only when ``train`` is false: train's losses are then
    None), in nats and bits per character, next to the closed-form bigram optimum: for a bigram the gap to it is
    what training left on the table; for any other model the optimum is the baseline it must beat.

    A split of fewer than 2 ids has no character pair to score: its loss is NaN whatever the model (this is the one
    place that decides it; ``split_loss`` is only called with a pair to predict)."""
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
    a short last call is padded with masked windows so one compiled shape serves every call."""
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


@partial(jax.jit, static_argnames=("model", "iters", "batch_size", "block_size", "sharding"))
def estimate_loss(model, params, key, train_data, val_data, *, iters: int, batch_size: int, block_size: int,
                  sharding=None) -> dict:
    """The lecture's estimate: mean loss over ``iters`` random batches of each split, no dropout (pure; keys
    explicit). One batch at a time (``lax.map``): memory stays that of one batch, and on a CPU it measured faster
    than vectorising several batches per pass, for both models."""

    def mean_loss(split_key, split_data):
        keys = jax.random.split(split_key, iters)
        return jax.lax.map(lambda k: model.loss(params, *parallel.constrain_batch(
            *data_lib.get_batch(k, split_data, batch_size, block_size), sharding)), keys).mean()

    train_key, val_key = jax.random.split(key)
    return {"train": mean_loss(train_key, train_data), "val": mean_loss(val_key, val_data)}


@dataclass(frozen=True)
class Checkpoint:
    """One saved step, ready to use: its params, metadata, tokenizer and model."""

    step: int
    params: dict
    meta: dict
    tokenizer: data_lib.Tokenizer
    model: object
    workdir: Path


def model_of(meta: dict):
    """The model a checkpoint's metadata describes."""
    cfg = config_lib.from_dict(meta["config"])
    return models.build(cfg.model, meta["vocab_size"], cfg.train.block_size)


def load_checkpoint(workdir: str | Path, step: int | None = None, attempts: int = 3) -> Checkpoint:
    """The params of ``step`` (default: the newest) of a run, read-only.

    A run that is still training may drop the newest step while it is being read (its keep policy): then the newest
    step that exists is read instead; an explicit ``step`` that went away is said to have moved.
    """
    store = Store(workdir, read_only=True)
    try:
        for attempt in range(attempts):
            steps = store.steps()
            if not steps:
                raise CheckpointError("no_checkpoint", workdir=store.workdir)
            chosen = steps[-1] if step is None else step
            try:
                params, meta = store.restore_params(chosen)
            except CheckpointError:
                store.reload()
                if chosen in store.steps() or chosen not in steps or attempt == attempts - 1:
                    raise  # still there: really damaged; or never there: no such step
                if step is not None:
                    raise CheckpointError("step_moved", step=step, workdir=store.workdir,
                                          steps=", ".join(map(str, store.steps())) or "none") from None
                continue  # the running train replaced it: read the newest again
            return Checkpoint(step=chosen, params=params, meta=meta, tokenizer=data_lib.Tokenizer(meta["vocab"]),
                              model=model_of(meta), workdir=store.workdir)
    finally:
        store.close()
    raise AssertionError("unreachable")


def evaluate_checkpoint(workdir: str | Path, step: int | None = None, data: str | None = None,
                        log=None) -> dict:
    """Exact report of a checkpoint on the text it was trained on (or ``data``), split as in training.

    Another text is encoded with the checkpoint's vocabulary; a text that is not the one trained on is said (sha256).
    """
    ckpt = load_checkpoint(workdir, step)
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


def run_info(workdir: str | Path, warn=None) -> dict:
    """Everything a user wants to know about a run, from its checkpoints (and its metrics log) alone."""
    store = Store(workdir, read_only=True)
    try:
        steps = store.steps()
        if not steps:
            raise CheckpointError("no_checkpoint", workdir=store.workdir)
        metas, damaged = {}, None
        for s in steps:
            try:
                metas[s] = store.read_meta(s)
            except CheckpointError as e:  # a damaged step does not hide the run (info has no --step to avoid it)
                damaged = e
                if warn is not None:
                    warn(f"warning: checkpoint step {s} is damaged ({e.fields['reason']}); `train` in that workdir "
                         f"resumes from the newest intact step")
        if not metas:
            raise damaged
        latest = metas[max(metas)]
    finally:
        store.close()
    scored = [(m["last_eval"]["val_loss"], s) for s, m in metas.items() if m.get("last_eval")]
    best_loss, best_step = min(scored) if scored else (None, None)
    ckpt_model = model_of(latest)
    return {"workdir": str(store.workdir), "steps": steps, "latest_step": steps[-1], "best_val_loss": best_loss,
            "best_step": best_step, "model": ckpt_model.kind, "num_params": latest.get("num_params"),
            "vocab_size": latest["vocab_size"], "vocab": latest["vocab"],
            "data": latest["data"], "config": latest["config"], "exact": latest.get("exact"),
            "metrics": metrics_summary(store.workdir, warn)}


def metrics_summary(workdir: str | Path, warn=None) -> dict | None:
    """Evals logged in ``metrics.jsonl``, the best val estimate among them (any step, checkpointed or not) and the
    last sample shown at an eval (``{'step', 'text'}``, None without one: ``eval.sample_chars`` = 0)."""
    path = Path(workdir) / progress.METRICS_FILE
    rows = progress.read_metrics(path, warn)
    if not rows:
        return None
    best = min(rows, key=lambda r: r["val_loss"])
    sampled = [r for r in rows if isinstance(r.get("sample"), str)]
    return {"path": str(path), "evals": len(rows), "last_step": rows[-1]["step"],
            "best_val_loss": best["val_loss"], "best_step": best["step"],
            "last_sample": {"step": sampled[-1]["step"], "text": sampled[-1]["sample"]} if sampled else None}


def loss_rows(workdir: str | Path, meta: dict, up_to: int, warn=None) -> list[dict]:
    """The eval rows of a run up to step ``up_to``: the metrics log, else the checkpoint's own history."""
    rows = progress.read_metrics(Path(workdir) / progress.METRICS_FILE, warn) or meta.get("history", [])
    return [r for r in rows if r["step"] <= up_to]


def optima(meta: dict) -> dict | None:
    """The closed-form bigram optimum ``{'train', 'val'}`` of a run: from the checkpoint's exact report, else from its
    data file (if unchanged); None when neither is at hand."""
    exact = meta.get("exact") or {}
    if exact.get("optimum_val_loss") is not None and exact.get("optimum_train_loss") is not None:
        return {"train": float(exact["optimum_train_loss"]), "val": float(exact["optimum_val_loss"])}
    path = Path(meta.get("data", {}).get("path", ""))
    if not path.is_file():
        return None
    corpus = data_lib.load_corpus(path)
    if corpus.sha256 != meta["data"].get("sha256"):
        return None
    train_ids, val_ids = data_lib.split(corpus.ids, meta["config"]["data"]["val_fraction"])
    v = corpus.tokenizer.vocab_size
    report = optimum_report(bigram_counts(train_ids, v), bigram_counts(val_ids, v))
    return {"train": float(report["optimum_train_loss"]), "val": float(report["optimum_val_loss"])}


def val_optimum(meta: dict) -> float | None:
    """The closed-form val optimum of a run (``optima``), or None."""
    return (optima(meta) or {}).get("val")
