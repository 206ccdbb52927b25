"""The command line end to end: train → sample → eval → info on the session's tiny run, then every bad input: one
``error: …`` line on stderr saying what to do, exit code 2, no traceback, and every existing checkpoint left exactly
as it was (file tree, sizes and mtimes).

Most rows call ``cli.main`` in-process (JAX start-up costs ~1.5 s per subprocess); a few run ``python run.py`` for real.
"""

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxbigram import data, runs
from jaxbigram.cli import main
from conftest import DATA, REPO_ROOT, TINY, assert_usage_error, error_line, run_main, snapshot, store_params, write


# ----------------------------------------------------------------------------- the happy path

def test_train_prints_progress_and_the_exact_report(tiny_train):
    out, err = tiny_train.proc.stdout, tiny_train.proc.stderr
    for line in ("step 0: train loss", "step 100: train loss", "step 200: train loss", "exact loss at step 200",
                 "closed-form bigram optimum", "trained to step 200"):
        assert line in out
    assert "backend cpu" in err  # the JAX backend and devices, on stderr
    assert f"data: {DATA} (from --data;" in err
    assert sorted(int(p.name) for p in (tiny_train.workdir / "checkpoints").iterdir() if p.name.isdigit()) == [100, 200]


def test_sample_prints_only_text_and_is_deterministic(run_cli, cli_run, tiny_workdir):
    first = run_cli("sample", "--workdir", tiny_workdir, "--seed", 1337)
    second = cli_run("sample", "--workdir", tiny_workdir, "--seed", 1337)  # another process: the same text
    assert first.returncode == second.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    vocab = set(store_params(tiny_workdir)[1]["vocab"])
    text = first.stdout
    assert text.startswith("\n") and text.endswith("\n")  # the default context '\n', then a closing newline
    assert len(text) == 1 + 500 + 1
    assert set(text) <= vocab
    assert first.stderr.count("\n") == 1 and "sampling from step 200" in first.stderr  # one start-up line
    assert "(bigram; jax" in first.stderr


def test_sample_prompt_prompt_file_and_num_samples(tiny_workdir, tmp_path, capsys):
    def sample(*flags):
        code = main(["sample", "--workdir", str(tiny_workdir), "--max-new-tokens", "80", *flags])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = sample("--seed", "1", "--prompt", "ROMEO:")
    assert code == 0 and out.startswith("ROMEO:") and len(out) == len("ROMEO:") + 80 + 1
    prompt = "ROMEO:\nthe king"
    path = write(tmp_path / "prompt.txt", prompt)
    code, from_file, _ = sample("--prompt-file", str(path))
    assert code == 0 and from_file.startswith(prompt)
    assert (0, from_file) == sample("--prompt", prompt)[:2]

    code, three, _ = sample("--prompt-file", str(path), "--num-samples", "3")
    parts = three.split("---------- sample ")
    assert code == 0 and parts[0] == "" and len(parts) == 4
    bodies = [p.split(" ----------\n", 1)[1] for p in parts[1:]]
    assert [p.split(" ----------")[0] for p in parts[1:]] == ["1 of 3", "2 of 3", "3 of 3"]
    assert all(b.startswith(prompt) for b in bodies) and len(set(bodies)) == 3
    assert bodies[0].rstrip("\n") == from_file.rstrip("\n")  # sample 1 uses the same key as a single sample

    code, out, err = sample("--prompt-file", str(tmp_path / "missing.txt"))
    assert code == 2 and out == "" and str(tmp_path / "missing.txt") in error_line(err)
    code, _, err = sample("--prompt-file", str(path), "--prompt", "x")
    assert code == 2 and "not allowed with argument" in err


def test_eval_json_reports_exact_losses(cli_run, tiny_workdir):
    proc = cli_run("eval", "--workdir", tiny_workdir, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # one JSON object, nothing else on stdout
    for key in ("step", "train_loss", "val_loss", "val_bpc", "optimum_val_loss", "gap_val", "model"):
        assert key in report
    assert report["step"] == 200 and report["same_data_as_training"] is True
    assert report["val_loss"] == pytest.approx(store_params(tiny_workdir)[1]["exact"]["val_loss"])
    assert report["val_bpc"] == pytest.approx(report["val_loss"] / np.log(2))
    assert report["val_loss"] > report["optimum_val_loss"] == pytest.approx(2.482, abs=5e-4)


def test_eval_json_on_another_text_notes_the_sha256_difference(tiny_workdir, tmp_path, capsys):
    other = write(tmp_path / "other.txt", Path(DATA).read_text(encoding="utf-8")[::-1])  # same characters
    assert main(["eval", "--workdir", str(tiny_workdir), "--json", "--data", str(other)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["same_data_as_training"] is False and report["data"] == str(other)
    assert "is not the text step 200 was trained on" in captured.err and "sha256" in captured.err
    assert data.TINYSHAKESPEARE_SHA256[:12] in captured.err


def test_info_describes_the_run(cli_run, tiny_workdir, data_path):
    proc = cli_run("info", "--workdir", tiny_workdir)
    assert proc.returncode == 0, proc.stderr
    assert "model:       bigram, 4,225 parameters" in proc.stdout
    assert "steps 100, 200 (latest 200)" in proc.stdout
    assert "65 characters" in proc.stdout
    assert data.TINYSHAKESPEARE_SHA256 in proc.stdout and str(data_path) in proc.stdout
    assert "[model] kind='bigram'" in proc.stdout


def test_train_a_preset_by_name_from_another_folder(cli_run, tmp_path):
    proc = cli_run("train", "--config", "tiny", "--workdir", "run", "--steps", "100", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "trained to step 100" in proc.stdout
    assert (tmp_path / "run" / "checkpoints" / "100").is_dir()


def test_resume_without_data_uses_the_recorded_text(tiny_workdir_copy, monkeypatch, capsys):
    monkeypatch.setenv("JAXBIGRAM_DATA", str(tiny_workdir_copy / "not-there.txt"))  # would fail if it were read
    assert main(["train", "--workdir", str(tiny_workdir_copy), "--steps", "300"]) == 0
    err = capsys.readouterr().err
    assert f"data: {DATA} (from checkpoint;" in err and "resuming from step 200" in err
    assert store_params(tiny_workdir_copy)[1]["step"] == 300


@pytest.mark.parametrize("flags, keys", [(["--set", "train.learning_rate=0.5", "--steps", "300"], "train.learning_rate"),
                                         (["--config", "lecture"], "train.batch_size, train.learning_rate")])
def test_resume_with_another_config_is_refused_and_names_the_keys(flags, keys, untouched, capsys):
    line = run_main(capsys, ["train", "--workdir", untouched, *flags])
    assert "trained with other settings" in line and keys in line and "--fresh" in line


@pytest.mark.parametrize("override, expected", [("train.block_size=2000000", "block_size"),
                                               ("train.batch_size=10000000", "this run needs about"),
                                               ("train.devices=5", "train.devices = 5 but JAX has 1 device(s)"),
                                               ("train.steps_per_call=3000000000", "train.steps_per_call")])
def test_fresh_with_an_impossible_config_leaves_the_old_checkpoints(override, expected, untouched, capsys):
    """`untouched` checks that checkpoints/ and metrics.jsonl are exactly as they were (sizes and mtimes)."""
    log = (untouched / "metrics.jsonl").read_bytes()
    line = run_main(capsys, ["train", "--workdir", untouched, "--fresh", "--set", override])
    assert expected in line
    assert (untouched / "metrics.jsonl").read_bytes() == log


def test_resume_may_change_only_the_step_count_and_the_cadence(tiny_workdir_copy, capsys):
    assert main(["train", "--workdir", str(tiny_workdir_copy), "--set", "eval.iters=3", "--steps", "300"]) == 0
    assert "resuming from step 200" in capsys.readouterr().err
    assert store_params(tiny_workdir_copy)[1]["step"] == 300


def test_help_shows_defaults_and_an_example(capsys):
    for command in ["train", "sample", "eval", "info", "plot", "bench"]:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert f"example:\n  python run.py {command}" in text
        assert "(default: None)" not in text and "(default: False)" not in text
        if command != "info":
            assert "(default: " in text


# ----------------------------------------------------------------------------- data

DATA_ROWS = {
    "missing path": (lambda d: d / "nope.txt", ["does not exist", "--data"]),
    "a directory": (lambda d: d, ["directory", "--data"]),
    "empty file": (lambda d: write(d / "empty.txt", b""), ["is empty"]),
    "fewer than block_size + 2": (lambda d: write(d / "short.txt", "abcdefg"), ["7 characters", "block_size + 2 = 10"]),
    "val split too small": (lambda d: write(d / "val.txt", "abcdefghij" * 6),
                            ["validation split has 6 characters", "data.val_fraction"]),
    "not UTF-8": (lambda d: write(d / "latin1.txt", "hello wörld".encode("latin-1") * 5), ["not UTF-8", "offset 7"]),
}


@pytest.mark.parametrize("row", DATA_ROWS)
def test_bad_data(row, untouched, tmp_path, capsys):
    make, expected = DATA_ROWS[row]
    path = make(tmp_path)
    line = run_main(capsys, ["train", "--config", TINY, "--workdir", untouched, "--data", path])
    for text in expected + [str(path)] * (row != "val split too small"):
        assert text in line


def test_download_impossible(untouched, tmp_path, monkeypatch, capsys):
    """No --data, no $JAXBIGRAM_DATA, nothing cached, no recorded file, and the download URL unreachable."""
    monkeypatch.delenv("JAXBIGRAM_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXBIGRAM_DATA_URL", "http://127.0.0.1:9/input.txt")
    line = run_main(capsys, ["train", "--config", TINY, "--workdir", tmp_path / "new"])
    assert "could not download" in line and "--data" in line and "JAXBIGRAM_DATA" in line
    assert not (tmp_path / "cache" / "jaxbigram" / "tinyshakespeare" / "input.txt").exists()


def _other_text(tmp_path: Path, same_vocab: bool) -> Path:
    text = Path(DATA).read_text(encoding="utf-8")
    # the same characters in another order (same model shape, other data), or a lower-case excerpt (other vocabulary)
    return write(tmp_path / "other.txt", text[::-1] if same_vocab else text[:20000].lower())


@pytest.mark.parametrize("same_vocab", [False, True], ids=["other vocabulary", "other text same vocabulary"])
def test_resume_with_other_corpus(same_vocab, untouched, tmp_path, capsys):
    line = run_main(capsys, ["train", "--workdir", untouched, "--data", _other_text(tmp_path, same_vocab),
                             "--steps", "300"])
    assert "--fresh" in line
    assert ("another vocabulary" in line) != same_vocab
    assert ("other data" in line) == same_vocab


# ----------------------------------------------------------------------------- config

CONFIG_FILES = {
    "unknown file": (None, ["does not exist", "--config", "presets: "]),
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


def test_a_bad_cpu_device_count_in_the_environment_is_one_line(run_cli, tmp_path):
    proc = run_cli("train", "--config", "tiny", "--workdir", str(tmp_path / "run"),
                   env={"JAXBIGRAM_CPU_DEVICES": "two", "XLA_FLAGS": None})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1].startswith("error: JAXBIGRAM_CPU_DEVICES='two' is not a device count")
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["train.batch_size=0", "train.block_size=-1", "train.steps=0", "eval.iters=0",
                                      "train.devices=-1", "model.n_layer=200000", "model.n_layer=3000000000",
                                      "model.n_head=3000000000", "train.learning_rate=0", "train.learning_rate=-0.1"])
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
    "temperature zero": (["--temperature", "0"], ["--temperature must be a finite number > 0"]),
    "temperature negative": (["--temperature", "-1"], ["--temperature must be a finite number > 0"]),
    "temperature nan": (["--temperature", "nan"], ["--temperature must be a finite number > 0", "got nan"]),
    "temperature inf": (["--temperature", "inf"], ["--temperature must be a finite number > 0", "got inf"]),
    "top-k below 1": (["--top-k", "0"], ["--top-k must be between 1 and the vocabulary size 65"]),
    "top-k above vocab": (["--top-k", "66"], ["--top-k must be between 1 and the vocabulary size 65"]),
    "top-p zero": (["--top-p", "0"], ["--top-p must be in (0, 1]"]),
    "negative max-new-tokens": (["--max-new-tokens", "-1"], ["--max-new-tokens must be >= 0"]),
    "negative num-samples": (["--num-samples", "-2"], ["--num-samples must be >= "]),
    "zero num-samples": (["--num-samples", "0"], ["--num-samples must be >= 1, got 0"]),
    "prompt outside vocab": (["--prompt", "Thé café €5"], ["'é', '€'", "stored in the checkpoint"]),
    "empty prompt": (["--prompt", ""], ["the prompt is empty"]),
    "step that does not exist": (["--step", "150"], ["no checkpoint for step 150", "available steps are 100, 200"]),
}


@pytest.mark.parametrize("row", SAMPLE_ROWS)
def test_bad_sampling(row, untouched, capsys):
    flags, expected = SAMPLE_ROWS[row]
    line = run_main(capsys, ["sample", "--workdir", untouched, *flags])
    for t in expected:
        assert t in line


# ----------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("command", ["sample", "eval", "info", "plot"])
def test_no_checkpoint(command, tmp_path, capsys):
    line = run_main(capsys, [command, "--workdir", tmp_path / "never-trained"])
    assert "no checkpoint in" in line and "train" in line
    assert not (tmp_path / "never-trained").exists()  # reading never creates a workdir


@pytest.fixture
def damaged(tiny_workdir_copy):
    """A copy of the tiny run whose latest step (200) has every array data file truncated to half.

    (All of them: which file holds the params, the only arrays sample/eval read, differs from run to run.)
    """
    files = [p for p in (tiny_workdir_copy / "checkpoints" / "200" / "state").rglob("*")
             if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        os.truncate(path, path.stat().st_size // 2)
    return tiny_workdir_copy


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_corrupted_checkpoint(command, damaged, capsys):
    before = snapshot(damaged)
    line = run_main(capsys, [command, "--workdir", damaged])
    assert "checkpoint step 200" in line and "truncated or corrupted" in line
    assert "--step" in line and "available: 100" in line
    assert snapshot(damaged) == before
    assert main([command, "--workdir", str(damaged), "--step", "100"]) == 0  # and the advice works


def test_checksum_mismatch_is_reported(tiny_workdir_copy, capsys):
    """A changed array that still parses is caught by the CRC32 stored in the metadata, not silently loaded."""
    meta_file = tiny_workdir_copy / "checkpoints" / "200" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    key = next(k for k in meta["checksums"] if k.startswith("params/"))
    meta["checksums"][key] ^= 1
    meta_file.write_text(json.dumps(meta))
    line = run_main(capsys, ["sample", "--workdir", tiny_workdir_copy])
    assert "checkpoint step 200" in line and f"checksum mismatch in {key}" in line


def test_eval_on_text_with_characters_the_model_never_saw(untouched, tmp_path, capsys):
    other = write(tmp_path / "other.txt", "héllo wörld\n" * 50)
    line = run_main(capsys, ["eval", "--workdir", untouched, "--data", other])
    assert "2 characters outside the checkpoint's vocabulary" in line and "'é'" in line and "'ö'" in line


@pytest.mark.parametrize("kind", ["under a regular file", "is a file"])
def test_workdir_not_writable(kind, tmp_path, capsys):
    blocker = write(tmp_path / "file", "x")
    workdir = blocker / "run" if kind == "under a regular file" else blocker
    line = run_main(capsys, ["train", "--config", TINY, "--data", DATA, "--workdir", workdir])
    expected = f"goes through {blocker}, which is a file" if kind == "under a regular file" else "is a file"
    assert str(workdir) in line and expected in line and "--workdir" in line
    assert blocker.read_text() == "x"


def test_a_second_train_in_a_busy_workdir_is_refused(untouched, capsys):
    """While one `train` holds the workdir, another is refused (they would clean up each other's saves)."""
    with runs.exclusive(untouched):
        line = run_main(capsys, ["train", "--workdir", untouched, "--steps", "300"])
        assert "another `train` is running in" in line and "--workdir" in line


def test_unknown_platform(untouched, capsys):
    line = run_main(capsys, ["train", "--workdir", untouched, "--platform", "quantum"])
    assert "unknown --platform 'quantum'" in line and "cpu, gpu or tpu" in line


# ----------------------------------------------------------------------------- a few for real, through run.py

@pytest.mark.parametrize("case", ["unavailable platform", "unavailable gpu", "corrupted checkpoint", "set without =",
                                  "missing data"])
def test_subprocess(case, run_cli, untouched, damaged, tmp_path):
    argv = {
        "unavailable platform": ["train", "--workdir", untouched, "--platform", "tpu"],
        "unavailable gpu": ["sample", "--workdir", untouched, "--platform", "gpu"],  # tries cuda, then rocm
        "corrupted checkpoint": ["sample", "--workdir", damaged],
        "set without =": ["train", "--workdir", untouched, "--set", "train.learning_rate"],
        "missing data": ["train", "--config", TINY, "--workdir", untouched, "--data", tmp_path / "missing.txt"],
    }[case]
    line = assert_usage_error(run_cli(*argv, timeout=120))
    if case.startswith("unavailable"):
        platform = "tpu" if case == "unavailable platform" else "gpu"
        assert f"platform '{platform}' is not available" in line and "--platform cpu" in line


# the three ways to run jaxbigram: (command line, the program its messages name); the installed `jaxbigram` script is
# pip's wrapper around cli:console_main, run here as that wrapper runs it (the script itself may not be installed)
ENTRY_POINTS = {
    "run.py": ([sys.executable, str(REPO_ROOT / "run.py")], "python run.py"),
    "python -m jaxbigram": ([sys.executable, "-m", "jaxbigram"], "python -m jaxbigram"),
    "jaxbigram script": ([sys.executable, "-c", "import sys; from jaxbigram.cli import console_main; "
                          "sys.argv[0] = 'jaxbigram'; sys.exit(console_main())"], "jaxbigram"),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_each_entry_point_names_itself_in_usage_hints_and_messages(entry, tmp_path):
    command, program = ENTRY_POINTS[entry]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))

    def run(*args):
        return subprocess.run([*command, *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)

    help_text = run("sample", "--help").stdout
    assert help_text.startswith(f"usage: {program} sample ") and f"example:\n  {program} sample --seed" in help_text
    assert assert_usage_error(run("info", "--bogus")) == f"error: {program}: unrecognized arguments: --bogus (see --help)"
    line = assert_usage_error(run("info", "--workdir", tmp_path / "none"))
    assert f"run `{program} train --workdir {tmp_path / 'none'}` first" in line
    assert "run.py" not in line or program == "python run.py"


# ----------------------------------------------------------------------------- hostile values and run folders

def _sample_text(capsys, workdir, *flags) -> str:
    assert main(["sample", "--workdir", str(workdir), "--max-new-tokens", "60", *map(str, flags)]) == 0
    return capsys.readouterr().out


def test_tiny_temperatures_are_greedy(untouched, capsys):
    greedy = _sample_text(capsys, untouched, "--top-k", "1", "--seed", "3")
    for temperature in ("1e-38", "1e-45"):
        assert _sample_text(capsys, untouched, "--temperature", temperature, "--seed", "3") == greedy


@pytest.mark.parametrize("seed", [2**63, 2**64, 10**30])
def test_huge_seeds_reduce_modulo_2_32(seed, tmp_path, capsys):
    """train accepts any non-negative seed (train.seed = seed % 2**32), and sample draws the same text for s and
    s + 2**32."""
    workdir = tmp_path / "run"
    assert main(["train", "--config", TINY, "--workdir", str(workdir), "--steps", "1", "--seed", str(seed)]) == 0
    capsys.readouterr()
    assert store_params(workdir)[1]["config"]["train"]["seed"] == seed % 2**32
    assert _sample_text(capsys, workdir, "--seed", seed) == _sample_text(capsys, workdir, "--seed", seed + 2**32)


def test_eval_iters_too_big_is_one_line(untouched, capsys):
    line = run_main(capsys, ["train", "--config", TINY, "--workdir", untouched, "--fresh",
                             "--set", "eval.iters=1000000000"])
    assert "eval.iters" in line


@pytest.mark.parametrize("steps", [[], ["--steps", "200"], ["--steps", "100"]], ids=["as trained", "equal", "below"])
def test_a_finished_run_says_once_there_is_nothing_to_train(steps, tiny_workdir_copy, capsys):
    """One note saying how to continue; no rate line for steps never trained, no report again, nothing written."""
    before = snapshot(tiny_workdir_copy)
    assert main(["train", "--workdir", str(tiny_workdir_copy), *steps]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if line.startswith("note: ")]
    target = int(steps[1]) if steps else 200
    assert notes == [f"note: the run is already at step 200 (train.steps = {target}): nothing to train; to continue, "
                     f"pass a larger --steps (e.g. --steps {200 + target}); `python run.py eval` reports its exact losses"]
    assert captured.out == "" and "trained to step" not in captured.err and "steps/s" not in captured.err
    assert "Traceback" not in captured.err and "error:" not in captured.err
    assert snapshot(tiny_workdir_copy) == before


@pytest.mark.parametrize("preset", ["tiny", "gpt-tiny"])
def test_eval_json_of_an_unscorable_split_is_null_with_a_note(preset, tmp_path, capsys, request):
    """A checkpoint, bigram or GPT (the session's runs, read only), evaluated on a text whose splits have too few
    characters to score (one character: neither split; ten: the val split has one): valid JSON (null, never NaN), one
    note on stderr, and the text output says nan."""
    text = Path(DATA).read_text(encoding="utf-8")
    workdir = request.getfixturevalue("tiny_workdir" if preset == "tiny" else "gpt_tiny_run")
    workdir = workdir if preset == "tiny" else workdir[0]
    before = snapshot(workdir)

    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON")

    for length, unscored in ((1, {"train_loss", "val_loss"}), (10, {"val_loss"})):
        short = write(tmp_path / f"short-{length}.txt", text[:length])  # 10 characters: 9 train, 1 val
        code = main(["eval", "--workdir", str(workdir), "--json", "--data", str(short)])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        report = json.loads(captured.out, parse_constant=refuse)
        assert {k for k in ("train_loss", "val_loss") if report[k] is None} == unscored
        notes = [line for line in captured.err.splitlines() if line.startswith("note: ") and "cannot be scored" in line]
        assert len(notes) == 1 and "null" in notes[0] and "Traceback" not in captured.err
        assert main(["eval", "--workdir", str(workdir), "--data", str(short)]) == 0
        assert "val nan nats (nan bits/char)" in capsys.readouterr().out
    assert snapshot(workdir) == before


def test_a_byte_order_mark_is_not_a_character(tmp_path, capsys):
    text = Path(DATA).read_text(encoding="utf-8")[:20000]
    source = write(tmp_path / "bom.txt", b"\xef\xbb\xbf" + text.encode("utf-8"))
    workdir = tmp_path / "run"
    assert main(["train", "--config", TINY, "--workdir", str(workdir), "--data", str(source), "--steps", "1"]) == 0
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "byte-order mark" in line and line.startswith("note: ")]) == 1
    assert main(["info", "--workdir", str(workdir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "\ufeff" not in info["vocab"] and info["vocab"] == "".join(sorted(set(text)))


# damage the newest step's files one at a time, three ways
DAMAGE = {
    "truncated": lambda p: os.truncate(p, p.stat().st_size // 2),
    "zeroed": lambda p: p.write_bytes(b"\0" * p.stat().st_size),
    "deleted": lambda p: p.unlink(),
}


@pytest.mark.parametrize("how", DAMAGE)
def test_every_file_of_the_newest_step_damaged(how, tiny_workdir, tmp_path, capsys):
    """Whichever file of step 200 is damaged: sample and eval work or say in one line which step is damaged and
    which older one to use; info never crashes; train resumes (setting the step aside or repairing the file)."""
    files = sorted(p.relative_to(tiny_workdir) for p in (tiny_workdir / "checkpoints" / "200").rglob("*")
                   if p.is_file())
    assert len(files) > 10 and any(f.name == "metrics" for f in files)
    for i, name in enumerate(files):
        workdir = tmp_path / str(i)
        shutil.copytree(tiny_workdir, workdir)
        DAMAGE[how](workdir / name)
        for command in (["sample", "--max-new-tokens", "5"], ["eval"]):
            code = main([command[0], "--workdir", str(workdir), *command[1:]])
            err = capsys.readouterr().err
            assert "Traceback" not in err, (name, command, err)
            if code != 0:
                line = error_line(err)
                assert code == 2 and "step 200" in line and "100" in line, (name, command, line)
                assert name.parts[-1] != "metrics", (name, line)  # the metrics file is never read by readers
        assert main(["info", "--workdir", str(workdir)]) == 0, (name, capsys.readouterr().err)
        capsys.readouterr()
        code = main(["train", "--workdir", str(workdir), "--steps", "300"])
        err = capsys.readouterr().err
        assert code == 0 and "Traceback" not in err and "\nerror: " not in "\n" + err, (name, err)
        assert store_params(workdir)[1]["step"] == 300, name
        shutil.rmtree(workdir)


def test_orbax_metrics_without_a_val_loss_resume(tiny_workdir_copy, capsys):
    write(tiny_workdir_copy / "checkpoints" / "200" / "metrics" / "metrics", "{}")
    assert main(["train", "--workdir", str(tiny_workdir_copy), "--steps", "300"]) == 0
    err = capsys.readouterr().err
    assert "resuming from step 200" in err and "Traceback" not in err
    assert store_params(tiny_workdir_copy)[1]["step"] == 300


# ----------------------------------------------------------------------------- multi-process flags

@pytest.mark.parametrize("flags, expected", [
    (["--coordinator", "host"], "--coordinator must be HOST:PORT"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     "--process-id must be from 0 to --num-processes - 1 = 2 - 1, got 2"),
])
def test_bad_multi_process_flags(flags, expected, untouched, capsys):
    line = run_main(capsys, ["train", "--workdir", untouched, *flags])
    assert expected in line


def test_a_process_that_never_sees_the_others_gives_up_in_one_line(run_cli, tmp_path):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    proc = run_cli("train", "--config", TINY, "--workdir", tmp_path / "run", "--coordinator", f"127.0.0.1:{port}",
                   "--num-processes", 2, "--process-id", 0, "--distributed-timeout", 3, timeout=60)
    assert time.monotonic() - started < 20
    line = assert_usage_error(proc, "not every process joined", "within 3 s")
    assert "process 0 of 2" in line


# ----------------------------------------------------------------------------- paths

NOT_UTF8 = os.fsdecode(b"r\xffn")


@pytest.mark.parametrize("flag", ["--workdir", "--data"])
def test_a_path_that_is_not_utf8_is_one_line(flag, tmp_path, capsys):
    bad = tmp_path / NOT_UTF8
    if flag == "--data":
        shutil.copy(DATA, bad)
    argv = ["train", "--config", TINY, "--workdir", str(tmp_path / "run"), "--data", DATA]
    argv[argv.index(flag) + 1] = str(bad)
    line = run_main(capsys, argv)
    assert f"{flag.lstrip('-')} path" in line and "not valid UTF-8" in line and "\\xff" in line
    line.encode("utf-8")


def test_an_empty_workdir_is_one_line(capsys):
    line = run_main(capsys, ["train", "--config", TINY, "--workdir", ""])
    assert "--workdir is empty" in line


LONG_NAME = "n" * 300
# every path a user can give: (argv with PATH where the path goes, the environment) — checked before any work
PATH_INPUTS = {
    "train --workdir": (["train", "--config", TINY, "--data", DATA, "--workdir", "PATH"], {}),
    "sample --workdir": (["sample", "--workdir", "PATH"], {}),
    "eval --workdir": (["eval", "--workdir", "PATH"], {}),
    "info --workdir": (["info", "--workdir", "PATH"], {}),
    "plot --workdir": (["plot", "--workdir", "PATH"], {}),
    "train --data": (["train", "--config", TINY, "--workdir", "UNTOUCHED", "--data", "PATH"], {}),
    "train --config": (["train", "--config", "PATH", "--workdir", "UNTOUCHED", "--data", DATA], {}),
    "sample --prompt-file": (["sample", "--workdir", "UNTOUCHED", "--prompt-file", "PATH"], {}),
    "plot --out": (["plot", "--workdir", "UNTOUCHED", "--out", "PATH"], {}),
    "$JAXBIGRAM_DATA": (["train", "--config", TINY, "--workdir", "UNTOUCHED", "--fresh"], {"JAXBIGRAM_DATA": "PATH"}),
}
PATH_KINDS = {"a name over 255 bytes": ("path_too_long", "is too long"),
              "a path over 4095 bytes": ("path_too_long", "is too long"),
              "a symlink loop": ("path_unusable", "Too many levels of symbolic links"),
              "below a regular file": ("path_not_dir", "which is a file, not a folder")}


def _unusable_path(tmp_path, kind):
    afile = write(tmp_path / "afile", "x")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    return {"a name over 255 bytes": tmp_path / LONG_NAME / "x",
            "a path over 4095 bytes": tmp_path.joinpath(*["d" * 250] * 17),
            "a symlink loop": tmp_path / "loop" / "x", "below a regular file": afile / "x"}[kind]


@pytest.mark.parametrize("kind", PATH_KINDS)
@pytest.mark.parametrize("where", PATH_INPUTS)
def test_every_path_a_user_gives_is_checked_before_use(where, kind, untouched, tmp_path, capsys, monkeypatch):
    """ENAMETOOLONG, ELOOP, ENOTDIR: one named line naming the flag or variable, exit 2, nothing touched."""
    path = _unusable_path(tmp_path, kind)
    argv, env = PATH_INPUTS[where]
    argv = [{"PATH": path, "UNTOUCHED": untouched}.get(a, a) for a in argv]
    for name, value in env.items():
        monkeypatch.setenv(name, str(path) if value == "PATH" else value)
    line = run_main(capsys, argv)
    assert PATH_KINDS[kind][1] in line and where.split()[-1].lstrip("$") in line
    assert len(line) < 700  # a path too long to use is shown elided
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "loop"]  # nothing was created


HOSTILE_NAME = "new\nline\tx\x1b[31my"  # a newline, a tab, an escape sequence


def _assert_one_line_each(text: str) -> None:
    """Nothing of the hostile name broke a line or reached the terminal raw; where it is shown, it is escaped."""
    assert "\t" not in text and "\x1b" not in text
    assert not any(line.startswith("line") for line in text.splitlines())


def test_a_workdir_whose_name_has_control_characters_is_named_on_one_line(tmp_path, capsys):
    workdir = tmp_path / HOSTILE_NAME
    for command in ("sample", "eval", "info", "plot"):
        line = run_main(capsys, [command, "--workdir", workdir])
        assert "no checkpoint in" in line and "new\\nline\\tx\\x1b[31my" in line
        assert "--workdir $'" in line  # the command to run is quoted for the shell
    assert main(["train", "--config", TINY, "--data", DATA, "--workdir", str(workdir)]) == 0
    captured = capsys.readouterr()
    _assert_one_line_each(captured.out + captured.err)
    assert "new\\nline\\tx\\x1b[31my" in captured.err  # the data and checkpoints lines, the next: hint
    for command in ("sample", "eval", "info", "plot"):
        assert main([command, "--workdir", str(workdir)]) == 0, command
        captured = capsys.readouterr()
        _assert_one_line_each(captured.err + ("" if command == "sample" else captured.out))


@pytest.mark.parametrize("command", ["train", "sample", "eval", "info", "plot"])
def test_a_workdir_whose_name_is_not_utf8_is_one_line(command, tmp_path, capsys):
    workdir = tmp_path / os.fsdecode(b"new\nr\xffn")
    line = run_main(capsys, [command, "--workdir", workdir])
    assert "workdir path" in line and "new\\nr\\xffn" in line and "not valid UTF-8" in line


@pytest.mark.parametrize("command", ["train", "sample"])
def test_a_fifo_is_refused_without_waiting(command, run_cli, untouched, tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    argv = (["train", "--config", TINY, "--workdir", tmp_path / "run", "--data", fifo] if command == "train"
            else ["sample", "--workdir", untouched, "--prompt-file", fifo])
    line = assert_usage_error(run_cli(*argv, timeout=60))
    assert "named pipe (FIFO)" in line and str(fifo) in line


# ----------------------------------------------------------------------------- the GPT through every command

def test_a_gpt_splits_its_batches_over_two_cpu_devices_when_its_step_is_big_enough(gpt_tiny_run, run_cli, tmp_path):
    _, tiny = gpt_tiny_run  # gpt-tiny: 0.02 GFLOP per step, faster on one device
    assert "2 device(s)" in tiny.stderr and "data parallel" not in tiny.stderr
    defaults = {"XLA_FLAGS": None, "JAXBIGRAM_CPU_DEVICES": None}
    wider = run_cli("train", "--config", "gpt-tiny", "--workdir", tmp_path / "wider", "--steps", "2",
                    "--set", "train.block_size=64", "--set", "train.batch_size=16", env=defaults)  # 0.18 GFLOP
    assert wider.returncode == 0, wider.stderr
    assert "data parallel: each batch of 16 is split over 2 cpu devices (train.devices = automatic)" in wider.stderr
    bigram = run_cli("train", "--config", "tiny", "--workdir", tmp_path / "bigram", "--steps", "10", env=defaults)
    assert bigram.returncode == 0 and "2 device(s)" in bigram.stderr and "data parallel" not in bigram.stderr


def test_gpt_train_reports_the_exact_val_loss_against_the_bigram_baseline(gpt_tiny_run):
    _, proc = gpt_tiny_run
    assert "step 200: train loss" in proc.stdout
    assert re.search(r"exact loss at step 200: train: not computed \(a full pass over the split; `python run.py eval` "
                     r"does it\), val \d\.\d{4} nats", proc.stdout)
    assert re.search(r"vs the bigram baseline: val [+-]\d\.\d{4}\n", proc.stdout)  # no train gap to show


def test_gpt_train_shows_a_sample_at_each_eval_and_info_the_last(gpt_tiny_run, cli_run):
    workdir, proc = gpt_tiny_run  # gpt-tiny: eval.sample_chars = 200, evals at steps 0, 100, 200
    lines = proc.stdout.splitlines()
    for step in (0, 100, 200):
        at = lines.index(f"sample at step {step}:")
        assert lines[at - 1].startswith(f"step {step}: train loss") and lines[at + 1].startswith("    | ")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [len(r["sample"]) for r in rows] == [201, 201, 201]
    info = cli_run("info", "--workdir", workdir).stdout
    assert "sample:      at step 200 (the last eval's):\n    | " in info
    assert "best kept:   val est." in info and "lowest val est. of any eval" in info


def test_gpt_sample_is_deterministic_and_in_the_vocabulary(gpt_tiny_run, cli_run):
    workdir, _ = gpt_tiny_run
    a = cli_run("sample", "--workdir", workdir, "--seed", "3", "--max-new-tokens", "80", "--prompt", "ROMEO:")
    b = cli_run("sample", "--workdir", workdir, "--seed", "3", "--max-new-tokens", "80", "--prompt", "ROMEO:")
    c = cli_run("sample", "--workdir", workdir, "--seed", "4", "--max-new-tokens", "80", "--prompt", "ROMEO:",
                "--top-k", "5", "--temperature", "0.8", "--num-samples", "2")
    assert a.returncode == b.returncode == c.returncode == 0, a.stderr + c.stderr
    assert a.stdout == b.stdout and a.stdout.startswith("ROMEO:") and len(a.stdout) == len("ROMEO:") + 80 + 1
    assert "(gpt;" in a.stderr and c.stdout.count("---------- sample") == 2
    info = json.loads(cli_run("info", "--workdir", workdir, "--json").stdout)
    assert set(a.stdout[:-1]) <= set(info["vocab"])


def test_gpt_eval_info_and_plot(gpt_tiny_run, cli_run, tmp_path):
    workdir, _ = gpt_tiny_run
    report = json.loads(cli_run("eval", "--workdir", workdir, "--json").stdout)
    assert report["model"] == "gpt" and report["step"] == 200
    assert 0 < report["train_loss"] < 4.2 and 0 < report["val_loss"] < 4.2  # trained: below ln 65 ≈ 4.17
    assert report["gap_val"] == pytest.approx(report["val_loss"] - report["optimum_val_loss"])
    info = json.loads(cli_run("info", "--workdir", workdir, "--json").stdout)
    assert info["model"] == "gpt" and info["config"]["model"]["kind"] == "gpt"
    c, t, v, layers = 32, 16, info["vocab_size"], 2  # gpt-tiny: n_embd 32, block 16, 2 layers, biases on
    per_layer = 4 * c + (3 * c * c + 3 * c) + (c * c + c) + (4 * c * c + 4 * c) + (4 * c * c + c)
    assert info["num_params"] == v * c + t * c + layers * per_layer + 2 * c + c * v + v
    text = cli_run("info", "--workdir", workdir).stdout
    assert f"model:       gpt, {info['num_params']:,} parameters" in text
    plot = cli_run("plot", "--workdir", workdir, "--out", tmp_path)
    assert plot.returncode == 0, plot.stderr
    assert (tmp_path / "loss.png").is_file() and not (tmp_path / "bigram.png").exists()  # the heatmap is bigram's


def test_a_gpt_with_a_context_of_one_character_trains_samples_and_evaluates(tmp_path, capsys):
    """train.block_size = 1 (flax's one-row position embedding): every command works, and the sample is the prompt
    followed by characters of the vocabulary."""
    source = write(tmp_path / "text.txt", Path(DATA).read_text(encoding="utf-8")[:1000])
    workdir = tmp_path / "run"
    assert main(["train", "--config", "gpt-tiny", "--workdir", str(workdir), "--data", str(source), "--steps", "2",
                 "--set", "train.block_size=1", "--set", "eval.iters=2"]) == 0
    capsys.readouterr()
    vocab = set(store_params(workdir)[1]["vocab"])
    assert main(["sample", "--workdir", str(workdir), "--prompt", "Citizen:", "--max-new-tokens", "30"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Citizen:") and len(out) == len("Citizen:") + 30 + 1 and set(out[:-1]) <= vocab
    assert main(["eval", "--workdir", str(workdir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_loss"] > 0


def test_gpt_run_refuses_a_bigram_config_on_resume(gpt_tiny_run, cli_run):
    workdir, _ = gpt_tiny_run
    proc = cli_run("train", "--config", "tiny", "--workdir", workdir)
    line = assert_usage_error(proc, "trained with other settings")
    assert "model.kind" in line and "model.dropout" in line
