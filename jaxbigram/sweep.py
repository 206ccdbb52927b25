"""``run.py sweep``: many runs of one model (settings × seeds) trained together, in one compiled program.

Every member is an ordinary run (``train.make_train``'s math): its keys come from its seed as ``run_keys`` derives
them, its ``train.HPARAM_KEYS`` are traced values, so one compile serves every member. The members' TrainStates are
one pytree with a leading member axis; the fused chunk, the loss estimate and the bigram's exact loss are ``vmap``ped
over it. Checkpoints, resume, the lock, ``--fresh``, the damage rules and the loop are ``train``'s (``Store``, ``runs``, ``loop``):
the member axis is just a bigger pytree. Everything runs on one device: members are independent, and on a CPU XLA
already spreads each batched (member × batch) step over the cores; splitting members over devices is left for
accelerators (a ``NamedSharding`` of the leading axis).

Pure above the driver; ``run_sweep`` and ``export_member`` are the edges (files, prints).
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from . import checks
from . import config as config_lib
from . import data as data_lib
from . import loop, models, progress, train
from . import runs
from .checkpoint import Store
from .compute import compute_of, fit_with_seeds
from .config import Config
from .errors import CheckpointError, UsageError, message, printable_path
from .evaluate import estimate_loss
from .models.bigram import _pair_nll
from .models.gpt import context_windows
from .optimum import bigram_counts
from .tensorboard import EVENTS_DIR, EventLog, run_name

SWEEP_SECTION = "sweep"  # a config's table of swept keys (``"train.learning_rate" = [...]``) and ``seeds``
SWEEPABLE = tuple(f"train.{k}" for k in train.HPARAM_KEYS) + ("train.seed",)
SWEEP_PNG = "sweep.png"
MEMBER_AXIS = "members"  # the mesh axis the members are split along
# keys that change shapes (or the compiled step): settings that differ in them are trained as separate groups, each
# one compiled, vmapped program, one after another (a shape sweep: ``run_shape_sweep``)
SHAPE_KEYS = ("model.n_embd", "model.n_layer", "model.n_head", "train.block_size", "train.batch_size",
              "train.grad_accum")
GROUPS_DIR = "groups"  # a shape sweep's workdir: groups/<i>-<shape>/, each an ordinary sweep folder


# ----------------------------------------------------------------------------- the plan (pure)

@dataclass(frozen=True)
class Plan:
    """The settings of a sweep (each a full Config, seed = its first seed) and seeds per setting."""

    settings: tuple
    labels: tuple  # "train.learning_rate=0.03", or "base" when nothing is swept
    seeds: int

    @property
    def members(self) -> list[Config]:
        """Every member's config, setting-major: member ``s * seeds + i`` is setting ``s`` with seed ``seed + i``."""
        return [config_lib.replace(c, "train", seed=self.seed(s * self.seeds + i))
                for s, c in enumerate(self.settings) for i in range(self.seeds)]

    def seed(self, k: int) -> int:
        """Member ``k``'s seed."""
        return config_lib.reduce_seed(self.settings[k // self.seeds].train.seed + k % self.seeds)

    def spec(self) -> dict:
        return {"members": len(self.settings) * self.seeds, "seeds": self.seeds, "labels": list(self.labels),
                "configs": [c.to_dict() for c in self.settings]}


MAX_MEMBERS = 1 << 20  # settings × seeds: past this, building the members alone takes minutes (and memory refuses)


def _check_members(seeds, settings: int) -> None:
    """Seeds a whole number in 1..MAX_MEMBERS, and settings × seeds no more than that (before anything is built)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_MEMBERS:
        raise UsageError("sweep_seeds", got=seeds, max=f"{MAX_MEMBERS:,}")
    if seeds * settings > MAX_MEMBERS:
        raise UsageError("sweep_members", seeds=seeds, settings=settings, members=f"{seeds * settings:,}",
                         max=f"{MAX_MEMBERS:,}")


def make_plan(config_path, overrides, seeds: int | None) -> Plan:
    """Settings = the product of every list value (``--set key=[a, b]`` or the config's ``[sweep]`` table)."""
    checks.check_strings("make_plan", "overrides", overrides)
    raw = config_lib.read(config_path or config_lib.DEFAULT_PRESET)
    table = raw.pop(SWEEP_SECTION, None)
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise UsageError("config_not_table", section=SWEEP_SECTION)
    for section, values in raw.items():  # the loader's table check, before --set writes into a section
        if not isinstance(values, dict):
            raise UsageError("config_not_table", section=section)
    table = dict(table)
    from_file = table.pop("seeds", 1)  # --seeds overrides the config's [sweep] seeds
    seeds = from_file if seeds is None else seeds
    axes = {}
    for key, values in table.items():
        if key.count(".") != 1 or not all(key.split(".")):
            raise UsageError("sweep_key", key=key)
        axes[key] = values
    for item in overrides:
        section, key, value = config_lib.parse_override(item)
        if isinstance(value, list):
            axes[f"{section}.{key}"] = value
        else:
            axes.pop(f"{section}.{key}", None)
            raw.setdefault(section, {})[key] = value
    for key, values in axes.items():
        if not isinstance(values, list):
            raise UsageError("sweep_not_list", key=key, got=values)
        if not values:
            raise UsageError("sweep_empty_list", key=key)
        twice = [v for i, v in enumerate(values) if v in values[:i]]
        if twice:  # two equal settings (two groups of one shape, or one member trained twice)
            raise UsageError("sweep_duplicate", key=key, got=twice[0], values=values)
    _check_members(seeds, math.prod(len(v) for v in axes.values()))
    settings, labels = [], []
    for combo in itertools.product(*axes.values()):
        setting = {s: dict(v) if isinstance(v, dict) else v for s, v in raw.items()}
        for key, value in zip(axes, combo):
            section, name = key.split(".", 1)
            setting.setdefault(section, {})[name] = value
        settings.append(config_lib.from_dict(setting))
        labels.append(", ".join(f"{k}={v}" for k, v in zip(axes, combo)) or "base")
    plan = Plan(tuple(settings), tuple(labels), seeds)
    for _, group in group_plans(plan):
        check_shared(group.settings)
    return plan


def shape_of(cfg: Config) -> tuple:
    """A setting's ``SHAPE_KEYS`` values: settings with the same shape share one compiled program."""
    raw = cfg.to_dict()
    return tuple(raw[key.split(".")[0]][key.split(".")[1]] for key in SHAPE_KEYS)


def group_plans(plan: Plan) -> list[tuple[str, Plan]]:
    """The plan split by shape, in the order shapes first appear: ``[(label, plan of that shape)]``; the label names
    the shape keys that vary (``model.n_embd=32, model.n_layer=1``; "base" when none does). One group: a plain
    sweep."""
    shapes = [shape_of(c) for c in plan.settings]
    varying = [i for i, key in enumerate(SHAPE_KEYS) if len({shape[i] for shape in shapes}) > 1]
    groups: dict = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(i)
    return [(", ".join(f"{SHAPE_KEYS[i]}={shape[i]}" for i in varying) or "base",
             Plan(tuple(plan.settings[i] for i in idx), tuple(plan.labels[i] for i in idx), plan.seeds))
            for shape, idx in groups.items()]


def check_shared(settings) -> None:
    """Refuse settings that differ in a key that changes the compiled program (shapes, structure, step counts)."""
    first = settings[0].to_dict()
    differing = sorted({k for c in settings[1:] for k in config_lib.differences(first, c.to_dict())})
    bad = [k for k in differing if k not in SWEEPABLE]
    if len({c.train.grad_clip > 0 for c in settings}) > 1:
        bad.append("train.grad_clip (0 and > 0)")
    if bad:
        raise UsageError("sweep_shape_keys", keys=", ".join(bad), allowed=", ".join(SWEEPABLE),
                         shapes=", ".join(SHAPE_KEYS))


def member_devices(members: int, requested: int = 0, devices=None) -> list:
    """The devices the members are split over (each device trains ``members / len`` of them; members never talk to
    each other, so there is no communication): ``train.devices`` = N takes the first N local devices, which must
    divide the members evenly; 0 (automatic) the most local devices that do (on a 2-core CPU with two devices,
    both cores)."""
    devices = list(jax.local_devices() if devices is None else devices)
    if requested:
        if requested > len(devices):
            raise UsageError("devices_unavailable", requested=requested, available=len(devices))
        if members % requested:
            raise UsageError("sweep_devices", members=members, devices=requested)
        return devices[:requested]
    return devices[:max(d for d in range(1, len(devices) + 1) if members % d == 0)]


def member_sharding(devices) -> NamedSharding:
    """Arrays with a leading member axis, split along it over ``devices``."""
    return NamedSharding(Mesh(np.array(devices), (MEMBER_AXIS,)), P(MEMBER_AXIS))


def place(tree, sharding: NamedSharding):
    """Every leaf of a stacked pytree (states, keys, hyperparameters) split along its member axis."""
    return jax.device_put(tree, sharding)


def member(tree, k: int):
    """Member ``k`` (0 to members - 1) of a stacked pytree (a leading member axis on every leaf)."""
    leaves = jax.tree.leaves(tree)
    if not leaves or not getattr(leaves[0], "ndim", 0):
        checks.refuse_type("member", "tree", "a pytree of arrays with a leading member axis", tree)
    checks.check_int("member", "k", k, 0, leaves[0].shape[0] - 1)
    return jax.tree.map(lambda leaf: leaf[k], tree)


# ----------------------------------------------------------------------------- compiled, vmapped over members (pure)

def member_loss(model):
    """The loss members train and are estimated with: the model's ``fast_loss`` where it has one (the bigram's, from
    pair counts: under ``vmap`` the logits' gradient is a per-member scatter of (B·T, V) rows, which ``bench
    --sweeps`` times against it), else None (``train_step``'s cross-entropy of the logits)."""
    return getattr(model, "fast_loss", None)


@partial(jax.jit, static_argnames=("model", "cfg", "max_steps", "loss_fn"), donate_argnums=(0,))
def members_chunk(states, hparams, keys, train_data, num_steps, *, model, cfg, max_steps: int, loss_fn=None):
    """``train.train_steps`` of every member at once: (states, (members, max_steps) losses); ``loss_fn``:
    ``train_step``'s (the sweep passes ``member_loss(model)``). The batch buffer is shared by the members (each draws
    ``1 / members`` of a single run's), so memory stays that of one run."""
    members = jax.tree.leaves(states.params)[0].shape[0]
    buffer = max(1, train.DEFAULT_BATCH_BUFFER // members)
    return jax.vmap(lambda s, h, k: train.train_steps(s, model, cfg, h, train_data, k, num_steps, max_steps=max_steps,
                                                      batch_buffer=buffer, loss_fn=loss_fn))(states, hparams, keys)


def member_inputs(plan: Plan, split: NamedSharding) -> tuple[dict, dict]:
    """Every member's keys (``train.run_keys`` of its seed) and ``train.hparams_of`` values, stacked and split over
    the devices: built vectorised from the settings, never member by member."""
    n = len(plan.settings) * plan.seeds
    setting = np.arange(n) // plan.seeds
    base = np.array([c.train.seed for c in plan.settings], np.uint64)
    seeds = jnp.asarray(((base[setting] + np.arange(n) % plan.seeds) % (1 << 32)).astype(np.uint32))
    keys = place(jax.vmap(train.keys_from)(jax.vmap(jax.random.key)(seeds)), split)
    hparams = place({k: jnp.asarray(np.array([getattr(c.train, k) for c in plan.settings], np.float32)[setting])
                     for k in train.HPARAM_KEYS}, split)
    return keys, hparams


def member_init(model, tcfg, split: NamedSharding):
    """The compiled ``keys["init"] → states`` of the members (fresh TrainStates, split like the keys)."""
    return jax.jit(jax.vmap(lambda k: train.create_train_state(k, model, tcfg)), out_shardings=split)


@partial(jax.jit, static_argnames=("model", "iters", "batch_size", "block_size"))
def members_estimate(model, params, eval_keys, step, train_data, val_data, *, iters, batch_size, block_size):
    """``estimate_loss`` of every member at step ``step`` (each with its own eval key, as ``fit``)."""
    return jax.vmap(lambda p, k: estimate_loss(model, p, train.step_key(k, step), train_data, val_data, iters=iters,
                                               batch_size=batch_size, block_size=block_size,
                                               loss_fn=member_loss(model)))(params, eval_keys)


# the exact loss of a GPT scores this many tokens (members × windows × block_size) per call: its activations stay
# well under a GiB for the presets, and calls are few enough that Python costs nothing
EXACT_TOKENS_PER_CALL = 1 << 14


@partial(jax.jit, static_argnames=("model",))
def _members_window_nll(model, params, x, y, mask):
    return jax.vmap(model.window_nll, in_axes=(0, None, None, None))(params, x, y, mask)


def members_split_loss(model, params, ids: np.ndarray, members: int) -> np.ndarray:
    """The exact loss of every member over ``ids`` (``evaluate.split_loss`` of each). A bigram: counts once, the
    table's NLL ``vmap``ped over members. A GPT: the same consecutive windows (``context_windows``), each call
    scoring a batch of them for every member at once (``vmap`` over the member axis, split over its devices)."""
    if len(ids) < 2:
        return np.full(members, math.nan)
    if model.cheap_split_loss:
        counts = bigram_counts(ids, model.vocab_size)
        nll = np.asarray(jax.vmap(_pair_nll, in_axes=(0, None, None))(params, jnp.asarray(counts.rows),
                                                                         jnp.asarray(counts.cols)), np.float64)
        return nll @ counts.counts / counts.total
    x, y, mask = context_windows(ids, model.block_size)
    n_win, t = x.shape
    per_call = max(1, min(n_win, EXACT_TOKENS_PER_CALL // (members * t)))
    pad = -n_win % per_call
    if pad:
        x, y, mask = (np.concatenate([a, np.zeros((pad, t), a.dtype)]) for a in (x, y, mask))
    sharding = jax.tree.leaves(params)[0].sharding
    replicated = NamedSharding(sharding.mesh, P()) if isinstance(sharding, NamedSharding) else None
    total = np.zeros(members, np.float64)
    for start in range(0, len(x), per_call):
        window = jax.device_put(tuple(a[start:start + per_call] for a in (x, y, mask)), replicated)
        total += np.asarray(_members_window_nll(model, params, *window), np.float64)
    return total / (len(ids) - 1)


# ----------------------------------------------------------------------------- the result (pure)

def summarize(plan: Plan, val: np.ndarray, train_loss: np.ndarray | None) -> list[dict]:
    """One row per setting: mean, std (over seeds, ddof 1), min and max of the exact losses of its members that did
    not diverge (None where every one did; ``diverged`` counts the others); ``best`` marks the lowest mean val
    loss."""
    rows = []
    for s, label in enumerate(plan.labels):
        row = {"setting": label, "seeds": plan.seeds, "members": list(range(s * plan.seeds, (s + 1) * plan.seeds))}
        for name, values in (("val", val), ("train", train_loss)):
            if values is None:
                continue
            x = np.asarray(values[s * plan.seeds:(s + 1) * plan.seeds], np.float64)
            x = x[np.isfinite(x)]
            if name == "val":
                row["diverged"] = plan.seeds - len(x)
            row.update({f"{name}_mean": float(x.mean()) if len(x) else None,
                        f"{name}_std": (float(x.std(ddof=1)) if len(x) > 1 else 0.0) if len(x) else None,
                        f"{name}_min": float(x.min()) if len(x) else None,
                        f"{name}_max": float(x.max()) if len(x) else None})
        rows.append(row)
    scored = [i for i, row in enumerate(rows) if row["val_mean"] is not None]
    best = min(scored, key=lambda i: rows[i]["val_mean"]) if scored else None
    for i, row in enumerate(rows):
        row["best"] = i == best  # no best when every setting diverged
    return rows


def format_table(rows: list[dict]) -> str:
    """The table a researcher reads: per setting, exact val (and train) loss over seeds; ``*`` the best."""
    has_train = "train_mean" in rows[0]
    width = max(len("setting"), *(len(r["setting"]) for r in rows))
    has_compute = "params" in rows[0]
    head = f"  {'setting':<{width}}  seeds  val mean ± std      val min   val max"
    head += "  train mean ± std" if has_train else ""
    head += "      params   non-emb  FLOP/token   tokens     FLOPs" if has_compute else ""
    lines = [head]
    for r in rows:
        if r["val_mean"] is None:
            line = f"  {r['setting']:<{width}}  {r['seeds']:>5}  diverged (every seed)"
        else:
            line = (f"{'*' if r['best'] else ' '} {r['setting']:<{width}}  {r['seeds']:>5}  {r['val_mean']:.4f} ± "
                    f"{r['val_std']:.4f}   {r['val_min']:.4f}   {r['val_max']:.4f}")
            if has_train:
                line += f"  {r['train_mean']:.4f} ± {r['train_std']:.4f}"
            if r["diverged"]:
                line += f"  ({r['diverged']} of {r['seeds']} diverged, left out)"
        if has_compute:
            line += (f"  {r['params']:>10,} {r['params_non_embedding']:>9,}  {r['flops_per_token']:>10.3g}  "
                     f"{r['tokens']:>7.3g}  {r['flops']:>8.3g}")
        lines.append(line)
    lines.append("(exact losses in nats over the whole splits; * = lowest mean val loss; a diverged member is left "
                 "out)" if any(r["diverged"] for r in rows) else
                 "(exact losses in nats over the whole splits; * = lowest mean val loss)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the driver (side effects)

@dataclass
class SweepResult:
    rows: list
    states: object
    history: list  # [{step, train_loss: [members], val_loss: [members]}]
    val: np.ndarray
    train: np.ndarray | None
    step: int
    diverged: dict = field(default_factory=dict)  # member → the step its loss became non-finite
    plot: Path | None = None
    groups: list = field(default_factory=list)  # a shape sweep: each group's own SweepResult (states: theirs)
    fit: dict | None = None  # a shape sweep of a GPT over 3+ sizes: L(N) = E + A·N^(−α) (``scaling_fit``)
    plan: Plan | None = None  # the members in this result's order (a shape sweep numbers them group by group)


def _sweep_meta(plan: Plan, corpus, model) -> dict:
    return {**train.run_metadata(plan.settings[0], corpus, model, model.param_count()), "sweep": plan.spec()}


def _check_same_sweep(saved: dict | None, plan: Plan, workdir: Path) -> None:
    """A resume must be of the same sweep; only ``RESUMABLE_KEYS`` may change (as for ``train``)."""
    if saved is None:
        return
    old = saved.get(SWEEP_SECTION)
    if not isinstance(old, dict):
        what = "a `train` run, not a sweep"
    elif old.get("seeds") != plan.seeds or len(old.get("configs", [])) != len(plan.settings):
        what = f"another sweep ({len(old.get('configs', []))} settings × {old.get('seeds')} seeds)"
    else:
        changed = sorted({k for a, b in zip(old["configs"], plan.settings)
                          for k in config_lib.differences(a, b.to_dict()) if k not in runs.RESUMABLE_KEYS})
        if not changed:
            return
        what = f"a sweep with other settings ({', '.join(changed)})"
    raise UsageError("sweep_changed", workdir=workdir, what=what, resumable=runs.resumable_keys_text())


def run_sweep(workdir, plan: Plan, *, data: str | None = None, fresh: bool = False, err=None,
              plot: bool = True) -> SweepResult:
    """``run.py sweep``: hold the workdir, train every member to ``train.steps`` (resuming unless ``fresh``) with
    ``loop.run``, evaluating and checkpointing as ``train`` does, then the exact losses, the table and
    ``sweep.png``."""
    err = err or sys.stderr
    log = partial(print, file=err, flush=True)
    groups = group_plans(plan)
    if len(groups) > 1:
        return run_shape_sweep(workdir, groups, data=data, fresh=fresh, log=log, plot=plot)
    with runs.held(workdir) as workdir:
        saved = runs.saved_meta(workdir, fresh, log)
        _check_same_sweep(saved, plan, workdir)
        static = plan.settings[0]
        recorded = (saved or {}).get("data", {}).get("path")
        path, source = data_lib.resolve_data_path(data, recorded=recorded, config_path=static.data.path)
        corpus = data_lib.load_corpus(path)
        log(f"data: {printable_path(corpus.path)} (from {source}; {len(corpus.ids):,} characters)")
        store = Store(workdir, keep=static.checkpoint.keep, log=log)
        try:
            result = _fit_members(plan, corpus, store, fresh, log, saved)
        finally:
            store.close()
        if plot:
            result.plot = plot_sweep(plan, result.history, workdir / SWEEP_PNG, result.rows)
        result.plan = plan
        return result


def group_folder(i: int, label: str) -> str:
    """Group ``i``'s folder under ``groups/``: ``0-model.n_embd=32_model.n_layer=1``."""
    return f"{i}-" + run_name(label.replace(", ", "_"))


def shape_groups(workdir) -> list[Path]:
    """A shape sweep's group folders in group order ([] when ``workdir`` is no shape sweep)."""
    root = Path(workdir) / GROUPS_DIR
    found = [p for p in root.iterdir() if p.is_dir() and p.name.split("-", 1)[0].isdigit()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[0]))


def run_shape_sweep(workdir, groups: list, *, data: str | None, fresh: bool, log, plot: bool) -> SweepResult:
    """A sweep whose settings differ in ``SHAPE_KEYS``: each shape (``group_plans``) is an ordinary sweep in its own
    folder ``<workdir>/groups/<i>-<shape>/`` (checkpoints, resume, TensorBoard runs, ``--fresh`` as a plain sweep's:
    ``_fit_members`` via ``loop.run``), trained one after another under the workdir's lock. Everything is checked
    first (each group's saved sweep, data sizes and memory) so a refusal touches nothing. The result joins the
    groups: members numbered group by group, one table, ``sweep.png`` in the workdir."""
    import shutil

    with runs.held(workdir) as workdir:
        top = Store(workdir, read_only=True)
        try:
            if top.steps():
                raise UsageError("shape_sweep_mixed", workdir=workdir, what="checkpoints of a run or of a one-shape "
                                                                         "sweep")
        finally:
            top.close()
        names = [group_folder(i, label) for i, (label, _) in enumerate(groups)]
        stale = [p for p in shape_groups(workdir) if p.name not in names]
        if stale and not fresh:
            raise UsageError("sweep_changed", workdir=workdir, what=f"another shape sweep (its groups: "
                             f"{', '.join(p.name for p in shape_groups(workdir))})",
                             resumable=runs.resumable_keys_text())
        folders = [workdir / GROUPS_DIR / name for name in names]
        saved = []
        for folder, (_, group) in zip(folders, groups):
            meta = runs.saved_meta(folder, fresh, log) if folder.is_dir() else None
            _check_same_sweep(meta, group, folder)
            saved.append(meta)
        static = groups[0][1].settings[0]
        recorded = next((m.get("data", {}).get("path") for m in saved if m), None)
        path, source = data_lib.resolve_data_path(data, recorded=recorded, config_path=static.data.path)
        corpus = data_lib.load_corpus(path)
        log(f"data: {printable_path(corpus.path)} (from {source}; {len(corpus.ids):,} characters)")
        for label, group in groups:  # every group's sizes and memory, before anything trains
            cfg = group.settings[0]
            train_np, val_np = data_lib.split(corpus.ids, cfg.data.val_fraction)
            data_lib.check_sizes(corpus, train_np, val_np, cfg.train.block_size)
            model = models.build(cfg.model, corpus.tokenizer.vocab_size, cfg.train.block_size)
            train.check_memory(cfg, corpus, model, members=len(group.settings) * group.seeds)
        log(f"shape sweep: {len(groups)} shapes, one program each, trained one after another in "
            f"{printable_path(workdir / GROUPS_DIR)}")
        results = []
        for i, (folder, (label, group), meta) in enumerate(zip(folders, groups, saved)):
            log(f"shape {i + 1}/{len(groups)}: {label}")
            with runs.held(folder) as folder:
                store = Store(folder, keep=group.settings[0].checkpoint.keep, log=log)
                try:
                    results.append(_fit_members(group, corpus, store, fresh, log, meta))
                finally:
                    store.close()
            if i == 0:
                for old in stale:  # --fresh: the replaced sweep's other shapes go once the new one has saved
                    shutil.rmtree(old, ignore_errors=True)
        result = join_groups(groups, results)
        if plot:
            result.plot = plot_sweep(result.plan, result.history, workdir / SWEEP_PNG, result.rows)
        return result


def join_groups(groups: list, results: list) -> SweepResult:
    """One result of a shape sweep's groups: members numbered group by group, rows re-marked for the best mean val
    loss over all shapes, eval histories joined by step (a member's value null at a step its group did not eval)."""
    plan = Plan(tuple(c for _, g in groups for c in g.settings), tuple(l for _, g in groups for l in g.labels),
                groups[0][1].seeds)
    offsets = np.cumsum([0] + [len(g.settings) * g.seeds for _, g in groups])
    rows, diverged = [], {}
    for (label, group), res, offset in zip(groups, results, offsets):
        for row in res.rows:
            rows.append({**row, "members": [m + int(offset) for m in row["members"]], "steps": res.step})
        diverged.update({k + int(offset): s for k, s in res.diverged.items()})
    scored = [i for i, row in enumerate(rows) if row["val_mean"] is not None]
    best = min(scored, key=lambda i: rows[i]["val_mean"]) if scored else None
    for i, row in enumerate(rows):
        row["best"] = i == best
    steps = sorted({h["step"] for res in results for h in res.history})
    history = []
    for step in steps:
        row = {"step": step, "train_loss": [], "val_loss": []}
        for (_, group), res in zip(groups, results):
            at = next((h for h in res.history if h["step"] == step), None)
            n = len(group.settings) * group.seeds
            for key in ("train_loss", "val_loss"):
                row[key] += list(at[key]) if at else [None] * n
        history.append(row)
    val = np.concatenate([res.val for res in results])
    train_loss = None if any(res.train is None for res in results) else np.concatenate([r.train for r in results])
    return SweepResult(rows=rows, states=None, history=history, val=val, train=train_loss,
                       step=max(res.step for res in results), diverged=diverged, groups=results, plan=plan,
                       fit=scaling_fit(rows, val))


def scaling_fit(rows: list, val: np.ndarray) -> dict | None:
    """``compute.fit_with_seeds`` over sizes N (non-embedding parameters): at each size the setting with the lowest
    mean exact val loss, its seeds' losses (a diverged member left out). None: fewer than 3 sizes, or a bigram."""
    best: dict = {}
    for row in rows:
        n = row.get("params_non_embedding") or 0
        if n > 0 and row["val_mean"] is not None and (n not in best or row["val_mean"] < best[n]["val_mean"]):
            best[n] = row
    sizes = sorted(best)
    fit = fit_with_seeds(sizes, [np.asarray(val, np.float64)[best[n]["members"]] for n in sizes])
    return None if fit is None else {**fit, "params": sizes, "settings": [best[n]["setting"] for n in sizes]}


def format_fit(fit: dict | None) -> str:
    """The fit's line under the table."""
    if fit is None:
        return "(no fit of L(N): it needs a GPT at 3 or more sizes)"
    return (f"fit L(N) = E + A·N^-α over {fit['sizes']} sizes (N = non-embedding parameters; ± over "
            f"{fit['resamples']} seed resamples): E = {fit['E']:.4f} ± {fit['E_std']:.4f}, A = {fit['A']:.4g} ± "
            f"{fit['A_std']:.2g}, α = {fit['alpha']:.3f} ± {fit['alpha_std']:.3f}"
            + (" (3 sizes, 3 parameters: the curve passes through the points; see docs/scaling-laws.md)"
               if fit["sizes"] == 3 else ""))


def member_rows(history: list, k: int) -> list[dict]:
    """Member ``k``'s eval rows of a sweep's history (per-member lists → its own numbers)."""
    return [{"step": h["step"], "train_loss": h["train_loss"][k], "val_loss": h["val_loss"][k]} for h in history]


def finite_or_none(values) -> list:
    """JSON holds no NaN: a diverged member's losses are null."""
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, np.float64).tolist()]


class SweepReporter:
    """The output of a sweep's loop: a line per eval (the mean estimate over the members still training), a warning
    per diverged member, and per member a TensorBoard run (``progress.MetricsLog`` without a file: its rows are the
    checkpoint's history, written once a checkpoint holds them)."""

    def __init__(self, plan: Plan, workdir: Path, history: list, resumed_step: int | None, log):
        self.plan, self.workdir, self.log, self.t0 = plan, workdir, log, time.perf_counter()
        warned = []

        def warn_once(text: str) -> None:  # an unusable tensorboard/ folder is one warning, not one per member
            if not warned:
                warned.append(text)
                log(text)

        fallback = "every member's evals stay in the checkpoints (`info`, `sweep --export K`)"
        n = len(plan.settings) * plan.seeds
        self.logs = [progress.MetricsLog(None, resumed_step, member_rows(history, k), warn_once,
                                         events=EventLog(workdir / EVENTS_DIR / member_run(plan, k), warn_once,
                                                         fallback))
                     for k in range(n)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def eval(self, row: dict, sample=None) -> None:
        for k, member_log in enumerate(self.logs):
            member_log.append({"step": row["step"], "train_loss": row["train_loss"][k],
                               "val_loss": row["val_loss"][k], "time": round(time.time(), 3)})
        val = [v for v in row["val_loss"] if v is not None and math.isfinite(v)]
        mean = f"{np.mean(val):.4f} (mean of {len(val)})" if val else "none (every member diverged)"
        self.log(f"step {row['step']}: val loss estimate {mean}, {time.perf_counter() - self.t0:.1f} s")

    def chunk(self, step: int, losses, seconds: float) -> None:
        pass

    def saved(self, step: int) -> None:
        for member_log in self.logs:
            member_log.commit(step)

    def replacing(self) -> None:
        """``--fresh``: the replaced run's metrics.jsonl and event files (at every depth) go with its checkpoints."""
        try:
            (self.workdir / progress.METRICS_FILE).unlink(missing_ok=True)
        except OSError as e:  # a folder in its place, say: never a reason to stop the sweep
            self.log(message("warn_metrics_unwritable", path=self.workdir / progress.METRICS_FILE,
                             reason=e.strerror or e))
        EventLog(self.workdir / EVENTS_DIR, self.log).clear()

    def diverged(self, member: int, step: int, value: float, who: str) -> None:
        self.log(f"warning: {who}: the training loss became {value} at step {step}; it is marked diverged (its "
                 f"losses show as null) and the other members go on")


def program_of(plan: Plan, model, meta: dict, inputs: dict) -> loop.Program:
    """The sweep as the loop drives it: every member in one compiled program."""
    static = plan.settings[0]
    tcfg, n = static.train, len(plan.settings) * plan.seeds
    keys, hparams, train_data, val_data = (inputs[k] for k in ("keys", "hparams", "train_data", "val_data"))

    def train_members(states, step, stop_at):
        states, losses = members_chunk(states, hparams, keys, train_data, stop_at - step, model=model, cfg=tcfg,
                                       max_steps=tcfg.steps_per_call, loss_fn=member_loss(model))
        return states, np.asarray(losses)[:, :stop_at - step]  # the chunk's buffer holds max_steps columns

    def estimate(states, step):
        losses = members_estimate(model, states.params, keys["eval"], step, train_data, val_data,
                                  iters=static.eval.iters, batch_size=tcfg.batch_size, block_size=tcfg.block_size)
        return {"step": step, "train_loss": finite_or_none(losses["train"]),
                "val_loss": finite_or_none(losses["val"])}, None

    def checkpoint(history, last, report, diverged):
        val = [v for v in last["val_loss"] if v is not None]
        train_loss = [v for v in last["train_loss"] if v is not None]
        mean_row = {"step": last["step"], "train_loss": float(np.mean(train_loss)) if train_loss else math.inf,
                    "val_loss": float(np.mean(val)) if val else math.inf}  # over the members still training
        section = {**meta[SWEEP_SECTION], "history": history, "diverged": {str(k): s for k, s in diverged.items()}}
        return ({**meta, "history": [], "last_eval": mean_row if val and train_loss else None,
                 SWEEP_SECTION: section}, mean_row["val_loss"])

    def describe(k):
        return f"member {k} ({plan.labels[k // plan.seeds]}, seed {plan.seed(k)})"

    return loop.Program(cfg=static, members=n, train=train_members, estimate=estimate,
                        exact=lambda states, step: None, checkpoint=checkpoint, describe=describe)


def _fit_members(plan: Plan, corpus, store: Store, fresh: bool, log, saved: dict | None) -> SweepResult:
    static = plan.settings[0]
    tcfg, n = static.train, len(plan.settings) * plan.seeds
    train_np, val_np = data_lib.split(corpus.ids, static.data.val_fraction)
    data_lib.check_sizes(corpus, train_np, val_np, tcfg.block_size)
    model = models.build(static.model, corpus.tokenizer.vocab_size, tcfg.block_size)
    train.check_memory(static, corpus, model, members=n)  # from the counts, before any member is built
    devices = member_devices(n, tcfg.devices)
    split = member_sharding(devices)
    keys, hparams = member_inputs(plan, split)
    train_data, val_data = jax.device_put((train_np, val_np), NamedSharding(split.mesh, P()))
    init = member_init(model, tcfg, split)
    meta = _sweep_meta(plan, corpus, model)
    resumed = None if fresh or not store.steps() else runs.resume(store, jax.eval_shape(init, keys["init"]), meta,
                                                                  log, newest=saved)
    if resumed is None:
        states, history, step, diverged = init(keys["init"]), [], 0, {}
    else:
        saved_meta, states = resumed
        states = place(states.replace(step=jnp.asarray(states.step, jnp.int32)), split)
        section = saved_meta[SWEEP_SECTION]
        history, step = section.get("history", []), int(states.step[0])
        diverged = {int(k): s for k, s in (section.get("diverged") or {}).items()}
        log(f"resuming the sweep from step {step} in {printable_path(store.directory)}")
    log(f"sweep: {n} members ({len(plan.settings)} settings × {plan.seeds} seeds) of {model.kind} in one program, "
        f"{tcfg.steps:,} steps" + (f", {n // len(devices)} on each of {len(devices)} {jax.default_backend()} devices"
                                   if len(devices) > 1 else ""))
    reporter = SweepReporter(plan, store.workdir, history, step if resumed is not None else None, log)
    program = program_of(plan, model, meta, {"keys": keys, "hparams": hparams, "train_data": train_data,
                                             "val_data": val_data})
    done = loop.run(program, states, start=step, history=history, store=store, reporter=reporter, fresh=fresh,
                    log=log, diverged=diverged)
    states = done.state
    val = members_split_loss(model, states.params, val_np, n)
    train_loss = members_split_loss(model, states.params, train_np, n) if model.cheap_split_loss else None
    for k in done.diverged:  # a diverged member has no loss to report, whatever its NaN parameters score
        val[k] = math.nan
        if train_loss is not None:
            train_loss[k] = math.nan
    rows = summarize(plan, val, train_loss)
    for row in rows:  # every setting of a group has its shape; steps as its config says
        row.update(compute_of(model, tcfg.steps, tcfg.batch_size, tcfg.block_size))
    return SweepResult(rows=rows, states=states, history=done.history, val=val,
                       train=train_loss, step=int(states.step[0]), diverged=done.diverged)


def member_run(plan: Plan, k: int) -> str:
    """Member ``k``'s folder under ``tensorboard/``: its index, setting and seed (``member-003_train.learning_rate=
    0.05_seed1338``), so TensorBoard's run list reads like the table."""
    setting = plan.labels[k // plan.seeds]
    return run_name(f"member-{k:03d}" + ("" if setting == "base" else f"_{setting.replace(', ', '_')}")
                    + f"_seed{plan.seed(k)}")


def plot_sweep(plan: Plan, history: list, path: Path, rows: list | None = None) -> Path | None:
    """``sweep.png``. Left: val-loss estimates by step, per setting the mean over seeds with a min–max band (the
    y axis fits the curves after the first eval; the untrained start is off the scale). Right (with ``rows``, the
    table): each setting's exact val loss, mean ± std over seeds, a thin line from min to max, the best in red."""
    from .plot import _pyplot

    try:
        plt = _pyplot()
    except UsageError:
        return None
    steps = np.array([h["step"] for h in history])
    val = np.array([h["val_loss"] for h in history], dtype=np.float64)  # (evals, members)
    fig, axes = plt.subplots(1, 2 if rows else 1, figsize=(12 if rows else 8, 5), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]} if rows else None)
    ax = axes[0][0]
    for s, label in enumerate(plan.labels):
        block = val[:, s * plan.seeds:(s + 1) * plan.seeds]
        line, = ax.plot(steps, block.mean(axis=1), label=label)
        ax.fill_between(steps, block.min(axis=1), block.max(axis=1), color=line.get_color(), alpha=0.2)
    later = val[1:][np.isfinite(val[1:])] if len(val) > 2 else np.array([])
    if later.size:
        low, high = later.min(), later.max()
        pad = max(high - low, 1e-3) * 0.1
        ax.set_ylim(low - pad, high + pad)
        ax.set_title(f"val loss estimate: mean over {plan.seeds} seed(s), band = min to max\n"
                     f"(step {int(steps[0])}: {np.nanmean(val[0]):.2f}, off the scale)", fontsize=10)
    else:
        ax.set_title(f"val loss estimate: mean over {plan.seeds} seed(s), band = min to max", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("val loss (estimate, nats)")
    ax.legend(fontsize=8)
    if rows:
        ax = axes[0][1]
        y = np.arange(len(rows))[::-1]
        for yi, row in zip(y, rows):
            ax.plot([row["val_min"], row["val_max"]], [yi, yi], color="0.6", linewidth=1)
            ax.errorbar(row["val_mean"], yi, xerr=row["val_std"], fmt="o", color="C3" if row["best"] else "C0",
                        capsize=4, markersize=6 if row["best"] else 4)
        ax.set_yticks(y, [("* " if r["best"] else "") + r["setting"] for r in rows], fontsize=8)
        ax.set_xlabel("exact val loss (nats): mean ± std, line = min to max")
        ax.set_title(f"at step {int(steps[-1]) if len(steps) else 0}, {plan.seeds} seed(s) per setting",
                     fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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


def shape_sweep_info(workdir, log=None) -> dict | None:
    """``info`` of a shape sweep: per group its folder, first member and ``runs.run_info`` (None: not a shape
    sweep)."""
    folders = shape_groups(workdir)
    if not folders:
        return None
    groups, first = [], 0
    for folder in folders:
        info = runs.run_info(folder, log=log)
        groups.append({"folder": str(folder), "first_member": first, **info})
        first += (info["sweep"] or {}).get("members") or 0
    return {"workdir": str(Path(workdir).absolute()), "members": first, "groups": groups}


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
