"""`train`'s crash safety, end to end: kill -9 at random moments (``tests/chaos.py``), SIGINT/SIGTERM, a non-finite
loss, damaged and half-written checkpoints, and the keep policy across restarts.

Subprocesses share one persistent JAX compilation cache (same compiled code, ~2 s less start-up per run).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import chaos
from jaxbigram.checkpoint import Store
from jaxbigram.cli import main
from conftest import DATA, REPO_ROOT as ROOT, TINY, error_line, snapshot, store_params


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax-cache"))


def params_of(workdir: Path, step: int | None = None) -> np.ndarray:
    return np.asarray(jax.tree_util.tree_leaves(store_params(workdir, step)[0])[0])


def steps_of(workdir: Path) -> list[int]:
    store = Store(workdir, read_only=True)
    try:
        return store.steps()
    finally:
        store.close()


def train(workdir: Path, *flags) -> int:
    return main(["train", "--config", TINY, "--data", DATA, "--workdir", str(workdir), *map(str, flags)])


# ----------------------------------------------------------------------------- kill -9

def test_kill9_at_random_moments_resumes_bit_identical(tmp_path, compile_cache):
    """A few SIGKILLs at random moments (chunks, evaluations, saves); every restart resumes from the newest complete
    checkpoint, no listed step is ever damaged, and the final TrainState equals an uninterrupted run's, bit for bit."""
    result = chaos.run_chaos(kills=3, steps=600, data=DATA, workdir=tmp_path, rng_seed=4, cache_dir=compile_cache,
                             log=lambda *a: None)
    assert result.kills >= 1, result
    assert result.resumes_checked == result.kills + result.finished_before_kill  # every restart was checked
    assert result.resumes_ok == result.resumes_checked, result.problems
    assert result.damaged_steps == 0 and result.fallbacks == 0
    assert result.identical
    assert not any((tmp_path / "chaos" / "checkpoints").glob("*.orbax-checkpoint-tmp*"))


# ----------------------------------------------------------------------------- signals

LONG = ["--steps", "200000", "--set", "train.steps_per_call=1000", "--set", "eval.interval=1000",
        "--set", "checkpoint.interval=100000"]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_finishes_chunk_saves_and_says_how_to_resume(signum, code, tmp_path, compile_cache):
    workdir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               JAX_COMPILATION_CACHE_DIR=compile_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    argv = [sys.executable, str(ROOT / "run.py"), "train", "--config", TINY, "--data", DATA, "--workdir", str(workdir),
            *LONG, "--fresh"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until the fused training loop is under way (its first progress line)
        if re.match(r"step [1-9]\d*:", line):
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    match = re.search(r"stopped by (\w+) at step (\d+); checkpoint saved in (\S+)\. To resume: (.+)", err)
    assert match, err
    name, step, path, command = match.group(1), int(match.group(2)), match.group(3), match.group(4)
    assert name == signal.Signals(signum).name
    assert 0 < step < 200000 and step % 1000 == 0  # stopped at the end of a fused chunk
    assert Path(path) == workdir / "checkpoints"
    assert "--fresh" not in command and f"--workdir {workdir}" in command
    assert steps_of(workdir) == [step]
    params, meta = store_params(workdir, step)  # intact (checksums verified)
    assert int(meta["step"]) == step


# ----------------------------------------------------------------------------- non-finite loss

def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    """A diverging --fresh run (a resume may not change the learning rate) stops before its first save: the old
    run's checkpoints stay exactly as they were."""
    workdir = tmp_path / "run"
    assert train(workdir, "--steps", "100") == 0
    before = snapshot(workdir / "checkpoints")
    capsys.readouterr()
    assert train(workdir, "--steps", "300", "--set", "train.learning_rate=1e30", "--fresh") == 2
    line = error_line(capsys.readouterr().err)
    match = re.search(r"the training loss became (\S+) at step (\d+)", line)
    assert match and match.group(1) in ("nan", "inf", "-inf") and 0 <= int(match.group(2)) < 100
    assert "train.learning_rate" in line
    assert snapshot(workdir / "checkpoints") == before
    assert steps_of(workdir) == [100]


# ----------------------------------------------------------------------------- damaged and half-written checkpoints

def test_damaged_latest_falls_back_to_the_previous_step(tmp_path, capsys):
    """A finished-looking but damaged latest step: train says so, moves it aside, resumes from the one before, and
    still ends bit-identical to a run that was never damaged."""
    workdir = tmp_path / "run"
    assert train(workdir, "--steps", "200") == 0
    reference = params_of(workdir, 200)  # read while it is intact
    files = [p for p in (workdir / "checkpoints" / "200" / "state").rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    os.truncate(biggest, biggest.stat().st_size // 3)
    capsys.readouterr()
    assert train(workdir, "--steps", "200") == 0
    err = capsys.readouterr().err
    assert re.search(r"warning: checkpoint step 200 is damaged .*moved it to .*damaged-checkpoints", err), err
    assert "resuming from step 100" in err
    assert [p.name.split("-")[0] for p in (workdir / "damaged-checkpoints").iterdir()] == ["200"]
    np.testing.assert_array_equal(params_of(workdir, 200), reference)


def test_leftovers_are_ignored_by_readers_and_cleaned_by_train(tmp_path, capsys):
    """What a kill can leave (an orbax temp dir, a half-emptied trash, an unfinished --fresh) is never listed as a
    step, never touched by sample/info, and removed by the next train, which resumes from the real latest step."""
    workdir = tmp_path / "run"
    assert train(workdir, "--steps", "200") == 0
    ckpt = workdir / "checkpoints"
    leftovers = [ckpt / "300.orbax-checkpoint-tmp-1234567890", ckpt / "_trash" / "100", workdir / ".checkpoints-deleting-1"]
    for i, path in enumerate(leftovers):
        (path / "state").mkdir(parents=True)
        (path / "state" / "junk").write_bytes(b"\0" * 10)
    shutil.copytree(ckpt / "200" / "meta", leftovers[0] / "meta")  # looks half-finished
    before = snapshot(workdir)
    capsys.readouterr()
    assert main(["info", "--workdir", str(workdir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == [100, 200]
    assert main(["sample", "--workdir", str(workdir), "--max-new-tokens", "5"]) == 0
    assert snapshot(workdir) == before  # readers never clean or write
    capsys.readouterr()
    assert train(workdir, "--steps", "300") == 0
    assert "resuming from step 200" in capsys.readouterr().err
    assert not any(p.exists() for p in leftovers)
    assert steps_of(workdir) == [200, 300]


def test_keep_policy_survives_restarts(tmp_path):
    """Resumed runs still drop old steps (orbax needs the val-loss metric on disk to rank them after a restart)."""
    workdir = tmp_path / "run"
    for steps in (200, 400):  # before the fix, the restart kept every step: 100, 200, 300, 400
        assert train(workdir, "--steps", steps) == 0
    steps = steps_of(workdir)
    history = store_params(workdir)[1]["history"]
    best = min((h["val_loss"], h["step"]) for h in history if h["step"] % 100 == 0 and h["step"] > 0)[1]
    assert steps == sorted({300, 400, best})  # keep = 2 latest, plus the best by val loss


# ----------------------------------------------------------------------------- what orbax itself reports

def _stderr_is_ours(err: str) -> None:
    """Only jaxbigram's own lines: none of orbax's (absl) log lines or thread tracebacks, and no raw NUL byte."""
    assert "absl" not in err and "Traceback" not in err and "\0" not in err, err
    ours = ("jax ", "data: ", "resuming from ", "progress: ", "sampling from ", "warning: ", "note: ", "error: ",
            "checkpoints: ")
    assert all(line.startswith(ours) for line in err.splitlines() if line.strip()), err


@pytest.mark.parametrize("command", ["train", "sample", "eval", "info"])
def test_a_zeroed_checkpoint_metadata_file_is_not_reported_by_orbax(command, tiny_workdir_copy, run_cli):
    """orbax's own per-step ``_CHECKPOINT_METADATA`` full of NUL bytes: orbax logs that it cannot parse it (with the
    raw bytes) and carries on without it; the step is intact, so every command works and prints none of that."""
    path = tiny_workdir_copy / "checkpoints" / "200" / "_CHECKPOINT_METADATA"
    path.write_bytes(b"\0" * path.stat().st_size)
    args = {"train": ["--steps", "300"], "sample": ["--max-new-tokens", "5"]}.get(command, [])
    proc = run_cli(command, "--workdir", tiny_workdir_copy, *args)
    assert proc.returncode == 0, proc.stderr
    _stderr_is_ours(proc.stderr)
    if command == "train":
        assert "resuming from step 200" in proc.stderr and steps_of(tiny_workdir_copy) == [200, 300]


# Runs run.py with every array write of a save refused by the file system (errno FAIL_ERRNO), inside orbax's writer
# threads, as a full disk or a folder made read-only during the run would.
_REFUSED_WRITES = """
import os, runpy, sys
from orbax.checkpoint._src.serialization import serialization

async def refuse(*args, **kwargs):
    number = int(os.environ["FAIL_ERRNO"])
    raise OSError(number, os.strerror(number))

serialization.async_serialize_from_host = refuse
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("errno_name, expected", [
    ("ENOSPC", "no space left on device while saving step 300 in {ckpt}: free space and run the same command to "
               "resume from step 200 (the earlier checkpoints are intact)"),
    ("EACCES", "cannot write step 300 in {ckpt} (Permission denied): make it writable for this user and run the same "
               "command to resume from step 200 (the earlier checkpoints are intact)")])
def test_a_save_the_file_system_refuses_is_one_line(errno_name, expected, tiny_workdir_copy, compile_cache):
    """orbax's writer threads fail: one error line (none of orbax's thread tracebacks), the half-written step gone,
    the earlier checkpoints intact, and metrics.jsonl without a row for any step after the last saved one."""
    import errno

    workdir = tiny_workdir_copy
    log = (workdir / "metrics.jsonl").read_bytes()
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", JAXBIGRAM_DATA=DATA,
               FAIL_ERRNO=str(getattr(errno, errno_name)), JAX_COMPILATION_CACHE_DIR=compile_cache)
    proc = subprocess.run([sys.executable, "-c", _REFUSED_WRITES, str(ROOT / "run.py"), "train", "--workdir",
                           str(workdir), "--steps", "300", "--set", "eval.interval=50"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    _stderr_is_ours(proc.stderr)
    assert error_line(proc.stderr) == "error: " + expected.format(ckpt=workdir / "checkpoints")
    assert "step 250:" in proc.stdout and "step 300:" in proc.stdout  # evaluated, but never saved
    assert steps_of(workdir) == [100, 200] and not list((workdir / "checkpoints").glob("*tmp*"))
    assert (workdir / "metrics.jsonl").read_bytes() == log  # no row for 250 or 300


# ----------------------------------------------------------------------------- signals at any other moment

def _popen(argv, compile_cache, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               JAX_COMPILATION_CACHE_DIR=compile_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *map(str, argv)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _one_stop_line(err: str) -> str:
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    stops = [line for line in lines if line.startswith("stopped by")]
    assert len(stops) == 1, err
    return stops[0]


def _wait_for_run_py(pid: int) -> None:
    """Until ``run.py``'s first line has run: SIGINT and SIGTERM blocked, or its handler set (SIGTERM caught; Python
    itself catches only SIGINT). Before that the interpreter is still starting, and a SIGTERM there ends it as the
    kernel's default does, before any of the program's code could say a word."""
    import time

    held = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
        if int(fields["SigBlk"], 16) & held == held or int(fields["SigCgt"], 16) & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.001)
    raise AssertionError("run.py never took hold of SIGINT and SIGTERM")


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_start_up_is_one_line(signum, delay, tmp_path, compile_cache):
    """Sent ``delay`` seconds after ``run.py`` took hold of the signals, while Python imports or initialises JAX
    (where a raised exception would land in a C++ callback): exit 128 + N, one non-empty line on stderr, no
    traceback."""
    import time

    proc = _popen(["train", "--config", TINY, "--data", DATA, "--workdir", tmp_path / "run", *LONG], compile_cache)
    _wait_for_run_py(proc.pid)
    time.sleep(delay)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    line = _one_stop_line(err)
    lines = [line_ for line_ in err.splitlines() if line_.strip()]
    assert lines[-1] == line and line.startswith(f"stopped by {signal.Signals(signum).name}"), err
    # only the usual start-up lines before it (on a fast machine training may have begun: then it saved first)
    assert all(line_.startswith(("jax ", "data: ", "received ", "progress: ")) for line_ in lines[:-1]), err


def test_sigint_while_sampling_is_one_line_about_nothing_else(tiny_workdir, compile_cache):
    proc = _popen(["sample", "--workdir", tiny_workdir, "--max-new-tokens", "100000000"], compile_cache)
    assert proc.stderr.readline().startswith("sampling from step 200")
    proc.stdout.read(100)  # text is coming out
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    line = _one_stop_line(err)
    assert line == "stopped by SIGINT" and "step" not in line and "checkpoint" not in line


def test_two_sigints_50ms_apart_while_training(tmp_path, compile_cache):
    import time

    workdir = tmp_path / "run"
    proc = _popen(["train", "--config", TINY, "--data", DATA, "--workdir", workdir, *LONG], compile_cache)
    for line in proc.stdout:
        if re.match(r"step [1-9]\d*:", line):
            break
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "stopped by SIGINT" in err
    # the second signal stops at once, unless it came while the first one's save ran: a checkpoint, or none yet
    step = ((steps_of(workdir) if (workdir / "checkpoints").is_dir() else []) or [0])[-1]
    assert main(["train", "--config", TINY, "--data", DATA, "--workdir", str(workdir), "--steps", str(step + 100)]) == 0
    assert steps_of(workdir)[-1] == step + 100
