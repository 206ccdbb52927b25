"""progress.py: the eval line on stdout, plain progress lines without a terminal, the tqdm bar with one, and
metrics.jsonl across resumes (no duplicate step, torn lines dropped, wall clock cumulative)."""

import io
import json
import shutil
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
    assert "ETA 0:00" in lines[-1] and "steps/s" in lines[-1] and "val loss" in lines[-1]
    assert "train loss 4." in lines[0]  # before the first chunk: the step-0 estimate, not '?'
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
    assert len(plain) == 2 and plain[1].startswith("progress: step 10/10 (100%) | train loss 2.5000")


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
    assert "10/10" in text and "loss 2.5000" in text and "val 4.1000@0" in text
    assert "progress: " not in text


@pytest.mark.parametrize("seconds, text", [(None, "?"), (float("inf"), "?"), (59.6, "1:00"), (3725, "1:02:05")])
def test_format_duration(seconds, text):
    assert progress.format_duration(seconds) == text


def test_metrics_log_rules(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "val_loss": s}) + "\n" for s in (0, 100, 200, 300)) + '{"step": 4')
    log = progress.MetricsLog(path, resumed_step=200)  # a run killed after logging step 300, checkpointed at 200
    assert [r["step"] for r in _read(path)] == [0, 100, 200]
    assert not log.append({"step": 200, "val_loss": -1})  # never a duplicate step
    assert log.append({"step": 300, "val_loss": 3})
    assert [r["step"] for r in _read(path)] == [0, 100, 200, 300]
    progress.MetricsLog(path, resumed_step=None)  # a fresh run starts an empty log
    assert path.read_text() == ""


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
