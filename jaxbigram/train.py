"""Training: the optimizer, the pure train step, fused multi-step calls, evaluation, and the loop driver ``fit``."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from . import data as data_lib
from . import parallel, progress
from .config import Config, TrainConfig
from .errors import UsageError
from .model import BigramLanguageModel, init_params, logits_table, loss_fn
from .optimum import optimum_report

LN2 = float(np.log(2.0))


# ----------------------------------------------------------------------------- state and step (pure)

def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Constant, or linear warmup then cosine decay to ``learning_rate * min_lr_ratio`` at ``steps``."""
    if cfg.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if cfg.warmup_steps else cfg.learning_rate, peak_value=cfg.learning_rate,
            warmup_steps=cfg.warmup_steps, decay_steps=max(cfg.steps, cfg.warmup_steps + 1),
            end_value=cfg.learning_rate * cfg.min_lr_ratio)
    if cfg.warmup_steps:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps), optax.constant_schedule(cfg.learning_rate)],
            [cfg.warmup_steps])
    return optax.constant_schedule(cfg.learning_rate)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with the configured schedule, optionally after global-norm clipping."""
    adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw) if cfg.grad_clip > 0 else adamw


def create_train_state(key: jax.Array, vocab_size: int, cfg: TrainConfig) -> train_state.TrainState:
    """Fresh parameters and AdamW state at step 0."""
    state = train_state.TrainState.create(apply_fn=BigramLanguageModel(vocab_size).apply,
                                          params=init_params(key, vocab_size), tx=make_optimizer(cfg))
    return state.replace(step=jnp.zeros((), jnp.int32))  # a concrete int32, as after a restore: one compile


def train_step(state: train_state.TrainState, x: jax.Array, y: jax.Array):
    """One AdamW step on batch (x, y) → (new state, loss before the step)."""
    loss, grads = jax.value_and_grad(loss_fn)(state.params, x, y)
    return state.apply_gradients(grads=grads), loss


def batch_key(base_key: jax.Array, step) -> jax.Array:
    """The key of step ``step``'s batch: the run is a pure function of (config, seed, data)."""
    return jax.random.fold_in(base_key, step)


# Batches of a fused chunk are drawn up front, in one vectorised call per sub-chunk, as long as their ids fit in this
# many elements; the step loop then only trains. On a CPU this halves the cost of a small step (the per-step
# threefry and gather kernels are gone from the loop) without changing a single value: ``vmap(get_batch)`` over the
# steps' keys returns exactly the batches that ``get_batch`` returns step by step.
BATCH_BUFFER_ELEMENTS = 1 << 21


def _steps_per_draw(max_steps: int, per_step: int, budget: int) -> int:
    return max(1, min(max_steps, budget // max(per_step, 1)))


@partial(jax.jit, static_argnames=("batch_size", "block_size", "max_steps", "sharding"), donate_argnums=(0,))
def train_chunk(state, train_data, base_key, num_steps, *, batch_size: int, block_size: int, max_steps: int,
                sharding=None):
    """Run ``num_steps`` (≤ ``max_steps``, traced, so one compile serves every count) steps in one call.

    The loop is ``lax.fori_loop`` rather than ``lax.scan`` with a static length: chunks end at eval and checkpoint
    boundaries, so their lengths vary (e.g. 300, 100, 200 with the lecture's intervals), and a traced trip count keeps
    that to one compile instead of one per distinct length.

    Step ``s`` draws its batch from ``fold_in(base_key, s)`` with ``s = state.step``. Returns the new state and a
    ``(max_steps,)`` buffer whose first ``num_steps`` entries are the per-step losses (the rest NaN).
    Batches are drawn ``_steps_per_draw`` steps at a time (``vmap`` of ``get_batch``), then trained on one by one.
    ``sharding`` (data parallel): the layout of each global batch, see ``parallel.DataParallel.batch_sharding``.
    """
    per_draw = _steps_per_draw(max_steps, 2 * batch_size * block_size, BATCH_BUFFER_ELEMENTS)
    draw = jax.vmap(lambda s: data_lib.get_batch(batch_key(base_key, s), train_data, batch_size, block_size))

    def sub_chunk(j, carry):
        state, losses = carry
        first = j * per_draw
        xs, ys = parallel.constrain_batch(*draw(state.step + jnp.arange(per_draw)), parallel.stacked(sharding))

        def body(i, carry):
            state, losses = carry
            x, y = parallel.constrain_batch(xs[i], ys[i], sharding)
            state, loss = train_step(state, x, y)
            return state, losses.at[first + i].set(loss)

        return jax.lax.fori_loop(0, jnp.minimum(per_draw, num_steps - first), body, (state, losses))

    losses = jnp.full((max_steps,), jnp.nan, dtype=jnp.float32)
    if per_draw >= max_steps:  # the common case: one draw serves the whole chunk
        return sub_chunk(0, (state, losses))
    return jax.lax.fori_loop(0, (num_steps + per_draw - 1) // per_draw, sub_chunk, (state, losses))


@partial(jax.jit, static_argnames=("iters", "batch_size", "block_size", "sharding"))
def estimate_loss(params, key, train_data, val_data, *, iters: int, batch_size: int, block_size: int,
                  sharding=None) -> dict:
    """The lecture's estimate: mean loss over ``iters`` random batches of each split (pure; keys explicit)."""

    def mean_loss(split_key, split_data):
        keys = jax.random.split(split_key, iters)
        return jax.lax.map(lambda k: loss_fn(params, *parallel.constrain_batch(
            *data_lib.get_batch(k, split_data, batch_size, block_size), sharding)), keys).mean()

    train_key, val_key = jax.random.split(key)
    return {"train": mean_loss(train_key, train_data), "val": mean_loss(val_key, val_data)}


@jax.jit
def _pair_nll(params, rows, cols):
    table = logits_table(params).astype(jnp.float32)
    return jax.nn.logsumexp(table, axis=-1)[rows] - table[rows, cols]


def exact_loss(params, counts: data_lib.BigramCounts) -> float:
    """Mean cross-entropy over every position of a split, exact: Σ count(i,j)·(−log softmax(W)[i,j]) / N.

    For a bigram the loss of a whole split depends on the text only through its bigram counts, so this equals
    running ``loss_fn`` over all windows, in memory O(distinct pairs) whatever the corpus size.
    """
    if counts.total == 0:
        return float("nan")
    nll = np.asarray(_pair_nll(params, jnp.asarray(counts.rows), jnp.asarray(counts.cols)), dtype=np.float64)
    return float(np.dot(nll, counts.counts) / counts.total)


def exact_report(params, train_counts, val_counts) -> dict:
    """Exact losses in nats and bits per character, the closed-form optimum, and the gap to it."""
    report = {"train_loss": exact_loss(params, train_counts), "val_loss": exact_loss(params, val_counts)}
    report["train_bpc"] = report["train_loss"] / LN2
    report["val_bpc"] = report["val_loss"] / LN2
    report.update(optimum_report(train_counts, val_counts))
    report["gap_train"] = report["train_loss"] - report["optimum_train_loss"]
    report["gap_val"] = report["val_loss"] - report["optimum_val_loss"]
    return report


# ----------------------------------------------------------------------------- the loop driver (side effects)

class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint; ``exit_code`` is 128 + signal number."""

    def __init__(self, signum: int, step: int, path: str):
        self.signum, self.step, self.path = signum, step, path
        self.exit_code = 128 + signum
        super().__init__(f"interrupted at step {step}")


def _note(text: str) -> None:
    """Write to stderr without Python's buffered streams (safe inside a signal handler)."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


class _StopRequest:
    """Records SIGINT/SIGTERM instead of raising, so a chunk or a save is never cut in half."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def _handle(self, signum, frame):
        # os.write, not print: a handler may interrupt a print to the same stream ("reentrant call" error)
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            _note(f"\nreceived {name}: finishing this chunk and saving a checkpoint…\n")
        else:  # a second Ctrl-C must not cut the save in half: it is noted, never raised
            _note(f"\nreceived {name} again: still saving, please wait (kill -9 would also be safe: the last complete "
                  f"checkpoint is kept)\n")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def run_metadata(cfg: Config, corpus: data_lib.Corpus) -> dict:
    """What a checkpoint needs besides the arrays, so sample/eval never need the dataset."""
    return {"config": cfg.to_dict(), "vocab": corpus.tokenizer.chars, "vocab_size": corpus.tokenizer.vocab_size,
            "data": {"path": corpus.path, "sha256": corpus.sha256, "length": int(len(corpus.ids))}}


@dataclass
class FitResult:
    state: train_state.TrainState
    history: list = field(default_factory=list)  # [{step, train_loss, val_loss}]
    report: dict = field(default_factory=dict)  # exact losses and the optimum at the end
    steps_per_second: float = 0.0


def _next_stop(step: int, target: int, cfg: Config) -> int:
    nxt = [target, step + cfg.train.steps_per_call]
    for interval in (cfg.eval.interval, cfg.checkpoint.interval):
        nxt.append((step // interval + 1) * interval)
    return min(nxt)


def fit(cfg: Config, corpus: data_lib.Corpus, store, *, fresh: bool = False, out=None, err=None,
        reporter=None) -> FitResult:
    """Train ``cfg.train.steps`` steps (resuming from ``store`` unless ``fresh``), evaluating and checkpointing.

    ``reporter`` (default: ``progress.for_run``) shows progress and writes ``<workdir>/metrics.jsonl``.
    """
    out, err = out or sys.stdout, err or sys.stderr
    tcfg = cfg.train
    train_np, val_np = data_lib.split(corpus.ids, cfg.data.val_fraction)
    data_lib.check_sizes(corpus, train_np, val_np, tcfg.block_size)
    vocab_size = corpus.tokenizer.vocab_size
    meta = run_metadata(cfg, corpus)

    dp = parallel.DataParallel.create(tcfg.batch_size)  # all devices of all processes; batch split along 'data'
    init_key, train_key, eval_key = dp.replicate(jax.random.split(jax.random.key(tcfg.seed), 3))
    state = dp.abstract(lambda: create_train_state(init_key, vocab_size, tcfg))  # shapes only: restored or made
    history: list = []
    if fresh:
        store.clear()
    elif store.latest_step() is not None and (resumed := store.resume(meta, state, err)) is not None:
        previous, state = resumed  # the newest intact checkpoint; damaged newer ones are set aside with a note
        state = state.replace(step=jnp.asarray(state.step, jnp.int32))
        history = list(previous.get("history", []))
        print(f"resuming from step {int(state.step)} in {store.directory}", file=err)
    if parallel.is_abstract(state):  # a fresh start: only now allocate the (possibly V×V×3) state
        state = dp.replicate(create_train_state(init_key, vocab_size, tcfg))

    if reporter is None:
        reporter = progress.for_run(cfg, store.workdir, start_step=int(state.step), resumed=int(state.step) > 0, err=err)
    train_data, val_data = dp.replicate((train_np, val_np))
    sizes = dict(batch_size=tcfg.batch_size, block_size=tcfg.block_size, sharding=dp.batch_sharding)

    def evaluate(at_step: int) -> dict:
        losses = estimate_loss(state.params, jax.random.fold_in(eval_key, at_step), train_data, val_data,
                               iters=cfg.eval.iters, **sizes)
        row = {"step": at_step, "train_loss": float(losses["train"]), "val_loss": float(losses["val"])}
        history[:] = [h for h in history if h["step"] != at_step] + [row]
        reporter.eval(row)
        print(f"step {at_step}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}", file=out, flush=True)
        return row

    def save(at_step: int, last: dict, report: dict | None = None) -> None:
        store.save(at_step, state, {**meta, "step": at_step, "history": history, "last_eval": last,
                                    **({"exact": report} if report else {})}, val_loss=last["val_loss"])

    step, target = int(state.step), tcfg.steps
    last = history[-1] if history and history[-1]["step"] == step else None
    if step % cfg.eval.interval == 0 and last is None and step < target:
        last = evaluate(step)
    trained_steps, train_seconds = 0, 0.0
    with _StopRequest() as stop, reporter:
        while step < target:
            stop_at = _next_stop(step, target, cfg)
            t0 = time.perf_counter()
            state, losses = train_chunk(state, train_data, train_key, stop_at - step, max_steps=tcfg.steps_per_call,
                                        **sizes)
            losses = np.asarray(losses[: stop_at - step])
            train_seconds += time.perf_counter() - t0
            reporter.chunk(stop_at, losses, time.perf_counter() - t0)
            trained_steps += stop_at - step
            bad = np.flatnonzero(~np.isfinite(losses))
            if bad.size:
                raise UsageError("non_finite", value=float(losses[bad[0]]), step=step + int(bad[0]))
            step = stop_at
            if step % cfg.eval.interval == 0 or step == target:
                last = evaluate(step)
            if step % cfg.checkpoint.interval == 0 and step < target:
                save(step, last if last and last["step"] == step else evaluate(step))
            if stop.signum is not None and step < target:
                if not (last and last["step"] == step):
                    last = evaluate(step)
                save(step, last)
                raise Interrupted(stop.signum, step, str(store.directory))
        if last is None or last["step"] != step:
            last = evaluate(step)
        report = exact_report(state.params, data_lib.bigram_counts(train_np, vocab_size),
                              data_lib.bigram_counts(val_np, vocab_size))
        report["step"] = step
        save(step, last, report)
    rate = trained_steps / train_seconds if train_seconds else 0.0
    return FitResult(state=state, history=history, report=report, steps_per_second=rate)
