"""runs.py: a run's folder — writable or one clear line, one writer at a time (an OS lock), the run's config on
resume (only RESUMABLE_KEYS may change), compatibility, and damaged steps set aside, never deleted."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxbigram import config, runs
from jaxbigram.checkpoint import Store
from jaxbigram.errors import CheckpointError, UsageError
from jaxbigram.models.bigram import Bigram
from jaxbigram.train import create_train_state
from conftest import DATA, assert_usage_error, run_bound_by_permissions, same_tree, snapshot, write

V = 5
CFG = config.TrainConfig()


def meta(step, vocab="abcde", sha="ab" * 32, cfg=None):
    return {"vocab": vocab, "vocab_size": len(vocab), "data": {"path": "x.txt", "sha256": sha, "length": 100},
            "step": step, "history": [], "config": (cfg or config.Config()).to_dict()}


def state(seed=0):
    return create_train_state(jax.random.key(seed), Bigram(V), CFG)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "run", keep=5)
    for step in (1, 2):
        s.save(step, state(step), meta(step), val_loss=2.0)
    yield s
    s.close()


def damage(store, step):
    store.close()
    for path in (store.directory / str(step) / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            os.truncate(path, path.stat().st_size // 2)


# ----------------------------------------------------------------------------- the folder and its lock

@pytest.mark.parametrize("kind, code", [("under a regular file", "workdir_not_writable"), ("is a file", "workdir_is_file"),
                                        ("empty", "workdir_empty")])
def test_ensure_writable_refuses_with_one_line(tmp_path, kind, code):
    """Tests may run as root, where chmod does not stop writes: a path below a regular file cannot be created by
    anyone (ENOTDIR)."""
    blocker = write(tmp_path / "file", "x")
    path = {"under a regular file": blocker / "run", "is a file": blocker, "empty": runs.Path("")}[kind]
    with pytest.raises(UsageError) as info:
        runs.ensure_writable(path)
    assert info.value.code == code and "\n" not in str(info.value)
    assert blocker.read_text() == "x"


def test_ensure_writable_creates_the_folder(tmp_path):
    runs.ensure_writable(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()


def test_one_writer_at_a_time(tmp_path):
    with runs.exclusive(tmp_path):
        with pytest.raises(UsageError) as info:
            with runs.exclusive(tmp_path):
                pass
        assert info.value.code == "workdir_busy"
        with runs.exclusive(tmp_path, primary=False):  # other processes of a multi-process run do not lock
            pass
    with runs.exclusive(tmp_path):  # released: the lock never outlives its holder
        pass


# ----------------------------------------------------------------------------- the run's config

def test_a_new_run_uses_the_given_config_or_the_default_preset(tmp_path):
    assert runs.run_config(None, None, [], tmp_path) == config.load(config.DEFAULT_PRESET)
    assert runs.run_config(None, "tiny", ["train.steps=7"], tmp_path) == config.load("tiny", ["train.steps=7"])


def test_a_resume_keeps_the_checkpoint_config_and_lets_only_resumable_keys_change(tmp_path):
    saved = meta(1, cfg=config.load("tiny"))
    assert runs.run_config(saved, None, [], tmp_path) == config.load("tiny")
    resumable = ["train.steps=900", "eval.interval=7", "checkpoint.keep=9", "train.steps_per_call=3"]
    assert runs.run_config(saved, None, resumable, tmp_path) == config.load("tiny", resumable)
    assert runs.run_config(saved, "tiny", ["train.steps=900"], tmp_path).train.steps == 900
    with pytest.raises(UsageError) as info:
        runs.run_config(saved, None, ["train.learning_rate=0.5", "train.steps=900", "model.n_layer=2"], tmp_path)
    assert info.value.code == "config_changed"
    assert "model.n_layer, train.learning_rate" in str(info.value) and "train.steps" not in info.value.fields["keys"]
    with pytest.raises(UsageError) as info:  # another file: every key it changes is named
        runs.run_config(saved, "lecture", [], tmp_path)
    assert "train.batch_size" in str(info.value) and "--fresh" in str(info.value)


def test_check_compatible_refuses_other_vocabulary_or_data(tmp_path):
    runs.check_compatible(meta(1), meta(1), tmp_path)
    with pytest.raises(CheckpointError) as info:
        runs.check_compatible(meta(1), meta(1, vocab="abcdef"), tmp_path)
    assert info.value.code == "incompatible" and "another vocabulary" in str(info.value) and "--fresh" in str(info.value)
    with pytest.raises(CheckpointError) as info:
        runs.check_compatible(meta(1), meta(1, sha="cd" * 32), tmp_path)
    assert "other data" in str(info.value) and "--fresh" in str(info.value)


# ----------------------------------------------------------------------------- resume and damaged steps

def test_resume_restores_the_newest_step(store):
    saved, restored = runs.resume(store, jax.eval_shape(state), meta(0), print)
    assert saved["step"] == 2 and same_tree(restored.params, state(2).params)


def test_resume_sets_a_damaged_step_aside_and_uses_the_previous_one(store):
    damage(store, 2)
    notes = []
    saved, restored = runs.resume(store, jax.eval_shape(state), meta(0), notes.append)
    assert saved["step"] == 1 and same_tree(restored.params, state(1).params)
    assert store.steps() == [1]
    aside = list((store.workdir / runs.DAMAGED).iterdir())
    assert [p.name.split("-")[0] for p in aside] == ["2"] and (aside[0] / "state").is_dir()  # kept, never deleted
    assert len(notes) == 1 and "checkpoint step 2 is damaged" in notes[0] and str(aside[0]) in notes[0]


def test_resume_refuses_another_run_before_reading_its_arrays(store):
    """An incompatible checkpoint is not damage: nothing is set aside. (Its arrays are damaged in a way only reading
    them shows: truncated files would already fail the metadata check, which reads the arrays' shapes.)"""
    store.close()
    meta_file = store.directory / "2" / "meta" / "metadata"
    saved = json.loads(meta_file.read_text())
    saved["checksums"]["params/token_embedding_table/embedding"] ^= 1  # as if the array had changed on disk
    meta_file.write_text(json.dumps(saved))
    with pytest.raises(CheckpointError) as info:
        runs.resume(store, jax.eval_shape(state), meta(0, sha="cd" * 32), print)
    assert info.value.code == "incompatible"
    assert store.steps() == [1, 2] and not (store.workdir / runs.DAMAGED).exists()


def test_resume_of_only_damaged_steps_is_none(store):
    damage(store, 1)
    damage(store, 2)
    assert runs.resume(store, jax.eval_shape(state), meta(0), lambda _: None) is None
    assert store.steps() == []


def test_newest_meta_skips_unreadable_metadata(store):
    store.close()
    (store.directory / "2" / "meta" / "metadata").write_text("{not json")
    notes = []
    assert runs.newest_meta(store, notes.append)["step"] == 1
    assert "step 2 is damaged" in notes[0]
    assert runs.newest_meta(Store(store.workdir / "new"), print) is None
    np.testing.assert_array_equal(store.steps(), [1])


@pytest.mark.parametrize("fresh", [False, True], ids=["resume", "--fresh"])
def test_train_refuses_a_step_folder_it_did_not_write(fresh, tmp_path, capsys):
    from conftest import TINY, run_main, snapshot

    run = tmp_path / "run"
    write((run / "checkpoints" / "5").mkdir(parents=True) or run / "checkpoints" / "5" / "notes.txt", "mine")
    before = snapshot(run / "checkpoints")
    line = run_main(capsys, ["train", "--config", TINY, "--workdir", run, "--steps", "1", *["--fresh"] * fresh])
    assert "holds what this program did not write" in line and str(run / "checkpoints" / "5") in line
    assert snapshot(run / "checkpoints") == before
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]  # not even a lock file: refused, no trace


def test_a_metrics_log_without_checkpoints_is_refused_unless_fresh(tmp_path, capsys):
    from jaxbigram import cli
    from conftest import TINY, run_main

    run = tmp_path / "run"
    run.mkdir()
    write(run / "metrics.jsonl", '{"step": 7, "from": "another program"}\n')
    line = run_main(capsys, ["train", "--config", TINY, "--workdir", run, "--steps", "1"])
    assert "a metrics.jsonl but no checkpoints" in line and "--fresh" in line
    assert "another program" in (run / "metrics.jsonl").read_text()
    assert cli.main(["train", "--config", TINY, "--workdir", str(run), "--steps", "1", "--fresh"]) == 0
    capsys.readouterr()
    assert "another program" not in (run / "metrics.jsonl").read_text()
    assert (run / "checkpoints" / "1").is_dir()



# ----------------------------------------------------------------------------- permissions, and refusals leave no trace

def train_bound_by_permissions(workdir: Path, *args) -> subprocess.CompletedProcess:
    """``run.py train --workdir workdir *args`` in a subprocess that file permissions stop, even when the tests run
    as root (as another user, chmod alone stops it)."""
    from conftest import REPO_ROOT

    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXBIGRAM_DATA=DATA, JAXBIGRAM_COMPILE_CACHE="off")
    return run_bound_by_permissions(str(REPO_ROOT / "run.py"), "train", "--workdir", str(workdir), *args,
                                    env=env, cwd=REPO_ROOT)


@pytest.mark.parametrize("what", ["the lock file", "checkpoints/", "damaged-checkpoints/", "the workdir"])
def test_what_train_cannot_write_is_refused_before_training(what, tiny_workdir, tmp_path):
    """Found before a step is trained (not at the first save, after minutes of training): one line naming the path
    and what to do; nothing in the workdir changes (no step, no metrics row)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_workdir, run)
    (run / runs.DAMAGED).mkdir()
    target, mode, expected = {
        "the lock file": (run / runs.LOCK_FILE, 0o444,
                          f"cannot open {run / runs.LOCK_FILE} for writing (Permission denied): it is the lock"),
        "checkpoints/": (run / "checkpoints", 0o555, f"{run / 'checkpoints'} is not writable (permission denied)"),
        "damaged-checkpoints/": (run / runs.DAMAGED, 0o555,
                                 f"{run / runs.DAMAGED} is not writable (permission denied)"),
        "the workdir": (run, 0o555, f"workdir {run} is not writable (permission denied): pass a writable --workdir"),
    }[what]
    target.chmod(mode)
    before = snapshot(run)
    try:
        line = assert_usage_error(train_bound_by_permissions(run, "--steps", "300"), expected)
    finally:
        target.chmod(0o755)
    assert "make it writable" in line or "pass a writable --workdir" in line
    assert snapshot(run) == before


@pytest.mark.parametrize("case", ["a new folder, data missing", "an existing empty folder, bad config",
                                  "offline, no data given"])
def test_a_refused_train_leaves_nothing_it_created(case, tmp_path, cli_run):
    """Not the lock file, not the folder (nor its parents) it made for the run."""
    from conftest import TINY

    empty = tmp_path / "empty"
    empty.mkdir()
    if case == "a new folder, data missing":
        proc = cli_run("train", "--workdir", tmp_path / "a" / "b" / "run", "--data", tmp_path / "missing.txt")
        fragment = "does not exist"
    elif case == "an existing empty folder, bad config":
        proc = cli_run("train", "--config", TINY, "--workdir", empty, "--set", "train.steps=x")
        fragment = "train.steps must be"
    else:  # the download fails at once (a closed local port): no network is needed to test this
        offline = {"JAXBIGRAM_DATA": None, "XDG_CACHE_HOME": str(tmp_path / "cache"),
                   "JAXBIGRAM_DATA_URL": "http://127.0.0.1:9/"}
        proc = cli_run("train", "--workdir", tmp_path / "a" / "run", env=offline)
        fragment = "could not download tinyshakespeare"
    assert_usage_error(proc, fragment)
    assert not (tmp_path / "a").exists() and list(empty.iterdir()) == []


def test_a_lock_file_removed_by_its_holder_is_never_locked(tmp_path, monkeypatch):
    """A failed `train` removes the lock file it created: one who opened that file just before must not count its
    flock as the lock (a third could then lock a new file at the same path): it opens the path again."""
    lock = tmp_path / runs.LOCK_FILE
    real_flock, calls = runs.fcntl.flock, []

    def flock_after_removal(handle, operation):
        calls.append(operation)
        if len(calls) == 1:
            lock.unlink()  # its holder gave up between our open and our flock
        return real_flock(handle, operation)

    monkeypatch.setattr(runs.fcntl, "flock", flock_after_removal)
    with runs.exclusive(tmp_path):
        assert lock.exists() and len(calls) == 2
        monkeypatch.setattr(runs.fcntl, "flock", real_flock)
        with pytest.raises(UsageError) as info:  # and it is held: another is refused
            with runs.exclusive(tmp_path):
                pass
        assert info.value.code == "workdir_busy"
