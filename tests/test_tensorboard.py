"""tensorboard.py: the event files ``train`` and ``sweep`` write, read back with TensorBoard's own reader (the
``tensorboard`` package of the test extra), next to metrics.jsonl and the sweep's history."""

import io
import json
import shutil
import zlib

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from jaxbigram import sweep, sweep_report, tensorboard
from conftest import TINY


def scalars(folder, tag="loss/val_estimate"):
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def metrics(workdir, key="val_loss"):
    return [(r["step"], r[key]) for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]


def test_crc32c_is_castagnoli_and_records_frame_their_data():
    assert tensorboard.crc32c(b"123456789") == 0xE3069283  # the published check value of CRC-32C
    assert tensorboard.crc32c(b"123456789") != zlib.crc32(b"123456789")  # not the zip CRC
    data = b"hello"
    rec = tensorboard.record(data)
    assert int.from_bytes(rec[:8], "little") == len(data) and rec[12:17] == data and len(rec) == 8 + 4 + 5 + 4


def test_train_writes_the_metrics_rows_as_events(tiny_workdir):
    """The session's tiny run (evals at 0, 100, 200): every tag equals metrics.jsonl in float32."""
    folder = tiny_workdir / tensorboard.EVENTS_DIR
    for tag, key in (("loss/val_estimate", "val_loss"), ("loss/train_estimate", "train_loss"),
                     ("learning_rate", "lr")):
        got, expected = scalars(folder, tag), metrics(tiny_workdir, key)
        assert [s for s, _ in got] == [s for s, _ in expected] == [0, 100, 200]
        np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=1e-6)


def test_a_resume_continues_the_events_and_fresh_replaces_them(cli_run, tmp_path):
    workdir = tmp_path / "run"
    assert cli_run("train", "--config", TINY, "--steps", "100", "--workdir", workdir).returncode == 0
    assert cli_run("train", "--config", TINY, "--steps", "200", "--workdir", workdir).returncode == 0
    folder = workdir / tensorboard.EVENTS_DIR
    assert len(list(folder.iterdir())) == 1  # a resume rewrites the events as the repaired metrics log
    got = scalars(folder)
    assert got == [(s, pytest.approx(v, rel=1e-6)) for s, v in metrics(workdir)] and [s for s, _ in got] == [0, 100, 200]
    member = folder / "member-000_seed1337"  # as a sweep in the same folder would have left it
    member.mkdir()
    tensorboard.EventLog(member).rows([{"step": 0, "train_loss": 1.0, "val_loss": 1.0}])
    proc = cli_run("train", "--config", TINY, "--steps", "100", "--fresh", "--workdir", workdir)
    assert proc.returncode == 0, proc.stderr
    assert len([p for p in folder.iterdir() if p.is_file()]) == 1 and [s for s, _ in scalars(folder)] == [0, 100]
    assert not list(member.iterdir())  # the replaced run's event files are gone, at every depth


def test_a_run_from_before_event_files_gets_its_history_on_resume(cli_run, tmp_path):
    workdir = tmp_path / "run"
    assert cli_run("train", "--config", TINY, "--steps", "100", "--workdir", workdir).returncode == 0
    shutil.rmtree(workdir / tensorboard.EVENTS_DIR)  # as a run of an older version left it
    assert cli_run("train", "--config", TINY, "--steps", "200", "--workdir", workdir).returncode == 0
    assert [s for s, _ in scalars(workdir / tensorboard.EVENTS_DIR)] == [s for s, _ in metrics(workdir)] == [0, 100, 200]


def test_a_resume_rewrites_the_events_as_the_repaired_metrics_log(tmp_path):
    """A kill between a checkpoint's save and its event records loses no eval (the resume writes every row the
    metrics log holds), and a resume from an older step drops what was logged past it (those steps train again)."""
    from jaxbigram import progress

    path, folder = tmp_path / "metrics.jsonl", tmp_path / tensorboard.EVENTS_DIR
    rows = [{"step": s, "train_loss": 3.0, "val_loss": float(s)} for s in (0, 100, 200)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tensorboard.EventLog(folder).rows(rows[:2])  # killed after step 200's checkpoint and row, before its events
    progress.MetricsLog(path, resumed_step=200, events=tensorboard.EventLog(folder))
    assert scalars(folder) == [(0, 0.0), (100, 100.0), (200, 200.0)]
    log = progress.MetricsLog(path, resumed_step=100, events=tensorboard.EventLog(folder))  # step 200 set aside
    log.append({"step": 200, "train_loss": 2.0, "val_loss": 9.0})
    log.commit(200)
    assert scalars(folder) == [(0, 0.0), (100, 100.0), (200, 9.0)] == [(s, v) for s, v in metrics(tmp_path)]


def test_a_sweep_resume_rewrites_every_members_events(tmp_path):
    plan = sweep.make_plan(TINY, ["train.steps=50", "eval.interval=25", "checkpoint.interval=25"], seeds=2)
    sweep.run_sweep(tmp_path / "s", plan, err=io.StringIO(), plot=False)
    runs = tmp_path / "s" / tensorboard.EVENTS_DIR
    for f in (runs / sweep_report.member_run(plan, 1)).iterdir():
        f.unlink()  # as a kill before a member's events were written leaves them
    longer = sweep.make_plan(TINY, ["train.steps=75", "eval.interval=25", "checkpoint.interval=25"], seeds=2)
    result = sweep.run_sweep(tmp_path / "s", longer, err=io.StringIO(), plot=False)
    for k in range(2):
        got = scalars(runs / sweep_report.member_run(plan, k))
        assert [s for s, _ in got] == [h["step"] for h in result.history] == [0, 25, 50, 75]
        np.testing.assert_allclose([v for _, v in got], [h["val_loss"][k] for h in result.history], rtol=1e-6)


def test_an_unusable_events_folder_in_a_sweep_is_one_warning_that_names_the_sweeps_fallback(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / tensorboard.EVENTS_DIR).write_text("not a folder")
    plan = sweep.make_plan(TINY, ["train.steps=50", "eval.interval=25", "checkpoint.interval=25"], seeds=2)
    err = io.StringIO()  # (the shapes of the sweep above: its compiled programs serve this one)
    sweep.run_sweep(tmp_path / "s", plan, err=err, plot=False)
    warnings = [line for line in err.getvalue().splitlines() if "cannot write TensorBoard events" in line]
    assert len(warnings) == 1 and "metrics.jsonl" not in warnings[0]


def test_an_unwritable_events_folder_is_one_warning_and_training_goes_on(cli_run, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / tensorboard.EVENTS_DIR).write_text("not a folder")
    proc = cli_run("train", "--config", TINY, "--steps", "100", "--workdir", workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("warning: cannot write TensorBoard events") == 1
    assert [s for s, _ in metrics(workdir)] == [0, 100]


def test_sweep_writes_one_run_per_member(tmp_path):
    plan = sweep.make_plan(TINY, ["train.learning_rate=[0.02,0.05]", "train.steps=100"], seeds=2)
    result = sweep.run_sweep(tmp_path / "s", plan, err=io.StringIO(), plot=False)
    mux = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "s" / tensorboard.EVENTS_DIR))
    mux.Reload()
    runs = sorted(mux.Runs())
    assert runs == [sweep_report.member_run(plan, k) for k in range(4)]
    assert runs[3] == "member-003_train.learning_rate=0.05_seed1338"
    for k, run in enumerate(runs):
        got = [(e.step, e.value) for e in mux.Scalars(run, "loss/val_estimate")]
        expected = [(h["step"], h["val_loss"][k]) for h in result.history]
        assert [s for s, _ in got] == [s for s, _ in expected] == [0, 100]
        np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=1e-6)
