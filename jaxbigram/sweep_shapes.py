"""A shape sweep's folders (``groups/<i>-<shape>/``), its ``info``, the scaling fit ``L(N)`` over its sizes and, under
``--budget``, the loss-optimal size for the budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import runs
from .compute import fit_with_seeds, isoflop_minimum
from .tensorboard import run_name

GROUPS_DIR = "groups"  # a shape sweep's workdir: groups/<i>-<shape>/, each an ordinary sweep folder


def group_folder(i: int, label: str) -> str:
    """Group ``i``'s folder under ``groups/``: ``0-model.n_embd=32_model.n_layer=1``."""
    return f"{i}-" + run_name(label.replace(", ", "_"))


def shape_groups(workdir) -> list[Path]:
    """A shape sweep's group folders in group order ([] when ``workdir`` is no shape sweep)."""
    root = Path(workdir) / GROUPS_DIR
    found = [p for p in root.iterdir() if p.is_dir() and p.name.split("-", 1)[0].isdigit()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[0]))


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


def budget_summary(budget: float, spent: list, groups: list, rows: list) -> dict:
    """``--budget``'s summary: the budget, what each size spent (``sweep.apply_budget``'s, with its best setting's
    mean exact val loss and parameters) and ``best``, the size with the lowest such loss (None if every member
    diverged); ``parabola``: ``compute.isoflop_minimum`` over the sizes' N (a GPT at 3+ sizes, else None). ``rows``:
    the table's, group after group, ``len(group.settings)`` each."""
    sizes, first = [], 0
    for s, (label, group) in zip(spent, groups):
        own = rows[first:first + len(group.settings)]
        first += len(group.settings)
        scored = [r for r in own if r["val_mean"] is not None]
        top = min(scored, key=lambda r: r["val_mean"]) if scored else None
        sizes.append({**s, "shape": label, "val_mean": None if top is None else top["val_mean"],
                      "params": own[0].get("params"), "params_non_embedding": own[0].get("params_non_embedding")})
    scored = [s for s in sizes if s["val_mean"] is not None]
    best = min(scored, key=lambda s: s["val_mean"]) if scored else None
    n = [s["params_non_embedding"] or 0 for s in scored]
    return {"flops": budget, "sizes": sizes, "best": best,
            "parabola": isoflop_minimum(n, [s["val_mean"] for s in scored]) if all(n) else None}


def format_budget(summary: dict) -> str:
    """``--budget``'s lines under the table: what each size spent, the best size, and the parabola's minimum."""
    budget = summary["flops"]
    lines = [f"budget {budget:.3g} FLOPs per size (iso-FLOP; steps rounded to whole chunks of train.steps_per_call):"]
    for s in summary["sizes"]:
        lines.append(f"  {s['shape']}: {s['chunks']:,} chunk(s) of {s['steps_per_call']:,} = {s['steps']:,} steps, "
                     f"{s['flops']:.3g} FLOPs ({s['flops'] / budget:.1%} of the budget)")
    best = summary["best"]
    if best is None:
        lines.append(f"best for budget {budget:.3g} FLOPs: none (every member diverged)")
    else:
        lines.append(f"best for budget {budget:.3g} FLOPs: {best['shape']} (N = {best['params_non_embedding']:,} "
                     f"non-embedding parameters of {best['params']:,}, val {best['val_mean']:.4f})")
    p = summary["parabola"]
    if p is not None:
        lines.append(f"parabola in log N through the sizes' val losses: minimum at N ≈ {p['N']:,.0f} (val ≈ "
                     f"{p['loss']:.4f}), " + ("inside the sizes trained" if p["inside"] else
                                              "outside the sizes trained: an extrapolation, train sizes around it"))
    return "\n".join(lines)
