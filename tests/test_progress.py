"""progress.py: the eval line on stdout, plain progress lines without a terminal, the tqdm bar with one, and
metrics.jsonl across resumes (no duplicate step, torn lines dropped, wall clock cumulative)."""

import io
import json
from pathlib import Path

import numpy as np
import pytest

from jaxbigram import config, progress
from jaxbigram.checkpoint import Store
from jaxbigram.train import fit, learning_rate_schedule


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_plain_progress_lines_when_stderr_is_not_a_tty(tiny_train):
    lines = [line for line in tiny_train.proc.stderr.splitlines() if line.startswith("progress: ")]
    # tiny: 200 steps, eval every 100 → one plain line per eval (steps 0, 100, 200)
    assert [line.split(" | ")[0] for line in lines] == [
        "progress: step 0/200 (0%)", "progress: step 100/200 (50%)", "progress: step 200/200 (100%)"]
    assert "ETA 0:00" in lines[-1] and "steps/s" in lines[-1] and "val est." in lines[-1]
    assert "chunk loss 4." in lines[0]  # before the first chunk: the step-0 estimate, not '?'
    assert "\r" not in tiny_train.proc.stderr  # no bar redraws in a log
    evals = [line for line in tiny_train.proc.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in evals] == ["step 0", "step 100", "step 200"]  # the eval lines, on stdout


def test_reporter_prints_each_eval_on_out_and_plain_lines_on_err():
    out, err = io.StringIO(), io.StringIO()
    clock = iter(np.arange(0.0, 100.0, 1.0)).__next__
    with progress.Reporter(start_step=0, total_steps=10, resumed=False, out=out, err=err, bar=False,
                           plain_every_s=1e9, clock=clock) as rep:
        rep.eval({"step": 0, "train_loss": 4.0, "val_loss": 4.1})
        rep.chunk(10, np.array([3.0, 2.0]), 0.5)
        rep.eval({"step": 10, "train_loss": 2.0, "val_loss": 2.25})
    assert out.getvalue() == "step 0: train loss 4.0000, val loss 4.1000\nstep 10: train loss 2.0000, val loss 2.2500\n"
    plain = err.getvalue().splitlines()
    assert len(plain) == 2 and plain[1].startswith("progress: step 10/10 (100%) | chunk loss 2.5000")


def test_an_eval_sample_is_printed_quoted_under_its_eval_line_and_logged(tmp_path):
    out, path = io.StringIO(), tmp_path / "metrics.jsonl"
    with progress.Reporter(start_step=0, total_steps=10, resumed=False, metrics_path=path, out=out,
                           err=io.StringIO(), bar=False) as rep:
        rep.eval({"step": 0, "train_loss": 4.0, "val_loss": 4.1}, sample="\nHe said\x1b[2J\n\tgo")
        rep.saved(0)
    assert out.getvalue() == ("step 0: train loss 4.0000, val loss 4.1000\nsample at step 0:\n    | \n"
                              "    | He said\\x1b[2J\n    | \\tgo\n")
    assert _read(path)[0]["sample"] == "\nHe said\x1b[2J\n\tgo" and progress.read_metrics(path)[0]["step"] == 0


def test_disabled_reporter_says_nothing():
    out, err = io.StringIO(), io.StringIO()
    with progress.Reporter(start_step=0, total_steps=10, resumed=False, out=out, err=err, enabled=False) as rep:
        rep.eval({"step": 0, "train_loss": 4.0, "val_loss": 4.1})
        rep.chunk(10, np.array([3.0]), 0.5)
    assert out.getvalue() == err.getvalue() == ""


def test_reporter_draws_a_tqdm_bar_when_asked():
    err = io.StringIO()
    with progress.Reporter(start_step=0, total_steps=10, resumed=False, out=io.StringIO(), err=err, bar=True) as rep:
        rep.eval({"step": 0, "train_loss": 4.0, "val_loss": 4.1})
        rep.chunk(10, np.array([3.0, 2.0]), 0.01)
    text = err.getvalue()
    assert "10/10" in text and "chunk loss 2.5000" in text and "val est. 4.1000@0" in text
    assert "progress: " not in text


@pytest.mark.parametrize("seconds, text", [(None, "?"), (float("inf"), "?"), (59.6, "1:00"), (3725, "1:02:05")])
def test_format_duration(seconds, text):
    assert progress.format_duration(seconds) == text


def _row(step, loss=1.0):
    return {"step": step, "train_loss": loss, "val_loss": loss}


def test_metrics_log_rules(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(_row(s)) + "\n" for s in (0, 100, 200, 300)) + '{"step": 4')
    log = progress.MetricsLog(path, resumed_step=200)  # an older version's log, past its last checkpoint (200)
    assert [r["step"] for r in _read(path)] == [0, 100, 200]
    assert not log.append(_row(200, -1.0))  # never a duplicate step
    assert log.append(_row(300, 3.0)) and log.append(_row(400, 4.0))
    assert [r["step"] for r in _read(path)] == [0, 100, 200]  # never ahead of the checkpoints
    log.commit(300)  # the checkpoint of step 300 is saved
    assert [r["step"] for r in _read(path)] == [0, 100, 200, 300]
    fresh = progress.MetricsLog(path, resumed_step=None)  # a fresh run replaces the log only once it starts
    fresh.append(_row(0))
    assert [r["step"] for r in _read(path)] == [0, 100, 200, 300]
    fresh.start()  # (its first checkpoint is being saved): the old log goes
    assert not path.exists()
    fresh.commit(0)
    assert [r["step"] for r in _read(path)] == [0]


@pytest.mark.parametrize("damage", [b"garbage\x00\xff\xfe", b'{"step": 50}', b'{"step": 50, "train_loss": null, '
                                    b'"val_loss": 1}', b'{"step": "50", "train_loss": 1, "val_loss": 1}', b"[1, 2]"])
def test_damaged_metrics_lines_are_skipped_with_one_warning_and_rewritten_from_history(tmp_path, damage):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(json.dumps(_row(0)).encode() + b"\n" + damage + b"\n" + json.dumps(_row(100)).encode() + b"\n")
    warnings = []
    assert [r["step"] for r in progress.read_metrics(path, warnings.append)] == [0, 100]
    assert len(warnings) == 1 and "skipped 1 damaged line" in warnings[0]
    history = [_row(0), _row(100), _row(200, 2.0)]  # the checkpoint's own evals
    progress.MetricsLog(path, resumed_step=200, history=history, log=warnings.append)
    assert _read(path) == history


def test_a_metrics_path_that_is_a_directory_disables_the_log_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.mkdir()
    warnings = []
    assert progress.read_metrics(path, warnings.append) == [] and "cannot read" in warnings[0]
    log = progress.MetricsLog(path, resumed_step=100, history=[_row(0)], log=warnings.append)
    assert log.append(_row(200)) and path.is_dir() and "not a regular file" in warnings[-1]


def test_metrics_jsonl_survives_resume_without_duplicates(tiny_workdir_copy, corpus):
    workdir = tiny_workdir_copy  # a 200-step run, checkpointed at 100 and 200
    metrics = workdir / progress.METRICS_FILE
    assert [r["step"] for r in _read(metrics)] == [0, 100, 200]
    # a killed run may have logged past its last checkpoint, and torn its last line
    with metrics.open("a") as f:
        f.write(json.dumps({"step": 300, "train_loss": 99.0, "val_loss": 99.0}) + '\n{"step": 40')
    cfg = config.load("tiny", ["train.steps=400"])
    store = Store(workdir, keep=cfg.checkpoint.keep)
    try:
        result = fit(cfg, corpus, store, out=io.StringIO(), err=io.StringIO())
    finally:
        store.close()
    rows = _read(metrics)
    assert [r["step"] for r in rows] == [0, 100, 200, 300, 400]
    by_step = {h["step"]: h for h in result.history}
    schedule = learning_rate_schedule(cfg.train)
    for row in rows:
        assert set(row) == {"step", "train_loss", "val_loss", "lr", "steps_per_s", "wall_s", "time"}
        assert row["val_loss"] == by_step[row["step"]]["val_loss"]  # the resumed run re-logged step 300
        assert row["train_loss"] == by_step[row["step"]]["train_loss"]
        assert row["lr"] == pytest.approx(float(schedule(row["step"])))
    assert all(r["steps_per_s"] > 0 for r in rows[1:])
    assert [r["wall_s"] for r in rows] == sorted(r["wall_s"] for r in rows)  # cumulative across the resume
