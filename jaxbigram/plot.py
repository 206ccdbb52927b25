"""``python run.py plot``: loss curves (any model), the learned bigram table (bigram only) and, with ``--attention``,
a GPT's attention maps, as PNGs (matplotlib, Agg backend, optional extra).

The data functions (``bigram_probabilities``, ``loss_curves``, ``char_label``, ``attention_prompt``) are pure and need
no matplotlib; only ``plot_losses`` / ``plot_bigram`` / ``plot_attention`` / ``make_plots`` /
``make_attention_plot`` draw.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from .errors import UsageError
from .runs import load_checkpoint, loss_rows, optima
from .runs import writable_folder
from .models.bigram import logits_table

LOSS_PNG = "loss.png"
BIGRAM_PNG = "bigram.png"
ATTENTION_PNG = "attention.png"
_NAMED = {"\n": "⏎", " ": "␣", "\t": "\\t", "\r": "\\r"}
# what plot --attention reads by default (limited to the model's vocabulary, at most ATTENTION_PROMPT_CHARS of it)
DEFAULT_ATTENTION_PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun."
ATTENTION_PROMPT_CHARS = 64


# ----------------------------------------------------------------------------- data (pure)

def bigram_probabilities(params) -> np.ndarray:
    """``(V, V)`` float64: row ``i`` = P(next character | current character ``i``) = softmax of table row ``i``."""
    return np.asarray(jax.nn.softmax(logits_table(params).astype(np.float32), axis=-1), dtype=np.float64)


def char_label(c: str) -> str:
    """A visible label for a vocabulary character: '\\n' → ``⏎``, ' ' → ``␣``, other invisibles → ``U+XXXX``."""
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


def plot_losses(curves: dict, path: str | Path, *, optima: dict | None = None, exact_val: tuple | None = None,
                title: str = "loss by step") -> Path:
    """Train and val loss estimates at each eval against step; the closed-form bigram optima (``{'train', 'val'}``)
    as named dashed lines; the exact val loss at the end as a star.

    Left: the whole run (log y, ticks labelled where the curves are). Right, when there are enough evals: the evals
    after the first, on a linear y axis, where the gap to the optimum is visible.
    """
    plt = _pyplot()
    ticker = plt.matplotlib.ticker
    zoom = len(curves["step"]) >= 3
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(11 if zoom else 7, 4.6), dpi=100, squeeze=False)
    for i, ax in enumerate(axes[0]):
        part = slice(1, None) if i == 1 else slice(None)
        ax.plot(curves["step"][part], curves["train"][part], "o-", ms=3, lw=1.5, label="train est. (random batches)")
        ax.plot(curves["step"][part], curves["val"][part], "s-", ms=3, lw=1.5, label="val est. (random batches)")
        if exact_val is not None:
            ax.plot([exact_val[0]], [exact_val[1]], "k*", ms=9, label=f"exact val loss {exact_val[1]:.4f} (whole split)")
        for split, style in (("train", ":"), ("val", "--")):
            if optima is not None and optima.get(split) is not None:
                ax.axhline(optima[split], color="k", ls=style, lw=1,
                           label=f"closed-form bigram optimum, {split} {optima[split]:.4f}")
        ax.set_xlabel("step")
        ax.grid(True, which="major", alpha=0.3)
    full = axes[0][0]
    full.set_yscale("log")
    full.yaxis.set_major_locator(ticker.MaxNLocator(nbins=10, steps=[1, 2, 2.5, 5, 10]))  # 2.4, 2.6, … not 3, 4
    full.yaxis.set_minor_locator(ticker.NullLocator())
    full.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.2f"))
    full.set_ylabel("cross-entropy (nats/char)")
    full.set_title("whole run (log y)")
    full.legend(fontsize=8)
    if zoom:
        axes[0][1].set_title("after the first eval (linear y)")
    fig.suptitle(title)
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


def attention_prompt(chars, block_size: int, text: str = DEFAULT_ATTENTION_PROMPT) -> str:
    """The default prompt of ``plot --attention``: ``text`` limited to the vocabulary ``chars`` (else the vocabulary
    itself), its first ``min(block_size, ATTENTION_PROMPT_CHARS)`` characters."""
    known = set(chars)
    kept = "".join(c for c in text if c in known) or "".join(chars)
    return kept[: min(block_size, ATTENTION_PROMPT_CHARS)]


def plot_attention(maps: np.ndarray, chars, path: str | Path, *, title: str = "attention") -> Path:
    """Attention maps ``(n_layer, n_head, T, T)`` as a grid (a row per layer, a column per head): query position
    down, the key positions it weighs across, both labelled by the prompt's characters."""
    plt = _pyplot()
    layers, heads, t, _ = maps.shape
    cell = min(max(2.6, 0.09 * t + 1.2), 6.0)  # about 9 px per character at 100 dpi: labels do not overlap
    fig, axes = plt.subplots(layers, heads, figsize=(cell * heads + 1.0, cell * layers + 0.8), dpi=100, squeeze=False)
    labels = [char_label(c) for c in chars]
    font = 9 if t <= 24 else 7 if t <= 48 else 5
    for layer, head in np.ndindex(layers, heads):
        ax = axes[layer, head]
        image = ax.imshow(maps[layer, head], cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"layer {layer}, head {head}", fontsize=9)
        ticks = range(t) if t <= 96 else []
        ax.set_xticks(ticks, [labels[i] for i in ticks] if head == 0 or layer == layers - 1 else [""] * len(ticks),
                      fontsize=font)
        ax.set_yticks(ticks, [labels[i] for i in ticks] if head == 0 else [""] * len(ticks), fontsize=font)
        ax.tick_params(length=0)
        if layer == layers - 1:
            ax.set_xlabel("key: the character attended to", fontsize=8)
        if head == 0:
            ax.set_ylabel("query: the character attending", fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, label="attention weight")
    fig.suptitle(title)
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


def _checkpoint_and_out(workdir, out, step):
    """The checkpoint to draw and the folder the PNGs go into (checked writable, created if needed)."""
    _pyplot()  # fail early, before any loading, when matplotlib is missing
    ckpt = load_checkpoint(workdir, step)
    out = Path(out) if out is not None else ckpt.workdir
    writable_folder(out, "plot_out_is_file", "plot_out_unwritable", out=out)
    return ckpt, out


def make_plots(workdir: str | Path, out: str | Path | None = None, step: int | None = None, log=None) -> list[Path]:
    """Write ``loss.png`` (any model) and, for a bigram, ``bigram.png`` for a run into ``out`` (default: the
    workdir); returns their paths."""
    ckpt, out = _checkpoint_and_out(workdir, out, step)
    rows = loss_rows(ckpt.workdir, ckpt.meta, ckpt.step, log)
    exact = ckpt.meta.get("exact") or {}
    t = ckpt.meta["config"]["train"]
    run = f"{ckpt.model.kind}, batch {t['batch_size']}×{t['block_size']}, lr {t['learning_rate']:g} {t['lr_schedule']}"
    paths = []
    if rows:
        paths.append(plot_losses(loss_curves(rows), out / LOSS_PNG, optima=optima(ckpt.meta),
                                 exact_val=(exact.get("step", ckpt.step), exact["val_loss"]) if exact else None,
                                 title=f"loss by step: {run}"))
    if ckpt.model.kind == "bigram":
        paths.append(plot_bigram(bigram_probabilities(ckpt.params), ckpt.meta["vocab"], out / BIGRAM_PNG,
                                 title=f"learned bigram at step {ckpt.step}: P(next character | current character)"))
    return paths


def make_attention_plot(workdir: str | Path, out: str | Path | None = None, step: int | None = None,
                        prompt: str | None = None) -> Path:
    """Write ``attention.png``: the attention maps of a GPT checkpoint over ``prompt`` (default:
    ``attention_prompt``; only its last ``block_size`` characters are seen); a bigram is a one-line error."""
    ckpt, out = _checkpoint_and_out(workdir, out, step)
    if not hasattr(ckpt.model, "attention_weights"):
        raise UsageError("attention_no_attention", model=ckpt.model.kind, workdir=ckpt.workdir)
    block = ckpt.model.block_size
    text = attention_prompt(ckpt.tokenizer.chars, block) if prompt is None else prompt
    ids = np.asarray(ckpt.tokenizer.encode_prompt(text))[-block:]
    maps = np.asarray(ckpt.model.attention_weights(ckpt.params, ids))
    return plot_attention(maps, ckpt.tokenizer.decode(ids), out / ATTENTION_PNG,
                          title=f"attention at step {ckpt.step}: {ckpt.model.n_layer} layers × {ckpt.model.n_head} "
                                f"heads\nover {len(ids)} characters (row: query, column: key)")
