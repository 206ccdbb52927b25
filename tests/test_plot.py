"""plot.py: loss.png, bigram.png and attention.png are valid PNGs of a sane size, the heatmap is the softmax of the
table, labels are visible, loss curves are one point per step, and a missing matplotlib, a bigram's attention or an
unknown prompt character is a one-line error."""

import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxbigram import cli, plot
from conftest import run_main, snapshot, store_params, write


def _png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", raw[8:16])
    assert (length, kind) == (13, b"IHDR")
    return struct.unpack(">II", raw[16:24])


def test_plot_writes_valid_pngs(tiny_workdir, tmp_path, capsys):
    assert cli.main(["plot", "--workdir", str(tiny_workdir), "--out", str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(tmp_path / plot.LOSS_PNG), str(tmp_path / plot.BIGRAM_PNG)]
    for name in (plot.LOSS_PNG, plot.BIGRAM_PNG):
        width, height = _png_size(tmp_path / name)
        assert 400 <= width <= 2000 and 300 <= height <= 2000, (name, width, height)
        assert (tmp_path / name).stat().st_size < 500_000


def test_heatmap_data_is_softmax_of_the_embedding_table(tiny_workdir):
    params, meta = store_params(tiny_workdir)
    table = np.asarray(params["token_embedding_table"]["embedding"], dtype=np.float64)
    expected = np.exp(table - table.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    probs = plot.bigram_probabilities(params)
    assert probs.shape == (len(meta["vocab"]),) * 2
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)


def test_char_labels_are_visible_and_distinct():
    chars = ["\n", " ", "\t", "\x0b", "a", "é", "!"]
    labels = [plot.char_label(c) for c in chars]
    assert labels[:2] == ["⏎", "␣"] and labels[4:] == ["a", "é", "!"]
    assert len(set(labels)) == len(labels) and all(label.strip() for label in labels)


def test_loss_curves_sorted_one_point_per_step():
    rows = [{"step": 100, "train_loss": 2.0, "val_loss": 2.1}, {"step": 0, "train_loss": 4.0, "val_loss": 4.1},
            {"step": 100, "train_loss": 1.9, "val_loss": 2.0}]  # a re-logged step: the last value counts
    curves = plot.loss_curves(rows)
    assert curves["step"].tolist() == [0, 100] and curves["train"].tolist() == [4.0, 1.9]
    assert curves["val"].tolist() == [4.1, 2.0]


def test_plot_without_matplotlib_is_one_line_error(tiny_workdir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    assert cli.main(["plot", "--workdir", str(tiny_workdir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: `python run.py plot` needs the optional package matplotlib: pip install 'jaxbigram[plot]'"]


@pytest.mark.parametrize("case", ["out is a file", "out under a file", "a PNG path is a folder"])
def test_plot_where_it_cannot_write_is_one_line(case, tiny_workdir_copy, tmp_path, capsys):
    workdir, out = tiny_workdir_copy, None
    if case == "out is a file":
        out = write(tmp_path / "taken.png", b"mine")
        expected = f"--out {out} is a file"
    elif case == "out under a file":
        out = write(tmp_path / "afile", b"mine") / "sub"
        expected = f"output folder path {out} goes through {out.parent}, which is a file"
    else:  # the default --out (the workdir), where loss.png cannot be written (as a read-only workdir would be;
        # these tests run as root, who may write anywhere)
        (workdir / plot.LOSS_PNG).mkdir()
        expected = f"cannot write the PNGs into {workdir}"
    before = snapshot(tmp_path)
    line = run_main(capsys, ["plot", "--workdir", workdir, *(["--out", out] if out is not None else [])])
    assert expected in line and "--out" in line
    assert snapshot(tmp_path) == before


@pytest.fixture
def gpt_workdir(gpt_tiny_run):
    """The session's GPT checkpoint (gpt-tiny, 200 steps); plots go to ``--out``, never into it."""
    return gpt_tiny_run[0]


def test_attention_png_of_a_gpt(gpt_workdir, tmp_path, capsys):
    assert cli.main(["plot", "--attention", "--prompt", "ROMEO:\nBut soft", "--workdir", str(gpt_workdir),
                     "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / plot.ATTENTION_PNG)]
    width, height = _png_size(tmp_path / plot.ATTENTION_PNG)
    assert 400 <= width <= 3000 and 300 <= height <= 3000
    assert 20_000 < (tmp_path / plot.ATTENTION_PNG).stat().st_size < 2_000_000


def test_attention_default_prompt_keeps_to_the_vocabulary():
    assert plot.attention_prompt(list("\n:ROMEab"), 8) == "ROMEO:\na"  # "But soft, wh" has none of them
    assert plot.attention_prompt(list("qxz"), 8) == "qxz"  # nothing of the default text: the vocabulary itself
    assert len(plot.attention_prompt([chr(c) for c in range(32, 127)] + ["\n"], 256)) == plot.ATTENTION_PROMPT_CHARS


@pytest.mark.parametrize("case", ["bigram", "unknown character", "prompt without --attention"])
def test_attention_mistakes_are_one_line(case, tiny_workdir, gpt_workdir, tmp_path, capsys):
    if case == "bigram":
        argv, expected = ["--attention", "--workdir", tiny_workdir], "holds a bigram, which has no attention"
    elif case == "unknown character":
        argv, expected = ["--attention", "--prompt", "ROMEO\u00e9", "--workdir", gpt_workdir], "outside the model's vocabulary"
    else:
        argv, expected = ["--prompt", "ROMEO", "--workdir", gpt_workdir], "add --attention"
    assert expected in run_main(capsys, ["plot", *argv, "--out", tmp_path])
    assert not (tmp_path / plot.ATTENTION_PNG).exists()
