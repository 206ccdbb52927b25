"""Checkpoints on disk: an orbax CheckpointManager over ``<workdir>/checkpoints`` (TrainState + JSON metadata)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from .errors import UsageError
from .parallel import barrier, is_primary


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
        self._manager = None

    # -- the orbax manager, made on first use
    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            preservation = policies.AnyPreservationPolicy([
                policies.LatestN(n=self.keep),
                policies.BestN(get_metric_fn=lambda metrics: -metrics["val_loss"], n=1),
            ])
            options = ocp.CheckpointManagerOptions(
                preservation_policy=preservation, create=True, cleanup_tmp_directories=True,
                enable_async_checkpointing=False)
            handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        return self._manager

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
        """Write one checkpoint atomically (orbax writes to a temp dir, then renames); skip steps already saved."""
        if step in self.steps():
            return
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)),
                          metrics={"val_loss": float(val_loss)}, force=True)
        self.manager.wait_until_finished()

    def _restore(self, step: int, **items):
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax raises many types for damaged files; all mean "this step is unusable"
            raise self._unusable(step, e) from None

    def _unusable(self, step: int, e: Exception) -> UsageError:
        others = [s for s in self.steps() if s != step]
        return UsageError("corrupt_checkpoint", step=step, workdir=self.workdir,
                          reason=f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}",
                          steps="available: " + (", ".join(map(str, others)) if others else "none"))

    def read_meta(self, step: int | None = None) -> dict:
        step = self.resolve_step(step)
        return self._restore(step, meta=ocp.args.JsonRestore()).meta

    def restore_state(self, step: int, template):
        """The exact TrainState saved at ``step``, with the structure of ``template``."""
        return self._restore(step, state=ocp.args.StandardRestore(template)).state

    def restore_params(self, step: int | None = None) -> tuple[dict, dict]:
        """(params, metadata) at ``step`` (default latest), without needing the optimizer or the dataset.

        Only the params are read (the AdamW state, 2/3 of the bytes, stays on disk), onto this process's first
        device, whatever number of devices or processes wrote the checkpoint.
        """
        step = self.resolve_step(step)
        meta = self.read_meta(step)
        try:
            params = _read_params(self.directory / str(step) / "state", self.manager.item_metadata(step)["state"])
        except Exception as e:  # as in _restore: a damaged step
            raise self._unusable(step, e) from None
        return params, meta

    def check_compatible(self, meta: dict) -> dict:
        """Refuse to resume a run trained on other data or another vocabulary; returns the saved metadata."""
        saved = self.read_meta()
        if saved.get("vocab") != meta["vocab"]:
            what = (f"another vocabulary ({saved.get('vocab_size')} characters, this data has {meta['vocab_size']})")
            raise UsageError("incompatible", workdir=self.workdir, what=what)
        if saved.get("data", {}).get("sha256") != meta["data"]["sha256"]:
            what = f"other data ({saved.get('data', {}).get('path')}, sha256 {saved.get('data', {}).get('sha256', '?')[:12]}…)"
            raise UsageError("incompatible", workdir=self.workdir, what=what)
        return saved

    def clear(self) -> None:
        """Delete every checkpoint of this workdir (``train --fresh``)."""
        self.close()
        if is_primary():  # one process deletes; the others wait, so none recreates the folder too early
            shutil.rmtree(self.directory, ignore_errors=True)
        barrier("jaxbigram-store-clear")

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None


def _ensure_writable(workdir: Path) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise UsageError("workdir_is_file", workdir=workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError("workdir_not_writable", workdir=workdir, reason=e.strerror or str(e)) from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UsageError("workdir_not_writable", workdir=workdir, reason="permission denied")


def _read_params(state_dir: Path, state_metadata) -> dict:
    """The ``params`` subtree of a saved TrainState, restored alone onto the first local device."""
    import jax

    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {"params": jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                               state_metadata["params"])}
    args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)
    with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.restore(state_dir, args=args)["params"]
