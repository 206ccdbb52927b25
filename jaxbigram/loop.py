"""The training loop, written once: ``run`` drives a training ``Program`` (one run, ``train.fit``, or a sweep's
stacked members, ``sweep.run_sweep``) from chunk boundary to chunk boundary, and at each boundary decides evaluate /
checkpoint / stop once.

The rules it applies, the same for a run and a sweep (a single run is a one-member program):

- evaluate at every ``eval.interval`` step and before every save; save at every ``checkpoint.interval`` step, at the
  end and when a signal asked to stop (``signals.StopRequest``: the chunk in progress finishes first);
- with ``fresh``, the old run's checkpoints, metrics and event files go only when the first new checkpoint is about
  to be written (a fresh run that fails early leaves the old one as it was);
- divergence: a member whose training loss becomes non-finite is marked diverged (one warning; its losses are
  recorded as non-finite, it never counts as best) and the others go on; when every member has diverged the run
  stops with one ``error:`` line before anything of that chunk is saved, and the last checkpoint stays the latest.
  A single run therefore stops at its first non-finite loss, as it always did.

The program supplies the math (train, estimate, exact losses, what a checkpoint records) and the reporter the
output (``progress.Reporter`` for a run, ``sweep_report.SweepReporter`` for a sweep); this module only decides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .config import Config
from .errors import Interrupted, UsageError, message
from .signals import StopRequest


@dataclass(frozen=True)
class Program:
    """What ``run`` drives. ``members``: how many runs train together (1: a single run).

    - ``train(state, step, stop_at) -> (state, losses)``: the steps from ``step`` to ``stop_at``; ``losses`` the
      per-step training losses, shape ``(members, stop_at - step)``;
    - ``estimate(state, step) -> (row, sample)``: the eval row ``{step, train_loss, val_loss}`` (floats for one run,
      per-member lists for many) and the sample shown with it (None: none);
    - ``exact(state, step) -> report``: the exact losses at the end;
    - ``checkpoint(history, last, report, diverged) -> (meta, val_loss)``: a step's metadata and the number orbax
      ranks steps by;
    - ``describe(k) -> str``: member ``k`` as warnings name it.
    """

    cfg: Config
    members: int
    train: Callable
    estimate: Callable
    exact: Callable
    checkpoint: Callable
    describe: Callable = str


@dataclass
class Outcome:
    state: object
    history: list
    report: dict | None
    diverged: dict = field(default_factory=dict)  # member → the step before which its loss became non-finite
    steps_per_second: float = 0.0


def next_boundary(step: int, target: int, cfg: Config) -> int:
    """Where the next fused call ends: the target, an eval or checkpoint step, or ``steps_per_call`` ahead."""
    return min(target, step + cfg.train.steps_per_call, *((step // i + 1) * i
                                                           for i in (cfg.eval.interval, cfg.checkpoint.interval)))


def newly_diverged(losses: np.ndarray, diverged: dict, step: int) -> dict:
    """``{member: (step, value)}`` of the members whose losses (``(members, n)`` from ``step``) hold their first
    non-finite value in this chunk."""
    found = {}
    for k in range(losses.shape[0]):
        bad = np.flatnonzero(~np.isfinite(losses[k]))
        if bad.size and k not in diverged:
            found[k] = (step + int(bad[0]), float(losses[k, bad[0]]))
    return found


def run(program: Program, state, *, start: int, history: list, store, reporter, fresh: bool, log,
        diverged: dict | None = None) -> Outcome:
    """Train ``state`` (at step ``start``, with its eval ``history``) to ``cfg.train.steps``; ``store`` None: in
    memory only (no checkpoints). Raises ``Interrupted`` after a signal (once saved), ``UsageError("non_finite")``
    when every member has diverged."""
    cfg = program.cfg
    target = cfg.train.steps
    diverged = dict(diverged or {})
    step, last = start, (history[-1] if history and history[-1]["step"] == start else None)
    trained, seconds, stale, report = 0, 0.0, fresh, None
    with StopRequest() as stop, reporter:
        while True:  # at a chunk boundary: decide evaluate / checkpoint / stop, once
            done, stopping = step >= target, stop.signum is not None
            save_now = step > start and (done or stopping or step % cfg.checkpoint.interval == 0)
            if (save_now or step % cfg.eval.interval == 0) and (last is None or last["step"] != step):
                last, shown = program.estimate(state, step)
                history = [h for h in history if h["step"] != step] + [last]
                reporter.eval(last, sample=shown)
            if done:
                report = program.exact(state, step)
            if save_now and store is not None:
                with stop.saving():
                    if stale:  # --fresh: the replaced run goes only now, at the new run's first save
                        store.clear()
                        reporter.replacing()
                        stale = False
                    meta, val_loss = program.checkpoint(history, last, report, diverged)
                    store.save(step, state, {**meta, "step": step}, val_loss=val_loss)
                    reporter.saved(step)  # the metrics log catches up to the checkpoint, never runs ahead of it
            if done:
                if stop.signum is not None:  # the signal came after the last chunk: the run is complete
                    log(message("signal_after_finish", signal=stop.signal_name, step=step))
                break
            if stopping:
                raise Interrupted(stop.signum, step, str(store.directory) if store is not None else "memory",
                                  saved=save_now and store is not None)
            stop_at = next_boundary(step, target, cfg)
            t0 = time.perf_counter()
            state, losses = program.train(state, step, stop_at)
            losses = np.asarray(losses, np.float64).reshape(program.members, stop_at - step)
            took = time.perf_counter() - t0
            found = newly_diverged(losses, diverged, step)
            if found and len(diverged) + len(found) == program.members:  # nothing left training: stop, save nothing
                at, value = min(found.values())
                raise UsageError("non_finite", value=value, step=at) if program.members == 1 else UsageError(
                    "all_diverged", members=program.members, step=max(s for s, _ in found.values()))
            for k, (at, value) in sorted(found.items()):
                diverged[k] = at
                reporter.diverged(k, at, value, program.describe(k))
            trained, seconds = trained + stop_at - step, seconds + took
            reporter.chunk(stop_at, losses, took)
            step = stop_at
    return Outcome(state=state, history=history, report=report, diverged=diverged,
                   steps_per_second=trained / seconds if seconds else 0.0)
