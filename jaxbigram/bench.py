"""``python run.py bench``: how fast training, sampling and data prep run on this machine, next to a naive JAX loop.

Every figure is measured after a warm-up and is the median of several repeats (wall clock, ``time.perf_counter``).
Timed work always ends with ``block_until_ready`` so asynchronous dispatch cannot flatter a number. Whole runs
(the notes config, data prep) run in fresh subprocesses so start-up, imports and first-touch memory are counted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform as platform_lib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTES_CONFIG = REPO_ROOT / "configs" / "notes.toml"


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
    notes_config: str = str(NOTES_CONFIG)
    notes_repeats: int = 3
    corpus_mb: float = 100.0
    data_repeats: int = 3
    extra_args: tuple[str, ...] = field(default=())  # passed to the notes-run subprocess (e.g. --data)


FULL = Plan()
QUICK = Plan(repeats=3, small_calls=5, large_calls=1, naive_steps=1000, notes_repeats=1, corpus_mb=20.0,
             data_repeats=1)


def replace_plan(plan: Plan, **changes) -> Plan:
    """A copy of ``plan`` with some fields changed."""
    return dataclasses.replace(plan, **changes)


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


def _cli_with_peak(argv: list[str], peak_file: str) -> int:
    """``cli.main(argv)`` in this (child) process, then its peak memory written to ``peak_file``."""
    from .cli import main

    try:
        return main(argv)
    finally:
        Path(peak_file).write_text(str(peak_rss_mb()))


def _pythonpath() -> str:
    """PYTHONPATH for child processes: the folder holding this jaxbigram first, so they import the same code."""
    return os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- training

def _train_state(vocab_size: int, seed: int = 0):
    import jax

    from .config import TrainConfig
    from .train import create_train_state

    return create_train_state(jax.random.key(seed), vocab_size, TrainConfig(learning_rate=1e-3))


def bench_train(train_ids, vocab_size: int, shape, steps_per_call: int, calls: int, repeats: int) -> dict:
    """Fused ``train_chunk`` at batch × block = ``shape``: compile time, then steps/s and tokens/s."""
    import jax
    import jax.numpy as jnp

    from .train import train_chunk

    batch, block = shape
    data = jnp.asarray(train_ids)
    key = jax.random.key(1)
    state = _train_state(vocab_size)
    t0 = time.perf_counter()
    compiled = train_chunk.lower(state, data, key, steps_per_call, batch_size=batch, block_size=block,
                                 max_steps=steps_per_call).compile()
    compile_s = time.perf_counter() - t0
    state, losses = compiled(state, data, key, steps_per_call)  # warm-up
    losses.block_until_ready()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            state, losses = compiled(state, data, key, steps_per_call)
        losses.block_until_ready()
        seconds.append(time.perf_counter() - t0)
    steps = steps_per_call * calls
    return {"steps_per_s": _median_rate(steps, seconds), "tokens_per_s": _median_rate(steps * batch * block, seconds),
            "compile_s": compile_s, "raw_s": seconds, "steps": steps, "params": state.params}


def bench_naive_train(train_ids, vocab_size: int, shape, steps: int, repeats: int) -> dict:
    """The baseline: a plain ``jax.jit(train_step)`` called once per step from a Python loop (same batches)."""
    import jax
    import jax.numpy as jnp

    from .data import get_batch
    from .train import batch_key, train_step

    batch, block = shape
    data = jnp.asarray(train_ids)
    base_key = jax.random.key(1)
    step_fn = jax.jit(train_step)
    batch_fn = jax.jit(lambda s: get_batch(batch_key(base_key, s), data, batch, block))
    state = _train_state(vocab_size)

    def run(state, first, n):
        for s in range(first, first + n):
            x, y = batch_fn(s)
            state, loss = step_fn(state, x, y)
        loss.block_until_ready()
        return state

    state = run(state, 0, 50)  # warm-up and compile
    seconds, first = [], 50
    for _ in range(repeats):
        t0 = time.perf_counter()
        state = run(state, first, steps)
        seconds.append(time.perf_counter() - t0)
        first += steps
    return {"steps_per_s": _median_rate(steps, seconds), "tokens_per_s": _median_rate(steps * batch * block, seconds),
            "raw_s": seconds, "steps": steps}


# ----------------------------------------------------------------------------- the whole notes run

def _run_child(argv: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``argv``; returns (wall seconds from spawn to exit, the child's CPU seconds (user + system), the result)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        out.seek(0)
        err.seek(0)
        return (seconds, usage.ru_utime + usage.ru_stime,
                subprocess.CompletedProcess(argv, proc.returncode, out.read(), err.read()))


def bench_notes_run(plan: Plan, platform: str | None) -> dict:
    """Wall time of ``run.py train --config notes.toml --fresh`` from process start to exit (final checkpoint
    written), with an empty compilation cache (cold) and then with the cache the cold run filled (warm)."""
    cold, warm, cold_cpu, warm_cpu, rss = [], [], [], [], 0.0
    with tempfile.TemporaryDirectory(prefix="jaxbigram-bench-") as tmp:
        peak_file = str(Path(tmp) / "peak")
        for i in range(plan.notes_repeats):
            args = ["train", "--config", plan.notes_config, "--fresh", "--workdir", str(Path(tmp) / f"run-{i}"),
                    *plan.extra_args, *(["--platform", platform] if platform else [])]
            code = f"import sys; from jaxbigram.bench import _cli_with_peak; sys.exit(_cli_with_peak({args!r}, {peak_file!r}))"
            env = dict(os.environ, JAXBIGRAM_COMPILE_CACHE=str(Path(tmp) / f"xla-{i}"), PYTHONPATH=_pythonpath())
            for bucket, cpu_bucket in ((cold, cold_cpu), (warm, warm_cpu)):
                seconds, cpu, proc = _run_child([sys.executable, "-c", code], env)
                if proc.returncode != 0:
                    raise RuntimeError(f"notes run failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
                bucket.append(seconds)
                cpu_bucket.append(cpu)
                rss = max(rss, float(Path(peak_file).read_text()))
            _log(f"notes run {i + 1}/{plan.notes_repeats}: cold cache {cold[-1]:.2f} s, warm cache {warm[-1]:.2f} s")
    return {"cold_s": statistics.median(cold), "warm_s": statistics.median(warm), "peak_rss_mb": rss,
            "cold_cpu_s": statistics.median(cold_cpu), "warm_cpu_s": statistics.median(warm_cpu),
            "raw_cold_s": cold, "raw_warm_s": warm}


# ----------------------------------------------------------------------------- sampling

def bench_sampling(params, streams: int, chars: int, repeats: int) -> dict:
    """``generate`` from a trained table: characters per second over all streams (CDF built inside each call)."""
    import jax

    from .generate import generate

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

    from .model import logits_table

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

_ALPHABET = ("abcdefghijklmnopqrstuvwxyz" * 3 + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "     ,.;:!?'-\n\n"
             + "éèàçüößñ" + "αβγδλ" + "中文字" + "😀🎉" + "\r\n")


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """A generated UTF-8 text of about ``megabytes`` MB (mostly ASCII, with accents, Greek, CJK, emoji, CRLF)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    codepoints = np.frombuffer(_ALPHABET.encode("utf-32-le"), dtype="<u4")
    chars = int(min(1 << 20, max(1000, megabytes * 1e6 / 1.1)))  # ~1.1 UTF-8 bytes per character
    text = codepoints[rng.integers(0, len(codepoints), chars)].tobytes().decode("utf-32-le")
    copies = max(1, round(megabytes * 1e6 / len(text.encode("utf-8"))))
    size = 0
    with open(path, "wb") as f:
        for i in range(copies):
            chunk = (text[i * 7919 % len(text):] + text[: i * 7919 % len(text)]).encode("utf-8")  # no two alike
            size += f.write(chunk)
    return size


def _data_prep_child(path: str) -> None:
    """In a fresh process: time ``load_corpus`` twice (first run encodes and writes the cache; second reads it)."""
    from .data import load_corpus

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
        size = write_corpus(path, megabytes)
        for _ in range(repeats):
            for stale in Path(tmp).glob("corpus.txt.jaxbigram-*"):
                stale.unlink()
            code = f"from jaxbigram.bench import _data_prep_child; _data_prep_child({str(path)!r})"
            env = dict(os.environ, PYTHONPATH=_pythonpath(), XDG_CACHE_HOME=str(Path(tmp) / "cache"))
            proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"data prep failed:\n{proc.stderr[-2000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            if not results[-1]["ok"]:
                raise RuntimeError("data prep: the cached corpus differs from the freshly encoded one")
    first = [r["first_s"] for r in results]
    cached = [r["cached_s"] for r in results]
    return {"mb": size / 1e6, "first_mb_per_s": _median_rate(size / 1e6, first),
            "cached_mb_per_s": _median_rate(size / 1e6, cached), "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "memory_mapped": all(r["memory_mapped"] for r in results), "vocab_size": results[0]["vocab_size"],
            "raw_first_s": first, "raw_cached_s": cached}


# ----------------------------------------------------------------------------- everything

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


def run(plan: Plan, corpus, platform: str | None = None) -> dict:
    """Every measurement of ``plan``; returns the flat JSON-ready report documented in the README."""
    import jax

    from .data import split

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

    _log(f"training at {b}x{t} (fused train_chunk)")
    small = bench_train(train_ids, vocab, plan.small_shape, plan.small_steps_per_call, plan.small_calls, plan.repeats)
    _log(f"training at {b}x{t}: {small['steps_per_s']:,.0f} steps/s; naive jit-per-step loop next")
    naive = bench_naive_train(train_ids, vocab, plan.small_shape, plan.naive_steps, plan.repeats)
    _log(f"naive loop: {naive['steps_per_s']:,.0f} steps/s; training at {lb}x{lt} next")
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

    _log("sampling")
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

    _log(f"data prep on a generated {plan.corpus_mb:g} MB UTF-8 corpus")
    prep = bench_data_prep(plan.corpus_mb, plan.data_repeats)
    report.update({"data_prep_mb": prep["mb"], "data_prep_vocab_size": prep["vocab_size"],
                   "data_prep_first_mb_per_s": prep["first_mb_per_s"],
                   "data_prep_cached_mb_per_s": prep["cached_mb_per_s"], "data_prep_peak_rss_mb": prep["peak_rss_mb"],
                   "data_prep_cache_memory_mapped": prep["memory_mapped"]})
    raw.update(data_prep_first_s=prep["raw_first_s"], data_prep_cached_s=prep["raw_cached_s"])

    _log(f"whole notes run ({Path(plan.notes_config).name}) in subprocesses")
    notes = bench_notes_run(plan, platform)
    report.update({"notes_config": Path(plan.notes_config).name, "notes_run_s": notes["cold_s"],
                   "notes_run_cpu_s": notes["cold_cpu_s"], "notes_run_warm_cache_s": notes["warm_s"],
                   "notes_run_warm_cache_cpu_s": notes["warm_cpu_s"], "notes_run_peak_rss_mb": notes["peak_rss_mb"]})
    raw.update(notes_run_s=notes["raw_cold_s"], notes_run_warm_cache_s=notes["raw_warm_s"])

    report["peak_rss_mb"] = peak_rss_mb()
    report["load_avg_end"] = _load_average()
    report["raw_seconds"] = raw
    return report


def format_table(report: dict) -> str:
    """The report as an aligned two-column text table (what ``bench`` prints without ``--json``)."""
    rows = [(k, v) for k, v in report.items() if k not in ("raw_seconds", "devices")]
    width = max(len(k) for k, _ in rows)
    lines = []
    for key, value in rows:
        if isinstance(value, float):
            value = f"{value:,.0f}" if value >= 1000 else f"{value:.3g}" if value < 10 else f"{value:,.1f}"
        lines.append(f"{key.ljust(width)}  {value}")
    return "\n".join(lines)
