"""checkpoint.py: exact TrainState round trip, metadata, step lookup errors, compatibility, retention."""

import jax
import numpy as np
import pytest

from jaxbigram import config
from jaxbigram.checkpoint import Store
from jaxbigram.errors import UsageError
from jaxbigram.train import create_train_state, train_step

V = 9
VOCAB = "\n !aéxz日😀"  # V characters, some non-ASCII
CFG = config.TrainConfig(learning_rate=0.1, lr_schedule="cosine", warmup_steps=1, steps=10)


@pytest.fixture(scope="module")
def state():
    """A TrainState three AdamW steps in, so params, moments and the step counter are all non-trivial."""
    state = create_train_state(jax.random.key(0), V, CFG)
    rng = np.random.default_rng(0)
    step = jax.jit(train_step)
    for _ in range(3):
        x, y = (rng.integers(0, V, (4, 5)).astype(np.int32) for _ in range(2))
        state, _ = step(state, x, y)
    return state


def fresh_state(seed=1):
    """Another TrainState of the same structure, at step 0."""
    return create_train_state(jax.random.key(seed), V, CFG)


def meta(step=0, vocab=VOCAB, sha="ab" * 32):
    return {"vocab": vocab, "vocab_size": len(vocab), "data": {"path": "x.txt", "sha256": sha, "length": 100},
            "step": step, "config": config.Config().to_dict()}


def same_tree(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return (jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
            and all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y) for x, y in zip(la, lb)))


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "run", keep=2)
    yield s
    s.close()


def test_train_state_round_trip_is_exact(store, state):
    store.save(3, state, meta(3), val_loss=2.5)
    restored = store.restore_state(3, fresh_state())
    assert int(restored.step) == 3
    assert same_tree(restored.params, state.params)
    assert same_tree(restored.opt_state, state.opt_state)


def test_read_meta_and_restore_params(store, state):
    saved = meta(3)
    store.save(3, state, saved, val_loss=2.5)

    def without_checksums(m):  # the store adds a CRC32 per array of the state
        return {k: v for k, v in m.items() if k != "checksums"}

    assert without_checksums(store.read_meta()) == saved == without_checksums(store.read_meta(3))
    assert set(store.read_meta()["checksums"]) >= {"params/token_embedding_table/embedding", "step"}
    assert store.read_meta()["vocab"] == VOCAB  # non-ASCII survives the JSON
    params, got_meta = store.restore_params()
    assert same_tree(params, state.params)
    assert without_checksums(got_meta) == saved
    # a reader that does not create anything sees the same
    reader = Store(store.workdir, create=False)
    assert reader.steps() == [3] and without_checksums(reader.read_meta()) == saved


def test_steps_and_resolve_step(store, state):
    assert store.steps() == [] and store.latest_step() is None
    with pytest.raises(UsageError) as info:
        store.resolve_step(None)
    assert info.value.code == "no_checkpoint"
    for step in (10, 20):
        store.save(step, state, meta(step), val_loss=3.0 - step / 100)
    assert store.steps() == [10, 20] and store.latest_step() == 20
    assert store.resolve_step(None) == 20 and store.resolve_step(10) == 10
    with pytest.raises(UsageError) as info:
        store.resolve_step(15)
    assert info.value.code == "no_step"
    assert "10, 20" in str(info.value)


def test_saving_an_existing_step_again_is_a_no_op(store, state):
    store.save(5, state, meta(5), val_loss=2.0)
    other = fresh_state()
    store.save(5, other, meta(5, vocab="abcdefghi"), val_loss=1.0)
    assert store.steps() == [5]
    assert same_tree(store.restore_params(5)[0], state.params)


def test_missing_workdir_without_create_is_no_checkpoint(tmp_path):
    with pytest.raises(UsageError) as info:
        Store(tmp_path / "nothing", create=False)
    assert info.value.code == "no_checkpoint"
    assert "run.py train" in str(info.value)


def test_incompatible_vocab_or_data_is_refused(store, state):
    store.save(1, state, meta(1), val_loss=2.0)
    saved = store.check_compatible(meta(1))
    assert {k: v for k, v in saved.items() if k != "checksums"} == meta(1)
    with pytest.raises(UsageError) as info:
        store.check_compatible(meta(1, vocab="abcdefghij"))
    assert info.value.code == "incompatible" and "--fresh" in str(info.value)
    with pytest.raises(UsageError) as info:
        store.check_compatible(meta(1, sha="cd" * 32))
    assert info.value.code == "incompatible" and "--fresh" in str(info.value)


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
    store.save(2, state, meta(2), val_loss=2.0)  # usable again afterwards
    assert store.steps() == [2]


def test_workdir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(UsageError) as info:
        Store(path)
    assert info.value.code == "workdir_is_file"
