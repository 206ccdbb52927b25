"""Training: the pure train step (its optimizer: ``optimizer``), fused multi-step calls, and a run: ``fit`` (a one-member program
for ``loop.run``, the one place that loops in Python) and ``train_and_evaluate`` (the run folder around it).

Everything above the loop driver is pure and model-agnostic: the model (``models.build``) is a static argument.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from . import checks
from . import data as data_lib
from . import loop, memory, models, parallel, progress
from . import config as config_lib
from . import runs
from .checkpoint import Store
from .config import Config, TrainConfig
from .errors import printable_path, program
from .evaluate import estimate_loss, exact_report
from .optimizer import _decay_mask_of, check_hparams, learning_rate_schedule, make_optimizer, traced_optimizer


# ----------------------------------------------------------------------------- state and step (pure)

def create_train_state(key: jax.Array, model, cfg: TrainConfig) -> train_state.TrainState:
    """Fresh parameters and AdamW state at step 0. ``apply_fn`` is the Flax module's ``apply``, as in the Flax
    examples: ``state.apply_fn({"params": params}, x, deterministic, rngs=...)`` → logits ``(B, T, V)``. ``cfg`` is
    the run's ``TrainConfig`` (``cfg.train`` of a Config); ``key`` one PRNG key (checked at trace time too)."""
    checks.check_key("create_train_state", "key", key)
    if not hasattr(model, "init") or not hasattr(model, "module"):
        checks.refuse_type("create_train_state", "model", "a model (jb.models.build)", model)
    checks.check_type("create_train_state", "cfg", cfg, TrainConfig, "a TrainConfig (cfg.train of a Config)")
    params = model.init(key)
    state = train_state.TrainState.create(apply_fn=model.module().apply, params=params,
                                          tx=make_optimizer(cfg, _decay_mask_of(model, params)))
    return state.replace(step=jnp.zeros((), jnp.int32))  # a concrete int32, as after a restore: one compile


@partial(jax.jit, static_argnums=(1, 2))
def fresh_train_state(key: jax.Array, model, cfg: TrainConfig) -> train_state.TrainState:
    """``create_train_state`` as one compiled program, traced once per model and config: a run's start builds its
    state (parameters, AdamW's moments, the step) in one XLA call, not one small compile per leaf."""
    return create_train_state(key, model, cfg)


def train_step(state: train_state.TrainState, x: jax.Array, y: jax.Array, dropout_key=None, loss_fn=None,
               grad_accum: int = 1, sharding=None):
    """One AdamW step on batch (x, y) → (new state, mean cross-entropy before the step). Dropout (where the model
    has any) is on exactly when a ``dropout_key`` is given. The loss is the cross-entropy of ``state.apply_fn``'s
    logits, or ``loss_fn(params, x, y, dropout_key)`` when given (a model's ``fast_loss``).

    ``grad_accum`` k > 1 (static): the batch runs as k microbatches of ``B / k`` rows (``accumulated_grad``), their
    mean loss and gradient make the one update; k = 1 is the one-batch step, traced exactly as it always was.

    Checked at trace time (free under ``jit``): ``x`` and ``y`` int ``(B, T)`` of one shape, ``grad_accum`` a divisor
    of ``B``, ``dropout_key`` one key. Precondition, as in JAX (an out-of-range id gathers garbage, the loss is NaN):
    every id of ``x`` and ``y`` from 0 to V - 1. It is checked only when they are concrete (an eager call, with the
    logits' cross-entropy), never inside a compiled step."""
    checks.check_type("train_step", "state", state, train_state.TrainState,
                      "a TrainState (create_train_state)")
    checks.check_batch("train_step", x, y)
    if dropout_key is not None:
        checks.check_key("train_step", "dropout_key", dropout_key)
    grad_accum = checks.check_int("train_step", "grad_accum", grad_accum, 1)
    if x.shape[0] % grad_accum:
        checks.refuse("train_step", "grad_accum", f"a divisor of the batch size {x.shape[0]}", str(grad_accum))
    if grad_accum > 1:
        loss, grads = accumulated_grad(state, x, y, dropout_key, loss_fn, grad_accum, sharding)
        return state.apply_gradients(grads=grads), loss

    def cross_entropy(params):
        if loss_fn is not None:
            return loss_fn(params, x, y, dropout_key)
        logits = state.apply_fn({"params": params}, x, dropout_key is None,
                                rngs=None if dropout_key is None else {"dropout": dropout_key})
        checks.check_batch("train_step", x, y, logits.shape[-1])  # the ids' values: only where they are concrete
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(cross_entropy)(state.params)
    return state.apply_gradients(grads=grads), loss


def microbatches(a: jax.Array, k: int) -> jax.Array:
    """``(B, ...)`` → ``(k, B / k, ...)``, microbatch ``j`` = rows ``j, j + k, j + 2k, …``: strided, so a batch
    split over devices in contiguous blocks gives every microbatch an equal share of every device's rows."""
    return jnp.swapaxes(a.reshape(a.shape[0] // k, k, *a.shape[1:]), 0, 1)


def accumulated_grad(state, x, y, dropout_key, loss_fn, k: int, sharding=None):
    """(mean loss, mean gradient) of batch (x, y) computed as ``k`` microbatches in a ``lax.scan`` (so one
    microbatch's activations are alive at a time): equal microbatches, so the means equal the one-batch loss and
    gradient up to float rounding. Microbatch ``j``'s dropout key is ``fold_in(dropout_key, j)``."""
    rows = x.shape[0] // k
    if sharding is not None and rows % sharding.mesh.size:
        sharding = None  # a microbatch that does not split evenly over the devices: XLA lays it out

    def grad_of(params, xm, ym, key):
        if loss_fn is not None:
            return jax.value_and_grad(loss_fn)(params, xm, ym, key)

        def cross_entropy(p):
            logits = state.apply_fn({"params": p}, xm, key is None, rngs=None if key is None else {"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, ym).mean()

        return jax.value_and_grad(cross_entropy)(params)

    def body(carry, inputs):
        total, grads = carry
        j, xm, ym = inputs
        xm, ym = parallel.constrain_batch(xm, ym, sharding)
        loss, g = grad_of(state.params, xm, ym, None if dropout_key is None else jax.random.fold_in(dropout_key, j))
        return (total + loss, jax.tree.map(jnp.add, grads, g)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (total, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                     (jnp.arange(k), microbatches(x, k), microbatches(y, k)))
    return total / k, jax.tree.map(lambda g: g / k, grads)


def step_key(base_key: jax.Array, step) -> jax.Array:
    """The key of step ``step`` (its batch, or its dropout): the run is a pure function of (config, seed, data)."""
    return jax.random.fold_in(base_key, step)


def run_keys(seed: int) -> dict:
    """The run's keys, all from ``seed`` (an integer >= 0; as ``config.reduce_seed`` says, ``seed`` and
    ``seed % 2**32`` are one seed): init, batches (``step_key(batch, s)``), evals, dropout, and the samples shown at
    evals (one key for the whole run, so successive samples differ only by what the model learned)."""
    return keys_from(jax.random.key(config_lib.reduce_seed(checks.check_int("run_keys", "seed", seed, 0))))


def keys_from(seed_key: jax.Array) -> dict:
    """``run_keys`` of the seed whose base key is ``seed_key = jax.random.key(seed)`` (pure: jittable, vmappable)."""
    init_key, batch_key, eval_key = jax.random.split(seed_key, 3)
    return {"init": init_key, "batch": batch_key, "eval": eval_key,
            "dropout": jax.random.fold_in(seed_key, 3),  # not 1: split(k, 3)[1] is fold_in(k, 1)
            "sample": jax.random.fold_in(seed_key, 4)}


def eval_sample(model, params, key, tokenizer, num_chars: int) -> str:
    """What an eval shows of the model: the first vocabulary character and ``num_chars`` characters sampled after
    it with ``key`` (the run's sample key: the same at every eval). Reads ``params`` only."""
    params = parallel.local_copy(params)
    return "".join([tokenizer.decode([0]), *(tokenizer.decode(chunk[0])
                                             for chunk in model.sample_stream(params, key, [0], num_chars))])


# Batches of a fused chunk are drawn up front, in one vectorised call per sub-chunk, as long as their ids fit in this
# many elements; the step loop then only trains. On a CPU this halves the cost of a small step (the per-step
# threefry and gather kernels are gone from the loop) without changing a single value: ``vmap(get_batch)`` over the
# steps' keys returns exactly the batches that ``get_batch`` returns step by step.
DEFAULT_BATCH_BUFFER = memory.BATCH_BUFFER_ELEMENTS


def _steps_per_draw(max_steps: int, per_step: int, budget: int) -> int:
    return max(1, min(max_steps, budget // max(per_step, 1)))


def _fused_steps(state, train_data, base_key, dropout_key, num_steps, *, batch_size: int, block_size: int,
                 max_steps: int, batch_buffer: int = DEFAULT_BATCH_BUFFER, sharding=None, loss_fn=None,
                 grad_accum: int = 1):
    """``train_chunk``'s math (``compiled_chunk`` is it, jitted): ``num_steps`` (0 to ``max_steps``, traced, so one
    compile serves every count; a precondition here, checked by ``train_chunk``) steps in one call.

    The loop is ``lax.fori_loop`` rather than ``lax.scan`` with a static length: chunks end at eval and checkpoint
    boundaries, so their lengths vary (e.g. 300, 100, 200 with the lecture's intervals), and a traced trip count keeps
    that to one compile instead of one per distinct length.

    Step ``s`` draws its batch from ``step_key(base_key, s)`` and its dropout from ``step_key(dropout_key, s)``
    with ``s = state.step``. Returns the new state and a ``(max_steps,)`` buffer whose first ``num_steps`` entries
    are the per-step losses (the rest NaN). Batches are drawn up to ``batch_buffer`` ids at a time (``vmap`` of
    ``get_batch``), then trained on one by one.
    ``sharding`` (data parallel): the layout of each global batch, see ``parallel.DataParallel.batch_sharding``.
    ``loss_fn``: ``train_step``'s (None: the cross-entropy of the logits); ``grad_accum``: ``train_step``'s
    (microbatches per step, ``train.grad_accum``).
    """
    checks.check_key("train_chunk", "base_key", base_key)  # static checks: at trace time only
    checks.check_key("train_chunk", "dropout_key", dropout_key)
    max_steps = checks.check_int("train_chunk", "max_steps", max_steps, 1)
    per_draw = _steps_per_draw(max_steps, 2 * batch_size * block_size, batch_buffer)
    draw = jax.vmap(lambda s: data_lib.get_batch(step_key(base_key, s), train_data, batch_size, block_size))

    def sub_chunk(j, carry):
        state, losses = carry
        first = j * per_draw
        xs, ys = parallel.constrain_batch(*draw(state.step + jnp.arange(per_draw)), parallel.stacked(sharding))

        def body(i, carry):
            state, losses = carry
            x, y = parallel.constrain_batch(xs[i], ys[i], sharding)
            state, loss = train_step(state, x, y, step_key(dropout_key, state.step), loss_fn, grad_accum, sharding)
            return state, losses.at[first + i].set(loss)

        return jax.lax.fori_loop(0, jnp.minimum(per_draw, num_steps - first), body, (state, losses))

    losses = jnp.full((max_steps,), jnp.nan, dtype=jnp.float32)
    if per_draw >= max_steps:  # the common case: one draw serves the whole chunk
        return sub_chunk(0, (state, losses))
    return jax.lax.fori_loop(0, (num_steps + per_draw - 1) // per_draw, sub_chunk, (state, losses))


_fused_steps.__name__ = _fused_steps.__qualname__ = "train_chunk"  # what compile logs name it: jit(train_chunk)
compiled_chunk = partial(jax.jit, static_argnames=("batch_size", "block_size", "max_steps", "batch_buffer",
                                                   "sharding", "loss_fn", "grad_accum"),
                         donate_argnums=(0,))(_fused_steps)


def train_chunk(state, train_data, base_key, dropout_key, num_steps, *, max_steps: int, **sizes):
    """Run ``num_steps`` steps in one compiled call (``compiled_chunk``: one compile serves every count from 0 to
    ``max_steps``); what they do, the result, and ``sizes`` (``batch_size``, ``block_size``; optionally
    ``batch_buffer``, ``sharding``, ``loss_fn``, ``grad_accum``): ``_fused_steps``. The keywords are passed on as
    given, so a call matches the program ``train_chunk.lower(...)`` compiled ahead with the same ones
    (``compile_ahead``).

    A concrete ``num_steps`` (a Python int, or an array outside ``jit``) must be from 0 to ``max_steps``: checked here,
    on the host, for the cost of a comparison (a traced one is a precondition)."""
    if not (type(num_steps) is int and type(max_steps) is int and 0 <= num_steps <= max_steps):
        max_steps = checks.check_int("train_chunk", "max_steps", max_steps, 1)
        checks.check_int("train_chunk", "num_steps", num_steps, 0, max_steps)
    return compiled_chunk(state, train_data, base_key, dropout_key, num_steps, max_steps=max_steps, **sizes)


train_chunk.lower = compiled_chunk.lower
train_chunk.__wrapped__ = _fused_steps


def train_steps(state, model, cfg: TrainConfig, hparams, train_data, keys: dict, num_steps, *, max_steps: int,
                batch_buffer: int = DEFAULT_BATCH_BUFFER, loss_fn=None):
    """``train_chunk``'s math, unjitted (to run inside a larger pure function, ``vmap``ped or not), with the
    optimizer's ``HPARAM_KEYS`` from ``hparams`` (traced per run; None: the config's constants, exactly as ``fit``).
    ``keys``: the run's keys (``keys_from``); ``loss_fn``: ``train_step``'s. Returns (state, losses) as
    ``train_chunk``; the state keeps its static optimizer, so it can be saved, restored and passed on like any
    other."""
    static_tx = state.tx
    if hparams is not None:
        state = state.replace(tx=traced_optimizer(cfg, hparams, _decay_mask_of(model, state.params)))
    state, losses = _fused_steps(state, train_data, keys["batch"], keys["dropout"], num_steps,
                                            batch_size=cfg.batch_size, block_size=cfg.block_size,
                                            max_steps=max_steps, batch_buffer=batch_buffer, loss_fn=loss_fn,
                                            grad_accum=cfg.grad_accum)
    return state.replace(tx=static_tx), losses


def make_train(cfg: Config, model, train_ids, *, batch_buffer: int = DEFAULT_BATCH_BUFFER):
    """A whole run as a pure function (no files, prints or checkpoints): ``train(seed_key, hparams=None) ->
    (state, losses)``, where ``seed_key = jax.random.key(seed)`` is the seed's base key (the run's keys derive from
    it as ``run_keys(seed)`` does) and ``losses`` holds the ``cfg.train.steps`` per-step losses. ``hparams``
    (``hparams_of``; traced values) replaces the config's ``HPARAM_KEYS``. Jittable and ``vmap``pable whole: one
    compile trains many seeds and hyperparameters at once. Equals ``fit`` of the same config and seed up to float
    rounding (bit for bit with ``hparams=None`` where XLA fuses alike)."""
    checks.check_type("make_train", "cfg", cfg, Config, "a Config (jb.config.load)")
    if not hasattr(model, "vocab_size"):
        checks.refuse_type("make_train", "model", "a model (jb.models.build)", model)
    tcfg = cfg.train
    checks.check_ids("make_train", "train_ids", train_ids, model.vocab_size, min_length=tcfg.block_size + 1)
    train_data = jnp.asarray(train_ids)

    def train(seed_key: jax.Array, hparams: dict | None = None):
        checks.check_key("make_train's train", "seed_key", seed_key)  # static checks: at trace time under jit
        if hparams is not None:
            check_hparams("make_train's train", hparams)
        keys = keys_from(seed_key)
        state = create_train_state(keys["init"], model, tcfg)
        return train_steps(state, model, tcfg, hparams, train_data, keys, tcfg.steps, max_steps=tcfg.steps,
                           batch_buffer=batch_buffer)

    return train


def compile_ahead(jitted, *args, **kwargs) -> threading.Thread:
    """Compile ``jitted`` for these arguments (arrays or ``ShapeDtypeStruct``s) on a background thread, so XLA
    compiles it on another core while this thread goes on; a later call with matching arguments finds it compiled.
    A failure is left for that call to raise. Join the thread before the process ends."""

    def work():
        try:
            jitted.lower(*args, **kwargs).compile()
        except Exception:  # the real call compiles again and reports whatever is wrong
            pass

    thread = threading.Thread(target=work, name="jaxbigram-compile-ahead", daemon=True)
    thread.start()
    return thread


# ----------------------------------------------------------------------------- a run (side effects)

def run_metadata(cfg: Config, corpus: data_lib.Corpus, model, num_params: int) -> dict:
    """What a checkpoint needs besides the arrays, so sample/eval never need the dataset."""
    return {"config": cfg.to_dict(), "model": model.kind, "num_params": num_params, "vocab": corpus.tokenizer.chars,
            "vocab_size": corpus.tokenizer.vocab_size,
            "data": {"path": corpus.path, "sha256": corpus.sha256, "length": int(len(corpus.ids))}}


@dataclass
class FitResult:
    state: train_state.TrainState
    history: list = field(default_factory=list)  # [{step, train_loss, val_loss}]
    report: dict | None = field(default_factory=dict)  # exact losses and the optimum at the end; None: nothing trained
    steps_per_second: float = 0.0


@dataclass(frozen=True)
class Prepared:
    """What a run needs before its first step: the model, the mesh, the keys and the data on the devices."""

    cfg: Config
    model: object
    dp: parallel.DataParallel
    keys: dict
    train_np: np.ndarray
    val_np: np.ndarray
    train_data: jax.Array
    val_data: jax.Array
    meta: dict

    @property
    def sizes(self) -> dict:
        return dict(batch_size=self.cfg.train.batch_size, block_size=self.cfg.train.block_size,
                    sharding=self.dp.batch_sharding)


def check_memory(cfg: Config, corpus: data_lib.Corpus, model, *, members: int = 1, devices: int = 1,
                 copies: int = 1) -> None:
    """Refuse in one line, before anything is built or traced, a run that cannot fit in memory: one run
    (``members`` 1) with its batch split over ``devices`` and its state held ``copies`` times (CPU devices share the
    host's memory: each holds its own copy), or a sweep's ``members``, each with its own state, activations and eval
    batch (members are split over devices, never copied). Too big with a ``train.grad_accum`` that a larger one
    would fix: the line names it."""
    def per_member(k: int) -> dict:  # with train.grad_accum = k
        return memory.estimate_for_config(
            config_lib.replace(cfg, "train", grad_accum=k), corpus.tokenizer.vocab_size, len(corpus.ids),
            corpus.ids.itemsize, num_params=model.param_count(),
            activation_bytes=memory.activation_bytes(model, cfg.train.batch_size // devices))

    memory.check_with_accum(per_member, cfg.train.batch_size // devices, cfg.train.grad_accum, members,
                            memory.available_memory_bytes(jax.local_devices()[0]), copies)


def prepare(cfg: Config, corpus: data_lib.Corpus, log) -> Prepared:
    """Split and size-check the text, build the model, choose the devices (``train.devices``), check memory, and
    place the keys and ids on the mesh."""
    tcfg = cfg.train
    train_np, val_np = data_lib.split(corpus.ids, cfg.data.val_fraction)
    data_lib.check_sizes(corpus, train_np, val_np, tcfg.block_size)
    model = models.build(cfg.model, corpus.tokenizer.vocab_size, tcfg.block_size)
    dp = parallel.DataParallel.create(tcfg.batch_size, parallel.select_devices(
        tcfg.devices, tcfg.batch_size, parallel.split_on_cpu(model, tcfg.batch_size)))
    if dp.num_devices > 1:
        log(f"data parallel: each batch of {tcfg.batch_size} is split over {dp.num_devices} {jax.default_backend()} "
            f"devices (train.devices = {tcfg.devices or 'automatic'})")
    check_memory(cfg, corpus, model, devices=dp.num_devices,
                 copies=dp.local_device_count if jax.default_backend() == "cpu" else 1)
    train_data, val_data = dp.replicate((train_np, val_np))
    return Prepared(cfg=cfg, model=model, dp=dp, keys=dp.replicate(run_keys(tcfg.seed)), train_np=train_np,
                    val_np=val_np, train_data=train_data, val_data=val_data,
                    meta=run_metadata(cfg, corpus, model, model.param_count()))


def program_of(run: Prepared, tokenizer) -> loop.Program:
    """The run as the loop drives it: a one-member ``loop.Program``."""
    cfg = run.cfg

    def train(state, step, stop_at):
        state, losses = train_chunk(state, run.train_data, run.keys["batch"], run.keys["dropout"], stop_at - step,
                                    max_steps=cfg.train.steps_per_call, grad_accum=cfg.train.grad_accum,
                                    **run.sizes)
        return state, np.asarray(losses[: stop_at - step])[None]

    def estimate(state, step):
        losses = estimate_loss(run.model, state.params, step_key(run.keys["eval"], step), run.train_data,
                               run.val_data, iters=cfg.eval.iters, **run.sizes)
        shown = (eval_sample(run.model, state.params, run.keys["sample"], tokenizer, cfg.eval.sample_chars)
                 if cfg.eval.sample_chars else None)
        return {"step": step, "train_loss": float(losses["train"]), "val_loss": float(losses["val"])}, shown

    def exact(state, step):  # the train split exactly only where that is cheap (a bigram's counts); `eval` does both
        return {**exact_report(run.model, state.params, run.train_np, run.val_np,
                               train=run.model.cheap_split_loss), "step": step}

    def checkpoint(history, last, report, diverged):
        meta = {**run.meta, "history": history, "last_eval": last, **({"exact": report} if report else {})}
        return meta, last["val_loss"]

    return loop.Program(cfg=cfg, members=1, train=train, estimate=estimate, exact=exact, checkpoint=checkpoint)


def fit(cfg: Config, corpus: data_lib.Corpus, store: Store | None = None, *, fresh: bool = False, out=None,
        err=None, reporter: progress.Reporter | None = None, saved: dict | None = None) -> FitResult:
    """Train to ``cfg.train.steps`` (resuming from ``store`` unless ``fresh``), evaluating and checkpointing:
    prepare → ``loop.run`` → the result. With no ``store`` the run is in memory only: no resume, no checkpoints, no
    metrics log (the history and the final state are in the result). ``saved``: the newest step's metadata when the
    caller has read it already (``train_and_evaluate``), so it is read once.
    """
    checks.check_type("fit", "cfg", cfg, Config, "a Config (jb.config.load)")
    checks.check_type("fit", "corpus", corpus, data_lib.Corpus, "a Corpus (jb.data.load_corpus)")
    out, err = out or sys.stdout, err or sys.stderr
    log = partial(print, file=err, flush=True)
    run, tcfg = prepare(cfg, corpus, log), cfg.train
    abstract = run.dp.abstract(lambda: fresh_train_state(run.keys["init"], run.model, tcfg))
    resumed = None if fresh or store is None or not store.steps() else runs.resume(store, abstract, run.meta, log,
                                                                                   newest=saved)
    start = 0 if resumed is None else int(resumed[1].step)
    # XLA compiles the training call on another core while this one builds the state and runs the first estimate
    ahead = compile_ahead(train_chunk, resumed[1] if resumed else abstract, run.train_data, run.keys["batch"],
                          run.keys["dropout"], tcfg.steps_per_call, max_steps=tcfg.steps_per_call,
                          grad_accum=tcfg.grad_accum, **run.sizes) if start < tcfg.steps else None
    try:
        history: list = []
        if resumed is not None:
            meta, state = resumed  # the newest intact checkpoint; damaged newer ones were set aside with a note
            state = state.replace(step=jnp.asarray(state.step, jnp.int32))
            history = [h for h in meta.get("history") or [] if progress.is_eval_row(h)]
            log(f"resuming from step {start} in {printable_path(store.directory)}")
            if start >= tcfg.steps:
                log(f"note: the run is already at step {start} (train.steps = {tcfg.steps}): nothing to train; to "
                    f"continue, pass a larger --steps (e.g. --steps {start + tcfg.steps}); `{program()} eval` reports "
                    f"its exact losses")
                return FitResult(state=state, history=history, report=None)
        else:  # a new run: only now allocate the (possibly V×V×3) state
            state = run.dp.replicate(fresh_train_state(run.keys["init"], run.model, tcfg))
        if reporter is None:
            lr = jax.jit(learning_rate_schedule(tcfg))
            reporter = progress.Reporter(start_step=start, total_steps=tcfg.steps, resumed=resumed is not None,
                                         metrics_path=store and store.workdir / progress.METRICS_FILE,
                                         history=history, lr_fn=lambda s: float(lr(s)), out=out, err=err,
                                         enabled=parallel.is_primary())
        done = loop.run(program_of(run, corpus.tokenizer), state, start=start, history=history, store=store,
                        reporter=reporter, fresh=fresh, log=log)
        return FitResult(state=done.state, history=done.history, report=done.report,
                         steps_per_second=done.steps_per_second)
    finally:
        if ahead is not None:
            ahead.join()  # never leave XLA compiling on a thread while the process exits


def train_and_evaluate(workdir: str | Path, *, config_path=None, overrides=(), data: str | None = None,
                       fresh: bool = False, out=None, err=None) -> FitResult:
    """``run.py train``: hold the workdir, settle the run's config and data (a resume keeps the checkpoint's), fit.

    ``config_path`` None means: the checkpoint's config when resuming, else the default preset.
    """
    err = err or sys.stderr
    log = partial(print, file=err, flush=True)
    with runs.held(workdir, parallel.is_primary()) as workdir:
        saved = runs.saved_meta(workdir, fresh, log)  # read once: fit resumes from it
        cfg = runs.run_config(saved, config_path, overrides, workdir)
        recorded = (saved or {}).get("data", {}).get("path")
        path, source = data_lib.resolve_data_path(data, recorded=recorded, config_path=cfg.data.path)
        corpus = data_lib.load_corpus(path)
        log(f"data: {printable_path(corpus.path)} (from {source}; {len(corpus.ids):,} characters, "
            f"vocab {corpus.tokenizer.vocab_size}, sha256 {corpus.sha256[:12]}…)")
        if corpus.bom_stripped:
            log("note: removed the UTF-8 byte-order mark at the start of the text (it is not a character)")
        store = Store(workdir, keep=cfg.checkpoint.keep, log=log)
        try:
            return fit(cfg, corpus, store, fresh=fresh, out=out, err=err, saved=saved)
        finally:
            store.close()
