"""evaluate.py: the exact report against numpy, loading a checkpoint, evaluating on another text, and what `info`
knows about a run (checkpoints, metrics log, model, parameters)."""

import hashlib
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbigram import data, evaluate, progress, runs
from jaxbigram.errors import CheckpointError, UsageError
from jaxbigram.models.bigram import Bigram, logits_table
from conftest import store_params, write
from reference import np_mean_cross_entropy


def test_exact_report_against_numpy(tiny_workdir, corpus):
    ckpt = runs.load_checkpoint(tiny_workdir)
    train, val = data.split(corpus.ids, 0.1)
    report = evaluate.exact_report(ckpt.model, ckpt.params, train, val)
    table = logits_table(ckpt.params)
    assert report["model"] == "bigram"
    assert report["val_loss"] == pytest.approx(np_mean_cross_entropy(table, val), rel=1e-6)
    assert report["train_loss"] == pytest.approx(np_mean_cross_entropy(table, train), rel=1e-6)
    assert report["val_bpc"] == pytest.approx(report["val_loss"] / math.log(2))
    assert report["optimum_val_loss"] == pytest.approx(2.482, abs=5e-4)
    assert report["gap_val"] == pytest.approx(report["val_loss"] - report["optimum_val_loss"]) and report["gap_val"] > 0
    assert report["gap_train"] == pytest.approx(report["train_loss"] - report["optimum_train_loss"])


@pytest.mark.parametrize("kind", ["bigram", "gpt"])
@pytest.mark.parametrize("train_len, val_len", [(0, 0), (1, 1), (9, 1), (9, 0), (1, 9)])
def test_a_split_without_a_character_pair_is_nan_for_every_model(kind, train_len, val_len):
    """A split of 0 or 1 ids has nothing to predict: NaN for the bigram and the GPT alike (``cli eval`` shows it as
    null with a note), while a split with a pair is scored as usual."""
    from jaxbigram.models.gpt import GPT

    model = Bigram(5) if kind == "bigram" else GPT(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)
    params = model.init(jax.random.key(0))
    ids = np.arange(train_len + val_len, dtype=np.uint8) % 5
    splits = {"train": ids[:train_len], "val": ids[train_len:]}
    report = evaluate.exact_report(model, params, splits["train"], splits["val"])
    for split, split_ids in splits.items():
        for key in (f"{split}_loss", f"{split}_bpc", f"gap_{split}"):
            assert math.isnan(report[key]) == (len(split_ids) < 2), (key, report[key])
        if len(split_ids) >= 2:
            assert report[f"{split}_loss"] == pytest.approx(evaluate.split_loss(model, params, split_ids), rel=1e-6)


def test_load_checkpoint_newest_or_a_given_step(tiny_workdir):
    newest = runs.load_checkpoint(tiny_workdir)
    assert newest.step == 200 and newest.model == Bigram(65) and newest.tokenizer.vocab_size == 65
    assert newest.workdir == tiny_workdir
    older = runs.load_checkpoint(tiny_workdir, 100)
    assert older.step == 100 and not np.array_equal(logits_table(older.params), logits_table(newest.params))
    np.testing.assert_array_equal(logits_table(newest.params), logits_table(store_params(tiny_workdir, 200)[0]))
    with pytest.raises(CheckpointError) as info:
        runs.load_checkpoint(tiny_workdir, 150)
    assert info.value.code == "no_step"


def test_load_checkpoint_of_an_empty_workdir(tmp_path):
    with pytest.raises(CheckpointError) as info:
        runs.load_checkpoint(tmp_path / "never")
    assert info.value.code == "no_checkpoint" and not (tmp_path / "never").exists()


def test_evaluate_checkpoint_on_the_training_text(tiny_workdir, data_path):
    notes = []
    report = evaluate.evaluate_checkpoint(tiny_workdir, log=notes.append)
    assert report["step"] == 200 and report["same_data_as_training"] and notes == []
    assert report["data"] == str(data_path) and report["sha256"] == data.TINYSHAKESPEARE_SHA256
    assert report["val_loss"] == pytest.approx(runs.load_checkpoint(tiny_workdir).meta["exact"]["val_loss"])


def test_evaluate_checkpoint_on_another_text_says_so(tiny_workdir, tmp_path, data_path):
    """Another text in the same characters is encoded with the checkpoint's vocabulary; its sha256 differs."""
    text = data_path.read_text(encoding="utf-8")[:50_000]
    other = write(tmp_path / "other.txt", text.replace("\n", " ") + "\n")  # fewer distinct characters: another vocab
    notes = []
    report = evaluate.evaluate_checkpoint(tiny_workdir, data=str(other), log=notes.append)
    assert not report["same_data_as_training"] and report["sha256"] == hashlib.sha256(other.read_bytes()).hexdigest()
    assert len(notes) == 1 and "is not the text step 200 was trained on" in notes[0] and "sha256" in notes[0]
    params = runs.load_checkpoint(tiny_workdir).params
    ids = data.Tokenizer(runs.load_checkpoint(tiny_workdir).meta["vocab"]).encode(other.read_text())
    _, val = data.split(ids, 0.1)
    assert report["val_loss"] == pytest.approx(np_mean_cross_entropy(logits_table(params), val), rel=1e-6)


def test_evaluate_checkpoint_on_text_with_unknown_characters(tiny_workdir, tmp_path):
    other = write(tmp_path / "other.txt", "héllo wörld\n" * 50)
    with pytest.raises(UsageError) as info:
        evaluate.evaluate_checkpoint(tiny_workdir, data=str(other))
    assert info.value.code == "eval_unknown_chars" and "2 characters" in str(info.value)


def test_run_info_reports_the_run(tiny_workdir, data_path):
    info = runs.run_info(tiny_workdir)
    metrics = progress.read_metrics(tiny_workdir / progress.METRICS_FILE)
    checkpointed = {r["step"]: r["val_loss"] for r in metrics if r["step"] in info["steps"]}
    assert info["steps"] == [100, 200] and info["latest_step"] == 200
    assert info["model"] == "bigram" and info["num_params"] == 65 * 65
    assert info["best_step"] == min(checkpointed, key=checkpointed.get)
    assert info["best_val_loss"] == checkpointed[info["best_step"]]
    assert info["metrics"]["evals"] == 3 and info["metrics"]["best_val_loss"] == min(r["val_loss"] for r in metrics)
    text = data_path.read_text(encoding="utf-8")
    assert info["vocab"] == "".join(sorted(set(text))) and info["vocab_size"] == len(set(text))
    assert info["data"]["sha256"] == hashlib.sha256(data_path.read_bytes()).hexdigest()
    assert info["config"]["train"]["steps"] == 200 and info["exact"]["step"] == 200
    json.dumps(info)


def test_loss_rows_and_optima(tiny_workdir_copy):
    ckpt = runs.load_checkpoint(tiny_workdir_copy, 100)
    assert [r["step"] for r in runs.loss_rows(tiny_workdir_copy, ckpt.meta, 100)] == [0, 100]
    (tiny_workdir_copy / progress.METRICS_FILE).unlink()  # without the log: the checkpoint's own history
    assert [r["step"] for r in runs.loss_rows(tiny_workdir_copy, ckpt.meta, 100)] == [0, 100]
    assert runs.metrics_summary(tiny_workdir_copy) is None
    # step 100 has no exact report: the optimum comes from its (unchanged) data file
    assert "exact" not in ckpt.meta
    assert runs.optima(ckpt.meta)["val"] == pytest.approx(2.482, abs=5e-4)
    assert runs.optima({**ckpt.meta, "data": {**ckpt.meta["data"], "sha256": "0" * 64}}) is None


@pytest.mark.parametrize("explicit", [False, True], ids=["newest", "explicit step"])
def test_load_checkpoint_when_a_step_vanishes_while_being_read(explicit, tiny_workdir_copy, monkeypatch):
    """A running train drops step 200 between the listing and the read: the newest remaining step is read instead;
    an explicit --step that went away is 'step_moved'; one that never existed stays 'no_step'."""
    from jaxbigram.checkpoint import Store

    real = Store.restore_params
    vanished = []

    def racing(self, step):
        if not vanished:
            vanished.append(step)
            shutil.rmtree(self.directory / str(step))
        return real(self, step)

    monkeypatch.setattr(Store, "restore_params", racing)
    if explicit:
        with pytest.raises(CheckpointError) as info:
            runs.load_checkpoint(tiny_workdir_copy, 200)
        assert info.value.code == "step_moved" and "step 200" in str(info.value) and "100" in str(info.value)
        with pytest.raises(CheckpointError) as info:
            runs.load_checkpoint(tiny_workdir_copy, 150)
        assert info.value.code == "no_step"
    else:
        assert runs.load_checkpoint(tiny_workdir_copy).step == 100
    assert vanished == [200]


def test_estimate_loss_is_the_mean_over_random_batches():
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 17, 5000).astype(np.uint8))
    model = Bigram(17)
    params = model.init(jax.random.key(1))
    key = jax.random.key(2)
    got = evaluate.estimate_loss(model, params, key, ids, ids[:1000], iters=3, batch_size=4, block_size=5)
    train_key, val_key = jax.random.split(key)
    for split_key, split_data, name in ((train_key, ids, "train"), (val_key, ids[:1000], "val")):
        losses = [model.loss(params, *data.get_batch(k, split_data, 4, 5)) for k in jax.random.split(split_key, 3)]
        assert float(got[name]) == pytest.approx(float(np.mean(losses)), rel=1e-6)
