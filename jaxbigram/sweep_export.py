"""``run.py sweep --export K``: a member of a sweep's newest checkpoint written out as an ordinary run folder."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp

from . import config as config_lib
from . import models, progress, runs, train
from .checkpoint import Store
from .config import Config
from .errors import CheckpointError, UsageError
from .sweep import SWEEP_SECTION, member
from .sweep_shapes import shape_groups


def locate_member(workdir, k: int) -> tuple[Path, int]:
    """Member ``k`` of a shape sweep (numbered group by group) → (its group's folder, its index there); a plain
    sweep's folder and ``k`` as they are."""
    offset = 0
    for folder in shape_groups(workdir):
        source = Store(folder, read_only=True)
        try:
            steps = source.steps()
            members = int((source.read_meta(steps[-1]).get(SWEEP_SECTION) or {}).get("members", 0)) if steps else 0
        finally:
            source.close()
        if k < offset + members:
            return folder, k - offset
        offset += members
    if offset:
        raise UsageError("sweep_member", got=k, workdir=Path(workdir), last=offset - 1)
    return Path(workdir), k


def export_member(workdir, k: int, out, log=None, attempts: int = 3) -> Path:
    """Member ``k`` of the newest checkpoint of a sweep, written as an ordinary run folder ``out`` (its own config
    and seed, its eval history): ``sample``, ``eval``, ``info``, ``plot`` and ``train`` (to continue it) work there.
    A shape sweep's member ``k`` (numbered group by group) comes from its group's folder. A running sweep may drop
    its newest step while it is read (its keep policy): then the newest step there is now is read instead."""
    log = log or (lambda message: None)
    inside = runs.run_checkpoints_around(out)
    if inside is not None:
        raise UsageError("sweep_out_in_run", out=out, folder=inside, run=inside.parent)
    if Path(out).expanduser().is_file():
        raise UsageError("sweep_out_is_file", workdir=out)
    workdir, k = locate_member(workdir, k)
    source = Store(workdir, read_only=True)
    try:
        for attempt in range(attempts):
            steps = source.steps()
            if not steps:
                raise UsageError("sweep_no_checkpoint", workdir=source.workdir)
            try:
                meta, states = _read_sweep(source, steps[-1], k)
                break
            except CheckpointError as e:
                if not runs.rotated_away(source, steps[-1]) or attempt == attempts - 1:
                    if e.code != "corrupt_checkpoint":
                        raise
                    raise CheckpointError("sweep_corrupt", **e.fields) from None  # sweep has no --step
    finally:
        source.close()
    spec = meta[SWEEP_SECTION]
    seeds = spec["seeds"]
    setting = config_lib.from_dict(spec["configs"][k // seeds])
    member_cfg = config_lib.replace(setting, "train", seed=config_lib.reduce_seed(setting.train.seed + k % seeds))
    rows = [{"step": h["step"], "train_loss": h["train_loss"][k], "val_loss": h["val_loss"][k]}
            for h in spec.get("history", [])]
    state = member(states, k)
    state = state.replace(step=jnp.asarray(state.step, jnp.int32))
    member_meta = {key: value for key, value in meta.items() if key not in (SWEEP_SECTION, "checksums")}
    member_meta.update(config=member_cfg.to_dict(), history=rows, last_eval=rows[-1] if rows else None,
                       exported_from={"workdir": str(source.workdir), "member": k})
    try:
        with runs.held(out) as folder:
            runs.check_ours(folder, False, replaceable=False)  # export has no --fresh
            _write_member(folder, meta, state, member_cfg, member_meta, rows, log)
    except UsageError as e:
        if e.code not in _OUT_CODES:
            raise
        raise UsageError(_OUT_CODES[e.code], **e.fields) from None
    return folder


# held's and check_ours's refusals, said of --out (export has no --workdir of its own to name)
_OUT_CODES = {"workdir_is_file": "sweep_out_is_file", "workdir_not_writable": "sweep_out_unwritable",
              "workdir_foreign": "sweep_out_foreign", "workdir_busy": "sweep_out_busy"}


def _read_sweep(source: Store, step: int, k: int) -> tuple[dict, object]:
    """(metadata, stacked TrainStates) of ``step`` of the sweep in ``source``, refusing a member ``k`` it lacks."""
    meta = source.read_meta(step)
    spec = meta.get(SWEEP_SECTION)
    if not isinstance(spec, dict):
        raise UsageError("sweep_changed", workdir=source.workdir, what="a `train` run, not a sweep",
                         resumable=runs.resumable_keys_text())
    if not 0 <= k < spec["members"]:
        raise UsageError("sweep_member", got=k, workdir=source.workdir, last=spec["members"] - 1)
    if str(k) in (spec.get("diverged") or {}):  # its parameters are NaN: no run to continue or sample from
        raise UsageError("sweep_member_diverged", k=k, step=spec["diverged"][str(k)], workdir=source.workdir)
    cfg = config_lib.from_dict(meta["config"])
    model = models.build(cfg.model, meta["vocab_size"], cfg.train.block_size)
    template = jax.eval_shape(jax.vmap(lambda key: train.create_train_state(key, model, cfg.train)),
                              jax.random.split(jax.random.key(0), spec["members"]))
    return meta, source.restore(step, template, meta=meta)[1]


def _write_member(folder: Path, meta: dict, state, member_cfg: Config, member_meta: dict, rows: list, log) -> None:
    """Save member ``state`` as step ``meta["step"]`` of a new run in ``folder``, with its metrics log."""
    target = Store(folder, keep=member_cfg.checkpoint.keep, log=log)
    try:
        if target.steps():
            raise UsageError("sweep_export_exists", out=folder)
        target.save(meta["step"], state, member_meta, val_loss=rows[-1]["val_loss"] if rows else math.inf)
    finally:
        target.close()
    progress_rows = [r for r in rows if r["step"] <= meta["step"]]
    (folder / progress.METRICS_FILE).write_text("".join(f"{_json(r)}\n" for r in progress_rows))


def _json(row: dict) -> str:
    import json

    return json.dumps(row)
