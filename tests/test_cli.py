"""The command line end to end, in subprocesses: train → sample → eval --json → info, and bad inputs."""

import json

import numpy as np
import pytest

from jaxbigram import data
from jaxbigram.checkpoint import Store
from jaxbigram.model import logits_table
from reference import np_mean_cross_entropy


def assert_usage_error(proc, *fragments):
    """Exit code 2, nothing on stdout, exactly one ``error: …`` line on stderr, no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in error_lines[0]
    return error_lines[0]


def test_train_prints_progress_and_the_exact_report(tiny_train):
    out, err = tiny_train.proc.stdout, tiny_train.proc.stderr
    for line in ("step 0: train loss", "step 100: train loss", "step 200: train loss", "exact loss at step 200",
                 "closed-form bigram optimum"):
        assert line in out
    assert "backend cpu" in err  # the JAX backend and devices, on stderr
    assert Store(tiny_train.workdir, create=False).steps() == [100, 200]


def test_sample_prints_only_text_and_is_deterministic(run_cli, tiny_workdir):
    first = run_cli("sample", "--workdir", tiny_workdir, "--seed", 1337)
    second = run_cli("sample", "--workdir", tiny_workdir, "--seed", 1337)
    assert first.returncode == second.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    vocab = set(Store(tiny_workdir, create=False).read_meta()["vocab"])
    text = first.stdout
    assert text.startswith("\n") and text.endswith("\n")  # the default context '\n', then a closing newline
    assert len(text) == 1 + 500 + 1
    assert set(text) <= vocab
    assert "jax" not in text and "sampling" not in text  # diagnostics go to stderr
    assert "sampling from step 200" in first.stderr


def test_sample_with_prompt_and_other_seed(run_cli, tiny_workdir):
    proc = run_cli("sample", "--workdir", tiny_workdir, "--seed", 1, "--prompt", "ROMEO:", "--max-new-tokens", 40)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ROMEO:") and len(proc.stdout) == len("ROMEO:") + 40 + 1


def test_eval_json_reports_exact_losses(run_cli, tiny_workdir, corpus):
    proc = run_cli("eval", "--workdir", tiny_workdir, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # one JSON object, nothing else on stdout
    for key in ("step", "train_loss", "val_loss", "val_bpc", "optimum_val_loss"):
        assert key in report
    assert report["step"] == 200
    params, _ = Store(tiny_workdir, create=False).restore_params()
    train, val = data.split(corpus.ids, 0.1)
    assert report["val_loss"] == pytest.approx(np_mean_cross_entropy(logits_table(params), val), rel=1e-6)
    assert report["train_loss"] == pytest.approx(np_mean_cross_entropy(logits_table(params), train), rel=1e-6)
    assert report["val_bpc"] == pytest.approx(report["val_loss"] / np.log(2))
    assert report["optimum_val_loss"] == pytest.approx(2.482, abs=5e-4)
    assert report["val_loss"] > report["optimum_val_loss"]


def test_info_describes_the_run(run_cli, tiny_workdir, data_path):
    proc = run_cli("info", "--workdir", tiny_workdir)
    assert proc.returncode == 0, proc.stderr
    assert "steps 100, 200 (latest 200)" in proc.stdout
    assert "65 characters" in proc.stdout
    assert data.TINYSHAKESPEARE_SHA256 in proc.stdout and str(data_path) in proc.stdout


# ----------------------------------------------------------------------------- bad inputs: exit 2, one line

def test_missing_data_file(run_cli, tmp_path, repo_root):
    missing = tmp_path / "nope" / "input.txt"
    proc = run_cli("train", "--config", repo_root / "configs" / "tiny.toml", "--data", missing,
                   "--workdir", tmp_path / "run")
    assert_usage_error(proc, str(missing), "--data")


def test_empty_data_file(run_cli, tmp_path, repo_root):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    proc = run_cli("train", "--config", repo_root / "configs" / "tiny.toml", "--data", empty,
                   "--workdir", tmp_path / "run")
    assert_usage_error(proc, str(empty), "empty")


def test_prompt_with_unknown_characters(run_cli, tiny_workdir):
    proc = run_cli("sample", "--workdir", tiny_workdir, "--prompt", "Thé café€")
    line = assert_usage_error(proc, "vocabulary")
    for char in "é€":
        assert repr(char) in line


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_sample_or_eval_without_a_checkpoint(run_cli, tmp_path, command):
    workdir = tmp_path / "empty_run"
    proc = run_cli(command, "--workdir", workdir)
    assert_usage_error(proc, "no checkpoint", "train")
    assert not workdir.exists()  # reading never creates a workdir
