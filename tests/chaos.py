"""Chaos test for crash-safe training: ``kill -9`` a ``train`` run N times at random moments, resume each time, and
check that the final parameters are bit-identical to an uninterrupted run with the same config and seed.

    python tests/chaos.py                 # 20 kills (default), tiny config, tinyshakespeare from $JAXBIGRAM_DATA
    python tests/chaos.py --kills 5 --steps 1500 --seed 3

Each round starts ``python run.py train`` in the same workdir, waits until the run says where it starts
("resuming from step S", or "step 0:" on a fresh start) and checks S is the newest complete checkpoint on disk, then
sends SIGKILL after a random delay (mid-chunk, mid-evaluation or mid-save: checkpoints are frequent, so many kills land
inside orbax's save or its deletion of old steps). After each kill it records what was left on disk (half-written
temp directories, trash) and restores every listed step to prove none is damaged. A last run goes to the end; its
whole TrainState is compared with the uninterrupted run's. Prints a summary; exit code 0 only if everything held.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TMP_MARK = ".orbax-checkpoint-tmp"
# Small chunks, frequent evaluations and checkpoints: the run spends most of its time saving, the riskiest moment.
OVERRIDES = ("train.steps_per_call=25", "eval.interval=50", "eval.iters=2", "checkpoint.interval=100",
             "checkpoint.keep=2")
_POSITION = re.compile(r"resuming from step (\d+)|^step (\d+): train loss")
_PROGRESS = re.compile(r"^step ([1-9]\d*): train loss")


@dataclass
class Result:
    kills: int = 0
    resumes_ok: int = 0
    resumes_checked: int = 0
    identical: bool = False
    finished_before_kill: int = 0
    leftovers: dict = field(default_factory=lambda: {"tmp_dirs": 0, "trash": 0, "deleting": 0})
    damaged_steps: int = 0  # listed steps that failed to restore after a kill (should stay 0)
    fallbacks: int = 0  # "checkpoint step N is damaged" notes printed by train on resume (should stay 0)
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.identical and self.resumes_ok == self.resumes_checked and self.damaged_steps == 0
                and self.fallbacks == 0 and not self.problems)


class _Run:
    """One ``train`` subprocess whose merged stdout/stderr lines are collected by a thread."""

    def __init__(self, argv: list[str], env: dict):
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self.lines: list[str] = []
        self._ended = False
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern, timeout: float) -> int | None:
        """The first number of the next line matching ``pattern``; None if the run ended or timed out first."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            try:
                line = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if line is None:
                self._ended = True
                return None
            self.lines.append(line)
            match = pattern.search(line)
            if match:
                return int(next(g for g in match.groups() if g is not None))
        return None

    def wait_position(self, timeout: float) -> int | None:
        """The step the run starts from, once it says so ("resuming from step S" or "step 0:")."""
        return self.wait_for(_POSITION, timeout)

    def finish(self, kill: bool) -> int:
        if kill and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait()
        self._thread.join()
        while not self._ended:
            line = self._queue.get()
            if line is None:
                break
            self.lines.append(line)
        return code


def _command(workdir: Path, data: str, steps: int, seed: int, fresh: bool) -> list[str]:
    argv = [sys.executable, str(ROOT / "run.py"), "train", "--config", "tiny",
            "--data", data, "--workdir", str(workdir), "--steps", str(steps), "--seed", str(seed)]
    for item in OVERRIDES:
        argv += ["--set", item]
    return argv + (["--fresh"] if fresh else [])


def _interval(section: str) -> int:
    return int(next(o for o in OVERRIDES if o.startswith(f"{section}.interval=")).split("=")[1])


def _environment(cache_dir: str | None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    env.setdefault("JAX_PLATFORMS", "cpu")
    if cache_dir:  # the persistent compilation cache makes each restart ~2 s cheaper; the compiled code is the same
        env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def inspect_leftovers(workdir: Path) -> dict:
    """What a kill left on disk: half-written orbax temp dirs, the trash of dropped steps, an unfinished --fresh."""
    ckpt = workdir / "checkpoints"
    names = [p.name for p in ckpt.iterdir()] if ckpt.is_dir() else []
    return {"tmp_dirs": sum(TMP_MARK in n for n in names), "trash": int("_trash" in names),
            "deleting": sum(p.name.startswith(".checkpoints-deleting-") for p in workdir.iterdir())}


def intact_steps(workdir: Path) -> tuple[list[int], list[int]]:
    """(steps listed, steps that fail to restore) — every listed step is restored and checksum-verified."""
    from jaxbigram.checkpoint import Store
    from jaxbigram.errors import CheckpointError

    if not (workdir / "checkpoints").is_dir():
        return [], []
    store = Store(workdir, read_only=True)
    steps, broken = store.steps(), []
    for step in steps:
        try:
            store.restore_params(step)
            store.read_meta(step)
        except CheckpointError:
            broken.append(step)
    store.close()
    return steps, broken


def final_state(workdir: Path, step: int):
    """Every array of the TrainState saved at ``step``, as numpy, keyed by path."""
    import numpy as np
    import orbax.checkpoint as ocp

    from jaxbigram.checkpoint import Store
    from jaxbigram.metadata import leaf_name
    import jax

    store = Store(workdir, read_only=True)
    restored = store.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    store.close()
    return {leaf_name(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(restored.state)[0]}


def run_chaos(kills: int = 20, steps: int = 3000, seed: int = 1337, data: str | None = None,
              workdir: Path | None = None, rng_seed: int = 0, cache_dir: str | None = None,
              log=print) -> Result:
    """Do it; returns the tallies (see ``Result``)."""
    import numpy as np

    data = data or os.environ.get("JAXBIGRAM_DATA")
    if not data:
        raise SystemExit("chaos: set JAXBIGRAM_DATA or pass --data")
    rng = random.Random(rng_seed)
    base = Path(workdir or tempfile.mkdtemp(prefix="jaxbigram-chaos-"))
    ref_dir, chaos_dir = base / "reference", base / "chaos"
    env = _environment(cache_dir)
    result = Result()

    # 1. the uninterrupted reference; the median time between its progress lines sets the kill jitter
    ref = _Run(_command(ref_dir, data, steps, seed, fresh=True), env)
    stamps = []
    while ref.wait_for(_POSITION if not stamps else _PROGRESS, timeout=300) is not None:
        stamps.append(time.perf_counter())
    code = ref.finish(kill=False)
    if code != 0 or len(stamps) < 3:
        raise SystemExit("chaos: the reference run failed:\n" + "\n".join(ref.lines[-20:]))
    interval, cycle = _interval("eval"), _interval("checkpoint")
    # one checkpoint cycle (chunks, evaluations and a save) lasts about this long
    gap = (stamps[-1] - stamps[1]) / (len(stamps) - 2) * max(1, cycle // interval)
    log(f"reference: {steps} steps, {gap * 1000:.0f} ms per checkpoint interval ({cycle} steps)")

    # 2. kill -9 at random moments; each restart must resume from the newest complete checkpoint
    expected = 0
    for i in range(kills):
        run = _Run(_command(chaos_dir, data, steps, seed, fresh=(i == 0)), env)
        start = run.wait_position(timeout=300)
        if i > 0:
            result.resumes_checked += 1
            result.resumes_ok += start == expected
            if start != expected:
                result.problems.append(f"round {i + 1}: resumed from {start}, expected {expected}")
        # the kill: a random progress line ahead (sometimes none: then during start-up), plus a random fraction of the
        # time to the next one, so it lands anywhere in a chunk, an evaluation or a save
        lines_left = (steps - (start or 0)) // interval - 1
        ahead = min(rng.randint(0, max(1, round(2 * lines_left / (kills - i)))), max(lines_left, 0))
        if ahead and start is not None:
            for _ in range(ahead):
                if run.wait_for(_PROGRESS, timeout=300) is None:
                    break
        delay = rng.uniform(0.0, gap)
        time.sleep(delay)
        finished = run.proc.poll() is not None
        code = run.finish(kill=True)
        result.fallbacks += sum("is damaged" in line for line in run.lines)
        if finished:
            result.finished_before_kill += 1
            log(f"round {i + 1}: the run ended (exit {code}) before the kill")
            if code != 0:
                result.problems.append(f"round {i + 1}: exit {code}: " + " | ".join(run.lines[-3:]))
            listed, broken = intact_steps(chaos_dir)
            expected = max(set(listed) - set(broken), default=0)
            break
        result.kills += 1
        left = inspect_leftovers(chaos_dir)
        for key, n in left.items():
            result.leftovers[key] += n
        listed, broken = intact_steps(chaos_dir)
        result.damaged_steps += len(broken)
        expected = max(set(listed) - set(broken), default=0)
        log(f"kill {result.kills}: started at step {start}, killed {delay * 1000:.0f} ms after "
            + (f"the line of step {start + ahead * interval}" if ahead else "the start") + f"; on disk: steps {listed}"
            + (f", {left['tmp_dirs']} half-written temp dir(s)" if left["tmp_dirs"] else "")
            + (", trash" if left["trash"] else "") + (f", BROKEN {broken}" if broken else ""))

    # 3. the last run goes to the end; its state must equal the reference's, bit for bit
    last = _Run(_command(chaos_dir, data, steps, seed, fresh=False), env)
    start = last.wait_position(timeout=300)
    result.resumes_checked += 1
    result.resumes_ok += start == expected
    if start != expected:
        result.problems.append(f"final run: resumed from {start}, expected {expected}")
    code = last.finish(kill=False)
    result.fallbacks += sum("is damaged" in line for line in last.lines)
    if code != 0:
        result.problems.append(f"final run: exit {code}: " + " | ".join(last.lines[-3:]))
        return result
    a, b = final_state(ref_dir, steps), final_state(chaos_dir, steps)
    result.identical = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="how many times to kill -9 the run")
    parser.add_argument("--steps", type=int, default=3000, help="training steps of the run (tiny config)")
    parser.add_argument("--seed", type=int, default=1337, help="training seed")
    parser.add_argument("--rng-seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--data", default=None, help="text file (default: $JAXBIGRAM_DATA)")
    parser.add_argument("--workdir", default=None, help="where the two runs go (default: a new temp dir)")
    parser.add_argument("--no-compile-cache", action="store_true", help="compile from scratch at every restart")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jaxbigram-chaos-cache-") as cache:
        result = run_chaos(args.kills, args.steps, args.seed, args.data, args.workdir and Path(args.workdir),
                           args.rng_seed, None if args.no_compile_cache else cache)
    left = result.leftovers
    print(f"chaos: {result.kills} kills (SIGKILL at random moments), "
          f"{result.resumes_ok}/{result.resumes_checked} resumes from the newest complete checkpoint, "
          f"final params {'IDENTICAL' if result.identical else 'DIFFERENT'} to an uninterrupted run")
    print(f"left on disk after the kills: {left['tmp_dirs']} half-written orbax temp dirs, {left['trash']} trash dirs, "
          f"{left['deleting']} unfinished --fresh deletions (all cleaned by the next train); "
          f"damaged steps listed: {result.damaged_steps}; fallbacks to an older step: {result.fallbacks}")
    for problem in result.problems:
        print(f"problem: {problem}")
    return 0 if result.ok and result.kills == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
