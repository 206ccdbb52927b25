"""What a user sees while ``train`` runs: a tqdm bar (or plain lines when stderr is no terminal), ``metrics.jsonl``
and the same rows as TensorBoard events (``<workdir>/tensorboard/``).

The ``fit`` driver owns one ``Reporter`` and calls four hooks: ``chunk`` after each fused training call, ``eval`` at
each evaluation (printed on ``out``, logged once its checkpoint is saved), ``saved`` after each checkpoint, and the
context manager around the loop. All I/O of progress and
metrics lives here.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from .errors import message
from .tensorboard import EVENTS_DIR, EventLog

METRICS_FILE = "metrics.jsonl"
PLAIN_EVERY_S = 30.0  # without a terminal: a plain line at each eval, and at least this often in between


# ----------------------------------------------------------------------------- metrics.jsonl

def is_eval_row(row) -> bool:
    """An eval row: an int step and finite train and val losses (anything else is a damaged line)."""
    return (isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool)
            and all(isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)
                    and math.isfinite(row[k]) for k in ("train_loss", "val_loss")))


def read_metrics(path: str | Path, log=None) -> list[dict]:
    """The eval rows of a metrics file in order. The log is a convenience: a damaged line (torn by a kill, garbage,
    a missing or null loss) is skipped, and anything that is not a readable regular file reads as no rows; ``log``
    (if given) gets one line saying so."""
    path = Path(path)
    try:
        if not path.exists():
            return []
        if not path.is_file():
            raise IsADirectoryError(f"{path} is not a regular file")
        lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    except OSError as e:
        if log is not None:
            log(message("warn_metrics_unreadable", path=path, reason=e.strerror or e))
        return []
    rows, skipped = [], 0
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if is_eval_row(row):
            rows.append(row)
        elif line.strip():
            skipped += 1
    if skipped and log is not None:
        log(message("warn_metrics_damaged", n=skipped, path=path))
    return rows


class MetricsLog:
    """``<workdir>/metrics.jsonl``: one JSON object per eval, steps strictly increasing, never a duplicate step, and
    never ahead of the checkpoints: an eval's row is written only once a checkpoint at or after its step is saved
    (``commit``), so a failed save, a non-finite loss, a signal or a kill leaves no row for a step a resume trains
    again.

    On resume from step ``s`` the log keeps its rows up to ``s`` (rows past it come from an older version, which wrote
    rows as it evaluated), completed from ``history`` (the checkpoint's own evals), so a damaged log is rewritten
    whole. Without a resume (a fresh run) it starts empty, but only once ``start()`` is called: ``fit`` does that when
    the new run writes its first checkpoint (or deletes the old ones), so a ``--fresh`` run that fails early leaves the
    old log as it was. A path that is not a regular file (a directory, say) disables the log, with a warning: it is
    never a reason to stop training.
    """

    def __init__(self, path: str | Path, resumed_step: int | None, history=(), log=None, events=None):
        self.path = None if path is None else Path(path)
        self.log = log or (lambda message: None)
        self.events = events  # a tensorboard.EventLog mirroring the rows as they are written (None: none)
        self.disabled = self.path is None or (self.path.exists() and not self.path.is_file())
        if self.disabled and self.path is not None:
            self.log(message("warn_metrics_not_regular", path=self.path))
        existing = [] if self.disabled else read_metrics(self.path, self.log)
        kept = {r["step"]: r for r in existing if resumed_step is not None and r["step"] <= resumed_step}
        for row in history if resumed_step is not None else ():
            if is_eval_row(row) and row["step"] <= resumed_step:
                kept.setdefault(row["step"], row)
        self.rows = [kept[s] for s in sorted(kept)]  # what the file holds (once started)
        self.pending: list[dict] = []  # evals whose checkpoint is not saved yet
        self.started = resumed_step is not None
        self._dirty = self.rows != existing or not self._ends_cleanly()
        if self.started:
            self._sync()
            if self.events is not None:  # a resume: the event files are rewritten as the repaired log, so they hold
                self.events.clear()      # every eval it holds (a kill between a save and its rows loses none) and
                self.events.rows(self.rows)  # nothing past the resumed step
        self.steps = {r["step"] for r in self.rows}
        self.last_step = max(self.steps, default=None)
        self.wall_offset = float(self.rows[-1].get("wall_s") or 0.0) if self.rows else 0.0

    def start(self) -> None:
        """Begin writing (a fresh run: the old log is replaced by this run's rows so far)."""
        if not self.started:
            self.started, self._dirty = True, True
            self._sync()
            if self.events is not None:  # the old run's events go with its log
                self.events.clear()
                self.events.rows(self.rows)

    def _ends_cleanly(self) -> bool:
        """False when the last line was cut short (a kill mid-append)."""
        if self.disabled or not self.path.exists() or self.path.stat().st_size == 0:
            return True
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def _sync(self) -> None:
        """Rewrite the file as ``rows`` when it differs (untouched otherwise: a refused resume leaves it as it was);
        no rows: no file."""
        if self.disabled or not self._dirty:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            if self.rows:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")
                os.replace(tmp, self.path)
            else:
                self.path.unlink(missing_ok=True)
        except OSError as e:
            self._disable(e)
        self._dirty = False

    def _disable(self, error: OSError) -> None:
        self.disabled = True
        self.log(message("warn_metrics_unwritable", path=self.path, reason=error.strerror or error))

    def append(self, row: dict) -> bool:
        """Take ``row`` unless its step is already logged (or older than the last); returns whether it was. It is
        written by the ``commit`` of a step at or after it."""
        if row["step"] in self.steps or (self.last_step is not None and row["step"] < self.last_step):
            return False
        self.pending.append(row)
        self.steps.add(row["step"])
        self.last_step = row["step"]
        return True

    def commit(self, step: int) -> None:
        """The checkpoint of ``step`` is saved: write the evals up to it."""
        done = [r for r in self.pending if r["step"] <= step]
        self.pending = [r for r in self.pending if r["step"] > step]
        self.rows += done
        if not self.started:
            self.start()
            return
        if done and not self.disabled:
            try:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write("".join(json.dumps(r) + "\n" for r in done))
            except OSError as e:
                self._disable(e)
        if done and self.events is not None:
            self.events.rows(done)


# ----------------------------------------------------------------------------- progress display

def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (or ``M:SS``), ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def quote_sample(text: str, prefix: str = "    | ") -> str:
    """A sample as an indented block: every line after ``prefix``, characters that would move the cursor or hide
    (anything unprintable but the newline) escaped."""
    visible = "".join(c if c.isprintable() or c == "\n" else ascii(c)[1:-1] for c in text)
    return "\n".join(prefix + line for line in visible.split("\n"))


def _fmt_loss(x) -> str:
    return "?" if x is None else f"{x:.4f}"


class Reporter:
    """Progress and metrics of one ``fit`` call.

    ``bar`` picks the display: ``True`` a tqdm bar, ``False`` plain lines, ``None`` a bar iff ``err`` is a
    terminal. ``metrics_path=None`` writes no metrics; ``enabled=False`` (a non-primary process) does nothing.
    """

    def __init__(self, *, start_step: int, total_steps: int, resumed: bool, metrics_path: str | Path | None = None,
                 history=(), lr_fn=None, out=None, err=None, bar: bool | None = None, enabled: bool = True,
                 plain_every_s: float = PLAIN_EVERY_S, clock=time.perf_counter):
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.enabled = enabled
        self.start_step = self.step = start_step
        self.total = total_steps
        self.lr_fn = lr_fn
        self.clock = clock
        self.plain_every_s = plain_every_s
        self.use_bar = (_isatty(self.err) if bar is None else bar) and enabled

        def warn(text: str) -> None:
            print(text, file=self.err, flush=True)

        self.metrics = (MetricsLog(metrics_path, start_step if resumed else None, history, warn,
                                   events=EventLog(Path(metrics_path).parent / EVENTS_DIR, warn))
                        if metrics_path and enabled else None)
        self.train_loss = None  # "chunk loss": the mean training loss of the last chunk's steps (not an estimate)
        self.last_eval: dict | None = None
        self._bar = None
        self._t0 = self._last_plain = clock()
        self._train_s = 0.0  # training seconds since the last eval
        self._trained = 0  # steps trained since the last eval

    # -- context: open the bar, always close it (errors then print on a clean line)
    def __enter__(self):
        if self.use_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.start_step, file=self.err, unit="step",
                             dynamic_ncols=True, smoothing=0.3, leave=True)
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        return False

    # -- hooks called by fit
    def chunk(self, step: int, losses, seconds: float) -> None:
        """After a fused training call that ended at ``step``; ``losses`` are its per-step losses."""
        if not self.enabled:
            return
        n = step - self.step
        self.step, self._trained, self._train_s = step, self._trained + n, self._train_s + seconds
        if len(losses):
            self.train_loss = float(np.mean(losses))
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix_str(self._postfix(), refresh=True)
        elif not self.use_bar and self.clock() - self._last_plain >= self.plain_every_s:
            self._plain()

    def eval(self, row: dict, sample: str | None = None) -> None:
        """At an evaluation (``row`` = step, train_loss, val_loss): print it on ``out`` (with the eval's ``sample``
        text under it, if any), log it (the sample too), update the display."""
        if not self.enabled:
            return
        self.last_eval = row
        if self.train_loss is None:  # before the first chunk: show the estimate rather than "?"
            self.train_loss = row["train_loss"]
        self.step = max(self.step, row["step"])
        now = self.clock()
        if self.metrics is not None:
            self.metrics.append({
                "step": row["step"], "train_loss": row["train_loss"], "val_loss": row["val_loss"],
                "lr": float(self.lr_fn(row["step"])) if self.lr_fn is not None else None,
                "steps_per_s": round(self._trained / self._train_s, 1) if self._train_s > 0 else None,
                "wall_s": round(self.metrics.wall_offset + now - self._t0, 3),
                "time": round(time.time(), 3), **({"sample": sample} if sample is not None else {})})
        self._trained, self._train_s = 0, 0.0
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.clear()  # the eval line goes above the bar, which redraws below it
        print(f"step {row['step']}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}",
              file=self.out, flush=True)
        if sample is not None:
            print(f"sample at step {row['step']}:\n{quote_sample(sample)}", file=self.out, flush=True)
        if self._bar is None and not self.use_bar:
            self._plain()

    def saved(self, step: int) -> None:
        """After the checkpoint of ``step`` was saved: the evals up to it go into the metrics log."""
        if self.metrics is not None:
            self.metrics.commit(step)

    def replacing(self) -> None:
        """A ``--fresh`` run has just deleted the old run's checkpoints: its metrics log and event files go too."""
        if self.metrics is not None:
            self.metrics.start()

    def diverged(self, member: int, step: int, value: float, who: str) -> None:  # a single run stops instead
        print(f"warning: {who}: the training loss became {value} at step {step}", file=self.err, flush=True)

    # -- rendering
    def rate(self) -> float | None:
        """Steps per second over this process's run so far (compile, eval and saves included)."""
        elapsed = self.clock() - self._t0
        done = self.step - self.start_step
        return done / elapsed if elapsed > 0 and done > 0 else None

    def _postfix(self) -> str:
        val = "?" if self.last_eval is None else f"{self.last_eval['val_loss']:.4f}@{self.last_eval['step']}"
        return f"chunk loss {_fmt_loss(self.train_loss)}, val est. {val}"

    def plain_line(self) -> str:
        rate = self.rate()
        eta = (self.total - self.step) / rate if rate else (0.0 if self.step >= self.total else None)
        pct = 100.0 * self.step / self.total if self.total else 100.0
        val = "?" if self.last_eval is None else f"{self.last_eval['val_loss']:.4f} (step {self.last_eval['step']})"
        return (f"progress: step {self.step}/{self.total} ({pct:.0f}%) | chunk loss {_fmt_loss(self.train_loss)} | "
                f"val est. {val} | {'?' if rate is None else f'{rate:,.0f}'} steps/s | ETA {format_duration(eta)}")

    def _plain(self) -> None:
        self._last_plain = self.clock()
        print(self.plain_line(), file=self.err, flush=True)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
