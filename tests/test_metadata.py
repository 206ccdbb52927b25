"""metadata.py: a step's JSON metadata is checked before anything uses it. Metadata of the wrong shape (not an object,
keys missing, wrong types, a vocabulary or config that does not match the step's own arrays) makes the step damaged,
exactly like a truncated array: readers say so in one line, `info` warns, `train` sets the step aside and resumes from
the previous one, whose config is then the run's (a damaged newest step never costs an intact older one)."""

import json
import re

import jax
import numpy as np
import pytest

from jaxbigram import config, metadata, models
from jaxbigram.cli import main
from conftest import DATA, error_line, snapshot, store_params

VOCAB = "\n !ab"
TINY_CFG = config.load("tiny")


def _row(step, loss=2.0):
    return {"step": step, "train_loss": loss, "val_loss": loss}


def valid_meta(step=200, cfg=TINY_CFG, vocab=VOCAB) -> dict:
    """Metadata as `train` writes it for a bigram of ``vocab`` at ``step``."""
    model = models.build(cfg.model, len(vocab), cfg.train.block_size)
    return {"config": cfg.to_dict(), "model": model.kind, "num_params": model.param_count(), "vocab": vocab,
            "vocab_size": len(vocab), "data": {"path": "x.txt", "sha256": "ab" * 32, "length": 1000}, "step": step,
            "history": [_row(0, 4.0), _row(100), _row(step)], "last_eval": _row(step),
            "exact": {"step": step, "val_loss": 2.5, "optimum_val_loss": 2.4, "train_loss": None},
            "checksums": {"step": 7, "params/token_embedding_table/embedding": 2**32 - 1}}


def saved_params(cfg=TINY_CFG, vocab=VOCAB):
    """The params' shapes on disk of the step ``valid_meta`` describes."""
    return jax.eval_shape(models.build(cfg.model, len(vocab), cfg.train.block_size).init, jax.random.key(0))


def edited(meta, *path_and_value):
    """A copy of ``meta`` with ``meta[k1][k2]… = value`` (``DELETE`` as the value removes the key)."""
    meta = json.loads(json.dumps(meta))
    *keys, last, value = path_and_value
    table = meta
    for key in keys:
        table = table[key]
    if value is DELETE:
        del table[last]
    else:
        table[last] = value
    return meta


DELETE = object()

# (what is wrong, the metadata, a fragment of the reason)
WRONG = [
    ("empty object", {}, "it has no 'step'"),
    ("a list", [1, 2, 3], "it is a list, not an object"),
    ("a string", "meta", "it is a string, not an object"),
    ("null", None, "it is null, not an object"),
    *((f"no {key}", edited(valid_meta(), key, DELETE), f"it has no {key!r}")
      for key in ("config", "vocab", "vocab_size", "data", "history", "checksums")),
    ("step of another folder", edited(valid_meta(), "step", 100),
     "its step is 100, but it is in the folder of step 200"),
    ("step a string", edited(valid_meta(), "step", "200"), "step is a string, not an integer"),
    ("step true", edited(valid_meta(), "step", True), "step is true/false, not an integer"),
    ("vocab a list", edited(valid_meta(), "vocab", list(VOCAB)), "vocab is a list, not a string"),
    ("vocab_size a string", edited(valid_meta(), "vocab_size", "5"), "vocab_size is a string, not an integer"),
    ("config a list", edited(valid_meta(), "config", []), "config is a list, not an object"),
    ("config without a section", edited(valid_meta(), "config", "model", DELETE), "it has no config.'model'"),
    ("config with a bad value", edited(valid_meta(), "config", "train", "steps", "x"),
     "config: config key train.steps must be an integer"),
    ("config with an unknown key", edited(valid_meta(), "config", "model", "n_layers", 3), "unknown config key"),
    ("data a string", edited(valid_meta(), "data", "x.txt"), "data is a string, not an object"),
    ("data without sha256", edited(valid_meta(), "data", "sha256", DELETE), "it has no data.'sha256'"),
    ("data.sha256 short", edited(valid_meta(), "data", "sha256", "abc"), "data.sha256 is not 64 hex digits"),
    ("data.path with NUL", edited(valid_meta(), "data", "path", "a\0b"), "data.path has a NUL character"),
    ("data.length negative", edited(valid_meta(), "data", "length", -1), "data.length is negative"),
    ("history a row of garbage", edited(valid_meta(), "history", [_row(0), "x"]), "history is not eval rows"),
    ("history past the step", edited(valid_meta(), "history", [_row(0), _row(300)]), "history is not eval rows"),
    ("history out of order", edited(valid_meta(), "history", [_row(100), _row(0)]), "history is not eval rows"),
    ("history a null loss", edited(valid_meta(), "history", [{"step": 0, "train_loss": None, "val_loss": 1}]),
     "history is not eval rows"),
    ("last_eval of another step", edited(valid_meta(), "last_eval", _row(100)), "last_eval is not the eval row"),
    ("exact of another step", edited(valid_meta(), "exact", "step", 100), "exact.step is 100, not 200"),
    ("exact without val_loss", edited(valid_meta(), "exact", "val_loss", DELETE), "it has no exact.'val_loss'"),
    ("exact a list", edited(valid_meta(), "exact", [1]), "exact is a list, not an object"),
    ("checksums not CRC32s", edited(valid_meta(), "checksums", "step", "x"), "checksums are not all CRC32 values"),
    ("checksums too big", edited(valid_meta(), "checksums", "step", 2**32), "checksums are not all CRC32 values"),
    # the vocabulary
    ("vocab shorter than vocab_size", edited(valid_meta(), "vocab", VOCAB[:-1]), "vocab is not 5 distinct characters"),
    ("vocab with a repeat", edited(valid_meta(), "vocab", "\n !aa"), "vocab is not 5 distinct characters"),
    ("vocab out of order", edited(valid_meta(), "vocab", "\n !ba"), "in code-point order"),
    # consistency with the model and the arrays on disk
    ("model of another kind", edited(valid_meta(), "model", "gpt"), "model is 'gpt' but its config says 'bigram'"),
    ("num_params wrong", edited(valid_meta(), "num_params", 26), "num_params is 26, its config and vocab give 25"),
    ("vocab consistent with vocab_size but not the arrays",
     edited(edited(edited(valid_meta(), "vocab", "\n !abc"), "vocab_size", 6), "num_params", DELETE),
     "params/token_embedding_table/embedding is (5, 5) on disk, but its config and vocab give (6, 6)"),
    ("config of another model than the arrays",
     edited(edited(edited(valid_meta(), "config", "model", "kind", "gpt"), "num_params", DELETE), "model", DELETE),
     "is absent on disk, but its config and vocab give"),
]


def test_valid_metadata_passes_and_optional_keys_may_be_missing():
    assert metadata.check(valid_meta(), 200, saved_params()) == valid_meta()
    bare = {k: v for k, v in valid_meta().items() if k not in ("model", "num_params", "last_eval", "exact")}
    assert metadata.check(bare, 200, saved_params()) == bare
    partial = edited(valid_meta(), "config", "train", "devices", DELETE)  # a key missing in a section: its default
    assert metadata.check(partial, 200, saved_params()) == partial


@pytest.mark.parametrize("meta, reason", [(m, r) for _, m, r in WRONG], ids=[w for w, _, _ in WRONG])
def test_wrong_metadata_names_its_first_problem(meta, reason):
    with pytest.raises(metadata.MetadataError) as info:
        metadata.check(meta, 200, saved_params())
    assert reason in str(info.value) and "\n" not in str(info.value)


GPT_CFG = config.load("gpt-tiny")


@pytest.mark.parametrize("key, value", [("n_layer", 3), ("n_embd", 64)], ids=["n_layer", "n_embd"])
def test_gpt_config_that_does_not_match_its_arrays(key, value):
    meta = valid_meta(cfg=GPT_CFG)
    assert metadata.check(meta, 200, saved_params(GPT_CFG)) == meta
    wrong = edited(edited(meta, "config", "model", key, value), "num_params", DELETE)
    with pytest.raises(metadata.MetadataError) as info:
        metadata.check(wrong, 200, saved_params(GPT_CFG))
    assert re.search(r"params/\S+ is \S+.* on disk, but its config and vocab give", str(info.value)), info.value
    block = edited(edited(meta, "config", "train", "block_size", 17), "num_params", DELETE)
    with pytest.raises(metadata.MetadataError, match=r"params/wpe/embedding is \(16, 32\) on disk, .* give \(17, 32\)"):
        metadata.check(block, 200, saved_params(GPT_CFG))


# ----------------------------------------------------------------------------- end to end: every command

def rewrite_meta(workdir, step, change):
    """Replace step ``step``'s metadata with ``change(metadata)`` (valid JSON, perhaps of the wrong shape)."""
    path = workdir / "checkpoints" / str(step) / "meta" / "metadata"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _without(meta, *keys):
    return {k: v for k, v in meta.items() if k not in keys}


# wrong shapes × commands, on the session's tiny bigram run (steps 100 and 200): step 200's metadata is replaced
SHAPES = {
    "empty object": lambda m: {},
    "list": lambda m: [1, 2, 3],
    "wrong types": lambda m: {**m, "vocab_size": str(m["vocab_size"])},
    "missing keys": lambda m: _without(m, "config", "vocab"),
    "config inconsistent with the arrays": lambda m: _without(
        {**m, "config": {**m["config"], "model": {**m["config"]["model"], "kind": "gpt"}}}, "num_params", "model"),
    "vocab inconsistent with the arrays": lambda m: _without(
        {**m, "vocab": m["vocab"][:-1], "vocab_size": m["vocab_size"] - 1}, "num_params"),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("command", ["sample", "eval", "plot"])
def test_readers_report_wrong_metadata_as_a_damaged_step(command, shape, tiny_workdir_copy, tmp_path, capsys):
    rewrite_meta(tiny_workdir_copy, 200, SHAPES[shape])
    before = snapshot(tiny_workdir_copy)
    extra = ["--out", tmp_path / "png"] if command == "plot" else []
    assert main([command, "--workdir", str(tiny_workdir_copy), *map(str, extra)]) == 2
    captured = capsys.readouterr()
    line = error_line(captured.err)
    assert line.startswith(f"error: checkpoint step 200 in {tiny_workdir_copy} is truncated or corrupted (bad "
                           f"metadata: "), line
    assert "use --step with an older step (available: 100)" in line
    assert captured.out == ""
    assert snapshot(tiny_workdir_copy) == before
    assert main([command, "--workdir", str(tiny_workdir_copy), "--step", "100", *map(str, extra)]) == 0  # the advice


@pytest.mark.parametrize("shape", SHAPES)
def test_info_warns_and_describes_the_intact_steps(shape, tiny_workdir_copy, capsys):
    rewrite_meta(tiny_workdir_copy, 200, SHAPES[shape])
    before = snapshot(tiny_workdir_copy)
    assert main(["info", "--workdir", str(tiny_workdir_copy), "--json"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: checkpoint step 200 is damaged (bad metadata: ")
    info = json.loads(captured.out)
    assert info["steps"] == [100, 200] and info["model"] == "bigram" and info["vocab_size"] == 65
    assert info["config"] == config.load("tiny").to_dict()
    assert snapshot(tiny_workdir_copy) == before


@pytest.mark.parametrize("shape", SHAPES)
def test_train_sets_wrong_metadata_aside_and_resumes_from_the_previous_step(shape, tiny_workdir, tiny_workdir_copy,
                                                                            capsys):
    """The run's config comes from step 100 (the newest step that passes), so step 100 restores intact and training
    reproduces the original step 200 bit for bit."""
    original = store_params(tiny_workdir, 200)[0]
    rewrite_meta(tiny_workdir_copy, 200, SHAPES[shape])
    assert main(["train", "--workdir", str(tiny_workdir_copy), "--steps", "300"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, err
    assert re.match(r"warning: checkpoint step 200 is damaged \(bad metadata: .*\); moved it to \S+"
                    r"damaged-checkpoints/200-\S+; trying the previous one$", warnings[0]), warnings[0]
    assert "resuming from step 100" in err
    assert [p.name.split("-")[0] for p in (tiny_workdir_copy / "damaged-checkpoints").iterdir()] == ["200"]
    params, meta = store_params(tiny_workdir_copy, 200)
    assert meta["config"] == config.load("tiny", ["train.steps=300"]).to_dict()
    np.testing.assert_array_equal(jax.tree_util.tree_leaves(params)[0], jax.tree_util.tree_leaves(original)[0])


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    """A tiny GPT (2 layers, block 16) with checkpoints at steps 2 and 4."""
    workdir = tmp_path_factory.mktemp("gpt") / "run"
    assert main(["train", "--config", "gpt-tiny", "--data", DATA, "--workdir", str(workdir), "--steps", "4",
                 *("--set", "train.steps_per_call=2", "--set", "eval.interval=2", "--set", "eval.iters=1"),
                 *("--set", "checkpoint.interval=2")]) == 0
    return workdir


@pytest.fixture
def gpt_copy(gpt_run, tmp_path):
    import shutil

    return shutil.copytree(gpt_run, tmp_path / "gpt")


@pytest.mark.parametrize("key, section, value", [("n_layer", "model", 3), ("block_size", "train", 17)])
def test_a_gpt_whose_metadata_names_another_architecture(key, section, value, gpt_run, gpt_copy, capsys):
    """The hostile edit: one number of the config changed in the newest step's metadata. `sample` says the step is
    damaged; `train` sets it aside, takes the config of step 2 and ends with exactly the original step 4."""
    capsys.readouterr()
    rewrite_meta(gpt_copy, 4, lambda m: {**m, "config": {**m["config"], section: {**m["config"][section], key: value}}})
    assert main(["sample", "--workdir", str(gpt_copy), "--max-new-tokens", "3"]) == 2
    line = error_line(capsys.readouterr().err)
    assert "checkpoint step 4" in line and "bad metadata: num_params is" in line and "available: 2" in line
    assert main(["train", "--workdir", str(gpt_copy), "--steps", "4"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint step 4 is damaged (bad metadata" in err and "resuming from step 2" in err
    assert "step 2 is damaged" not in err  # the intact older step is never judged against the damaged config
    assert [p.name.split("-")[0] for p in (gpt_copy / "damaged-checkpoints").iterdir()] == ["4"]
    original, retrained = store_params(gpt_run, 4), store_params(gpt_copy, 4)
    assert retrained[1]["config"] == original[1]["config"]
    for a, b in zip(jax.tree_util.tree_leaves(original[0]), jax.tree_util.tree_leaves(retrained[0])):
        np.testing.assert_array_equal(a, b)
