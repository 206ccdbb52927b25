"""``bench`` (the speed harness): fused training next to a naive jit-per-step loop, sampling, data prep and whole
preset runs, and the GPT's figures (``gpt_speed``); the flat report documented in docs/performance.md."""

from __future__ import annotations

import json
import os
import platform as platform_lib
import sys
import time
from dataclasses import dataclass

from . import synthetic, timing
from .timing import median_rate, time_fused, time_step_loop
from .gpt_speed import bench_gpt


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
    peak_matmul_n: int = 2048  # the n×n float32 matmul a CPU's peak is measured on


FULL = Plan()


QUICK = Plan(repeats=3, small_calls=5, large_calls=1, naive_steps=1000, notes_repeats=1, corpus_mb=20.0,
             data_repeats=1, gpt_calls=1, gpt_naive_steps=20, gpt_samples=(("1_stream", 1, 64), ("64_streams", 64, 64)),
             gpt_run_repeats=0,
             gpt_large_config=None)



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
    state, compile_s, seconds = time_fused(_train_state(vocab_size), train_ids, batch, block, steps_per_call, calls,
                                            repeats)
    steps = steps_per_call * calls
    return {"steps_per_s": median_rate(steps, seconds), "tokens_per_s": median_rate(steps * batch * block, seconds),
            "compile_s": compile_s, "raw_s": seconds, "steps": steps, "params": state.params}


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

    seconds = time_step_loop(run, _train_state(vocab_size), 50, steps, repeats)
    return {"steps_per_s": median_rate(steps, seconds), "tokens_per_s": median_rate(steps * batch * block, seconds),
            "raw_s": seconds, "steps": steps}



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
    return {"chars_per_s": median_rate(streams * chars, seconds), "raw_s": seconds}


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
    return {"chars_per_s": median_rate(chars, seconds), "raw_s": seconds}



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
    peak = timing.peak_rss_mb()  # before the check below pages the whole memory map in
    import numpy as np

    ok = cached.tokenizer == first.tokenizer and np.array_equal(cached.ids, first.ids)
    print(json.dumps({"first_s": first_s, "cached_s": cached_s, "ok": bool(ok),
                      "memory_mapped": isinstance(cached.ids, np.memmap), "vocab_size": first.tokenizer.vocab_size,
                      "peak_rss_mb": peak}))


def bench_data_prep(megabytes: float, repeats: int) -> dict:
    """Data prep MB/s on a generated corpus: first run (read, hash, encode, write the .npy cache) and cached run."""
    results = []
    with timing.scratch("jaxbigram-bench-data-") as tmp:
        path = tmp / "corpus.txt"
        size = synthetic.make_corpus(str(path), int(megabytes * 1e6), vocab=100)["bytes"]
        for _ in range(repeats):
            for stale in tmp.glob("corpus.txt.jaxbigram-*"):
                stale.unlink()
            run = timing.run_measured([sys.executable, "-m", "jaxbigram.bench", "data-prep", str(path)],
                                      timing.child_env(XDG_CACHE_HOME=str(tmp / "cache")))
            if run["rc"] != 0:
                raise RuntimeError(f"data prep failed:\n{run['stderr'][-2000:]}")
            results.append(json.loads(run["stdout"].strip().splitlines()[-1]))
            if not results[-1]["ok"]:
                raise RuntimeError("data prep: the cached corpus differs from the freshly encoded one")
    first = [r["first_s"] for r in results]
    cached = [r["cached_s"] for r in results]
    return {"mb": size / 1e6, "first_mb_per_s": median_rate(size / 1e6, first),
            "cached_mb_per_s": median_rate(size / 1e6, cached), "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "memory_mapped": all(r["memory_mapped"] for r in results), "vocab_size": results[0]["vocab_size"],
            "raw_first_s": first, "raw_cached_s": cached}



# ----------------------------------------------------------------------------- everything

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
        "cpu_model": timing.cpu_model(), "cpu_count": os.cpu_count(), "python": platform_lib.python_version(),
        "quick": plan.repeats < FULL.repeats, "repeats": plan.repeats, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_avg_start": timing.load_average(),
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
    notes = timing.preset_run(plan.notes_config, corpus.path, plan.notes_repeats, platform, log)
    report.update({"notes_config": plan.notes_config, "notes_run_s": notes["cold_s"],
                   "notes_run_cpu_s": notes["cold_cpu_s"], "notes_run_warm_cache_s": notes["warm_s"],
                   "notes_run_warm_cache_cpu_s": notes["warm_cpu_s"], "notes_run_peak_rss_mb": notes["peak_rss_mb"]})
    raw.update(notes_run_s=notes["raw_cold_s"], notes_run_warm_cache_s=notes["raw_warm_s"])

    report.update(bench_gpt(plan, corpus, platform, log))

    report["peak_rss_mb"] = timing.peak_rss_mb()
    report["load_avg_end"] = timing.load_average()
    report["raw_seconds"] = raw
    return report

