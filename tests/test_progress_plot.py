"""Issue 6, the user's view: progress lines, metrics.jsonl across resumes, plot PNGs, info, top-p, --prompt-file, --help."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hashlib
import io
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxbigram import cli, config, generate, plot, progress
from jaxbigram.checkpoint import Store
from jaxbigram.data import load_corpus
from jaxbigram.train import fit, learning_rate_schedule

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.toml"


def _corpus_text(n_chars: int = 30_000) -> str:
    """A deterministic small corpus with '\\n', ' ', letters and punctuation."""
    rng = np.random.default_rng(0)
    words = ["the", "king", "queen", "to", "be", "or", "not", "ROMEO:", "JULIET:", "love,", "night.", "what?"]
    out, size = [], 0
    while size < n_chars:
        line = " ".join(rng.choice(words, size=rng.integers(3, 9))) + "\n"
        out.append(line)
        size += len(line)
    return "".join(out)


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(_corpus_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cli_run(corpus_path, tmp_path_factory):
    """One real `run.py train` in a subprocess (stderr is a pipe, not a terminal), then its workdir."""
    workdir = tmp_path_factory.mktemp("run")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "train", "--config", str(TINY), "--data",
                           str(corpus_path), "--workdir", str(workdir)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return workdir, proc


# ----------------------------------------------------------------------------- progress

def test_plain_progress_lines_when_stderr_is_not_a_tty(cli_run):
    _, proc = cli_run
    lines = [line for line in proc.stderr.splitlines() if line.startswith("progress: ")]
    # tiny.toml: 200 steps, eval every 100 → one plain line per eval (steps 0, 100, 200)
    assert [line.split(" | ")[0] for line in lines] == [
        "progress: step 0/200 (0%)", "progress: step 100/200 (50%)", "progress: step 200/200 (100%)"]
    assert "ETA 0:00" in lines[-1] and "steps/s" in lines[-1] and "val loss" in lines[-1]
    assert "\r" not in proc.stderr  # no bar redraws in a log


def test_reporter_draws_a_tqdm_bar_when_asked():
    err = io.StringIO()
    with progress.Reporter(start_step=0, total_steps=10, resumed=False, err=err, bar=True) as rep:
        rep.eval({"step": 0, "train_loss": 4.0, "val_loss": 4.1})
        rep.chunk(10, np.array([3.0, 2.0]), 0.01)
    text = err.getvalue()
    assert "10/10" in text and "loss 2.5000" in text and "val 4.1000@0" in text
    assert "progress: " not in text


# ----------------------------------------------------------------------------- metrics.jsonl

def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


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


def test_metrics_jsonl_survives_resume_without_duplicates(cli_run, corpus_path, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(cli_run[0], workdir)  # a 200-step run, checkpointed at 100 and 200
    metrics = workdir / progress.METRICS_FILE
    assert [r["step"] for r in _read(metrics)] == [0, 100, 200]
    # a killed run may have logged past its last checkpoint, and torn its last line
    with metrics.open("a") as f:
        f.write(json.dumps({"step": 300, "train_loss": 99.0, "val_loss": 99.0}) + '\n{"step": 40')
    cfg = config.load(TINY, ["train.steps=400"])
    store = Store(workdir, keep=cfg.checkpoint.keep)
    try:
        result = fit(cfg, load_corpus(corpus_path, use_cache=False), store, out=io.StringIO(), err=io.StringIO())
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


# ----------------------------------------------------------------------------- plots

def _png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", raw[8:16])
    assert (length, kind) == (13, b"IHDR")
    return struct.unpack(">II", raw[16:24])


def test_plot_writes_valid_pngs(cli_run, tmp_path, capsys):
    workdir, _ = cli_run
    assert cli.main(["plot", "--workdir", str(workdir), "--out", str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(tmp_path / plot.LOSS_PNG), str(tmp_path / plot.BIGRAM_PNG)]
    for name in (plot.LOSS_PNG, plot.BIGRAM_PNG):
        width, height = _png_size(tmp_path / name)
        assert 400 <= width <= 2000 and 300 <= height <= 2000, (name, width, height)
        assert (tmp_path / name).stat().st_size < 500_000


def test_heatmap_data_is_softmax_of_the_embedding_table(cli_run):
    workdir, _ = cli_run
    store = Store(workdir, create=False)
    params, meta = store.restore_params()
    store.close()
    table = np.asarray(params["token_embedding_table"]["embedding"], dtype=np.float64)
    expected = np.exp(table - table.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    probs = plot.bigram_probabilities(params)
    assert probs.shape == (len(meta["vocab"]),) * 2
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)


def test_char_labels_are_visible_and_distinct():
    chars = ["\n", " ", "\t", "\x0b", "a", "é", "!"]
    labels = [plot.char_label(c) for c in chars]
    assert labels[:2] == ["\\n", "␣"] and labels[4:] == ["a", "é", "!"]
    assert len(set(labels)) == len(labels) and all(label.strip() for label in labels)


def test_plot_without_matplotlib_is_one_line_error(cli_run, monkeypatch, capsys):
    workdir, _ = cli_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    assert cli.main(["plot", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: `run.py plot` needs the optional package matplotlib: pip install 'jaxbigram[plot]'"]


# ----------------------------------------------------------------------------- info

def test_info_reports_the_run(cli_run, corpus_path, capsys):
    workdir, _ = cli_run
    assert cli.main(["info", "--workdir", str(workdir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    metrics = _read(workdir / progress.METRICS_FILE)
    checkpointed = {r["step"]: r["val_loss"] for r in metrics if r["step"] in info["steps"]}
    assert info["steps"] == [100, 200] and info["latest_step"] == 200
    assert info["best_step"] == min(checkpointed, key=checkpointed.get)
    assert info["best_val_loss"] == checkpointed[info["best_step"]]
    assert info["metrics"]["evals"] == 3 and info["metrics"]["best_val_loss"] == min(r["val_loss"] for r in metrics)
    text = corpus_path.read_text(encoding="utf-8")
    assert "".join(info["vocab"]) == "".join(sorted(set(text))) and info["vocab_size"] == len(set(text))
    assert info["data"]["sha256"] == hashlib.sha256(corpus_path.read_bytes()).hexdigest()
    assert info["config"]["train"]["steps"] == 200


# ----------------------------------------------------------------------------- sampling conveniences

def _nucleus_numpy(logits: np.ndarray, temperature: float, top_k: int, top_p: float):
    """Independent float64 reference: kept sets per row, and rows where p sits too close to a cumulative sum."""
    z = logits.astype(np.float64) / temperature
    if top_k:
        kth = np.sort(z, axis=1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if top_p >= 1.0:  # the filter is off: every character the top-k filter left
        return p > 0, p, np.zeros(len(p), dtype=bool)
    keep, ambiguous = np.zeros_like(p, dtype=bool), np.zeros(len(p), dtype=bool)
    for i, row in enumerate(p):
        order = np.argsort(-row, kind="stable")
        cum = np.cumsum(row[order])
        n = int(np.searchsorted(cum, top_p - 1e-12)) + 1  # smallest n with cum[n-1] >= p
        keep[i, order[:min(n, len(row))]] = True
        ambiguous[i] = np.min(np.abs(cum - top_p)) < 1e-5
    return keep, p, ambiguous


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 10)])
def test_top_p_keeps_the_smallest_set_reaching_p(temperature, top_k):
    vocab = 40
    logits = np.asarray(jax.random.normal(jax.random.key(3), (vocab, vocab))) * 2.0
    params = {"token_embedding_table": {"embedding": logits}}
    checked = 0
    for top_p in (0.05, 0.3, 0.5, 0.8, 0.9, 0.95, 0.999, 1.0):
        cdf = np.asarray(generate.next_char_cdf(params, temperature, top_k, top_p), dtype=np.float64)
        probs = np.diff(cdf, axis=1, prepend=0.0)
        keep, p, ambiguous = _nucleus_numpy(logits, temperature, top_k, top_p)
        rows = ~ambiguous
        np.testing.assert_array_equal(probs[rows] > 0, keep[rows])
        renorm = np.where(keep, p, 0.0) / np.where(keep, p, 0.0).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(probs[rows], renorm[rows], atol=2e-6)
        checked += int(rows.sum())
    assert checked >= 0.95 * 8 * vocab


def _sample(workdir, *flags, capsys):
    code = cli.main(["sample", "--workdir", str(workdir), "--max-new-tokens", "80", *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prompt_file_and_num_samples(cli_run, tmp_path, capsys):
    workdir, _ = cli_run
    prompt = "ROMEO:\nthe king"
    path = tmp_path / "prompt.txt"
    path.write_text(prompt, encoding="utf-8")
    code, from_file, _ = _sample(workdir, "--prompt-file", str(path), capsys=capsys)
    assert code == 0 and from_file.startswith(prompt)
    assert (0, from_file) == _sample(workdir, "--prompt", prompt, capsys=capsys)[:2]

    code, three, _ = _sample(workdir, "--prompt-file", str(path), "--num-samples", "3", capsys=capsys)
    parts = three.split("---------- sample ")
    assert code == 0 and parts[0] == "" and len(parts) == 4
    bodies = [p.split(" ----------\n", 1)[1] for p in parts[1:]]
    assert [p.split(" ----------")[0] for p in parts[1:]] == ["1 of 3", "2 of 3", "3 of 3"]
    assert all(b.startswith(prompt) for b in bodies) and len(set(bodies)) == 3
    assert bodies[0].rstrip("\n") == from_file.rstrip("\n")  # sample 1 uses the same key as a single sample

    code, out, err = _sample(workdir, "--prompt-file", str(tmp_path / "missing.txt"), capsys=capsys)
    assert code == 2 and out == "" and err.strip().splitlines()[-1].startswith("error: cannot read prompt file")
    code, _, err = _sample(workdir, "--prompt-file", str(path), "--prompt", "x", capsys=capsys)
    assert code == 2 and "not allowed with argument" in err


@pytest.mark.parametrize("command", ["train", "sample", "eval", "info", "plot"])
def test_help_shows_defaults_and_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "(default: " in text
    assert f"example:\n  python run.py {command}" in text
    assert "(default: None)" not in text and "(default: False)" not in text
