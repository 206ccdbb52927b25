"""``run.py sweep``: the plan (settings × seeds) and the driver that trains its members as one compiled program.

Every member is an ordinary run (``train.make_train``'s math): its keys come from its seed as ``run_keys`` derives
them, its ``optimizer.HPARAM_KEYS`` are traced values, so one compile serves every member. The members' TrainStates are
one pytree with a leading member axis (``sweep_members``: the compiled, vmapped programs, split over the local
devices). Checkpoints, resume, the lock, ``--fresh``, the damage rules and the loop are ``train``'s (``Store``,
``runs``, ``loop``): the member axis is just a bigger pytree. Settings that differ in a shape train as one such
program per shape, one after another (``run_shape_sweep``; its folders and fit: ``sweep_shapes``). The table,
TensorBoard runs and plot: ``sweep_report``; ``--export K``: ``sweep_export``.

Pure above the driver; ``run_sweep`` is the edge (files, prints).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from . import checks
from . import config as config_lib
from . import data as data_lib
from . import loop, models, train
from . import runs
from .checkpoint import Store
from .compute import budget_steps, compute_of
from .config import Config
from .errors import UsageError, printable_path
from .optimizer import HPARAM_KEYS
from .sweep_members import (member_devices, member_init, member_inputs, member_loss, member_sharding, members_chunk,
                            members_estimate, members_split_loss, place)
from .sweep_report import SweepReporter, finite_or_none, plot_sweep, summarize
from .sweep_shapes import GROUPS_DIR, budget_summary, group_folder, scaling_fit, shape_groups

SWEEP_SECTION = "sweep"  # a config's table of swept keys (``"train.learning_rate" = [...]``) and ``seeds``
SWEEPABLE = tuple(f"train.{k}" for k in HPARAM_KEYS) + ("train.seed",)
SWEEP_PNG = "sweep.png"
# keys that change shapes (or the compiled step): settings that differ in them are trained as separate groups, each
# one compiled, vmapped program, one after another (a shape sweep: ``run_shape_sweep``)
SHAPE_KEYS = ("model.n_embd", "model.n_layer", "model.n_head", "train.block_size", "train.batch_size",
              "train.grad_accum")


# ----------------------------------------------------------------------------- the plan (pure)

@dataclass(frozen=True)
class Plan:
    """The settings of a sweep (each a full Config, seed = its first seed) and seeds per setting."""

    settings: tuple
    labels: tuple  # "train.learning_rate=0.03", or "base" when nothing is swept
    seeds: int
    budget: float | None = None  # --budget FLOPS: each shape's train.steps spend it (``apply_budget``)

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
                "configs": [c.to_dict() for c in self.settings],
                **({} if self.budget is None else {"budget": self.budget})}


MAX_MEMBERS = 1 << 20  # settings × seeds: past this, building the members alone takes minutes (and memory refuses)


def _check_members(seeds, settings: int) -> None:
    """Seeds a whole number in 1..MAX_MEMBERS, and settings × seeds no more than that (before anything is built)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_MEMBERS:
        raise UsageError("sweep_seeds", got=seeds, max=f"{MAX_MEMBERS:,}")
    if seeds * settings > MAX_MEMBERS:
        raise UsageError("sweep_members", seeds=seeds, settings=settings, members=f"{seeds * settings:,}",
                         max=f"{MAX_MEMBERS:,}")


def check_budget(budget) -> float | None:
    """``--budget``: None, or a positive finite number of FLOPs (as a float)."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise UsageError("budget_range", got=budget)
    try:
        value = float(budget)
    except OverflowError:  # an integer past a float's range
        raise UsageError("budget_range", got=budget) from None
    if not (math.isfinite(value) and value > 0):
        raise UsageError("budget_range", got=budget)
    return value


def make_plan(config_path, overrides, seeds: int | None, budget: float | None = None) -> Plan:
    """Settings = the product of every list value (``--set key=[a, b]`` or the config's ``[sweep]`` table);
    ``budget`` (FLOPs): each shape's steps are set later, from the corpus's vocabulary (``apply_budget``), so
    ``train.steps`` may not be given too."""
    checks.check_strings("make_plan", "overrides", overrides)
    budget = check_budget(budget)
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
    if budget is not None:
        steps = [item for item in overrides if config_lib.parse_override(item)[:2] == ("train", "steps")]
        if steps or "train.steps" in axes:
            raise UsageError("budget_steps", what=f"--set {steps[-1]}" if steps else
                             "[sweep] train.steps")
    _check_members(seeds, math.prod(len(v) for v in axes.values()))
    settings, labels = [], []
    for combo in itertools.product(*axes.values()):
        setting = {s: dict(v) if isinstance(v, dict) else v for s, v in raw.items()}
        for key, value in zip(axes, combo):
            section, name = key.split(".", 1)
            setting.setdefault(section, {})[name] = value
        settings.append(config_lib.from_dict(setting))
        labels.append(", ".join(f"{k}={v}" for k, v in zip(axes, combo)) or "base")
    plan = Plan(tuple(settings), tuple(labels), seeds, budget)
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
             Plan(tuple(plan.settings[i] for i in idx), tuple(plan.labels[i] for i in idx), plan.seeds, plan.budget))
            for shape, idx in groups.items()]


def _shown_flops(value) -> str:
    """A saved budget as --budget takes it (``3e+09``; anything else as it is)."""
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


def _at_least(flops: int) -> str:
    """``flops`` rounded up to 3 significant digits, as --budget takes it (``6.3e+08``): never below ``flops``."""
    unit = 10 ** max(len(str(flops)) - 3, 0)
    return f"{-(-flops // unit) * unit:.3g}"


def apply_budget(groups: list, vocab_size: int) -> tuple[list, list]:
    """``--budget``: each shape group with ``train.steps`` = the whole chunks of ``train.steps_per_call`` nearest its
    budget (``compute.budget_steps`` of its model's training FLOPs), and per group what it spends (``{shape, chunks,
    chunk_flops, steps, flops, steps_per_call}``). Refuses (before anything trains) a budget that buys some group
    less than one chunk, naming the smallest budget that buys every group one. Groups without a budget: as given."""
    if not groups or groups[0][1].budget is None:
        return groups, []
    budget = groups[0][1].budget
    spent = []
    for label, group in groups:
        tcfg = group.settings[0].train
        model = models.build(group.settings[0].model, vocab_size, tcfg.block_size)
        per_token = compute_of(model, 1, tcfg.batch_size, tcfg.block_size)["flops_per_token"]
        spent.append({"shape": label, "steps_per_call": tcfg.steps_per_call,
                      **budget_steps(budget, per_token, tcfg.batch_size * tcfg.block_size, tcfg.steps_per_call)})
    short = [s for s in spent if not s["chunks"]]
    if short:
        raise UsageError("budget_too_small", budget=f"{budget:.3g}", size=short[-1]["shape"],
                         chunk=short[-1]["steps_per_call"], flops=f"{short[-1]['chunk_flops']:.3g}",
                         works=_at_least(max(s["chunk_flops"] for s in spent)))
    long = [s for s in spent if s["steps"] > config_lib.INT32_MAX]
    if long:
        raise UsageError("budget_too_big", budget=f"{budget:.3g}", size=long[0]["shape"],
                         steps=f"{long[0]['steps']:,}", max=f"{config_lib.INT32_MAX:,}")
    budgeted = [(label, dataclasses.replace(group, settings=tuple(config_lib.replace(c, "train", steps=s["steps"])
                                                                  for c in group.settings)))
                for (label, group), s in zip(groups, spent)]
    return budgeted, spent


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


def member(tree, k: int):
    """Member ``k`` (0 to members - 1) of a stacked pytree (a leading member axis on every leaf)."""
    leaves = jax.tree.leaves(tree)
    if not leaves or not getattr(leaves[0], "ndim", 0):
        checks.refuse_type("member", "tree", "a pytree of arrays with a leading member axis", tree)
    checks.check_int("member", "k", k, 0, leaves[0].shape[0] - 1)
    return jax.tree.map(lambda leaf: leaf[k], tree)


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
    budget: dict | None = None  # --budget: what each size spent and the best size (``sweep_shapes.budget_summary``)


def _sweep_meta(plan: Plan, corpus, model) -> dict:
    return {**train.run_metadata(plan.settings[0], corpus, model, model.param_count()), "sweep": plan.spec()}


def _check_same_sweep(saved: dict | None, plan: Plan, workdir: Path) -> None:
    """A resume must be of the same sweep; only ``RESUMABLE_KEYS`` may change (as for ``train``)."""
    if saved is None:
        return
    old = saved.get(SWEEP_SECTION)
    if not isinstance(old, dict):
        what = "a `train` run, not a sweep"
    elif old.get("budget") != plan.budget:
        what = ("a sweep without --budget" if old.get("budget") is None else
                f"a sweep with --budget {_shown_flops(old['budget'])} FLOPs")
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
        [(label, plan)], spent = apply_budget(groups, corpus.tokenizer.vocab_size)
        store = Store(workdir, keep=static.checkpoint.keep, log=log)
        try:
            result = _fit_members(plan, corpus, store, fresh, log, saved)
        finally:
            store.close()
        if plot:
            result.plot = plot_sweep(plan, result.history, workdir / SWEEP_PNG, result.rows)
        result.plan = plan
        if spent:
            result.budget = budget_summary(plan.budget, spent, [(label, plan)], result.rows)
        return result


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
        groups, spent = apply_budget(groups, corpus.tokenizer.vocab_size)  # before anything trains, as below
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
        if spent:
            result.budget = budget_summary(groups[0][1].budget, spent, groups, result.rows)
        if plot:
            result.plot = plot_sweep(result.plan, result.history, workdir / SWEEP_PNG, result.rows, result.fit)
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
        row.update(compute_of(model, tcfg.steps, tcfg.batch_size, tcfg.block_size), steps=int(states.step[0]))
    return SweepResult(rows=rows, states=states, history=done.history, val=val,
                       train=train_loss, step=int(states.step[0]), diverged=done.diverged)
