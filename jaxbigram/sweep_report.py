"""A sweep's output: the per-setting table, the eval lines and a TensorBoard run per member, and ``sweep.png``."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from . import progress
from .compute import predict
from .errors import UsageError, message
from .tensorboard import EVENTS_DIR, EventLog, run_name



def summarize(plan, val: np.ndarray, train_loss: np.ndarray | None) -> list[dict]:
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


def format_table(rows: list[dict], steps: bool = False) -> str:
    """The table a researcher reads: per setting, exact val (and train) loss over seeds; ``*`` the best; ``steps``:
    a column of each setting's steps (``--budget`` gives each size its own)."""
    has_train = "train_mean" in rows[0]
    width = max(len("setting"), *(len(r["setting"]) for r in rows))
    has_compute = "params" in rows[0]
    head = f"  {'setting':<{width}}  seeds  val mean ± std      val min   val max"
    head += "  train mean ± std" if has_train else ""
    head += "      params   non-emb  FLOP/token   tokens     FLOPs" if has_compute else ""
    head += "      steps" if steps else ""
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
        if steps:
            line += f"  {r['steps']:>9,}"
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

    def __init__(self, plan, workdir: Path, history: list, resumed_step: int | None, log):
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


def member_run(plan, k: int) -> str:
    """Member ``k``'s folder under ``tensorboard/``: its index, setting and seed (``member-003_train.learning_rate=
    0.05_seed1338``), so TensorBoard's run list reads like the table."""
    setting = plan.labels[k // plan.seeds]
    return run_name(f"member-{k:03d}" + ("" if setting == "base" else f"_{setting.replace(', ', '_')}")
                    + f"_seed{plan.seed(k)}")


def scaling_points(rows: list | None) -> dict | None:
    """The points of ``sweep.png``'s scaling panels: per setting of a GPT, its non-embedding parameters N, training
    FLOPs and exact val loss (mean, min and max over its seeds, a diverged seed left out; ``best`` the table's *).
    None: fewer than 2 sizes N > 0 (a one-shape sweep, or a bigram's, whose N is 0), nothing to draw."""
    points = [r for r in rows or [] if (r.get("params_non_embedding") or 0) > 0 and r["val_mean"] is not None]
    if len({r["params_non_embedding"] for r in points}) < 2:
        return None
    return {"settings": [r["setting"] for r in points],
            **{name: np.array([r[key] for r in points], np.float64)
               for name, key in (("params", "params_non_embedding"), ("flops", "flops"), ("mean", "val_mean"),
                                 ("low", "val_min"), ("high", "val_max"))},
            "best": np.array([r["best"] for r in points])}


def plot_sweep(plan, history: list, path: Path, rows: list | None = None,
               fit: dict | None = None) -> Path | None:
    """``sweep.png`` (``sweep_figure``), or None without matplotlib."""
    try:
        fig = sweep_figure(plan, history, rows, fit)
    except UsageError:
        return None
    fig.savefig(path, dpi=100)
    return path


def sweep_figure(plan, history: list, rows: list | None = None, fit: dict | None = None):
    """The figure of ``sweep.png``. Top left: val-loss estimates by step, per setting the mean over seeds with a
    min–max band (the y axis fits the curves after the first eval; the untrained start is off the scale). Top right
    (with ``rows``, the table): each setting's exact val loss, mean ± std over seeds, a thin line from min to max, the
    best in red. Below, when the rows span 2+ sizes (``scaling_points``: a shape sweep of a GPT): the exact val loss
    against non-embedding parameters and against training FLOPs, log–log, bars from the seeds' min to max, and on
    the parameters panel the fit ``L(N) = E + A·N^(−α)`` (``fit``: ``sweep_shapes.scaling_fit``'s) where there is
    one."""
    from .plot import _pyplot

    plt = _pyplot()
    steps = np.array([h["step"] for h in history])
    val = np.array([h["val_loss"] for h in history], dtype=np.float64)  # (evals, members)
    scale = scaling_points(rows)
    if scale is None:
        fig, axes = plt.subplots(1, 2 if rows else 1, figsize=(12 if rows else 8, 5), squeeze=False,
                                 gridspec_kw={"width_ratios": [3, 2]} if rows else None)
        axes = axes[0]
    else:
        fig = plt.figure(figsize=(12, 10), layout="constrained")  # a row each: 3:2 above, 1:1 below
        top, bottom = fig.subfigures(2, 1)
        axes = top.subplots(1, 2, width_ratios=[3, 2])
        _draw_scaling(plt, *bottom.subplots(1, 2), scale, fit, plan.seeds)
    ax = axes[0]
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
        ax = axes[1]
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
    if scale is None:
        fig.tight_layout()
    plt.close(fig)  # pyplot lets go of it; the caller saves it
    return fig


def _draw_scaling(plt, by_params, by_compute, scale: dict, fit: dict | None, seeds: int) -> None:
    """The scaling panels of ``sweep_figure``: exact val loss against N and against training FLOPs, the fit on N."""
    ticker = plt.matplotlib.ticker
    bars = [scale["mean"] - scale["low"], scale["high"] - scale["mean"]]
    for ax, key, label in ((by_params, "params", "non-embedding parameters N (log)"),
                           (by_compute, "flops", "training compute, FLOPs (log)")):
        ax.errorbar(scale[key], scale["mean"], yerr=bars, fmt="o", color="C0", capsize=4, markersize=5,
                    label=f"exact val loss, mean over {seeds} seed(s); bar = min to max")
        best = scale["best"]
        ax.plot(scale[key][best], scale["mean"][best], "o", color="C3", markersize=7, label="lowest mean val loss")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10]))
        ax.yaxis.set_minor_locator(ticker.NullLocator())
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.2f"))
        ax.xaxis.set_minor_locator(ticker.LogLocator(subs=(2, 5)))  # labelled at 1, 2 and 5 of each decade
        ax.xaxis.set_minor_formatter(ticker.LogFormatterSciNotation(labelOnlyBase=False,
                                                                    minor_thresholds=(math.inf, math.inf)))
        ax.set_xlabel(label)
        ax.set_ylabel("exact val loss (nats, log)")
        ax.grid(True, which="both", alpha=0.3)
    if fit is not None:
        n = np.geomspace(min(fit["params"]), max(fit["params"]), 100)
        by_params.plot(n, predict(fit, n), "-", color="C1",
                       label=f"fit E + A·N^-α: E = {fit['E']:.3f}, A = {fit['A']:.3g}, α = {fit['alpha']:.3f}")
    by_params.set_title("exact val loss against size" + ("" if fit is not None else " (no fit: fewer than 3 sizes)"),
                        fontsize=10)
    by_compute.set_title("exact val loss against training compute", fontsize=10)
    by_params.legend(fontsize=8)
    by_compute.legend(fontsize=8)
