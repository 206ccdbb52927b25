"""bench.py: every figure ``run.py bench`` reports is documented in docs/performance.md, and each one is a sane
measurement.

Sizes are tiny here (the real command takes minutes); nothing about speed is asserted.
"""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from jaxbigram import bench, data
from conftest import REPO_ROOT, run_main, write


def documented_keys() -> set[str]:
    page = (REPO_ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    section = page[page.index("<!-- section: performance -->"):page.index("<!-- end: performance -->")]
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.MULTILINE))


def test_bench_measures_every_documented_figure(tmp_path, make_corpus):
    path = tmp_path / "corpus.txt"
    make_corpus(str(path), 50_000, vocab=120, seed=1)
    plan = bench.Plan(repeats=1, small_shape=(4, 8), small_steps_per_call=20, small_calls=1, large_shape=(8, 16),
                      large_steps_per_call=2, large_calls=1, naive_steps=10, sample_long=(1, 300),
                      sample_wide=(3, 100), naive_sample_chars=100, notes_config="tiny", notes_repeats=1,
                      corpus_mb=0.05, data_repeats=1,
                      # gpt-tiny has block 16: the first two sampling figures stay within it, the last two go beyond
                      gpt_config="gpt-tiny", gpt_steps_per_call=5, gpt_calls=1, gpt_naive_steps=3,
                      gpt_samples=(("1_stream", 1, 20), ("64_streams", 3, 10), ("1_stream_beyond", 1, 40),
                                   ("64_streams_beyond", 2, 24)),
                      gpt_run_repeats=1, gpt_large_config="gpt-tiny", gpt_large_steps=1)
    report = bench.run_speed(plan, data.load_corpus(path), None, lambda message: None)

    assert set(report) == documented_keys()
    json.dumps(report)  # one JSON object
    for key, value in report.items():
        if key.endswith(("_per_s", "_s", "_mb")) or key.startswith("speedup"):
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    assert report["train_shape"] == "4x8" and report["sample_many_streams_shape"] == "3x100"
    assert report["data_prep_cache_memory_mapped"] is True
    assert report["train_tokens_per_s"] == report["train_steps_per_s"] * 32
    assert report["notes_run_warm_cache_s"] > 0 and report["notes_config"] == "tiny"
    assert report["gpt_config"] == "gpt-tiny" and report["gpt_large_config"] == "gpt-tiny"
    for label in ("1_stream", "64_streams", "1_stream_beyond", "64_streams_beyond"):
        assert report[f"gpt_sample_{label}_same_ids"] is True, label  # compiled sampler == the lecture's, same draws
    assert report["gpt_sample_64_streams_beyond_shape"] == "2x24"
    assert 0 < report["gpt_train_mfu"] <= 1
    assert report["gpt_train_devices"] == 1  # gpt-tiny: a step too small to split (and one device in-process)
    table = bench.format_table(report)
    assert all(key in table for key in report if key not in ("raw_seconds", "devices"))


def documented_torch_keys() -> set[str]:
    page = (REPO_ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    section = page[page.index("<!-- section: vs-torch -->"):page.index("<!-- end: vs-torch -->")]
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.MULTILINE))


def test_against_torch_reports_every_documented_key_and_both_sides_learn_alike(data_path):
    """One pair of tiny whole runs on each side (fresh processes): the keys the issue names, sane values, and the
    PyTorch reference reaching the same losses as jaxbigram (same model, data, schedule; different random draws)."""
    plan = bench.TorchPlan(bigram_config="tiny", gpt_config="gpt-tiny", pairs=1)
    report = bench.run_against_torch(plan, str(data_path), log=lambda message: None)

    assert set(report) == documented_torch_keys()
    json.dumps(report)
    assert report["vs_torch_pairs"] == 1 and report["torch_version"] and report["torch_threads"] >= 1
    for kind in ("bigram", "gpt"):
        for key in (f"{kind}_vs_torch_step_ratio", f"{kind}_vs_torch_run_ratio", f"{kind}_run_s_median",
                    f"torch_{kind}_run_s_median"):
            assert isinstance(report[key], float) and math.isfinite(report[key]) and report[key] > 0, key
        assert len(report[f"{kind}_vs_torch_run_ratios"]) == 1
        # an estimate over a handful of tiny batches (5 x 8 x 16 for gpt-tiny) is noisy: agreement within 0.3 nats
        assert abs(report[f"{kind}_val_estimate"] - report[f"torch_{kind}_val_estimate"]) < 0.3, kind
    # the exact val pass (every position of the split, the same windows on both sides) is not: within 0.1 nats
    assert abs(report["gpt_val"] - report["torch_gpt_val"]) < 0.1
    assert report["gpt_val"] < math.log(65) - 1.0  # both well below the uniform guess


def documented_sweep_keys() -> set[str]:
    page = (REPO_ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    section = page[page.index("<!-- section: sweeps -->"):page.index("<!-- end: sweeps -->")]
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.MULTILINE))


def test_bench_sweeps_reports_every_documented_key(data_path):
    """The three cases under their documented names and member counts, on the tiny bigram for 20 steps (fresh
    processes; nothing about speed is asserted): sane ratios, and the sweep's members learn like the single run."""
    short = ("train.steps=20", "eval.interval=20", "checkpoint.interval=20")
    plan = bench.SweepPlan(cases=(bench.SweepCase("bigram", "tiny", 64, pairs=1, overrides=short),
                                  bench.SweepCase("gpt_tiny", "tiny", 16, pairs=1, overrides=short),
                                  bench.SweepCase("gpt_cpu", "tiny", 4, versus="sequential", pairs=1,
                                                  overrides=short)),
                            step_bigram=("tiny", 4, 5), step_gpt=("gpt-tiny", 2, 2), step_repeats=1)
    report = bench.run_sweeps(plan, str(data_path), log=lambda message: None)

    assert set(report) == documented_sweep_keys()
    json.dumps(report)
    for key in ("sweep_bigram_64_vs_single", "sweep_gpt_tiny_16_vs_single", "sweep_gpt_cpu_4_vs_sequential"):
        assert isinstance(report[key], float) and math.isfinite(report[key]) and report[key] > 0, key
        assert report[f"{key}_ratios"] == [round(report[key], 3)]
    # 4 runs one after the other take longer than one (each pays start-up and compiles)
    assert report["sweep_gpt_cpu_4_sequential_s_median"] > report["sweep_gpt_tiny_16_single_s_median"]
    for key in ("step_bigram_logits_ms", "step_bigram_fast_loss_ms", "step_bigram_fast_loss_speedup",
                "step_gpt_one_device_ms"):
        assert isinstance(report[key], float) and math.isfinite(report[key]) and report[key] > 0, key
    assert report["step_bigram_members"] == 4 and report["step_gpt_preset"] == "gpt-tiny"
    assert report["step_gpt_two_devices_ms"] is None  # this process has one device: nothing to split over
    for prefix in ("sweep_bigram_64", "sweep_gpt_tiny_16", "sweep_gpt_cpu_4"):
        # member 0 is the single run (seed 1337): the mean over seeds is near it (20 steps of the tiny bigram)
        assert abs(report[f"{prefix}_val_mean"] - report[f"{prefix}_single_val"]) < 0.05, prefix


def test_against_torch_without_torch_is_one_line(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; from jaxbigram.cli import main; "
            "sys.exit(main(['bench', '--against', 'torch', '--quick']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: `python run.py bench --against torch` needs the optional package torch")
    assert "pip install 'jaxbigram[compare]'" in lines[-1] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("flags", [["--quick"], []])
def test_a_text_too_short_for_the_bench_is_one_line_before_anything_is_timed(flags, tmp_path, monkeypatch, capsys):
    """1 character, 10, one short of what the bench's largest window (512x256 training, block 256) needs: one
    ``error:`` line naming that length; a text of exactly that length gets past the check to the first timing."""
    class Timed(Exception):
        pass

    def timed(*args, **kwargs):
        raise Timed

    monkeypatch.setattr(bench, "bench_train", timed)
    need = data.min_text_length(bench.FULL.large_shape[1], 0.1)
    for n in (1, 10, need - 1):
        path = write(tmp_path / f"{n}.txt", ("To be, or not to be " * need)[:n])
        line = run_main(capsys, ["bench", *flags, "--data", path])
        assert line == (f"error: `bench` needs a text of at least {need} characters (its 512x256 training uses "
                        f"block_size 256, and the train and val splits must each hold block_size + 2 characters); "
                        f"{path} has {n}: pass a longer text with --data PATH")
    with pytest.raises(Timed):
        bench.run(quick=not flags, data=str(write(tmp_path / "enough.txt", ("To be, or not to be " * need)[:need])),
                  log=lambda message: None)
