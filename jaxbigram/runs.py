"""A training run's folder: one writer at a time, resuming from the newest intact checkpoint of the same run, and
reading a run (its checkpoints, its metrics log) for ``sample``, ``eval``, ``info`` and ``plot``.

The policy lives here (``checkpoint.Store`` only reads and writes): a damaged step is moved to
``<workdir>/damaged-checkpoints/`` (kept for inspection, never deleted) and the next older one is tried; a checkpoint
of other data, another vocabulary or other settings is refused with one line. The readers open checkpoints
read-only. JAX, Flax and orbax are imported by the functions that need them, so the command line can read this
module's constants without them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import config as config_lib
from .errors import CheckpointError, UsageError, message
from .paths import IS_FILE, prepare_folder, unwritable_reason

LOCK_FILE = ".train.lock"  # held by a running `train` (see ``exclusive``)
DAMAGED = "damaged-checkpoints"
RUN_FOLDERS = ("checkpoints", DAMAGED)  # what ``train`` writes into, besides the workdir itself
# what may change when a run is resumed: how long it runs, how often it is looked at, and how many devices share a
# batch (the same math; only the order of the gradient's float sums changes); nothing that changes the math. The one
# list: the refusal, `train --help` and the docs say it as ``resumable_keys_text()``
RESUMABLE_KEYS = ("train.steps", "train.steps_per_call", "train.devices", "eval.interval", "eval.iters",
                  "eval.sample_chars", "checkpoint.interval", "checkpoint.keep", "data.path")
# the longest path a run writes below its workdir is about 110 bytes
# (checkpoints/<step>.orbax-checkpoint-tmp-<time>/state/ocdbt.process_<i>/d/<32 hex>); with a margin:
WORKDIR_ROOM = 160


def resumable_keys_text() -> str:
    """``RESUMABLE_KEYS`` as a sentence: "train.steps, …, checkpoint.keep and data.path"."""
    return ", ".join(RESUMABLE_KEYS[:-1]) + " and " + RESUMABLE_KEYS[-1]


def writable_folder(folder: Path, is_file: str, unwritable: str, **fields) -> Path:
    """``folder``, created if needed; a UsageError (code ``is_file`` or ``unwritable``, with ``fields`` and a
    ``reason``) if it is a file or cannot be written into."""
    problem = prepare_folder(folder)
    if problem == IS_FILE:
        raise UsageError(is_file, **fields)
    if problem is not None:
        raise UsageError(unwritable, reason=problem, **fields)
    return folder


def ensure_writable(workdir: Path) -> None:
    """Create ``workdir`` if needed; one clear line if it cannot hold a run."""
    if str(workdir) in ("", "."):
        raise UsageError("workdir_empty")
    writable_folder(workdir, "workdir_is_file", "workdir_not_writable", workdir=workdir)


def check_run_folders(workdir: Path) -> None:
    """The folders ``train`` writes into (``RUN_FOLDERS``), where they exist, must be folders it can write into:
    checked before anything is trained, so a save never fails on them after minutes of training."""
    for folder in (workdir / name for name in RUN_FOLDERS):
        if folder.exists() and not folder.is_dir():
            raise UsageError("workdir_foreign", workdir=workdir, what=f"{folder} is not a folder")
        if folder.is_dir() and unwritable_reason(folder):
            raise UsageError("folder_not_writable", path=folder, reason=unwritable_reason(folder))


@contextlib.contextmanager
def held(workdir: str | Path, primary: bool = True):
    """``train``'s hold on its run folder, yielding its absolute path: the folder created if needed, it and the folders
    ``train`` writes into checked writable, its lock taken (``exclusive``). If the command then fails, the folders this
    created are removed again while they are still empty: a refused ``train`` leaves nothing behind."""
    absolute = Path(workdir).expanduser().absolute()
    created = [p for p in (absolute, *absolute.parents) if not p.exists()]  # innermost first
    try:
        ensure_writable(Path(workdir))
        check_run_folders(absolute)
        with exclusive(absolute, primary):
            yield absolute
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()  # only an empty folder goes
            except OSError:
                break
        raise


def check_ours(workdir: Path, fresh: bool, replaceable: bool = True) -> None:
    """Refuse a workdir holding things another program wrote, which a run would overwrite, move or delete: a step
    folder under ``checkpoints/`` that is not a jaxbigram checkpoint (one has ``state/`` and ``meta/``), or a
    ``metrics.jsonl`` with no checkpoints beside it (a run writes its log only from its first checkpoint on) unless
    ``fresh`` says to replace it (``replaceable``: the refusal says ``--fresh`` would)."""
    if (workdir / "groups").is_dir():  # a shape sweep's folder (sweep_shapes.GROUPS_DIR): its groups are its runs
        raise UsageError("is_shape_sweep", workdir=workdir)
    folder = workdir / "checkpoints"
    steps = [p for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    foreign = [p for p in steps if p.is_dir() and not ((p / "state").exists() or (p / "meta").exists())]
    foreign += [p for p in steps if not p.is_dir()]
    if foreign:
        raise UsageError("workdir_foreign", workdir=workdir, what=f"{foreign[0]} is not a jaxbigram checkpoint")
    if not steps and (workdir / "metrics.jsonl").exists() and not fresh:
        raise UsageError("workdir_foreign", workdir=workdir,
                         what="a metrics.jsonl but no checkpoints" + (" (pass --fresh to replace it)" if replaceable
                                                                      else ""))


def run_checkpoints_around(folder: str | Path) -> Path | None:
    """The ``checkpoints/`` (or ``damaged-checkpoints/``) folder of a run that ``folder`` is or is inside, if any: a
    run written there would sit among that run's steps."""
    absolute = Path(os.path.realpath(Path(folder).expanduser()))
    for candidate in (absolute, *absolute.parents):
        run = candidate.parent
        if candidate.name in RUN_FOLDERS and candidate.is_dir() and run != candidate and (
                (run / LOCK_FILE).exists() or (run / "metrics.jsonl").exists()
                or any(p.name.isdigit() for p in (run / "checkpoints").glob("[0-9]*"))):
            return candidate
    return None


def rotated_away(store, step: int) -> bool:
    """After a failed read of ``step``: True when the step is gone (a running ``train`` or ``sweep`` keeps only its
    newest steps), so the read failed because it was removed, not because it is damaged."""
    store.reload()
    return step not in store.steps()


@contextlib.contextmanager
def exclusive(workdir: Path, primary: bool = True):
    """Hold ``<workdir>/.train.lock`` (an OS lock, released even on kill -9) so two ``train`` runs never share a
    workdir: they would clean up each other's half-written saves. Only the primary process takes it. A lock file this
    call created is removed again if the command fails (while still locked, so no one else holds it)."""
    if not primary:
        yield
        return
    path = workdir / LOCK_FILE
    created = not path.exists()
    handle = _locked(path)
    try:
        yield
    except BaseException:
        if created:
            path.unlink(missing_ok=True)
        raise
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _locked(path: Path):
    """``path`` opened and flock-ed (one line if it cannot be opened for writing, or another ``train`` holds it).
    A lock file removed by its holder between our open and our flock is opened again: a lock must be on the file the
    path names now."""
    while True:
        try:
            handle = open(path, "a+")
        except OSError as e:
            raise UsageError("lock_unwritable", path=path, reason=e.strerror or str(e)) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise UsageError("workdir_busy", workdir=path.parent) from None
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()


def saved_meta(workdir: Path, fresh: bool, log) -> dict | None:
    """For a command about to write ``workdir``: refuse a folder of other programs' files (``check_ours``), then the
    newest intact checkpoint's metadata (damaged newer steps set aside), or None for a new run or ``--fresh``."""
    from .checkpoint import Store

    check_ours(workdir, fresh)
    probe = Store(workdir, log=log)
    try:
        return None if fresh else newest_meta(probe, log)
    finally:
        probe.close()


def newest_meta(store, log) -> dict | None:
    """The metadata of the newest step whose metadata reads (None for a new run); damaged ones are set aside."""
    for step in reversed(store.steps()):
        try:
            return store.read_meta(step)
        except CheckpointError as e:
            set_aside(store, step, e, log)
    return None


def refuse_sweep(meta: dict, workdir) -> None:
    """A sweep's checkpoints hold many runs stacked: a command about one run says how to get one (never reads them
    as one run, never sets them aside as damaged)."""
    spec = meta.get("sweep")
    if isinstance(spec, dict):
        raise UsageError("is_sweep", workdir=workdir, members=spec.get("members", "?"),
                         last=max(0, int(spec.get("members", 1) or 1) - 1))


def run_config(saved: dict | None, config_path, overrides, workdir: Path) -> config_lib.Config:
    """The config of this run: the given one for a new run; the checkpoint's own for a resume, where a --config or
    --set may change only ``RESUMABLE_KEYS`` (anything else would mix two runs). A sweep's folder is refused."""
    if saved is not None:
        refuse_sweep(saved, workdir)
    if saved is None:
        return config_lib.load(config_path or config_lib.DEFAULT_PRESET, overrides)
    given = config_lib.load(config_path, overrides, base=None if config_path else saved["config"])
    changed = [k for k in config_lib.differences(saved["config"], given.to_dict()) if k not in RESUMABLE_KEYS]
    if changed:
        raise UsageError("config_changed", workdir=workdir, keys=", ".join(changed), resumable=resumable_keys_text())
    return given


def check_compatible(saved: dict, expected: dict, workdir: Path) -> None:
    """Refuse to resume a run trained on other data or another vocabulary."""
    if saved.get("vocab") != expected["vocab"]:
        what = f"another vocabulary ({saved.get('vocab_size')} characters, this data has {expected['vocab_size']})"
        raise CheckpointError("incompatible", workdir=workdir, what=what)
    data = saved.get("data") or {}
    if data.get("sha256") != expected["data"]["sha256"]:
        what = f"other data ({data.get('path')}, sha256 {str(data.get('sha256', '?'))[:12]}…)"
        raise CheckpointError("incompatible", workdir=workdir, what=what)


def resume(store, template, expected: dict, log, newest: dict | None = None):
    """(saved metadata, TrainState) of the newest step that restores intact, or None if none does. ``newest``: the
    metadata of the newest step, when the caller has read it already (``saved_meta``): it is not read again.

    Damaged steps are set aside with a note on ``log``; an incompatible one is refused (CheckpointError).
    """
    for step in reversed(store.steps()):
        try:
            known = newest if newest is not None and newest.get("step") == step else None
            saved = known if known is not None else store.read_meta(step)
            check_compatible(saved, expected, store.workdir)  # before the arrays: another vocabulary is not damage
            return store.restore(step, template, meta=saved)
        except CheckpointError as e:
            if e.code != "corrupt_checkpoint":
                raise
            set_aside(store, step, e, log)
    return None


def set_aside(store, step: int, error: CheckpointError, log) -> Path:
    """Move a damaged step out of the checkpoint directory (kept for inspection, never deleted)."""
    store.close()
    target = store.workdir / DAMAGED / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(store.directory / str(step), target)
    log(message("warn_step_set_aside", step=step, reason=error.fields["reason"], target=target))
    return target


# ----------------------------------------------------------------------------- reading a run (read-only)

@dataclass(frozen=True)
class Checkpoint:
    """One saved step, ready to use: its params, metadata, tokenizer and model."""

    step: int
    params: dict
    meta: dict
    tokenizer: object  # data.Tokenizer
    model: object
    workdir: Path


def model_of(meta: dict):
    """The model a checkpoint's metadata describes."""
    from . import models

    cfg = config_lib.from_dict(meta["config"])
    return models.build(cfg.model, meta["vocab_size"], cfg.train.block_size)


def load_checkpoint(workdir: str | Path, step: int | None = None, attempts: int = 3) -> Checkpoint:
    """The params of ``step`` (default: the newest) of a run, read-only.

    A run that is still training may drop the newest step while it is being read (its keep policy): then the newest
    step that exists is read instead; an explicit ``step`` that went away is said to have moved.
    """
    from . import data as data_lib
    from .checkpoint import Store

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
            refuse_sweep(meta, store.workdir)
            return Checkpoint(step=chosen, params=params, meta=meta, tokenizer=data_lib.Tokenizer(meta["vocab"]),
                              model=model_of(meta), workdir=store.workdir)
    finally:
        store.close()
    raise AssertionError("unreachable")


def run_info(workdir: str | Path, log=None, attempts: int = 3) -> dict:
    """Everything a user wants to know about a run, from its checkpoints (and its metrics log) alone. A step that a
    running ``train`` or ``sweep`` removes while it is read is left out (it is read again if none was left)."""
    from .checkpoint import Store

    store = Store(workdir, read_only=True)
    try:
        steps = store.steps()
        if not steps:
            raise CheckpointError("no_checkpoint", workdir=store.workdir)
        metas, damaged, damaged_steps = {}, None, []
        for s in steps:
            try:
                metas[s] = store.read_meta(s)
            except CheckpointError as e:  # a damaged step does not hide the run (info has no --step to avoid it)
                if rotated_away(store, s):  # a running train or sweep dropped it while it was read: not damage
                    continue
                damaged = e
                damaged_steps.append(s)
                if log is not None:
                    log(f"warning: checkpoint step {s} is damaged ({e.fields['reason']}); `train` in that workdir "
                         f"resumes from the newest intact step")
        if not metas:
            if damaged is None and attempts > 1:  # every step went away while it was read: read what is there now
                store.close()
                return run_info(workdir, log, attempts - 1)
            raise damaged or CheckpointError("no_checkpoint", workdir=store.workdir)
        steps = sorted([*metas, *damaged_steps])
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
            "metrics": metrics_summary(store.workdir, log), "sweep": _sweep_summary(latest)}


def _sweep_summary(meta: dict) -> dict | None:
    """A sweep's members, seeds and settings (None for a single run)."""
    spec = meta.get("sweep")
    if not isinstance(spec, dict):
        return None
    return {"members": spec.get("members"), "seeds": spec.get("seeds"), "settings": spec.get("labels")}


def metrics_summary(workdir: str | Path, log=None) -> dict | None:
    """Evals logged in ``metrics.jsonl``, the best val estimate among them (any step, checkpointed or not) and the
    last sample shown at an eval (``{'step', 'text'}``, None without one: ``eval.sample_chars`` = 0)."""
    from . import progress

    path = Path(workdir) / progress.METRICS_FILE
    rows = progress.read_metrics(path, log)
    if not rows:
        return None
    best = min(rows, key=lambda r: r["val_loss"])
    sampled = [r for r in rows if isinstance(r.get("sample"), str)]
    return {"path": str(path), "evals": len(rows), "last_step": rows[-1]["step"],
            "best_val_loss": best["val_loss"], "best_step": best["step"],
            "last_sample": {"step": sampled[-1]["step"], "text": sampled[-1]["sample"]} if sampled else None}


def loss_rows(workdir: str | Path, meta: dict, up_to: int, log=None) -> list[dict]:
    """The eval rows of a run up to step ``up_to``: the metrics log, else the checkpoint's own history."""
    from . import progress

    rows = progress.read_metrics(Path(workdir) / progress.METRICS_FILE, log) or meta.get("history", [])
    return [r for r in rows if r["step"] <= up_to]


def optima(meta: dict) -> dict | None:
    """The closed-form bigram optimum ``{'train', 'val'}`` of a run: from the checkpoint's exact report, else from its
    data file (if unchanged); None when neither is at hand."""
    from . import data as data_lib
    from .optimum import bigram_counts, optimum_report

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
