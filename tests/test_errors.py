"""Every bad input of issue 4: one ``error: …`` line on stderr saying what to do, exit code 2, no traceback, and every
existing checkpoint left exactly as it was (file tree, sizes and mtimes).

Most rows call ``cli.main`` in-process (JAX start-up costs ~1.5 s per subprocess); a few run ``python run.py`` for real.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jaxbigram.cli import main


ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.toml")
DATA = os.environ.get("JAXBIGRAM_DATA", str(ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its kind, size and mtime: equal snapshots mean nothing was touched."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def error_line(stderr: str) -> str:
    """The single ``error: …`` line; fails on a traceback or on several error lines."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir with checkpoints at steps 100 and 200 (tiny config), trained in-process."""
    workdir = tmp_path_factory.mktemp("errors") / "run"
    assert main(["train", "--config", TINY, "--data", DATA, "--workdir", str(workdir), "--steps", "200"]) == 0
    return workdir


@pytest.fixture
def untouched(trained):
    """Asserts after the test that the trained workdir is byte-for-byte and mtime-for-mtime the same."""
    before = snapshot(trained)
    yield trained
    assert snapshot(trained) == before


def run_main(capsys, argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    return error_line(err)


def _write(path: Path, content) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# ----------------------------------------------------------------------------- data

DATA_ROWS = {
    "missing path": (lambda d: d / "nope.txt", ["does not exist", "--data"]),
    "a directory": (lambda d: d, ["is a directory", "--data"]),
    "empty file": (lambda d: _write(d / "empty.txt", b""), ["is empty"]),
    "fewer than block_size + 2": (lambda d: _write(d / "short.txt", "abcdefg"), ["7 characters", "block_size + 2 = 10"]),
    "val split too small": (lambda d: _write(d / "val.txt", "abcdefghij" * 6),
                            ["validation split has 6 characters", "data.val_fraction"]),
    "not UTF-8": (lambda d: _write(d / "latin1.txt", "hello wörld".encode("latin-1") * 5),
                  ["not UTF-8", "offset 7"]),
}


@pytest.mark.parametrize("row", DATA_ROWS)
def test_bad_data(row, untouched, tmp_path, capsys):
    make, expected = DATA_ROWS[row]
    line = run_main(capsys, ["train", "--config", TINY, "--workdir", untouched, "--data", make(tmp_path)])
    for text in expected:
        assert text in line


def test_download_impossible(untouched, tmp_path, monkeypatch, capsys):
    """No --data, no $JAXBIGRAM_DATA, nothing cached, and the download URL unreachable (a closed local port)."""
    monkeypatch.delenv("JAXBIGRAM_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXBIGRAM_DATA_URL", "http://127.0.0.1:9/input.txt")
    line = run_main(capsys, ["train", "--config", TINY, "--workdir", untouched])
    assert "could not download" in line and "--data" in line and "JAXBIGRAM_DATA" in line
    assert not (tmp_path / "cache" / "jaxbigram" / "tinyshakespeare" / "input.txt").exists()


# ----------------------------------------------------------------------------- config

CONFIG_FILES = {
    "unknown file": (None, ["does not exist", "--config"]),
    "TOML syntax error": ("[train]\nsteps = 10\nbatch_size = = 3\n", ["not valid TOML", "line 3"]),
    "unknown section": ("[trian]\nsteps = 10\n", ["unknown config section [trian]", "did you mean 'train'"]),
    "unknown key": ("[train]\nlearning_rat = 0.1\n", ["unknown config key train.learning_rat",
                                                      "did you mean 'learning_rate'"]),
    "wrong type": ("[train]\nbatch_size = \"big\"\n", ["train.batch_size must be an integer", "'big'"]),
}


@pytest.mark.parametrize("row", CONFIG_FILES)
def test_bad_config_file(row, untouched, tmp_path, capsys):
    text, expected = CONFIG_FILES[row]
    path = tmp_path / "cfg.toml"
    if text is not None:
        path.write_text(text)
    line = run_main(capsys, ["train", "--config", path, "--workdir", untouched, "--data", DATA])
    for t in expected:
        assert t in line


OUT_OF_RANGE = ["train.batch_size=0", "train.block_size=-1", "train.steps=0", "eval.iters=0",
                "train.learning_rate=0", "train.learning_rate=-0.1"]


@pytest.mark.parametrize("override", OUT_OF_RANGE)
def test_out_of_range(override, untouched, capsys):
    key = override.split("=")[0]
    line = run_main(capsys, ["train", "--config", TINY, "--workdir", untouched, "--data", DATA, "--set", override])
    assert f"config key {key} must be" in line


@pytest.mark.parametrize("flag", [["--set", "train.steps"], ["--set", "steps=3"], ["--steps", "0"],
                                  ["--steps", "ten"]])
def test_bad_override(flag, untouched, capsys):
    line = run_main(capsys, ["train", "--config", TINY, "--workdir", untouched, "--data", DATA, *flag])
    assert flag[0] in line
    if flag == ["--set", "train.steps"]:
        assert "section.key=value" in line


# ----------------------------------------------------------------------------- sampling

SAMPLE_ROWS = {
    "temperature zero": (["--temperature", "0"], ["--temperature must be > 0"]),
    "temperature negative": (["--temperature", "-1"], ["--temperature must be > 0"]),
    "top-k below 1": (["--top-k", "0"], ["--top-k must be between 1 and the vocabulary size 65"]),
    "top-k above vocab": (["--top-k", "66"], ["--top-k must be between 1 and the vocabulary size 65"]),
    "negative max-new-tokens": (["--max-new-tokens", "-1"], ["--max-new-tokens must be >= 0"]),
    "negative num-samples": (["--num-samples", "-2"], ["--num-samples must be >= 0"]),
    "prompt outside vocab": (["--prompt", "café €5"], ["'é', '€'", "stored in the checkpoint"]),
    "step that does not exist": (["--step", "150"], ["no checkpoint for step 150", "available steps are 100, 200"]),
}


@pytest.mark.parametrize("row", SAMPLE_ROWS)
def test_bad_sampling(row, untouched, capsys):
    flags, expected = SAMPLE_ROWS[row]
    line = run_main(capsys, ["sample", "--workdir", untouched, *flags])
    for t in expected:
        assert t in line


# ----------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("command", ["sample", "eval", "info"])
def test_no_checkpoint(command, tmp_path, capsys):
    line = run_main(capsys, [command, "--workdir", tmp_path / "never-trained"])
    assert "no checkpoint in" in line and "train" in line
    assert not (tmp_path / "never-trained").exists()


@pytest.fixture
def damaged(trained, tmp_path):
    """A copy of the trained workdir whose latest step (200) has every array data file truncated to half.

    (All of them: which file holds the params, the only arrays sample/eval read, differs from run to run.)
    """
    workdir = tmp_path / "damaged"
    shutil.copytree(trained, workdir)
    files = [p for p in (workdir / "checkpoints" / "200" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        os.truncate(path, path.stat().st_size // 2)
    return workdir


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_corrupted_checkpoint(command, damaged, capsys):
    before = snapshot(damaged)
    line = run_main(capsys, [command, "--workdir", damaged])
    assert "checkpoint step 200" in line and "truncated or corrupted" in line
    assert "--step" in line and "available: 100" in line
    assert snapshot(damaged) == before
    assert main([command, "--workdir", str(damaged), "--step", "100"]) == 0  # and the advice works


def test_checksum_mismatch_is_reported(trained, tmp_path, capsys):
    """A changed array that still parses is caught by the CRC32 stored in the metadata, not silently loaded."""
    import json

    workdir = tmp_path / "flipped"
    shutil.copytree(trained, workdir)
    meta_file = workdir / "checkpoints" / "200" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    key = next(k for k in meta["checksums"] if k.startswith("params/"))
    meta["checksums"][key] ^= 1  # equivalent to the array having changed on disk
    meta_file.write_text(json.dumps(meta))
    line = run_main(capsys, ["sample", "--workdir", workdir])
    assert "checkpoint step 200" in line and f"checksum mismatch in {key}" in line


def _other_text(tmp_path: Path, same_vocab: bool) -> Path:
    text = Path(DATA).read_text(encoding="utf-8")
    # the same characters in another order (same model shape, other data), or a lower-case excerpt (other vocabulary)
    text = text[::-1] if same_vocab else text[:20000].lower()
    return _write(tmp_path / "other.txt", text)


@pytest.mark.parametrize("same_vocab", [False, True], ids=["other vocabulary", "other text same vocabulary"])
def test_resume_with_other_corpus(same_vocab, untouched, tmp_path, capsys):
    line = run_main(capsys, ["train", "--config", TINY, "--workdir", untouched, "--data", _other_text(tmp_path, same_vocab),
                             "--steps", "300"])
    assert "--fresh" in line
    assert ("another vocabulary" in line) != same_vocab
    assert ("other data" in line) == same_vocab


@pytest.mark.parametrize("kind", ["under a regular file", "is a file"])
def test_workdir_not_writable(kind, tmp_path, capsys):
    """Tests may run as root, where chmod does not stop writes: a path below a regular file cannot be created by
    anyone (ENOTDIR). (A read-only bind mount gives the same message, checked by hand; see the README.)"""
    blocker = _write(tmp_path / "file", "x")
    workdir = blocker / "run" if kind == "under a regular file" else blocker
    line = run_main(capsys, ["train", "--config", TINY, "--data", DATA, "--workdir", workdir])
    assert str(workdir) in line and ("not writable" in line if kind == "under a regular file" else "is a file" in line)
    assert blocker.read_text() == "x"


# ----------------------------------------------------------------------------- platform

def test_unknown_platform(untouched, capsys):
    line = run_main(capsys, ["train", "--config", TINY, "--workdir", untouched, "--data", DATA, "--platform", "quantum"])
    assert "unknown --platform 'quantum'" in line and "cpu, gpu or tpu" in line


# ----------------------------------------------------------------------------- a few for real, through run.py

def _run_py(*argv, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **(env_extra or {}))
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["unavailable platform", "unavailable gpu", "missing data", "corrupted checkpoint",
                                  "set without ="])
def test_subprocess(case, trained, damaged, tmp_path):
    before = snapshot(trained)
    argv = {
        "unavailable platform": ["train", "--config", TINY, "--workdir", trained, "--data", DATA, "--platform", "tpu"],
        "unavailable gpu": ["sample", "--workdir", trained, "--platform", "gpu"],  # tries cuda, then rocm
        "missing data": ["train", "--config", TINY, "--workdir", trained, "--data", tmp_path / "missing.txt"],
        "corrupted checkpoint": ["sample", "--workdir", damaged],
        "set without =": ["train", "--workdir", trained, "--set", "train.learning_rate"],
    }[case]
    proc = _run_py(*argv)
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc.stderr)
    assert proc.stdout == ""
    assert snapshot(trained) == before
    if case == "unavailable platform":
        assert "platform 'tpu' is not available" in line and "--platform cpu" in line
    if case == "unavailable gpu":
        assert "platform 'gpu' is not available" in line and "--platform cpu" in line



def test_eval_on_text_with_characters_the_model_never_saw(untouched, tmp_path, capsys):
    other = _write(tmp_path / "other.txt", "héllo wörld\n" * 50)
    line = run_main(capsys, ["eval", "--workdir", untouched, "--data", other])
    assert "2 characters outside the checkpoint's vocabulary" in line and "'é'" in line and "'ö'" in line


def test_a_second_train_in_a_busy_workdir_is_refused(trained, capsys):
    """While one `train` holds the workdir, another is refused (they would clean up each other's saves)."""
    from jaxbigram.checkpoint import Store

    with Store(trained).exclusive():
        before = snapshot(trained)
        line = run_main(capsys, ["train", "--config", TINY, "--workdir", trained, "--data", DATA, "--steps", "300"])
        assert "another `train` is running in" in line and "--workdir" in line
        assert snapshot(trained) == before
    # released: the lock never outlives its holder
    with Store(trained).exclusive():
        pass
