"""A sweep's output: the per-setting table, the eval lines and a TensorBoard run per member, and ``sweep.png``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import progress
from .errors import UsageError, message
from .tensorboard import EVENTS_DIR, EventLog, run_name

if TYPE_CHECKING:  # annotations only: sweep imports this module
    from .sweep import Plan


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
