"""checkpoint.py: the Store — exact TrainState round trip, metadata, params alone, step lookup errors, checksums,
retention (latest N plus the best), clear, and read-only stores that never write."""

import errno
import json
import os

import jax
import numpy as np
import pytest

from jaxbigram import config
from jaxbigram.checkpoint import Store
from jaxbigram.errors import CheckpointError, JaxbigramError
from jaxbigram.models.bigram import Bigram
from jaxbigram.train import create_train_state, train_step
from conftest import same_tree, snapshot

V = 9
VOCAB = "\n !axzé日😀"  # V characters in code-point order, some non-ASCII
CFG = config.TrainConfig(learning_rate=0.1, lr_schedule="cosine", warmup_steps=1, steps=10)


@pytest.fixture(scope="module")
def state():
    """A TrainState three AdamW steps in, so params, moments and the step counter are all non-trivial."""
    state = create_train_state(jax.random.key(0), Bigram(V), CFG)
    rng = np.random.default_rng(0)
    step = jax.jit(train_step)
    for _ in range(3):
        x, y = (rng.integers(0, V, (4, 5)).astype(np.int32) for _ in range(2))
        state, _ = step(state, x, y)
    return state


def template():
    """The shapes of a TrainState of the same structure (what fit restores into)."""
    return jax.eval_shape(lambda: create_train_state(jax.random.key(1), Bigram(V), CFG))


def meta(step=0, vocab=VOCAB, sha="ab" * 32):
    return {"vocab": vocab, "vocab_size": len(vocab), "data": {"path": "x.txt", "sha256": sha, "length": 100},
            "step": step, "history": [], "config": config.Config().to_dict()}


def without_checksums(m):  # the store adds a CRC32 per array of the state
    return {k: v for k, v in m.items() if k != "checksums"}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "run", keep=2)
    yield s
    s.close()


def test_train_state_round_trip_is_exact(store, state):
    store.save(3, state, meta(3), val_loss=2.5)
    saved, restored = store.restore(3, template())
    assert int(restored.step) == 3
    assert same_tree(restored.params, state.params)
    assert same_tree(restored.opt_state, state.opt_state)
    assert without_checksums(saved) == meta(3)


def test_read_meta_and_restore_params(store, state):
    saved = meta(3)
    store.save(3, state, saved, val_loss=2.5)
    assert without_checksums(store.read_meta(3)) == saved
    assert set(store.read_meta(3)["checksums"]) >= {"params/token_embedding_table/embedding", "step"}
    assert store.read_meta(3)["vocab"] == VOCAB  # non-ASCII survives the JSON
    params, got_meta = store.restore_params(3)
    assert same_tree(params, state.params)
    assert without_checksums(got_meta) == saved
    # a read-only reader sees the same
    reader = Store(store.workdir, read_only=True)
    assert reader.steps() == [3] and without_checksums(reader.read_meta(3)) == saved
    reader.close()


def test_steps_and_a_missing_step(store, state):
    assert store.steps() == []
    for step in (10, 20):
        store.save(step, state, meta(step), val_loss=3.0 - step / 100)
    assert store.steps() == [10, 20]
    for read in (store.read_meta, store.restore_params, lambda s: store.restore(s, template())):
        with pytest.raises(CheckpointError) as info:
            read(15)
        assert info.value.code == "no_step" and "10, 20" in str(info.value)


def test_saving_an_existing_step_again_is_a_no_op(store, state):
    store.save(5, state, meta(5), val_loss=2.0)
    other = create_train_state(jax.random.key(1), Bigram(V), CFG)
    store.save(5, other, meta(5, vocab="abcdefghi"), val_loss=1.0)
    assert store.steps() == [5]
    assert same_tree(store.restore_params(5)[0], state.params)


def test_read_only_store_of_a_missing_workdir_lists_nothing_and_creates_nothing(tmp_path):
    store = Store(tmp_path / "nothing", read_only=True)
    assert store.steps() == []
    store.close()
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(RuntimeError):
        Store(tmp_path / "nothing", read_only=True).save(1, None, {}, 0.0)


def test_keeps_the_latest_n_and_the_best(store, state):
    val_losses = {1: 3.0, 2: 1.0, 3: 2.5, 4: 2.8, 5: 2.9}  # the best is step 2, an old one
    for step, loss in val_losses.items():
        store.save(step, state, meta(step), val_loss=loss)
    assert store.steps() == [2, 4, 5]  # keep=2 latest, plus the best
    assert store.read_meta(2)["step"] == 2


def test_clear_removes_every_checkpoint(store, state):
    store.save(1, state, meta(1), val_loss=2.0)
    store.clear()
    assert store.steps() == []
    assert not any(p.name.startswith(".checkpoints-deleting-") for p in store.workdir.iterdir())
    store.save(2, state, meta(2), val_loss=2.0)  # usable again afterwards
    assert store.steps() == [2]


def test_a_changed_array_fails_its_checksum(store, state):
    """A changed array that still parses is caught by the CRC32 stored in the metadata, not silently loaded."""
    store.save(1, state, meta(1), val_loss=2.0)
    store.save(2, state, meta(2), val_loss=2.0)
    store.close()
    meta_file = store.directory / "2" / "meta" / "metadata"
    saved = json.loads(meta_file.read_text())
    key = next(k for k in saved["checksums"] if k.startswith("params/"))
    saved["checksums"][key] ^= 1  # equivalent to the array having changed on disk
    meta_file.write_text(json.dumps(saved))
    reader = Store(store.workdir, read_only=True)
    for read in (reader.restore_params, lambda s: reader.restore(s, template())):
        with pytest.raises(CheckpointError) as info:
            read(2)
        assert info.value.code == "corrupt_checkpoint" and f"checksum mismatch in {key}" in str(info.value)
        assert "available: 1" in str(info.value)
    reader.close()


def test_truncated_arrays_are_a_corrupt_checkpoint_and_readers_touch_nothing(store, state):
    store.save(1, state, meta(1), val_loss=2.0)
    store.close()
    files = [p for p in (store.directory / "1" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        os.truncate(path, path.stat().st_size // 2)
    before = snapshot(store.workdir)
    reader = Store(store.workdir, read_only=True)
    with pytest.raises(CheckpointError) as info:
        reader.restore_params(1)
    reader.close()
    assert info.value.code == "corrupt_checkpoint" and "truncated or corrupted" in str(info.value)
    assert "\n" not in str(info.value)
    assert snapshot(store.workdir) == before


@pytest.mark.parametrize("number, code, text", [
    (errno.ENOSPC, "disk_full", "no space left on device while saving step 30"),
    (errno.EACCES, "save_denied", "cannot write step 30 in {directory} (Permission denied): make it writable"),
    (errno.EROFS, "save_denied", "cannot write step 30 in {directory} (Read-only file system)")],
    ids=["full disk", "permission denied", "read-only"])
def test_a_refused_save_removes_the_half_written_step_and_names_where_to_resume(number, code, text, store, state,
                                                                                monkeypatch):
    """orbax writes its temp directory, then the file system refuses (the disk fills up, the folder became read-only):
    one line naming the step and the step to resume from, no temp directory left, and the earlier steps restore
    intact."""
    store.save(10, state, meta(10), val_loss=2.0)
    store.save(20, state, meta(20), val_loss=1.0)
    manager = store.manager

    def refused(step, *args, **kwargs):
        (store.directory / f"{step}.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(manager, "save", refused)
    with pytest.raises(JaxbigramError) as info:
        store.save(30, state, meta(30), val_loss=0.5)
    message = str(info.value)
    assert info.value.code == code and "\n" not in message
    assert text.format(directory=store.directory) in message and "resume from step 20" in message
    assert not list(store.directory.glob("*.orbax-checkpoint-tmp*"))
    reader = Store(store.workdir, read_only=True)
    try:
        assert reader.steps() == [10, 20]
        for step in (10, 20):
            params, saved = reader.restore_params(step)
            assert saved["step"] == step and same_tree(params, state.params)
    finally:
        reader.close()
