"""Checkpoints on disk: an orbax CheckpointManager over ``<workdir>/checkpoints`` (TrainState + JSON metadata)."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import shutil
import sys
import time
import zlib
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from .errors import UsageError
from .parallel import barrier, is_primary

TRASH = "_trash"  # orbax renames the steps it drops here (one atomic rename), then we empty it
DAMAGED = "damaged-checkpoints"  # under the workdir: damaged steps that `train` moved out of the way
_DELETING = ".checkpoints-deleting-"
LOCK_FILE = ".train.lock"  # held by a running `train` (see Store.exclusive)  # `--fresh` renames checkpoints/ to this prefix, then deletes it


class Store:
    """Save, list and restore checkpoints of one workdir; keeps the latest ``keep`` plus the best by val loss."""

    def __init__(self, workdir: str | Path, keep: int = 3, create: bool = True):
        self.workdir = Path(workdir).expanduser().absolute()
        self.directory = self.workdir / "checkpoints"
        if create:
            _ensure_writable(self.workdir)
        elif not self.directory.is_dir():
            raise UsageError("no_checkpoint", workdir=self.workdir)
        self.keep = keep
        self.read_only = not create  # sample/eval/info never write, delete or clean anything
        self._manager = None

    # -- the orbax manager, made on first use
    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            if not self.read_only:
                self._purge_leftovers()
            preservation = policies.AnyPreservationPolicy([
                policies.LatestN(n=self.keep),
                policies.BestN(get_metric_fn=lambda metrics: -metrics["val_loss"], n=1,
                               keep_checkpoints_without_metrics=False),
            ])
            # best_fn only makes orbax write the metrics to disk, so BestN still knows them after a restart.
            # Crash safety: a step directory appears by one atomic rename of a finished temp directory; half-written
            # temp directories are removed on start (cleanup_tmp_directories); dropped steps are renamed into TRASH
            # (atomic) before being deleted, so a kill never leaves a half-deleted step that looks finished.
            options = ocp.CheckpointManagerOptions(
                preservation_policy=preservation, best_fn=lambda metrics: metrics["val_loss"], best_mode="min",
                create=not self.read_only, cleanup_tmp_directories=not self.read_only,
                todelete_subdir=TRASH, enable_async_checkpointing=False)
            handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        return self._manager

    def _purge_leftovers(self) -> None:
        """Finish deletions a kill interrupted: emptied steps in TRASH and a `--fresh` that did not complete."""
        shutil.rmtree(self.directory / TRASH, ignore_errors=True)
        for leftover in self.workdir.glob(_DELETING + "*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def resolve_step(self, step: int | None) -> int:
        """``step`` if it exists, else the latest; a clear error when there is none."""
        steps = self.steps()
        if not steps:
            raise UsageError("no_checkpoint", workdir=self.workdir)
        if step is None:
            return steps[-1]
        if step not in steps:
            raise UsageError("no_step", step=step, workdir=self.workdir, steps=", ".join(map(str, steps)))
        return step

    def save(self, step: int, state, meta: dict, val_loss: float) -> None:
        """Write one checkpoint atomically (orbax writes to a temp dir, then renames); skip steps already saved.

        The metadata gets a CRC32 of every array of the state, checked on restore, so damage is reported rather than
        silently loaded.
        """
        if self.read_only:
            raise RuntimeError("Store(create=False) is read-only")
        if step in self.steps():
            return
        meta = {**meta, "checksums": state_checksums(state)}
        self._purge_leftovers()
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)),
                          metrics={"val_loss": float(val_loss)}, force=True)
        self.manager.wait_until_finished()
        self._purge_leftovers()

    def _restore(self, step: int, whole_state: bool = False, **items):
        """Restore ``items`` of ``step``; a restored state is checked against its checksums (all arrays if
        ``whole_state``, else the params only)."""
        _drop_orbax_orphans()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            if "state" in items:
                meta = restored.meta if "meta" in items else self.manager.restore(
                    step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
                _verify_checksums(restored.state, meta.get("checksums"), params_only=not whole_state)
            return restored
        except Exception as e:  # orbax raises many types for damaged files; all mean "this step is unusable"
            reason = _reason(e)
        raise self._unusable(step, reason)

    def _unusable(self, step: int, reason: str) -> UsageError:
        gc.collect()  # close orbax's abandoned reads now (their noise is filtered, see _drop_orbax_orphans)
        older = [s for s in self.steps() if s < step]
        return UsageError("corrupt_checkpoint", step=step, workdir=self.workdir, reason=reason,
                          steps="available: " + (", ".join(map(str, older)) if older else "none"))

    def read_meta(self, step: int | None = None) -> dict:
        step = self.resolve_step(step)
        return self._restore(step, meta=ocp.args.JsonRestore()).meta

    def restore_state(self, step: int, template):
        """The exact TrainState saved at ``step``, with the structure of ``template``."""
        return self._restore(step, state=ocp.args.StandardRestore(template), whole_state=True).state

    def restore_params(self, step: int | None = None) -> tuple[dict, dict]:
        """(params, metadata) at ``step`` (default latest), without needing the optimizer or the dataset.

        Only the params are read (the AdamW state, 2/3 of the bytes, stays on disk), onto this process's first
        device, whatever number of devices or processes wrote the checkpoint.
        """
        step = self.resolve_step(step)
        meta = self.read_meta(step)
        _drop_orbax_orphans()
        try:
            params = _read_params(self.directory / str(step) / "state", self.manager.item_metadata(step)["state"])
            _verify_checksums({"params": params}, meta.get("checksums"), params_only=True)
        except Exception as e:  # as in _restore: a damaged step
            reason = _reason(e)
        else:
            return params, meta
        raise self._unusable(step, reason)

    def resume(self, meta: dict, template, err=None):
        """(saved metadata, TrainState) of the newest checkpoint that restores intact, or None if none does.

        A damaged step (unreadable, or a checksum mismatch) is moved to ``<workdir>/damaged-checkpoints/`` with a note
        on ``err`` and the next older step is tried, so ``train`` continues from the last good checkpoint. Refuses
        (UsageError "incompatible") a checkpoint trained on other data or another vocabulary.
        """
        err = err or sys.stderr
        for step in reversed(self.steps()):
            try:
                saved = self._restore(step, meta=ocp.args.JsonRestore()).meta
            except UsageError as e:
                self._note_damaged(step, e, err)
                continue
            self.check_compatible(meta, saved)  # before touching the arrays: another vocabulary is not damage
            try:
                state = self._restore(step, state=ocp.args.StandardRestore(template), whole_state=True).state
            except UsageError as e:
                self._note_damaged(step, e, err)
                continue
            return saved, state
        return None

    def _note_damaged(self, step: int, error: UsageError, err) -> None:
        moved = self._set_aside(step)
        print(f"warning: checkpoint step {step} is damaged ({error.fields['reason']}); moved it to {moved}; "
              f"trying the previous one", file=err)

    def _set_aside(self, step: int) -> Path:
        """Move a damaged step out of the checkpoint directory (kept for inspection, never deleted)."""
        target = self.workdir / DAMAGED / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.directory / str(step), target)
        self.manager.reload()
        return target

    def check_compatible(self, meta: dict, saved: dict | None = None) -> dict:
        """Refuse to resume a run trained on other data or another vocabulary; returns the saved metadata."""
        saved = self.read_meta() if saved is None else saved
        if saved.get("vocab") != meta["vocab"]:
            what = (f"another vocabulary ({saved.get('vocab_size')} characters, this data has {meta['vocab_size']})")
            raise UsageError("incompatible", workdir=self.workdir, what=what)
        if saved.get("data", {}).get("sha256") != meta["data"]["sha256"]:
            what = f"other data ({saved.get('data', {}).get('path')}, sha256 {saved.get('data', {}).get('sha256', '?')[:12]}…)"
            raise UsageError("incompatible", workdir=self.workdir, what=what)
        return saved

    def clear(self) -> None:
        """Delete every checkpoint of this workdir (``train --fresh``): one atomic rename, then the deletion."""
        self.close()
        if is_primary() and self.directory.exists():  # one process deletes; the others wait at the barrier
            doomed = self.workdir / f"{_DELETING}{time.time_ns()}"
            os.replace(self.directory, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        barrier("jaxbigram-store-clear")

    @contextlib.contextmanager
    def exclusive(self):
        """Hold ``<workdir>/.train.lock`` (an OS lock, released even on kill -9) so two ``train`` runs never share a
        workdir: they would clean up each other's half-written saves. Only the primary process takes it."""
        if not is_primary():
            yield
            return
        with open(self.workdir / LOCK_FILE, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise UsageError("workdir_busy", workdir=self.workdir) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None


def _drop_orbax_orphans() -> None:
    """Keep a failed orbax read from printing tracebacks around our one-line error.

    When one array of a damaged checkpoint fails to read, orbax abandons its other reads and closes its event loop.
    What is left then reports itself at any time up to exit: abandoned coroutines turn their GeneratorExit into an
    exception, TensorStore's finished reads call back into the closed loop ("Event loop is closed"), and failed tasks
    are logged as "Task exception was never retrieved". Filters on ``sys.unraisablehook`` and on the ``asyncio``
    logger drop exactly those; anything else still gets through.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_drops_orbax_orphans", False):
        return

    def hook(unraisable):
        closed_loop = unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
        if not (closed_loop or _from_orbax(unraisable.exc_traceback, getattr(unraisable.object, "cr_code", None))):
            previous(unraisable)

    hook._drops_orbax_orphans = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(
        lambda record: not (record.exc_info and _from_orbax(record.exc_info[2], None)))


def _from_orbax(tb, code) -> bool:
    files = [code.co_filename] if code is not None else []
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return any(f"{os.sep}orbax{os.sep}" in f for f in files)


def _reason(error: Exception) -> str:
    """One short line out of whatever orbax or TensorStore raised."""
    text = str(error).splitlines()[0] if str(error) else ""
    text = text.split(" See full TensorStore details")[0]
    return f"{type(error).__name__}: {text[:160]}"


def _leaf_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def state_checksums(tree) -> dict:
    """CRC32 of every array of ``tree``, keyed by its path (arrays not held whole by this process are skipped)."""
    sums = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if getattr(leaf, "is_fully_addressable", True):
            array = np.asarray(leaf)
            if array.dtype.kind in "iub":  # a step counter may come back as a Python int: compare values, not widths
                array = array.astype(np.int64)
            sums[_leaf_name(path)] = zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1))
    return sums


def _verify_checksums(tree, expected: dict | None, params_only: bool) -> None:
    """Raise ValueError naming the first array whose CRC32 differs from the one saved (no-op for old checkpoints)."""
    if not expected:
        return
    got = state_checksums(tree)
    for name, crc in expected.items():
        if params_only and not name.startswith("params/"):
            continue
        if got.get(name, crc) != crc:
            raise ValueError(f"checksum mismatch in {name}")


def _ensure_writable(workdir: Path) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise UsageError("workdir_is_file", workdir=workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError("workdir_not_writable", workdir=workdir, reason=e.strerror or str(e)) from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(workdir).f_flag & os.ST_RDONLY)
        raise UsageError("workdir_not_writable", workdir=workdir,
                         reason="read-only file system" if read_only else "permission denied")


def _read_params(state_dir: Path, state_metadata) -> dict:
    """The ``params`` subtree of a saved TrainState, restored alone onto the first local device."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {"params": jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                               state_metadata["params"])}
    args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)
    with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.restore(state_dir, args=args)["params"]
