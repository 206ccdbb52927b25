"""loop.py: the one training loop of ``train`` and ``sweep``, and its divergence policy, given the same fault (a
learning rate of 1e30) in both commands. In process: the property is the loop's, not the processes'."""

import io
import json

import numpy as np
import pytest

from jaxbigram import cli, loop, runs, sweep, train
from jaxbigram.checkpoint import Store
from jaxbigram.errors import UsageError
from conftest import TINY

FAULT = ["train.steps=40", "checkpoint.interval=20", "eval.interval=20", "train.steps_per_call=20"]


def test_next_boundary_stops_at_every_eval_and_checkpoint_and_never_runs_a_chunk_past_steps_per_call():
    from jaxbigram import config

    cfg = config.load(TINY, ["train.steps=250", "eval.interval=30", "checkpoint.interval=70", "train.steps_per_call=50"])
    boundaries, step = [0], 0
    while step < 250:
        step = loop.next_boundary(step, 250, cfg)
        boundaries.append(step)
    required = {s for s in range(1, 251) if s % 30 == 0 or s % 70 == 0} | {250}
    assert required <= set(boundaries) and boundaries[-1] == 250
    for before, after in zip(boundaries, boundaries[1:]):  # a chunk ends at the first required step, or 50 on
        assert after == min([s for s in required if s > before] + [before + 50])


def test_newly_diverged_names_each_members_first_non_finite_step():
    losses = np.array([[1.0, 2.0, 3.0], [1.0, np.nan, np.inf], [np.inf, 1.0, 1.0]])
    assert loop.newly_diverged(losses, {}, 10) == {1: (11, pytest.approx(np.nan, nan_ok=True)), 2: (10, np.inf)}
    assert loop.newly_diverged(losses, {1: 4}, 10).keys() == {2}  # a member marked before is not found again


def test_a_single_run_stops_at_its_first_non_finite_loss_with_the_last_checkpoint_kept(tmp_path, corpus):
    workdir = tmp_path / "run"
    with pytest.raises(UsageError) as e:
        train.train_and_evaluate(workdir, config_path=TINY, overrides=FAULT + ["train.learning_rate=1e30"],
                                 out=io.StringIO(), err=io.StringIO())
    assert e.value.code == "non_finite" and "train.learning_rate" in str(e.value)
    assert Store(workdir, read_only=True).steps() == []  # nothing of the diverged chunk was saved


def test_a_sweep_marks_the_diverged_member_and_stays_readable_exportable_and_resumable(tmp_path, capsys):
    workdir = tmp_path / "sw"
    argv = ["sweep", "--config", TINY, "--seeds", "1", "--set", "train.learning_rate=[0.05,1e30]",
            *[a for kv in FAULT for a in ("--set", kv)], "--workdir", str(workdir), "--json"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)  # strict JSON: no bare NaN
    assert list(report["diverged"]) == ["1"] and report["val_loss"][1] is None and report["val_loss"][0] > 0
    assert err.count("member 1 (train.learning_rate=1e+30, seed 1337)") == 1
    assert report["settings"][1]["val_mean"] is None and report["settings"][1]["diverged"] == 1
    assert report["settings"][0]["val_mean"] == report["val_loss"][0] and report["settings"][0]["best"]
    info = runs.run_info(workdir)
    assert info["latest_step"] == 40 and info["steps"] == [20, 40]  # every step readable: none set aside
    assert cli.main(["sweep", "--workdir", str(workdir), "--export", "0", "--out", str(tmp_path / "m0")]) == 0
    assert runs.run_info(tmp_path / "m0")["latest_step"] == 40
    assert cli.main(["sweep", "--workdir", str(workdir), "--export", "1", "--out", str(tmp_path / "m1")]) == 2
    assert "member 1 of the sweep" in capsys.readouterr().err and not (tmp_path / "m1" / "checkpoints").exists()
    longer = [a if a != "train.steps=40" else "train.steps=60" for a in argv]
    assert cli.main(longer) == 0  # resumes from step 40: the diverged member stays marked, the other trains on
    out, err = capsys.readouterr()
    assert "resuming the sweep from step 40" in err and "set aside" not in err
    again = json.loads(out)
    assert again["step"] == 60 and list(again["diverged"]) == ["1"] and again["val_loss"][1] is None


def test_a_sweep_whose_every_member_diverges_stops_like_a_single_run(tmp_path):
    plan = sweep.make_plan(TINY, FAULT + ["train.learning_rate=1e30"], seeds=2)
    with pytest.raises(UsageError) as e:
        sweep.run_sweep(tmp_path / "sw", plan, err=io.StringIO(), plot=False)
    assert e.value.code == "all_diverged"
    assert Store(tmp_path / "sw", read_only=True).steps() == []


def test_a_signal_after_the_last_chunk_says_the_run_finished_and_saved(tmp_path, corpus):
    """SIGINT while the last eval runs: the run is complete, so it saves, says so in one note and returns normally
    (not a silent exit 0 after "finishing this chunk and saving…")."""
    import os
    import signal

    from jaxbigram import config, progress

    cfg = config.load(TINY, ["train.steps=20", "eval.interval=20", "checkpoint.interval=20"])
    err = io.StringIO()

    class SignalAtLastEval(progress.Reporter):
        def eval(self, row, sample=None):
            super().eval(row, sample)
            if row["step"] == 20:
                os.kill(os.getpid(), signal.SIGINT)  # recorded by the loop's StopRequest, not raised

    reporter = SignalAtLastEval(start_step=0, total_steps=20, resumed=False, out=io.StringIO(), err=err)
    store = Store(tmp_path / "run", keep=2)
    try:
        result = train.fit(cfg, corpus, store, out=io.StringIO(), err=err, reporter=reporter)
        assert store.steps() == [20] and result.report["step"] == 20
    finally:
        store.close()
    assert "received SIGINT after the last chunk: the run finished at step 20 and is saved" in err.getvalue()
