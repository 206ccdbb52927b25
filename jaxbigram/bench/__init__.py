"""``python run.py bench``: how fast training, sampling and data prep run on this machine, next to a naive JAX loop.

Every figure is measured after a warm-up and is the median of several repeats (wall clock, ``time.perf_counter``).
Timed work always ends with ``block_until_ready`` so asynchronous dispatch cannot flatter a number. Whole runs
(preset trainings, data prep) run as fresh ``python -m jaxbigram …`` processes so start-up, imports and first-touch
memory are counted; their peak memory is the kernel's ``ru_maxrss`` of that process (``os.wait4``).

This module is a harness at the edge: only ``cli bench`` imports it, and nothing in training imports it.
"""

from __future__ import annotations

import json
import math
import os
import platform as platform_lib
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import synthetic


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does (``quick`` shrinks it)."""

    repeats: int = 5
    small_shape: tuple[int, int] = (32, 8)
    small_steps_per_call: int = 1000
    small_calls: int = 10
    large_shape: tuple[int, int] = (512, 256)
    large_steps_per_call: int = 10
    large_calls: int = 2
    naive_steps: int = 2000
    sample_long: tuple[int, int] = (1, 100_000)  # (streams, characters)
    sample_wide: tuple[int, int] = (64, 10_000)
    naive_sample_chars: int = 20_000
    notes_config: str = "notes"
    notes_repeats: int = 3
    corpus_mb: float = 100.0
    data_repeats: int = 3
    gpt_config: str = "gpt-cpu"
    gpt_steps_per_call: int = 50
    gpt_calls: int = 2
    gpt_naive_steps: int = 50
    # (streams, characters) per figure; gpt-cpu's block is 64: the first two stay within the context window (KV cache),
    # the last two go beyond it (the window is recomputed for every character, as the lecture's cropping requires)
    gpt_samples: tuple = (("1_stream", 1, 64), ("64_streams", 64, 64), ("1_stream_beyond", 1, 256),
                          ("64_streams_beyond", 64, 128))
    gpt_run_repeats: int = 1  # whole `train --config gpt-cpu` runs (cold and warm compile cache)
    gpt_large_config: str | None = "gpt"  # a few steps of the lecture's full-size GPT: tokens/s and utilisation
    gpt_large_steps: int = 2


FULL = Plan()
QUICK = Plan(repeats=3, small_calls=5, large_calls=1, naive_steps=1000, notes_repeats=1, corpus_mb=20.0,
             data_repeats=1, gpt_calls=1, gpt_naive_steps=20, gpt_samples=(("1_stream", 1, 64), ("64_streams", 64, 64)),
             gpt_run_repeats=0,
             gpt_large_config=None)


def _median_rate(work: float, seconds: list[float]) -> float:
    return work / statistics.median(seconds)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: ``VmHWM`` (Linux; counts only this program, not a parent that
    forked it), else ``getrusage(RUSAGE_SELF).ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(maxrss / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0), 1)


def _jaxbigram(*args: str) -> list[str]:
    """The command line of a fresh ``jaxbigram`` process (this interpreter, this package)."""
    return [sys.executable, "-m", "jaxbigram", *args]


def _child_env(**extra) -> dict:
    """The environment of a child: this one, with this package importable first (a checkout or an install)."""
    root = str(Path(__file__).resolve().parent.parent.parent)
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])), **extra)


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- training

def _train_state(vocab_size: int, seed: int = 0):
    import jax

    from ..config import TrainConfig
    from ..models.bigram import Bigram
    from ..train import create_train_state

    return create_train_state(jax.random.key(seed), Bigram(vocab_size), TrainConfig(learning_rate=1e-3))


def bench_train(train_ids, vocab_size: int, shape, steps_per_call: int, calls: int, repeats: int) -> dict:
    """Fused ``train_chunk`` at batch × block = ``shape``: compile time, then steps/s and tokens/s."""
    batch, block = shape
    state, compile_s, seconds = _time_fused(_train_state(vocab_size), train_ids, batch, block, steps_per_call, calls,
                                            repeats)
    steps = steps_per_call * calls
    return {"steps_per_s": _median_rate(steps, seconds), "tokens_per_s": _median_rate(steps * batch * block, seconds),
            "compile_s": compile_s, "raw_s": seconds, "steps": steps, "params": state.params}


def _time_step_loop(run, state, warmup: int, steps: int, repeats: int) -> list[float]:
    """Time a naive loop: ``run(state, first_step, n) -> state`` for ``warmup`` steps (compiles), then ``repeats``
    timed runs of ``steps`` steps each, continuing the step count; returns the seconds of each."""
    state = run(state, 0, warmup)
    seconds, first = [], warmup
    for _ in range(repeats):
        t0 = time.perf_counter()
        state = run(state, first, steps)
        seconds.append(time.perf_counter() - t0)
        first += steps
    return seconds


def _time_fused(state, train_ids, batch: int, block: int, steps_per_call: int, calls: int, repeats: int, dp=None):
    """Compile ``train_chunk`` for these sizes, warm it up, then time ``repeats`` × ``calls`` calls of
    ``steps_per_call`` steps; returns (final state, compile seconds, seconds per repeat). With ``dp`` (a
    ``parallel.DataParallel``) the batches are split over its devices, as ``train`` does."""
    import jax
    import jax.numpy as jnp

    from ..train import train_chunk

    data, key, dropout_key = jnp.asarray(train_ids), jax.random.key(1), jax.random.key(2)
    sharding = None
    if dp is not None:
        state, data, key, dropout_key = dp.replicate((state, data, key, dropout_key))
        sharding = dp.batch_sharding
    t0 = time.perf_counter()
    compiled = train_chunk.lower(state, data, key, dropout_key, steps_per_call, batch_size=batch, block_size=block,
                                 max_steps=steps_per_call, sharding=sharding).compile()
    compile_s = time.perf_counter() - t0
    state, losses = compiled(state, data, key, dropout_key, steps_per_call)  # warm-up
    losses.block_until_ready()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            state, losses = compiled(state, data, key, dropout_key, steps_per_call)
        losses.block_until_ready()
        seconds.append(time.perf_counter() - t0)
    return state, compile_s, seconds


def bench_naive_train(train_ids, vocab_size: int, shape, steps: int, repeats: int) -> dict:
    """The baseline: a plain ``jax.jit(train_step)`` called once per step from a Python loop (same batches)."""
    import jax
    import jax.numpy as jnp

    from ..data import get_batch
    from ..train import step_key, train_step

    batch, block = shape
    data = jnp.asarray(train_ids)
    base_key = jax.random.key(1)
    step_fn = jax.jit(train_step)
    batch_fn = jax.jit(lambda s: get_batch(step_key(base_key, s), data, batch, block))

    def run(state, first, n):
        for s in range(first, first + n):
            x, y = batch_fn(s)
            state, loss = step_fn(state, x, y)
        loss.block_until_ready()
        return state

    seconds = _time_step_loop(run, _train_state(vocab_size), 50, steps, repeats)
    return {"steps_per_s": _median_rate(steps, seconds), "tokens_per_s": _median_rate(steps * batch * block, seconds),
            "raw_s": seconds, "steps": steps}


# ----------------------------------------------------------------------------- the whole notes run

def run_measured(argv: list[str], env: dict) -> dict:
    """Run ``argv`` to its end: wall seconds from spawn to exit, its CPU seconds (user + system), its own peak
    resident memory in MiB (the kernel's ``ru_maxrss``), exit code, stdout and stderr."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        out.seek(0)
        err.seek(0)
        return {"wall_s": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024.0,
                "rc": proc.returncode, "stdout": out.read(), "stderr": err.read()}


def bench_preset_run(preset: str, data: str, repeats: int, platform: str | None, log) -> dict:
    """Wall time of ``jaxbigram train --config PRESET --fresh`` from process start to exit (final checkpoint
    written), with an empty compilation cache (cold) and then with the cache the cold run filled (warm)."""
    cold, warm, cold_cpu, warm_cpu, rss, final = [], [], [], [], 0.0, ""
    with tempfile.TemporaryDirectory(prefix="jaxbigram-bench-") as tmp:
        for i in range(repeats):
            argv = _jaxbigram("train", "--config", preset, "--fresh", "--workdir", str(Path(tmp) / f"run-{i}"),
                              "--data", data, *(["--platform", platform] if platform else []))
            env = _child_env(JAXBIGRAM_COMPILE_CACHE=str(Path(tmp) / f"xla-{i}"))
            for bucket, cpu_bucket in ((cold, cold_cpu), (warm, warm_cpu)):
                run = run_measured(argv, env)
                if run["rc"] != 0:
                    raise RuntimeError(f"{preset} run failed (exit {run['rc']}):\n{run['stderr'][-2000:]}")
                bucket.append(run["wall_s"])
                cpu_bucket.append(run["cpu_s"])
                rss = max(rss, run["peak_rss_mb"])
                final = run["stdout"]
            log(f"{preset} run {i + 1}/{repeats}: cold cache {cold[-1]:.2f} s, warm cache {warm[-1]:.2f} s")
    exact = re.search(r"val ([\d.]+) nats", final)
    return {"cold_s": statistics.median(cold), "warm_s": statistics.median(warm), "peak_rss_mb": rss,
            "cold_cpu_s": statistics.median(cold_cpu), "warm_cpu_s": statistics.median(warm_cpu),
            "exact_val_loss": float(exact.group(1)) if exact else None, "raw_cold_s": cold, "raw_warm_s": warm}


# ----------------------------------------------------------------------------- sampling

def bench_sampling(params, streams: int, chars: int, repeats: int) -> dict:
    """``generate`` from a trained table: characters per second over all streams (CDF built inside each call)."""
    import jax

    from ..models.bigram import generate

    key = jax.random.key(7)
    generate(params, key, [0], chars, num_samples=streams).block_until_ready()  # compile
    seconds = []
    for r in range(repeats):
        t0 = time.perf_counter()
        generate(params, jax.random.fold_in(key, r), [0], chars, num_samples=streams).block_until_ready()
        seconds.append(time.perf_counter() - t0)
    return {"chars_per_s": _median_rate(streams * chars, seconds), "raw_s": seconds}


def bench_naive_sampling(params, chars: int, repeats: int) -> dict:
    """The baseline: ``lax.scan`` with ``jax.random.categorical`` on the logits row, one key per character."""
    from functools import partial

    import jax
    import jax.numpy as jnp

    from ..models.bigram import logits_table

    @partial(jax.jit, static_argnums=2)
    def naive(params, key, n):
        table = logits_table(params)

        def step(prev, i):
            nxt = jax.random.categorical(jax.random.fold_in(key, i), table[prev]).astype(jnp.int32)
            return nxt, nxt

        return jax.lax.scan(step, jnp.int32(0), jnp.arange(n))[1]

    key = jax.random.key(7)
    naive(params, key, chars).block_until_ready()
    seconds = []
    for r in range(repeats):
        t0 = time.perf_counter()
        naive(params, jax.random.fold_in(key, r), chars).block_until_ready()
        seconds.append(time.perf_counter() - t0)
    return {"chars_per_s": _median_rate(chars, seconds), "raw_s": seconds}


# ----------------------------------------------------------------------------- data prep

def data_prep_child(path: str) -> None:
    """In a fresh process (``python -m jaxbigram.bench data-prep PATH``): time ``load_corpus`` twice (the first
    encodes and writes the cache; the second reads it) and print the figures as one JSON line."""
    from ..data import load_corpus

    t0 = time.perf_counter()
    first = load_corpus(path)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = load_corpus(path)
    cached_s = time.perf_counter() - t0
    peak = peak_rss_mb()  # before the check below pages the whole memory map in
    import numpy as np

    ok = cached.tokenizer == first.tokenizer and np.array_equal(cached.ids, first.ids)
    print(json.dumps({"first_s": first_s, "cached_s": cached_s, "ok": bool(ok),
                      "memory_mapped": isinstance(cached.ids, np.memmap), "vocab_size": first.tokenizer.vocab_size,
                      "peak_rss_mb": peak}))


def bench_data_prep(megabytes: float, repeats: int) -> dict:
    """Data prep MB/s on a generated corpus: first run (read, hash, encode, write the .npy cache) and cached run."""
    results = []
    with tempfile.TemporaryDirectory(prefix="jaxbigram-bench-data-") as tmp:
        path = Path(tmp) / "corpus.txt"
        size = synthetic.make_corpus(str(path), int(megabytes * 1e6), vocab=100)["bytes"]
        for _ in range(repeats):
            for stale in Path(tmp).glob("corpus.txt.jaxbigram-*"):
                stale.unlink()
            run = run_measured([sys.executable, "-m", "jaxbigram.bench", "data-prep", str(path)],
                               _child_env(XDG_CACHE_HOME=str(Path(tmp) / "cache")))
            if run["rc"] != 0:
                raise RuntimeError(f"data prep failed:\n{run['stderr'][-2000:]}")
            results.append(json.loads(run["stdout"].strip().splitlines()[-1]))
            if not results[-1]["ok"]:
                raise RuntimeError("data prep: the cached corpus differs from the freshly encoded one")
    first = [r["first_s"] for r in results]
    cached = [r["cached_s"] for r in results]
    return {"mb": size / 1e6, "first_mb_per_s": _median_rate(size / 1e6, first),
            "cached_mb_per_s": _median_rate(size / 1e6, cached), "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "memory_mapped": all(r["memory_mapped"] for r in results), "vocab_size": results[0]["vocab_size"],
            "raw_first_s": first, "raw_cached_s": cached}


# ----------------------------------------------------------------------------- everything

def _flatten(report: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in report.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform_lib.processor() or platform_lib.machine()


def _load_average() -> float | None:
    """The 1-minute load average: on a shared machine, how much else was running."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run(*, quick: bool = False, scaling: bool = False, data: str | None = None, platform: str | None = None,
        log=_log) -> dict:
    """``bench`` (or ``bench --scaling``): every measurement; returns the flat JSON-ready report documented in
    docs/performance.md."""
    from ..data import load_corpus, resolve_data_path

    path, _ = resolve_data_path(data)
    if scaling:
        return run_scaling(str(path), quick=quick, log=log)
    return run_speed(QUICK if quick else FULL, load_corpus(path), platform, log)


def run_speed(plan: Plan, corpus, platform: str | None, log) -> dict:
    """Training, sampling, data prep and whole preset runs at the sizes of ``plan``."""
    import jax

    from .. import config as config_lib
    from ..data import check_length_for, split

    # up front, before anything is timed: the text must hold the windows of every training and preset run below
    uses = {f"its {b}x{t} training": (t, 0.1) for b, t in (plan.small_shape, plan.large_shape)}
    for name in filter(None, (plan.notes_config, plan.gpt_config, plan.gpt_large_config)):
        cfg = config_lib.load(name)
        uses[f"the {name} preset"] = (cfg.train.block_size, cfg.data.val_fraction)
    check_length_for(corpus, "bench", uses)
    vocab = corpus.tokenizer.vocab_size
    train_ids, _ = split(corpus.ids, 0.1)
    report: dict = {
        "jax_version": jax.__version__, "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "python": platform_lib.python_version(),
        "quick": plan.repeats < FULL.repeats, "repeats": plan.repeats, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_avg_start": _load_average(),
    }
    raw: dict = {}
    (b, t), (lb, lt) = plan.small_shape, plan.large_shape

    log(f"training at {b}x{t} (fused train_chunk)")
    small = bench_train(train_ids, vocab, plan.small_shape, plan.small_steps_per_call, plan.small_calls, plan.repeats)
    log(f"training at {b}x{t}: {small['steps_per_s']:,.0f} steps/s; naive jit-per-step loop next")
    naive = bench_naive_train(train_ids, vocab, plan.small_shape, plan.naive_steps, plan.repeats)
    log(f"naive loop: {naive['steps_per_s']:,.0f} steps/s; training at {lb}x{lt} next")
    large = bench_train(train_ids, vocab, plan.large_shape, plan.large_steps_per_call, plan.large_calls, plan.repeats)
    report.update({
        "train_shape": f"{b}x{t}", "train_steps_per_s": small["steps_per_s"], "train_tokens_per_s": small["tokens_per_s"],
        "train_compile_s": small["compile_s"],
        "train_large_shape": f"{lb}x{lt}", "train_large_steps_per_s": large["steps_per_s"],
        "train_large_tokens_per_s": large["tokens_per_s"], "train_large_compile_s": large["compile_s"],
        "naive_train_steps_per_s": naive["steps_per_s"], "naive_train_tokens_per_s": naive["tokens_per_s"],
        "speedup_vs_naive": small["steps_per_s"] / naive["steps_per_s"],
    })
    raw.update(train_s=small["raw_s"], train_large_s=large["raw_s"], naive_train_s=naive["raw_s"])

    log("sampling")
    params = small["params"]  # the table trained above: a realistic next-character distribution
    (s1, n1), (s2, n2) = plan.sample_long, plan.sample_wide
    long = bench_sampling(params, s1, n1, plan.repeats)
    wide = bench_sampling(params, s2, n2, plan.repeats)
    naive_sample = bench_naive_sampling(params, plan.naive_sample_chars, plan.repeats)
    report.update({"sample_1_stream_shape": f"{s1}x{n1}", "sample_1_stream_chars_per_s": long["chars_per_s"],
                   "sample_many_streams_shape": f"{s2}x{n2}", "sample_many_streams_chars_per_s": wide["chars_per_s"],
                   "naive_sample_chars_per_s": naive_sample["chars_per_s"]})
    raw.update(sample_1_stream_s=long["raw_s"], sample_many_streams_s=wide["raw_s"],
               naive_sample_s=naive_sample["raw_s"])

    log(f"data prep on a generated {plan.corpus_mb:g} MB UTF-8 corpus")
    prep = bench_data_prep(plan.corpus_mb, plan.data_repeats)
    report.update({"data_prep_mb": prep["mb"], "data_prep_vocab_size": prep["vocab_size"],
                   "data_prep_first_mb_per_s": prep["first_mb_per_s"],
                   "data_prep_cached_mb_per_s": prep["cached_mb_per_s"], "data_prep_peak_rss_mb": prep["peak_rss_mb"],
                   "data_prep_cache_memory_mapped": prep["memory_mapped"]})
    raw.update(data_prep_first_s=prep["raw_first_s"], data_prep_cached_s=prep["raw_cached_s"])

    log(f"whole {plan.notes_config} run in subprocesses")
    notes = bench_preset_run(plan.notes_config, corpus.path, plan.notes_repeats, platform, log)
    report.update({"notes_config": plan.notes_config, "notes_run_s": notes["cold_s"],
                   "notes_run_cpu_s": notes["cold_cpu_s"], "notes_run_warm_cache_s": notes["warm_s"],
                   "notes_run_warm_cache_cpu_s": notes["warm_cpu_s"], "notes_run_peak_rss_mb": notes["peak_rss_mb"]})
    raw.update(notes_run_s=notes["raw_cold_s"], notes_run_warm_cache_s=notes["raw_warm_s"])

    report.update(bench_gpt(plan, corpus, platform, log))

    report["peak_rss_mb"] = peak_rss_mb()
    report["load_avg_end"] = _load_average()
    report["raw_seconds"] = raw
    return report


# ----------------------------------------------------------------------------- the GPT

# Published dense peaks (TFLOP/s) of the units JAX's default float32 matmuls use, by device kind, for utilisation
# on accelerators: TF32 tensor cores on Ampere and later GPUs, float32 on V100, bfloat16 MXUs on TPUs. On a CPU the
# bench measures its own float32 matmul peak instead.
PUBLISHED_PEAK_TFLOPS = {"H100": (494.7, "TF32"), "H200": (494.7, "TF32"), "A100": (156.0, "TF32"),
                         "L4": (60.0, "TF32"), "V100": (15.7, "float32"), "TPU v4": (275.0, "bfloat16"),
                         "TPU v5 lite": (197.0, "bfloat16"), "TPU v5": (459.0, "bfloat16")}


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """This device's float32 matmul throughput (FLOP/s): the median of ``repeats`` timed ``n×n @ n×n`` products."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(lambda a, b: a @ b)
    dot(a, b).block_until_ready()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dot(a, b).block_until_ready()
        seconds.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / statistics.median(seconds)


def peak_flops(measured_matmul: float) -> tuple[float, str]:
    """The peak utilisation is measured against: the published one of a known accelerator, else the measured one."""
    import jax

    kind = jax.devices()[0].device_kind
    for name, (tflops, unit) in PUBLISHED_PEAK_TFLOPS.items():
        if jax.default_backend() != "cpu" and name.lower() in kind.lower():
            return tflops * 1e12, f"published dense {unit} peak of {kind}"
    return measured_matmul, "measured float32 matmul peak"


def gpt_flops_per_token(model, num_params: int) -> float:
    """Training FLOPs per token: 6·N (forward and backward of every weight) plus attention, 12·layers·width·block."""
    return 6.0 * num_params + 12.0 * model.n_layer * model.n_embd * model.block_size


def _gpt_setup(preset: str, vocab_size: int):
    import jax

    from .. import config as config_lib
    from .. import models
    from ..train import create_train_state

    cfg = config_lib.load(preset)
    model = models.build(cfg.model, vocab_size, cfg.train.block_size)
    state = create_train_state(jax.random.key(0), model, cfg.train)
    return cfg, model, state, model.param_count()


def bench_gpt_train(preset: str, train_ids, vocab_size: int, steps_per_call: int, calls: int, repeats: int) -> dict:
    """Fused ``train_chunk`` of a GPT preset (its optimizer, clipping and dropout) on the devices ``train`` would
    split its batches over (``train.devices``): steps/s, tokens/s, FLOP/s."""
    import jax

    from ..parallel import DataParallel, select_devices, split_on_cpu

    cfg, model, state, num_params = _gpt_setup(preset, vocab_size)
    t = cfg.train
    dp = DataParallel.create(t.batch_size, select_devices(t.devices, t.batch_size,
                                                             split_on_cpu(model, t.batch_size)))
    state, compile_s, seconds = _time_fused(state, train_ids, t.batch_size, t.block_size, steps_per_call, calls,
                                            repeats, dp=dp)
    steps = steps_per_call * calls
    tokens = steps * t.batch_size * t.block_size
    return {"steps_per_s": _median_rate(steps, seconds), "tokens_per_s": _median_rate(tokens, seconds),
            "flops_per_s": _median_rate(tokens * gpt_flops_per_token(model, num_params), seconds),
            "compile_s": compile_s, "num_params": num_params, "raw_s": seconds, "model": model,
            "params": jax.device_get(state.params), "devices": dp.num_devices}  # on the host: sampling uses one


def bench_gpt_naive_train(preset: str, train_ids, vocab_size: int, steps: int, repeats: int) -> dict:
    """The baseline: one jitted ``train_step`` (and one jitted ``get_batch``) per Python call, same batches."""
    import jax
    import jax.numpy as jnp

    from ..data import get_batch
    from ..train import step_key, train_step

    cfg, model, state, _ = _gpt_setup(preset, vocab_size)
    t = cfg.train
    data, base, dropout = jnp.asarray(train_ids), jax.random.key(1), jax.random.key(2)
    step_fn = jax.jit(train_step)
    batch_fn = jax.jit(lambda s: get_batch(step_key(base, s), data, t.batch_size, t.block_size))

    def run(state, first, n):
        for s in range(first, first + n):
            state, loss = step_fn(state, *batch_fn(s), step_key(dropout, s))
        loss.block_until_ready()
        return state

    seconds = _time_step_loop(run, state, 3, steps, repeats)
    return {"steps_per_s": _median_rate(steps, seconds), "raw_s": seconds}


def naive_gpt_sample(model, params, key, prompt_ids, max_new_tokens: int, num_samples: int):
    """The lecture's ``generate``, in JAX: for every new character, run the model on the context cropped to
    ``block_size`` (a fixed-shape buffer, so it compiles once) and draw from the last position's logits. Draws the
    same uniforms as the compiled sampler, so both give the same text."""
    import jax
    import numpy as np

    from ..models.gpt import next_ids
    from ..sampling import uniforms

    block = model.block_size

    @jax.jit
    def last_logits(params, buf, n):
        return jax.lax.dynamic_index_in_dim(model.logits(params, buf), n - 1, axis=1, keepdims=False)

    draw = jax.jit(next_ids)
    us = np.asarray(uniforms(key, num_samples, 0, max_new_tokens))
    seq = np.tile(np.asarray(prompt_ids, np.int32), (num_samples, 1))
    for i in range(max_new_tokens):
        context = seq[:, -block:]
        buf = np.zeros((num_samples, block), np.int32)
        buf[:, :context.shape[1]] = context
        nxt = np.asarray(draw(last_logits(params, buf, context.shape[1]), us[i], 1.0, 0, 1.0))
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    return seq[:, len(prompt_ids):]


def bench_gpt_sampling(model, params, streams: int, chars: int, repeats: int) -> dict:
    """The compiled KV-cache sampler and the naive one on the same draws: chars/s over all streams each."""
    import jax
    import numpy as np

    key = jax.random.key(7)

    def compiled():
        return np.concatenate([np.asarray(c) for c in model.sample_stream(params, key, [0], chars,
                                                                            num_samples=streams)], axis=1)

    def naive():
        return naive_gpt_sample(model, params, key, [0], chars, streams)

    out = {}
    for name, fn in (("compiled", compiled), ("naive", naive)):
        ids = fn()  # compile and warm up
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - t0)
        out[name] = {"chars_per_s": _median_rate(streams * chars, seconds), "ids": ids}
    return {"chars_per_s": out["compiled"]["chars_per_s"], "naive_chars_per_s": out["naive"]["chars_per_s"],
            "same_ids": bool(np.array_equal(out["compiled"]["ids"], out["naive"]["ids"]))}


def bench_gpt(plan: Plan, corpus, platform: str | None, log) -> dict:
    """The GPT's figures: fused training vs a naive jit-per-step loop, utilisation, sampling vs the lecture's
    re-run-the-model sampler, whole preset runs (wall time, peak memory, exact val loss), the full-size GPT."""
    from ..data import split

    vocab = corpus.tokenizer.vocab_size
    train_ids, _ = split(corpus.ids, 0.1)
    report: dict = {"gpt_config": plan.gpt_config}
    log("matmul peak (float32)")
    measured = matmul_peak_flops()
    peak, peak_source = peak_flops(measured)
    report.update(matmul_peak_flops=measured, peak_flops=peak, peak_source=peak_source)
    log(f"{plan.gpt_config}: fused training")
    fused = bench_gpt_train(plan.gpt_config, train_ids, vocab, plan.gpt_steps_per_call, plan.gpt_calls, plan.repeats)
    log(f"{plan.gpt_config}: {fused['steps_per_s']:.1f} steps/s fused; naive jit-per-step loop next")
    naive = bench_gpt_naive_train(plan.gpt_config, train_ids, vocab, plan.gpt_naive_steps, plan.repeats)
    report.update({
        "gpt_num_params": fused["num_params"], "gpt_train_steps_per_s": fused["steps_per_s"],
        "gpt_train_ms_per_step": 1000.0 / fused["steps_per_s"], "gpt_train_tokens_per_s": fused["tokens_per_s"],
        "gpt_train_flops_per_s": fused["flops_per_s"], "gpt_train_mfu": fused["flops_per_s"] / peak,
        "gpt_train_compile_s": fused["compile_s"], "gpt_train_devices": fused["devices"],
        "gpt_naive_train_steps_per_s": naive["steps_per_s"],
        "gpt_speedup_vs_naive": fused["steps_per_s"] / naive["steps_per_s"]})
    for label, streams, chars in plan.gpt_samples:
        log(f"{plan.gpt_config}: sampling {streams} stream(s) x {chars} characters, compiled and naive")
        sampled = bench_gpt_sampling(fused["model"], fused["params"], streams, chars, 1 if streams * chars > 4096
                                     else plan.repeats)
        name = f"gpt_sample_{label}"
        report.update({f"{name}_shape": f"{streams}x{chars}", f"{name}_chars_per_s": sampled["chars_per_s"],
                       f"{name}_naive_chars_per_s": sampled["naive_chars_per_s"],
                       f"{name}_speedup": sampled["chars_per_s"] / sampled["naive_chars_per_s"],
                       f"{name}_same_ids": sampled["same_ids"]})
    if plan.gpt_run_repeats:
        log(f"whole {plan.gpt_config} run in subprocesses")
        run = bench_preset_run(plan.gpt_config, corpus.path, plan.gpt_run_repeats, platform, log)
        report.update({"gpt_run_s": run["cold_s"], "gpt_run_warm_cache_s": run["warm_s"],
                       "gpt_run_peak_rss_mb": run["peak_rss_mb"], "gpt_run_exact_val_loss": run["exact_val_loss"]})
    if plan.gpt_large_config:
        log(f"{plan.gpt_large_config}: {plan.gpt_large_steps} fused steps of the full-size GPT")
        large = bench_gpt_train(plan.gpt_large_config, train_ids, vocab, plan.gpt_large_steps, 1, 1)
        report.update({"gpt_large_config": plan.gpt_large_config, "gpt_large_num_params": large["num_params"],
                       "gpt_large_tokens_per_s": large["tokens_per_s"], "gpt_large_mfu": large["flops_per_s"] / peak,
                       "gpt_large_compile_s": large["compile_s"]})
    return report


def format_table(report: dict) -> str:
    """The report as an aligned two-column text table (what ``bench`` prints without ``--json``)."""
    rows = [(k, v) for k, v in _flatten(report).items() if not k.startswith("raw_seconds") and k != "devices"]
    width = max(len(k) for k, _ in rows)
    lines = []
    for key, value in rows:
        if isinstance(value, float):
            value = f"{value:,.0f}" if value >= 1000 else f"{value:.3g}" if value < 10 else f"{value:,.1f}"
        lines.append(f"{key.ljust(width)}  {value}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- --scaling: a big corpus, a big vocabulary

SCALING_CONFIG = """
[train]
steps = {steps}
batch_size = 32
block_size = 8
learning_rate = 0.05
steps_per_call = 100
[eval]
interval = 100
iters = 10
[checkpoint]
interval = 100
keep = 2
"""


def run_scaling(data: str, *, quick: bool = False, size_mb: float = 100.0, vocab: int = 10_000, steps: int = 200,
                log=_log) -> dict:
    """Train, resume, eval and sample through the CLI on a generated corpus with ``vocab`` distinct characters (a
    ``vocab²``-parameter table): wall time and peak memory of each command, the checkpoint size, the speed of the
    compiled step at that vocabulary, and a tokenizer round trip of the whole corpus."""
    import numpy as np

    from ..data import load_corpus

    if quick:
        size_mb, vocab = 10.0, 2000
    report: dict = {"size_mb": size_mb, "vocab": vocab}
    with tempfile.TemporaryDirectory(prefix="jaxbigram-scaling-") as tmp:
        base = Path(tmp)
        corpus = base / "corpus.txt"
        t0 = time.perf_counter()
        report["corpus"] = synthetic.make_corpus(str(corpus), int(size_mb * 1e6), vocab)
        report["corpus"]["seconds"] = round(time.perf_counter() - t0, 2)
        log(f"corpus: {report['corpus']['bytes'] / 1e6:.1f} MB, {report['corpus']['distinct_characters']:,} "
            f"distinct characters")
        cfg, workdir = base / "scaling.toml", base / "run"
        cfg.write_text(SCALING_CONFIG.format(steps=steps))
        env = _child_env(XDG_CACHE_HOME=str(base / "cache"))
        train = ["train", "--config", str(cfg), "--data", str(corpus), "--workdir", str(workdir)]
        commands = {
            "train (first run: encode + cache)": train + ["--fresh"],
            "train (resume +100 steps, cached ids)": train + ["--steps", str(steps + 100)],
            "eval": ["eval", "--workdir", str(workdir), "--json"],
            "sample 10,000 chars": ["sample", "--workdir", str(workdir), "--max-new-tokens", "10000"],
            "sample 10,000 chars, top-k 50": ["sample", "--workdir", str(workdir), "--max-new-tokens", "10000",
                                              "--top-k", "50"],
        }
        report["commands"] = {}
        for name, args in commands.items():
            run = run_measured(_jaxbigram(*args), env)
            if run["rc"] != 0:
                raise RuntimeError(f"{name} failed (exit {run['rc']}):\n{run['stderr'][-2000:]}")
            row = {"wall_s": round(run["wall_s"], 2), "peak_rss_mb": round(run["peak_rss_mb"])}
            if name == "eval":
                ev = json.loads(run["stdout"])
                row.update(val_loss=round(ev["val_loss"], 4), optimum_val_loss=round(ev["optimum_val_loss"], 4))
            report["commands"][name] = row
            log(f"{name}: {row}")
        step_dirs = [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
        newest = max(step_dirs, key=lambda p: int(p.name))
        report["checkpoint_mb"] = round(sum(f.stat().st_size for f in newest.rglob("*") if f.is_file()) / 2**20)
        loaded = load_corpus(str(corpus))
        report["round_trip"] = loaded.tokenizer.decode(loaded.ids) == corpus.read_bytes().decode("utf-8")
        train_ids = np.asarray(loaded.ids[: len(loaded.ids) * 9 // 10])
        speed = bench_train(train_ids, loaded.tokenizer.vocab_size, (32, 8), 20, 3, 1)
        report["train_steps_per_s"] = speed["steps_per_s"]
    return report

# ----------------------------------------------------------------------------- side by side with PyTorch

@dataclass(frozen=True)
class TorchPlan:
    """What ``bench --against torch`` runs: whole runs of a bigram and a GPT preset, each side a fresh process,
    alternating jaxbigram / PyTorch ``pairs`` times."""

    bigram_config: str = "lecture"  # the seed's loop: the lecture's bigram.py
    gpt_config: str = "gpt-cpu"
    pairs: int = 3
    # --set style overrides for both presets and both sides. By default the samples a GPT preset prints at each eval
    # are off: the PyTorch reference does not sample, and the comparison is of the same work
    overrides: tuple = ("eval.sample_chars=0",)


def require_torch() -> None:
    """One ``error:`` line saying what to install when PyTorch is not importable."""
    import importlib.util

    from ..errors import UsageError

    if importlib.util.find_spec("torch") is None:
        raise UsageError("extra_missing", command="bench --against torch", package="torch (the CPU wheel is enough)",
                         extra="compare")


def _steady_rate(rates: list) -> float | None:
    """Steps/s of a run's eval intervals, the first left out (it holds jaxbigram's compile, PyTorch's warm-up):
    the median of the rest (of all when there is only one)."""
    rates = [r for r in rates if r]
    return statistics.median(rates[1:] if len(rates) > 1 else rates) if rates else None


def _jax_whole_run(preset: str, overrides: tuple, data: str, tmp: Path, tag: str, platform: str | None) -> dict:
    """``jaxbigram train --config PRESET --fresh`` in a fresh process, compile cache off (cold, as a first run)."""
    workdir = tmp / f"jax-{tag}"
    argv = _jaxbigram("train", "--config", preset, "--fresh", "--workdir", str(workdir), "--data", data,
                      *[a for o in overrides for a in ("--set", o)], *(["--platform", platform] if platform else []))
    run = run_measured(argv, _child_env(JAXBIGRAM_COMPILE_CACHE="off"))
    if run["rc"] != 0:
        raise RuntimeError(f"jaxbigram {preset} run failed (exit {run['rc']}):\n{run['stderr'][-2000:]}")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    exact = re.search(r"val ([\d.]+) nats", run["stdout"])
    return {"wall_s": run["wall_s"], "steps_per_s": _steady_rate([r.get("steps_per_s") for r in rows]),
            "val": float(exact.group(1)) if exact else None, "last_val_estimate": rows[-1]["val_loss"]}


def _torch_whole_run(cfg, data: str, tmp: Path, tag: str) -> dict:
    """The PyTorch reference (``torch_ref``) in a fresh process, same config."""
    workdir = tmp / f"torch-{tag}"
    workdir.mkdir()
    spec = workdir / "config.json"
    spec.write_text(json.dumps(cfg.to_dict()))
    run = run_measured([sys.executable, "-m", "jaxbigram.bench.torch_ref", str(spec), data, str(workdir)],
                       _child_env())
    if run["rc"] != 0:
        raise RuntimeError(f"PyTorch {cfg.model.kind} run failed (exit {run['rc']}):\n{run['stderr'][-2000:]}")
    out = json.loads(run["stdout"].strip().splitlines()[-1])
    return {"wall_s": run["wall_s"], "steps_per_s": _steady_rate(out["interval_steps_per_s"]),
            "val": out["exact_val_loss"], "last_val_estimate": out["val_loss"],
            "torch_version": out["torch_version"], "torch_threads": out["torch_threads"]}


def run_against_torch(plan: TorchPlan, data: str, platform: str | None = None, log=_log) -> dict:
    """jaxbigram and the PyTorch reference, whole runs side by side (A B A B …, each a fresh process): medians and
    per-pair ratios, flat keys documented in docs/performance.md. A ratio above 1 means jaxbigram is faster."""
    from .. import config as config_lib

    from ..data import check_length_for, load_corpus

    require_torch()
    cfgs = {kind: config_lib.load(name, plan.overrides) for kind, name in
            (("bigram", plan.bigram_config), ("gpt", plan.gpt_config))}
    check_length_for(load_corpus(data), "bench --against torch", {  # up front: both sides need the same windows
        f"the {getattr(plan, kind + '_config')} preset": (cfg.train.block_size, cfg.data.val_fraction)
        for kind, cfg in cfgs.items()})
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
                    "load_avg_start": _load_average(), "vs_torch_pairs": plan.pairs,
                    "bigram_config": plan.bigram_config, "gpt_config": plan.gpt_config}
    runs: dict = {(side, kind): [] for side in ("jax", "torch") for kind in cfgs}
    with tempfile.TemporaryDirectory(prefix="jaxbigram-vs-torch-") as tmp:
        for pair in range(plan.pairs):
            for kind, cfg in cfgs.items():
                tag = f"{kind}-{pair}"
                jax_run = _jax_whole_run(getattr(plan, f"{kind}_config"), plan.overrides, data, Path(tmp), tag,
                                         platform)
                torch_run = _torch_whole_run(cfg, data, Path(tmp), tag)
                runs["jax", kind].append(jax_run)
                runs["torch", kind].append(torch_run)
                log(f"pair {pair + 1}/{plan.pairs} {kind}: jaxbigram {jax_run['wall_s']:.1f} s "
                    f"({jax_run['steps_per_s'] or 0:,.1f} steps/s), PyTorch {torch_run['wall_s']:.1f} s "
                    f"({torch_run['steps_per_s'] or 0:,.1f} steps/s)")
    last_torch = runs["torch", "gpt"][-1]
    report.update(torch_version=last_torch["torch_version"], torch_threads=last_torch["torch_threads"])
    for kind in cfgs:
        jax_runs, torch_runs = runs["jax", kind], runs["torch", kind]
        run_ratios = [t["wall_s"] / j["wall_s"] for j, t in zip(jax_runs, torch_runs)]
        step_ratios = [j["steps_per_s"] / t["steps_per_s"] for j, t in zip(jax_runs, torch_runs)
                       if j["steps_per_s"] and t["steps_per_s"]]
        report.update({
            f"{kind}_run_s_median": statistics.median(j["wall_s"] for j in jax_runs),
            f"torch_{kind}_run_s_median": statistics.median(t["wall_s"] for t in torch_runs),
            f"{kind}_vs_torch_run_ratio": statistics.median(run_ratios),
            f"{kind}_vs_torch_run_ratios": [round(r, 3) for r in run_ratios],
            f"{kind}_steps_per_s_median": statistics.median(j["steps_per_s"] for j in jax_runs),
            f"torch_{kind}_steps_per_s_median": statistics.median(t["steps_per_s"] for t in torch_runs),
            f"{kind}_vs_torch_step_ratio": statistics.median(step_ratios) if step_ratios else None,
            f"{kind}_vs_torch_step_ratios": [round(r, 3) for r in step_ratios],
            f"{kind}_val_estimate": statistics.median(j["last_val_estimate"] for j in jax_runs),
            f"torch_{kind}_val_estimate": statistics.median(t["last_val_estimate"] for t in torch_runs),
        })
    report.update(gpt_val=statistics.median(j["val"] for j in runs["jax", "gpt"]),
                  torch_gpt_val=statistics.median(t["val"] for t in runs["torch", "gpt"]),
                  load_avg_end=_load_average())
    return report


# ----------------------------------------------------------------------------- --sweeps: a sweep next to its single runs

@dataclass(frozen=True)
class SweepCase:
    """A sweep of ``seeds`` members of ``preset`` timed against one single run (``versus="single"``) or against
    ``seeds`` single runs one after the other (``"sequential"``)."""

    name: str  # in the keys: sweep_{name}_{seeds}_vs_{versus}
    preset: str
    seeds: int
    versus: str = "single"
    pairs: int = 3
    overrides: tuple = ()

    @property
    def prefix(self) -> str:
        return f"sweep_{self.name}_{self.seeds}"


@dataclass(frozen=True)
class SweepPlan:
    """What ``bench --sweeps`` runs (each run a fresh process, compile cache off on both sides)."""

    cases: tuple = (SweepCase("bigram", "default", 64), SweepCase("gpt_tiny", "gpt-tiny", 16),
                    SweepCase("gpt_cpu", "gpt-cpu", 4, versus="sequential", pairs=1))
    # both sides: no samples at evals (a sweep prints none)
    overrides: tuple = ("eval.sample_chars=0",)
    # in this process, one compiled chunk of member steps timed two ways (preset, members, steps per call):
    step_bigram: tuple = ("default", 64, 50)  # the logits' cross-entropy vs Bigram.fast_loss, one device
    step_gpt: tuple = ("gpt-cpu", 4, 10)  # members on one device vs split over two
    step_repeats: int = 3


def _time_member_chunks(preset: str, members: int, steps: int, repeats: int, corpus, variants: dict) -> dict:
    """Seconds per step of ``sweep.members_chunk`` for each variant (name → (loss_fn or None, devices)), called
    alternately (A B A B …) after one warm-up call each; medians."""
    import jax

    from .. import config as config_lib
    from .. import data as data_lib
    from .. import models, sweep

    cfg = config_lib.load(preset)
    train_np, _ = data_lib.split(corpus.ids, cfg.data.val_fraction)
    model = models.build(cfg.model, corpus.tokenizer.vocab_size, cfg.train.block_size)
    plan = sweep.Plan((cfg,), ("base",), members)
    setups = {}
    for name, (loss_fn, devices) in variants.items():
        split = sweep.member_sharding(devices)
        keys, hparams = sweep.member_inputs(plan, split)
        data = jax.device_put(train_np, jax.sharding.NamedSharding(split.mesh, jax.sharding.PartitionSpec()))
        setups[name] = [sweep.member_init(model, cfg.train, split)(keys["init"]), hparams, keys, data, loss_fn]

    def call(name):
        states, hparams, keys, data, loss_fn = setups[name]
        t0 = time.perf_counter()
        states, losses = sweep.members_chunk(states, hparams, keys, data, steps, model=model, cfg=cfg.train,
                                             max_steps=steps, loss_fn=loss_fn)
        jax.block_until_ready((states, losses))
        setups[name][0] = states
        return (time.perf_counter() - t0) / steps

    for name in setups:  # compile and warm up
        call(name)
    times = {name: [] for name in setups}
    for _ in range(repeats):
        for name in setups:
            times[name].append(call(name))
    return {name: statistics.median(t) for name, t in times.items()}


def sweep_step_ratios(plan: SweepPlan, corpus, log=_log) -> dict:
    """What makes a sweep fast, measured side by side in this process: a bigram sweep's step with the logits'
    cross-entropy against ``Bigram.fast_loss`` (the pair counts), and a GPT sweep's step with its members on one
    device against split over two (None with a single device)."""
    import jax

    from .. import config as config_lib
    from .. import models

    preset, members, steps = plan.step_bigram
    bigram = models.build(config_lib.load(preset).model, corpus.tokenizer.vocab_size, 1)
    devices = jax.local_devices()
    bi = _time_member_chunks(preset, members, steps, plan.step_repeats, corpus,
                             {"logits": (None, devices[:1]), "fast_loss": (bigram.fast_loss, devices[:1])})
    log(f"{members} {preset} members per step: logits' cross-entropy {bi['logits'] * 1e3:.2f} ms, fast_loss "
        f"{bi['fast_loss'] * 1e3:.3f} ms")
    report = {"step_bigram_preset": preset, "step_bigram_members": members,
              "step_bigram_logits_ms": bi["logits"] * 1e3, "step_bigram_fast_loss_ms": bi["fast_loss"] * 1e3,
              "step_bigram_fast_loss_speedup": bi["logits"] / bi["fast_loss"]}
    preset, members, steps = plan.step_gpt
    variants = {"one_device": (None, devices[:1])}
    if len(devices) > 1 and members % 2 == 0:
        variants["two_devices"] = (None, devices[:2])
    gpt = _time_member_chunks(preset, members, steps, plan.step_repeats, corpus, variants)
    two = gpt.get("two_devices")
    log(f"{members} {preset} members per step: one device {gpt['one_device'] * 1e3:.1f} ms, two devices "
        f"{'-' if two is None else f'{two * 1e3:.1f} ms'}")
    report.update({"step_gpt_preset": preset, "step_gpt_members": members,
                   "step_gpt_one_device_ms": gpt["one_device"] * 1e3,
                   "step_gpt_two_devices_ms": None if two is None else two * 1e3,
                   "step_gpt_two_devices_speedup": None if two is None else gpt["one_device"] / two})
    return report


def _timed_cli(command: str, preset: str, overrides: tuple, data: str, workdir: Path, platform: str | None,
               *extra: str) -> dict:
    """``jaxbigram COMMAND --config PRESET --fresh`` in a fresh process, compile cache off: wall seconds and stdout."""
    argv = _jaxbigram(command, "--config", preset, "--fresh", "--workdir", str(workdir), "--data", data,
                      *[a for o in overrides for a in ("--set", o)], *extra,
                      *(["--platform", platform] if platform else []))
    run = run_measured(argv, _child_env(JAXBIGRAM_COMPILE_CACHE="off"))
    if run["rc"] != 0:
        raise RuntimeError(f"{command} --config {preset} failed (exit {run['rc']}):\n{run['stderr'][-2000:]}")
    return run


def run_sweeps(plan: SweepPlan, data: str, platform: str | None = None, pairs: int | None = None,
               log=_log) -> dict:
    """Each case's sweep next to its single run(s), alternating (baseline, sweep, baseline, sweep, …): per-pair
    ratios sweep time / baseline time and their median (below 1: the sweep took less time), flat keys documented in
    docs/performance.md. ``pairs`` overrides every case's."""
    from .. import config as config_lib
    from ..data import check_length_for, load_corpus

    cfgs = {case.preset: config_lib.load(case.preset, plan.overrides + case.overrides) for case in plan.cases}
    cfgs.update({preset: config_lib.load(preset) for preset, _, _ in (plan.step_bigram, plan.step_gpt)})
    corpus = load_corpus(data)
    check_length_for(corpus, "bench --sweeps", {  # up front, in one line: what `train` would refuse
        f"the {preset} preset": (cfg.train.block_size, cfg.data.val_fraction) for preset, cfg in cfgs.items()})
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
                    "load_avg_start": _load_average()}
    report.update(sweep_step_ratios(plan, corpus, log))
    with tempfile.TemporaryDirectory(prefix="jaxbigram-bench-sweeps-") as tmp:
        for case in plan.cases:
            overrides = plan.overrides + case.overrides
            n_pairs, key = pairs or case.pairs, f"{case.prefix}_vs_{case.versus}"
            baselines, sweeps, single_vals, sweep_vals = [], [], [], []
            for pair in range(n_pairs):
                seconds = 0.0
                for i in range(case.seeds if case.versus == "sequential" else 1):
                    run = _timed_cli("train", case.preset, overrides + (f"train.seed={1337 + i}",), data,
                                     Path(tmp) / f"{case.name}-single-{pair}-{i}", platform)
                    seconds += run["wall_s"]
                    exact = re.search(r"val ([\d.]+) nats", run["stdout"])
                    single_vals.append(float(exact.group(1)) if exact else math.nan)
                baselines.append(seconds)
                run = _timed_cli("sweep", case.preset, overrides + ("train.seed=1337",), data,
                                 Path(tmp) / f"{case.name}-sweep-{pair}", platform, "--seeds", str(case.seeds),
                                 "--json")
                sweeps.append(run["wall_s"])
                sweep_vals.append(statistics.fmean(json.loads(run["stdout"].strip().splitlines()[-1])["val_loss"]))
                log(f"{key} pair {pair + 1}/{n_pairs}: {case.versus} {baselines[-1]:.1f} s, sweep of {case.seeds} "
                    f"{sweeps[-1]:.1f} s (ratio {sweeps[-1] / baselines[-1]:.2f})")
            ratios = [s / b for s, b in zip(sweeps, baselines)]
            report.update({
                key: statistics.median(ratios), f"{key}_ratios": [round(r, 3) for r in ratios],
                f"{case.prefix}_preset": case.preset, f"{case.prefix}_pairs": n_pairs,
                f"{case.prefix}_s_median": statistics.median(sweeps),
                f"{case.prefix}_{case.versus}_s_median": statistics.median(baselines),
                f"{case.prefix}_val_mean": statistics.median(sweep_vals),
                f"{case.prefix}_single_val": statistics.median(single_vals),
            })
    report["load_avg_end"] = _load_average()
    return report
