"""``python run.py plot``: loss curves (any model) and the learned bigram table (bigram only) as PNGs (matplotlib, Agg
backend, optional extra).

The data functions (``bigram_probabilities``, ``loss_curves``, ``char_label``) are pure and need no matplotlib;
only ``plot_losses`` / ``plot_bigram`` / ``make_plots`` draw.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from .errors import UsageError
from .evaluate import load_checkpoint, loss_rows, val_optimum
from .workdir import writable_folder
from .models.bigram import logits_table

LOSS_PNG = "loss.png"
BIGRAM_PNG = "bigram.png"
_NAMED = {"\n": "\\n", " ": "␣", "\t": "\\t", "\r": "\\r"}


# ----------------------------------------------------------------------------- data (pure)

def bigram_probabilities(params) -> np.ndarray:
    """``(V, V)`` float64: row ``i`` = P(next character | current character ``i``) = softmax of table row ``i``."""
    return np.asarray(jax.nn.softmax(logits_table(params).astype(np.float32), axis=-1), dtype=np.float64)


def char_label(c: str) -> str:
    """A visible label for a vocabulary character: '\\n' → ``\\n``, ' ' → ``␣``, other invisibles → ``U+XXXX``."""
    if c in _NAMED:
        return _NAMED[c]
    if not c.isprintable() or c.isspace():
        return f"U+{ord(c):04X}"
    return c


def loss_curves(rows: list[dict]) -> dict:
    """``{'step', 'train', 'val'}`` arrays from metrics rows (or a checkpoint's history), sorted by step, one per step."""
    by_step = {int(r["step"]): r for r in rows}
    steps = np.array(sorted(by_step), dtype=np.int64)
    return {"step": steps,
            "train": np.array([by_step[s]["train_loss"] for s in steps], dtype=np.float64),
            "val": np.array([by_step[s]["val_loss"] for s in steps], dtype=np.float64)}


# ----------------------------------------------------------------------------- drawing (side effects)

def _pyplot():
    """matplotlib.pyplot on the Agg backend, or the one-line 'install the extra' error."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("extra_missing", command="plot", package="matplotlib", extra="plot") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(curves: dict, path: str | Path, *, optimum: float | None = None, exact_val: tuple | None = None,
                title: str = "loss by step") -> Path:
    """Train and val loss (estimates at each eval) against step; the closed-form optimum as a dashed line.

    Left: the whole run (log y). Right, when there are enough evals: the evals after the first, on a linear y axis,
    where the gap to the optimum is visible.
    """
    plt = _pyplot()
    zoom = len(curves["step"]) >= 3
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(11 if zoom else 7, 4.2), dpi=100, squeeze=False)
    for i, ax in enumerate(axes[0]):
        part = slice(1, None) if i == 1 else slice(None)
        ax.plot(curves["step"][part], curves["train"][part], "o-", ms=3, lw=1.5, label="train loss (estimate)")
        ax.plot(curves["step"][part], curves["val"][part], "s-", ms=3, lw=1.5, label="val loss (estimate)")
        if exact_val is not None:
            ax.plot([exact_val[0]], [exact_val[1]], "k*", ms=9, label=f"exact val loss {exact_val[1]:.4f} (whole split)")
        if optimum is not None:
            ax.axhline(optimum, color="k", ls="--", lw=1, label=f"closed-form bigram optimum (val) {optimum:.4f}")
        ax.set_xlabel("step")
        ax.grid(True, which="both", alpha=0.3)
    full = axes[0][0]
    full.set_yscale("log")
    for axis in (full.yaxis.set_major_formatter, full.yaxis.set_minor_formatter):
        axis(plt.matplotlib.ticker.FormatStrFormatter("%.2f"))
    full.set_ylabel("cross-entropy (nats/char)")
    full.set_title(f"{title} (log scale)")
    full.legend(fontsize=8)
    if zoom:
        axes[0][1].set_title("zoom: after the first eval")
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_bigram(probs: np.ndarray, chars, path: str | Path, *, title: str = "learned bigram") -> Path:
    """The ``(V, V)`` table of next-character probabilities as a heatmap (log colour scale), characters labelled."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    vocab = len(chars)
    side = min(max(5.0, 0.13 * vocab + 2.5), 16.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=100)
    floor = 1e-4
    image = ax.imshow(np.maximum(probs, floor), norm=LogNorm(vmin=floor, vmax=1.0), cmap="viridis",
                      interpolation="nearest", aspect="equal")
    labels = [char_label(c) for c in chars]
    if vocab <= 128:  # beyond that, labels no longer fit; the axes still index the vocabulary
        font = 8 if vocab > 40 else 10
        ax.set_xticks(range(vocab), labels, fontsize=font)
        ax.set_yticks(range(vocab), labels, fontsize=font)
        ax.tick_params(length=0)
    ax.set_xlabel("next character")
    ax.set_ylabel("current character")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="P(next | current)")
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def _save(fig, path) -> Path:
    try:
        fig.savefig(path)
    except OSError as e:
        raise UsageError("plot_out_unwritable", out=Path(path).parent, reason=e.strerror or str(e)) from None
    return Path(path)


def make_plots(workdir: str | Path, out: str | Path | None = None, step: int | None = None, warn=None) -> list[Path]:
    """Write ``loss.png`` (any model) and, for a bigram, ``bigram.png`` for a run into ``out`` (default: the
    workdir); returns their paths."""
    _pyplot()  # fail early, before any loading, when matplotlib is missing
    ckpt = load_checkpoint(workdir, step)
    out = Path(out) if out is not None else ckpt.workdir
    writable_folder(out, "plot_out_is_file", "plot_out_unwritable", out=out)
    rows = loss_rows(ckpt.workdir, ckpt.meta, ckpt.step, warn)
    exact = ckpt.meta.get("exact") or {}
    t = ckpt.meta["config"]["train"]
    run = f"{ckpt.model.kind}, batch {t['batch_size']}×{t['block_size']}, lr {t['learning_rate']:g} {t['lr_schedule']}"
    paths = []
    if rows:
        paths.append(plot_losses(loss_curves(rows), out / LOSS_PNG, optimum=val_optimum(ckpt.meta),
                                 exact_val=(exact.get("step", ckpt.step), exact["val_loss"]) if exact else None,
                                 title=f"loss by step ({run})"))
    if ckpt.model.kind == "bigram":
        paths.append(plot_bigram(bigram_probabilities(ckpt.params), ckpt.meta["vocab"], out / BIGRAM_PNG,
                                 title=f"learned bigram at step {ckpt.step}: P(next character | current character)"))
    return paths
