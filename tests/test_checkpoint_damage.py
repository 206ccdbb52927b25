"""checkpoint.py's damaged-array path through every command that restores: one orbax array file of a GPT's newest step
emptied or deleted (``state/manifest.ocdbt``, or a file under ``state/ocdbt.process_0/d/``) gives the command's one
warning or error line and nothing else: none of the asyncio reports orbax's abandoned reads leave behind ("Future
exception was never retrieved", "Event loop is closed"), which came and went from run to run; and asyncio reports that
are not about a failed read still get through.

The GPT (its many arrays are read concurrently, which is where the race was) and a GPT sweep are trained once per
module, on a small synthetic text; each case damages a copy. Commands run in-process (``cli.main``): stderr is
captured at the file descriptor (``capfd``: asyncio's logging goes to the stream logging holds, not to ``sys.stderr``),
what reaches the logging module is recorded as well, and an unraisable exception that gets through fails the test
(``filterwarnings``). One case runs ``python run.py sample`` for the real process exit.
"""

import asyncio
import gc
import logging
import shutil
from pathlib import Path

import pytest

from jaxbigram import checkpoint
from jaxbigram.cli import main

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")

STEPS = 2  # checkpoints at steps 1 and 2; step 2 is damaged, step 1 stays intact
SMALL = ["--steps", str(STEPS), "--set", "checkpoint.interval=1", "--set", "eval.interval=1",
         "--set", "eval.iters=1", "--set", "eval.sample_chars=0"]
# how an array file is damaged: emptied (what `: > file` leaves) or deleted
DAMAGE = {"emptied": lambda p: p.write_bytes(b""), "deleted": lambda p: p.unlink()}
REPEATS = 1  # reads per command, file and damage (the reports came in about one read of eight, before orbax's
# abandoned reads were dropped at their loops: 16 readers x 2 files, trains and exports read each case once)


@pytest.fixture(scope="module")
def text(tmp_path_factory, make_corpus) -> Path:
    path = tmp_path_factory.mktemp("damage_text") / "text.txt"
    make_corpus(str(path), 20_000, vocab=40, seed=3)
    return path


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory, text) -> Path:
    workdir = tmp_path_factory.mktemp("damage_gpt") / "run"
    assert main(["train", "--config", "gpt-tiny", "--data", str(text), "--workdir", str(workdir), *SMALL]) == 0
    return workdir


@pytest.fixture(scope="module")
def gpt_sweep(tmp_path_factory, text) -> Path:
    workdir = tmp_path_factory.mktemp("damage_sweep") / "sweep"
    assert main(["sweep", "--config", "gpt-tiny", "--data", str(text), "--workdir", str(workdir), "--seeds", "1",
                 "--set", "train.learning_rate=[0.001,0.003]", *SMALL]) == 0
    return workdir


def array_files(workdir: Path) -> dict:
    """The damageable array files of the newest step: ``manifest`` and every ``d/<n>`` (in name order)."""
    state = workdir / "checkpoints" / str(STEPS) / "state"
    data = sorted((state / "ocdbt.process_0" / "d").iterdir())
    assert data, state
    return {"manifest": Path("manifest.ocdbt"), **{f"d/{i}": p.relative_to(state) for i, p in enumerate(data)}}


@pytest.fixture
def reports():
    """What the logging module is given (asyncio's reports are records of the ``asyncio`` logger)."""
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    yield records
    logging.getLogger().removeHandler(handler)


def damaged_copy(source: Path, tmp_path: Path, name: str, how: str) -> Path:
    workdir = tmp_path / f"{name.replace('/', '-')}-{how}"
    shutil.copytree(source, workdir)
    DAMAGE[how](workdir / "checkpoints" / str(STEPS) / "state" / array_files(source)[name])
    return workdir


def run(argv, capfd, reports) -> tuple[int, list[str]]:
    """``cli.main(argv)``, then a collection (what orbax abandoned is reported when it is collected): the exit code
    and every stderr line; no record reached logging."""
    code = main([str(a) for a in argv])
    gc.collect()
    err = capfd.readouterr().err
    assert not reports, (err, [r.getMessage() for r in reports])
    assert "Traceback" not in err and "never retrieved" not in err and "Exception ignored" not in err, err
    return code, err.splitlines()


def params_file(workdir: Path) -> str:
    """The name (``d/<n>``) of a data file holding parameters: the arrays sample, eval and plot read (which file holds
    what differs from run to run; the others hold the optimizer's moments)."""
    from jaxbigram.errors import CheckpointError

    state = workdir / "checkpoints" / str(STEPS) / "state"
    for name, path in array_files(workdir).items():
        if name == "manifest":
            continue
        moved = (state / path).rename(state / "moved")
        try:
            store = checkpoint.Store(workdir, read_only=True)
            try:
                store.restore_params(STEPS)
            except CheckpointError:
                return name
            finally:
                store.close()
        finally:
            moved.rename(state / path)
    raise AssertionError(f"no data file of {state} holds parameters")


@pytest.fixture(scope="module")
def gpt_files(gpt_run) -> list[str]:
    """The files each case damages in turn: the manifest, and a data file holding parameters."""
    return ["manifest", params_file(gpt_run)]


@pytest.fixture(scope="module")
def sweep_files(gpt_sweep) -> list[str]:
    return ["manifest", params_file(gpt_sweep)]


def only(lines, expected: list[str]) -> None:
    """One line starting with each expected prefix (in any order: a damaged manifest is found before the data line,
    a damaged data file after it), and no other line."""
    left = list(lines)
    for prefix in expected:
        match = next((line for line in left if line.startswith(prefix)), None)
        assert match is not None, (lines, expected)
        left.remove(match)
    assert not left, (lines, expected)


CORRUPT = f"error: checkpoint step {STEPS} in "
SET_ASIDE = f"warning: checkpoint step {STEPS} is damaged ("
FALL_BACK = "use --step with an older step (available: 1)"


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("command", [["sample", "--max-new-tokens", "1"], ["eval"], ["plot"], ["info"]],
                         ids=lambda c: c[0])
def test_a_reader_of_a_damaged_gpt_step_says_one_line(command, how, gpt_run, gpt_files, tmp_path, capfd, reports):
    """sample, eval and plot: the one "truncated or corrupted" line (the step is theirs to read); info: the one warning
    for a damaged manifest (it reads no array's data), then the run described from the intact step, and nothing else."""
    for name in gpt_files:
        workdir = damaged_copy(gpt_run, tmp_path, name, how)
        for _ in range(REPEATS):
            code, lines = run([command[0], "--workdir", workdir, *command[1:]], capfd, reports)
            if command[0] == "info":
                assert code == 0, lines  # it reads the arrays' metadata (in the manifest), not their data
                only(lines, [SET_ASIDE] if name == "manifest" else [])
                assert all(line.endswith("; `train` in that workdir resumes from the newest intact step")
                           for line in lines), lines
            else:
                assert code == 2, lines
                only(lines, [CORRUPT + f"{workdir} is truncated or corrupted ("])
                assert FALL_BACK in lines[0], lines


@pytest.mark.parametrize("how", DAMAGE)
def test_train_sets_a_damaged_gpt_step_aside_in_one_line(how, gpt_run, gpt_files, tmp_path, capfd, reports):
    for name in gpt_files:
        for attempt in range(REPEATS):
            workdir = damaged_copy(gpt_run, tmp_path / str(attempt), name, how)
            code, lines = run(["train", "--workdir", workdir, "--steps", "1"], capfd, reports)
            assert code == 0, lines
            only(lines, ["jax ", SET_ASIDE, "data: ", "resuming from step 1 in ", "note: the run is already at step 1"])
            assert not (workdir / "checkpoints" / str(STEPS)).exists()


@pytest.mark.parametrize("how", DAMAGE)
def test_a_sweep_resumes_past_a_damaged_gpt_step_in_one_line(how, gpt_sweep, sweep_files, text, tmp_path, capfd,
                                                             reports):
    for name in sweep_files:  # once each: a resume computes the exact losses and draws sweep.png
        workdir = damaged_copy(gpt_sweep, tmp_path, name, how)
        code, lines = run(["sweep", "--config", "gpt-tiny", "--data", text, "--workdir", workdir, "--seeds", "1",
                           "--set", "train.learning_rate=[0.001,0.003]", *SMALL[2:], "--steps", "1"], capfd, reports)
        assert code == 0, lines
        only(lines, ["jax ", SET_ASIDE, "data: ", "resuming the sweep from step 1 in ", "sweep: 2 members",
                     "plot: "])
        assert not (workdir / "checkpoints" / str(STEPS)).exists()


@pytest.mark.parametrize("how", DAMAGE)
def test_export_of_a_damaged_gpt_sweep_step_is_one_line(how, gpt_sweep, sweep_files, tmp_path, capfd, reports):
    for name in sweep_files:
        workdir = damaged_copy(gpt_sweep, tmp_path, name, how)
        for attempt in range(REPEATS):
            code, lines = run(["sweep", "--workdir", workdir, "--export", "0", "--out", tmp_path / f"out{attempt}"],
                              capfd, reports)
            assert code == 2, lines
            only(lines, [CORRUPT + f"{workdir} is truncated or corrupted ("])
            assert not (tmp_path / f"out{attempt}").exists()


def test_python_run_py_sample_of_a_damaged_gpt_step_exits_with_one_line(gpt_run, gpt_files, run_cli, tmp_path):
    """The real process, to its exit (where what orbax abandoned is collected and its loops' threads end)."""
    workdir = damaged_copy(gpt_run, tmp_path, gpt_files[1], "emptied")
    proc = run_cli("sample", "--workdir", workdir, "--max-new-tokens", "1", timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    only(proc.stderr.splitlines(), [CORRUPT + f"{workdir} is truncated or corrupted ("])


# ----------------------------------------------------------------------------- the reports that are not ours

def _unretrieved_failure(loop) -> None:
    """A future of ``loop`` that fails and is never awaited, then collected (asyncio reports it then)."""
    future = loop.create_future()
    future.set_exception(ValueError("DATA_LOSS: a read of this loop failed"))
    del future
    gc.collect()


def _asyncio_reports(records) -> list[str]:
    return [r.getMessage().splitlines()[0] for r in records if r.name == "asyncio"]


def test_a_failed_read_drops_its_loops_reports_and_nothing_else(reports):
    """Orbax's loops of a read that failed report nothing, even after they closed and whenever their futures are
    collected; a read that succeeded, and every loop that is not a read's, report as asyncio always does."""
    with pytest.raises(KeyError):
        with checkpoint._reading():
            failed = asyncio.new_event_loop()
            raise KeyError("the read failed")
    failed.close()
    _unretrieved_failure(failed)
    failed.call_soon_threadsafe(print, "a TensorStore read finishing late")  # a closed loop of a failed read: no-op
    assert _asyncio_reports(reports) == []

    with checkpoint._reading():
        succeeded = asyncio.new_event_loop()
        _unretrieved_failure(succeeded)  # held while the read runs, passed on when it succeeds
        assert _asyncio_reports(reports) == []
    assert _asyncio_reports(reports) == ["Future exception was never retrieved"]
    succeeded.close()

    ours = asyncio.new_event_loop()  # made outside any read: a plain loop
    assert not isinstance(ours, checkpoint._ReadLoop)
    _unretrieved_failure(ours)
    assert _asyncio_reports(reports) == ["Future exception was never retrieved"] * 2
    ours.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        ours.call_soon_threadsafe(print)
