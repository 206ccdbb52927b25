"""Checkpoints on disk: an orbax CheckpointManager over ``<workdir>/checkpoints`` (a TrainState + JSON metadata).

Save, restore (the whole state, or the params only), list steps. Crash safety comes from orbax: a step directory
appears by one atomic rename of a finished temp directory; half-written temp directories are removed on start; steps
the keep policy drops are renamed into ``_trash`` (atomic) before being deleted, so a kill never leaves a half-deleted
step that looks finished. Every array's CRC32 is stored in the metadata and checked on restore; the metadata itself is
checked (``metadata.check``) on every read, before anything uses it. What to do with a damaged or incompatible step
is the resume logic's business (``runs.py``), not this module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import shutil
import sys
import threading
import time
import zlib
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from . import metadata
from .errors import CheckpointError, ResourceError, UsageError

TRASH = "_trash"  # orbax renames the steps it drops here (one atomic rename), then we empty it
TMP_MARK = ".orbax-checkpoint-tmp"  # in the names of orbax's half-written step directories
METRICS = "metrics"  # orbax's per-step metrics: <step>/metrics/metrics


class Store:
    """The checkpoints of one workdir; keeps the latest ``keep`` plus the best by val loss.

    ``read_only`` stores (sample, eval, info, plot) never write, delete or clean anything.
    """

    def __init__(self, workdir: str | Path, keep: int = 3, read_only: bool = False, log=None):
        self.workdir = Path(workdir).expanduser().absolute()
        self.directory = self.workdir / "checkpoints"
        self.keep = keep
        self.read_only = read_only
        self.log = log or (lambda message: None)
        self._manager = None
        _quiet_orbax()

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            if self.read_only:  # readers never delete: no keep policy, so orbax never reads the per-step metrics
                options = ocp.CheckpointManagerOptions(create=False, cleanup_tmp_directories=False,
                                                       enable_async_checkpointing=False, lightweight_initialize=True)
            else:
                shutil.rmtree(self.directory / TRASH, ignore_errors=True)  # a deletion a kill interrupted
                for doomed in self.workdir.glob(".checkpoints-deleting-*"):  # a --fresh a kill interrupted
                    shutil.rmtree(doomed, ignore_errors=True)
                self._repair_metrics()
                preservation = policies.AnyPreservationPolicy([
                    policies.LatestN(n=self.keep),
                    policies.BestN(get_metric_fn=lambda metrics: -_val_loss(metrics), n=1,
                                   keep_checkpoints_without_metrics=False),
                ])
                # best_fn only makes orbax write the metrics to disk, so BestN still knows them after a restart.
                options = ocp.CheckpointManagerOptions(
                    preservation_policy=preservation, best_fn=_val_loss, best_mode="min", create=True,
                    cleanup_tmp_directories=True, todelete_subdir=TRASH, enable_async_checkpointing=False)
            handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        return self._manager

    def _repair_metrics(self) -> None:
        """Orbax keeps each step's val loss in ``<step>/metrics/metrics`` (for the keep-the-best policy) and fails to
        start on one it cannot parse. The metadata holds the same number: rewrite a damaged file from it, or drop the
        file (the step is then kept by recency only)."""
        for metrics_dir in self.directory.glob(f"[0-9]*/{METRICS}"):
            try:
                if math.isfinite(_val_loss(json.loads((metrics_dir / METRICS).read_text()))):
                    continue
            except (OSError, ValueError, TypeError, KeyError):
                pass
            step = metrics_dir.parent.name
            try:
                meta = json.loads((metrics_dir.parent / "meta" / "metadata").read_text())
                repaired = {"val_loss": float(meta["last_eval"]["val_loss"])}
                tmp = metrics_dir / f"{METRICS}.tmp"
                tmp.write_text(json.dumps(repaired))
                os.replace(tmp, metrics_dir / METRICS)
                self.log(f"warning: checkpoint step {step}: its metrics file was damaged; rewrote it from the "
                         f"step's metadata")
            except (OSError, ValueError, TypeError, KeyError):
                shutil.rmtree(metrics_dir, ignore_errors=True)
                self.log(f"warning: checkpoint step {step}: its metrics file was damaged; removed it (the step is "
                         f"kept by recency only)")

    def steps(self) -> list[int]:
        """Finished steps, oldest first (half-written temp directories are not steps)."""
        if not self.directory.is_dir():
            return []
        return sorted(self.manager.all_steps())

    def reload(self) -> None:
        """Re-read the directory (after a step was moved away, or another process saved)."""
        self.close()  # the manager is made again on next use (orbax's own reload reads every step's metrics)

    def save(self, step: int, state, meta: dict, val_loss: float) -> None:
        """Write one checkpoint atomically; a step already saved is left as it is.

        A full disk (ResourceError) or a folder this process may not write (UsageError) removes the half-written step
        and raises one line; the previous steps stay intact.
        """
        if self.read_only:
            raise RuntimeError("a read-only Store cannot save")
        if step in self.steps():
            return
        meta = {**meta, "checksums": state_checksums(state)}
        try:
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             meta=ocp.args.JsonSave(meta)),
                              metrics={"val_loss": float(val_loss)}, force=True)
            self.manager.wait_until_finished()
        except Exception as e:
            failure = _save_failure(e)
            if failure is None:
                raise
            self.close()
            for leftover in self.directory.glob(f"*{TMP_MARK}*"):
                shutil.rmtree(leftover, ignore_errors=True)
            steps = self.steps()
            code, reason = failure
            raise (ResourceError if code == "disk_full" else UsageError)(
                code, step=step, directory=self.directory, reason=reason,
                resume=f"step {steps[-1]}" if steps else "the start") from None
        shutil.rmtree(self.directory / TRASH, ignore_errors=True)

    def read_meta(self, step: int) -> dict:
        """The JSON metadata saved with ``step``, checked against the step and its arrays' shapes (``metadata.check``)
        before anything uses it: metadata of the wrong shape makes the step damaged, like a truncated array."""
        return self._read(step, lambda: metadata.check(
            self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta, step,
            _saved_params(self.directory / str(step) / "state")))

    def restore(self, step: int, template, meta: dict | None = None):
        """(metadata, TrainState) of ``step``, laid out like ``template`` (shapes from ``jax.eval_shape``); every
        array is checked against its saved CRC32. ``meta``: the step's metadata as ``read_meta`` returned it, when
        the caller has it already (read otherwise)."""
        meta = self.read_meta(step) if meta is None else meta

        def read():
            state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template))).state
            _verify_checksums(state, meta.get("checksums"), params_only=False)
            return state

        return meta, self._read(step, read)

    def restore_params(self, step: int) -> tuple[dict, dict]:
        """(params, metadata) of ``step`` without the optimizer state (2/3 of the bytes stay on disk), onto this
        process's first device, whatever number of devices or processes wrote it."""
        meta = self.read_meta(step)

        def read():
            params = _read_params(self.directory / str(step) / "state")
            _verify_checksums({"params": params}, meta.get("checksums"), params_only=True)
            return params

        return self._read(step, read), meta

    def _read(self, step: int, read):
        """``read()``, with whatever orbax or TensorStore raises for a damaged step turned into CheckpointError (and
        what orbax's abandoned reads report later kept quiet: ``_reading``)."""
        if step not in self.steps():
            raise CheckpointError("no_step", step=step, workdir=self.workdir, steps=_listing(self.steps()))
        try:
            with _reading():
                return read()
        except Exception as e:  # orbax raises many types for damaged files; all mean "this step is unusable"
            reason = _reason(e)
        older = [s for s in self.steps() if s < step]
        raise CheckpointError("corrupt_checkpoint", step=step, workdir=self.workdir, reason=reason,
                              steps="available: " + (_listing(older) or "none"))

    def clear(self) -> None:
        """Delete every checkpoint (``train --fresh``): one atomic rename out of the way, then the deletion."""
        self.close()
        if self.directory.exists():
            doomed = self.workdir / f".checkpoints-deleting-{time.time_ns()}"
            os.replace(self.directory, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None


def _val_loss(metrics) -> float:
    """The val loss orbax stored for a step; +inf (never the best) when there is none."""
    value = metrics.get("val_loss") if isinstance(metrics, dict) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


def _listing(steps) -> str:
    return ", ".join(map(str, steps))


# a save the file system refuses: the message code, by errno and by the text TensorStore puts in its own errors
_SAVE_FAILURES = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EACCES: "save_denied",
                  errno.EPERM: "save_denied", errno.EROFS: "save_denied"}


def _save_failure(error: BaseException) -> tuple[str, str] | None:
    """(message code, reason) when a failed save is the file system's refusal (full disk, no permission), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        for number, code in _SAVE_FAILURES.items():
            if getattr(error, "errno", None) == number or os.strerror(number) in str(error):
                return code, os.strerror(number)
        error = error.__cause__ or error.__context__
    return None


def _reason(error: Exception) -> str:
    """One short line out of whatever orbax or TensorStore raised."""
    text = str(error).splitlines()[0] if str(error) else ""
    text = text.split(" See full TensorStore details")[0]
    kind = "bad metadata" if isinstance(error, metadata.MetadataError) else type(error).__name__
    return f"{kind}: {text[:160]}"


def _quiet_orbax() -> None:
    """The one place that decides what of orbax's own reporting reaches the user: nothing it raises or recovers from,
    since this module turns every such failure into one line (a damaged step, a full disk). Installed once per process.

    Orbax logs through absl (at ERROR: a full disk's thread tracebacks, an unparsable ``_CHECKPOINT_METADATA`` with its
    raw bytes) and then raises or carries on: the absl logger lets only CRITICAL through.

    When one array of a damaged checkpoint fails to read, orbax abandons its other reads and closes its event loop.
    What is left then reports itself at any time up to exit. Its event loops' own reports (tasks whose exception was
    never retrieved, or destroyed pending; TensorStore's finished reads calling back into the closed loop) are kept
    quiet where they arise, by the loops ``Store._read`` has orbax make (``_reading``). Abandoned coroutines turn their
    GeneratorExit into an exception, and a save's threads fail the same way: filters on ``sys.unraisablehook`` and on
    the ``asyncio`` logger drop exactly what comes from orbax's own code; anything else still gets through.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_quiets_orbax", False):
        return

    def hook(unraisable):
        closed_loop = unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
        if not (closed_loop or _from_orbax(unraisable.exc_traceback, getattr(unraisable.object, "cr_code", None))):
            previous(unraisable)

    hook._quiets_orbax = True
    sys.unraisablehook = hook
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").addFilter(
        lambda record: not (record.exc_info and _from_orbax(record.exc_info[2], None)))


class _OneRead:
    """The event loops orbax makes for one read of a step (``_reading``), and what they report about their own tasks
    and futures: held while the read runs; dropped once it failed (the step's one "truncated or corrupted" line says
    all there is: what orbax abandoned of the read then fails unretrieved, or is destroyed pending); passed on to
    asyncio's default handler once it succeeded, and whatever is not about a task or a future at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.failed = None  # None while the read runs
        self.held = []

    def report(self, loop, context: dict) -> None:
        if not isinstance(context.get("future") or context.get("task"), asyncio.Future):
            loop.default_exception_handler(context)
            return
        with self.lock:
            if self.failed is None:
                self.held.append((loop, context))
                return
        if not self.failed:
            loop.default_exception_handler(context)

    def settle(self, failed: bool) -> None:
        with self.lock:
            self.failed, held, self.held = failed, self.held, []
        if not failed:
            for loop, context in held:
                loop.default_exception_handler(context)


class _ReadLoop(asyncio.SelectorEventLoop):
    """An event loop of one read (``_OneRead`` handles its reports). A TensorStore read that finishes after orbax
    closed the loop (it abandoned the read) calls back into it: nothing can wait for that result any more, so the
    callback is dropped instead of raising "Event loop is closed" in TensorStore's thread."""

    def __init__(self, read: _OneRead):
        super().__init__()
        self.set_exception_handler(read.report)

    def call_soon_threadsafe(self, callback, *args, context=None):
        try:
            return super().call_soon_threadsafe(callback, *args, context=context)
        except RuntimeError:
            if not self.is_closed():
                raise
            return None


class _ReadPolicy(asyncio.AbstractEventLoopPolicy):
    """``previous`` in everything, except that new event loops are ``_ReadLoop``s of ``read``."""

    def __init__(self, previous: asyncio.AbstractEventLoopPolicy, read: _OneRead):
        self.previous, self.read = previous, read

    def new_event_loop(self):
        return _ReadLoop(self.read)

    def get_event_loop(self):
        return self.previous.get_event_loop()

    def set_event_loop(self, loop):
        self.previous.set_event_loop(loop)

    def get_child_watcher(self):
        return self.previous.get_child_watcher()

    def set_child_watcher(self, watcher):
        self.previous.set_child_watcher(watcher)


@contextlib.contextmanager
def _reading():
    """Within: the event loops orbax makes (in any thread, ``asyncio.new_event_loop``) are ``_ReadLoop``s of one
    read, whose reports are dropped if the block raises and passed on if it does not (``_OneRead``)."""
    read = _OneRead()
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_ReadPolicy(previous, read))
    try:
        yield
    except BaseException:
        read.settle(failed=True)
        raise
    else:
        read.settle(failed=False)
    finally:
        asyncio.set_event_loop_policy(previous)


def _from_orbax(tb, code) -> bool:
    files = [code.co_filename] if code is not None else []
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return any(f"{os.sep}orbax{os.sep}" in f for f in files)


def state_checksums(tree) -> dict:
    """CRC32 of every array of ``tree``, keyed by its path (arrays not held whole by this process are skipped)."""
    sums = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if getattr(leaf, "is_fully_addressable", True):
            array = np.asarray(leaf)
            if array.dtype.kind in "iub":  # a step counter may come back as a Python int: compare values, not widths
                array = array.astype(np.int64)
            sums[metadata.leaf_name(path)] = zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1))
    return sums


def _verify_checksums(tree, expected: dict | None, params_only: bool) -> None:
    """Raise ValueError naming the first array whose CRC32 differs from the one saved."""
    if not expected:
        return
    got = state_checksums(tree)
    for name, crc in expected.items():
        if params_only and not name.startswith("params/"):
            continue
        if got.get(name, crc) != crc:
            raise ValueError(f"checksum mismatch in {name}")


def _saved_params(state_dir: Path):
    """The shapes and dtypes of a saved TrainState's params, from the state item's own metadata (no array is read; the
    manager's step metadata would also parse orbax's per-step metrics file, which readers never need: a damaged one
    must not make an intact step unreadable)."""
    with ocp.PyTreeCheckpointer() as checkpointer:
        saved = checkpointer.metadata(state_dir).item_metadata  # None: orbax could not read it (and logged why)
    if saved is None:
        raise ValueError("the arrays' own metadata cannot be read (a file under state/ is missing or damaged)")
    return saved["params"]


def _read_params(state_dir: Path) -> dict:
    """The ``params`` subtree of a saved TrainState, restored alone onto the first local device."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {"params": jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                               _saved_params(state_dir))}
    with ocp.PyTreeCheckpointer() as checkpointer:
        args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                      partial_restore=True)
        return checkpointer.restore(state_dir, args=args)["params"]
