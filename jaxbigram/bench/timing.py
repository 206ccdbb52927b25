"""The bench's one timing helper: fresh-process runs and their cleanup, in-process timers, A B A B alternation,
medians.

Every figure is measured after a warm-up and is the median of several repeats (wall clock, ``time.perf_counter``).
Timed work always ends with ``block_until_ready`` so asynchronous dispatch cannot flatter a number. Whole runs
(preset trainings, data prep, the PyTorch reference) run as fresh ``python -m …`` processes so start-up, imports and
first-touch memory are counted; their peak memory is the kernel's ``ru_maxrss`` of that process (``os.wait4``).

A child dies with the bench: a SIGINT or SIGTERM while one runs kills and reaps it, and a ``scratch`` folder is
removed, before the signal goes on to whatever handled it before (the CLI's one-line stop).
"""

from __future__ import annotations

import os
import platform as platform_lib
import re
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable, Iterator

from ..signals import cleanup_on_signal, signals_held


def median_rate(work: float, seconds: list[float]) -> float:
    """``work`` per second at the median of ``seconds``."""
    return work / statistics.median(seconds)


def log(message: str) -> None:
    """A progress line on stderr (every harness's default ``log``)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


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


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform_lib.processor() or platform_lib.machine()


def load_average() -> float | None:
    """The 1-minute load average: on a shared machine, how much else was running."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary folder for the block: removed at its end, and when SIGINT or SIGTERM stops the bench inside it."""
    made: list[str] = []

    def remove():
        for path in made:
            shutil.rmtree(path, ignore_errors=True)

    with cleanup_on_signal(remove):
        with signals_held():
            made.append(tempfile.mkdtemp(prefix=prefix))
        try:
            yield Path(made[0])
        finally:
            remove()


# ----------------------------------------------------------------------------- fresh processes

def jaxbigram_argv(*args: str) -> list[str]:
    """The command line of a fresh ``jaxbigram`` process (this interpreter, this package)."""
    return [sys.executable, "-m", "jaxbigram", *args]


def child_env(**extra) -> dict:
    """The environment of a child: this one, with this package importable first (a checkout or an install)."""
    root = str(Path(__file__).resolve().parent.parent.parent)
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])), **extra)


# The launcher between the bench and a measured child. Linux carries a process's peak-memory mark across exec, and
# a spawned child starts with its parent's (a bench or pytest process of hundreds of MiB): so a small fresh Python
# (~10 MiB) starts the child, waits for it and writes its wall seconds, CPU seconds, ``ru_maxrss`` (KiB) and exit
# code to fd 3. The child gets the signal mask the launcher got, SIGPIPE and SIGXFSZ at their default (as
# ``subprocess`` starts one; Python ignores both), and no fd 3.
_LAUNCHER = """
import os, signal, sys, time
t0 = time.perf_counter()
pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                      file_actions=[(os.POSIX_SPAWN_CLOSE, 3)])
_, status, usage = os.wait4(pid, 0)
os.write(3, ("%r %r %d %d" % (time.perf_counter() - t0, usage.ru_utime + usage.ru_stime, usage.ru_maxrss,
                              os.waitstatus_to_exitcode(status))).encode())
"""


def run_measured(argv: list[str], env: dict) -> dict:
    """Run ``argv`` to its end: wall seconds from spawn to exit, its CPU seconds (user + system), its own peak
    resident memory in MiB (the kernel's ``ru_maxrss`` of that process alone, through ``_LAUNCHER``), exit code,
    stdout and stderr. The child never outlives this call: a SIGINT or SIGTERM (or an exception) while it runs kills
    it and its launcher (one process group) and reaps them first."""
    pid = None

    def stop():
        nonlocal pid
        if pid is not None:
            with suppress(ProcessLookupError, ChildProcessError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            pid = None

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.TemporaryFile("w+") as report, cleanup_on_signal(stop):
        with signals_held() as mask:  # the launcher starts with this process's signal mask, in a group of its own
            pid = os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", "-c", _LAUNCHER, *argv], env,
                                 setsigmask=mask, setpgroup=0,
                                 file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                                               (os.POSIX_SPAWN_DUP2, err.fileno(), 2),
                                               (os.POSIX_SPAWN_DUP2, report.fileno(), 3)])
        try:
            _, status = os.waitpid(pid, 0)
        except BaseException:
            stop()
            raise
        pid = None  # reaped
        out.seek(0)
        err.seek(0)
        report.seek(0)
        fields = report.read().split()
        if len(fields) != 4 or status != 0:  # the launcher itself failed: argv[0] not found, or it was killed
            raise OSError(f"could not run {argv[0]!r}: {err.read().strip().splitlines()[-1:] or status}")
        seconds, cpu, maxrss_kib, rc = float(fields[0]), float(fields[1]), int(fields[2]), int(fields[3])
        return {"wall_s": seconds, "cpu_s": cpu, "peak_rss_mb": maxrss_kib / 1024.0, "rc": rc,
                "stdout": out.read(), "stderr": err.read()}


def timed_cli(command: str, preset: str, overrides: tuple, data: str, workdir: Path, platform: str | None,
              *extra: str) -> dict:
    """``jaxbigram COMMAND --config PRESET --fresh`` in a fresh process, compile cache off (cold, as a first run):
    ``run_measured``'s figures; a failed run raises."""
    argv = jaxbigram_argv(command, "--config", preset, "--fresh", "--workdir", str(workdir), "--data", data,
                          *[a for o in overrides for a in ("--set", o)], *extra,
                          *(["--platform", platform] if platform else []))
    run = run_measured(argv, child_env(JAXBIGRAM_COMPILE_CACHE="off"))
    if run["rc"] != 0:
        raise RuntimeError(f"{command} --config {preset} failed (exit {run['rc']}):\n{run['stderr'][-2000:]}")
    return run


def exact_val(stdout: str) -> float | None:
    """The exact val loss a ``train`` prints (``… val 2.4843 nats …``), or None."""
    exact = re.search(r"val ([\d.]+) nats", stdout)
    return float(exact.group(1)) if exact else None


def preset_run(preset: str, data: str, repeats: int, platform: str | None, log) -> dict:
    """Wall time of ``jaxbigram train --config PRESET --fresh`` from process start to exit (final checkpoint
    written), with an empty compilation cache (cold) and then with the cache the cold run filled (warm)."""
    cold, warm, cold_cpu, warm_cpu, rss, final = [], [], [], [], 0.0, ""
    with scratch("jaxbigram-bench-") as tmp:
        for i in range(repeats):
            argv = jaxbigram_argv("train", "--config", preset, "--fresh", "--workdir", str(tmp / f"run-{i}"),
                                  "--data", data, *(["--platform", platform] if platform else []))
            env = child_env(JAXBIGRAM_COMPILE_CACHE=str(tmp / f"xla-{i}"))
            for bucket, cpu_bucket in ((cold, cold_cpu), (warm, warm_cpu)):
                run = run_measured(argv, env)
                if run["rc"] != 0:
                    raise RuntimeError(f"{preset} run failed (exit {run['rc']}):\n{run['stderr'][-2000:]}")
                bucket.append(run["wall_s"])
                cpu_bucket.append(run["cpu_s"])
                rss = max(rss, run["peak_rss_mb"])
                final = run["stdout"]
            log(f"{preset} run {i + 1}/{repeats}: cold cache {cold[-1]:.2f} s, warm cache {warm[-1]:.2f} s")
    return {"cold_s": statistics.median(cold), "warm_s": statistics.median(warm), "peak_rss_mb": rss,
            "cold_cpu_s": statistics.median(cold_cpu), "warm_cpu_s": statistics.median(warm_cpu),
            "exact_val_loss": exact_val(final), "raw_cold_s": cold, "raw_warm_s": warm}


def ab_pairs(rounds: int, first: Callable, second: Callable, log=None) -> tuple[list, list]:
    """A B A B …: ``first(i)`` then ``second(i)`` for each round ``i`` (then ``log(i, a, b)``); both lists of
    results."""
    firsts, seconds = [], []
    for i in range(rounds):
        firsts.append(first(i))
        seconds.append(second(i))
        if log is not None:
            log(i, firsts[-1], seconds[-1])
    return firsts, seconds


# ----------------------------------------------------------------------------- in this process

def alternate(calls: dict, repeats: int) -> dict:
    """Each of ``calls`` (name → a function that runs once and returns its seconds) once to compile and warm up, then
    ``repeats`` rounds of all of them in turn (A B A B …): the median seconds of each."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(call())
    return {name: statistics.median(t) for name, t in times.items()}


def time_step_loop(run, state, warmup: int, steps: int, repeats: int) -> list[float]:
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


def time_fused(state, train_ids, batch: int, block: int, steps_per_call: int, calls: int, repeats: int, dp=None):
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
