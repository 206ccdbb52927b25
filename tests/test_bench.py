"""bench/: every figure ``run.py bench`` reports is documented in docs/performance.md, and each one is a sane
measurement; the bench's children never outlive it.

Sizes are the smallest that exercise every code path, and the whole runs the harnesses spawn run in this process
(``children_in_process``: the same command lines through the same entry points) — process start-up is all that saves.
Two tests keep real processes, because processes are their subject: ``run_measured``'s figures, and a SIGINT to the
bench. Nothing about speed is asserted.
"""

import contextlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxbigram import bench, cli, data
from conftest import REPO_ROOT, run_main, write

# The smallest runs the harnesses spawn: a bigram and a one-layer GPT, 2 steps each, one eval, one checkpoint
TINY_BIGRAM = """[train]
steps = 2
batch_size = 4
block_size = 8
steps_per_call = 2
[eval]
interval = 2
iters = 1
sample_chars = 0
[checkpoint]
interval = 2
"""
TINY_GPT = """[model]
kind = "gpt"
n_layer = 1
n_head = 1
n_embd = 8
dropout = 0.0
[train]
steps = 2
batch_size = 2
block_size = 8
steps_per_call = 2
[eval]
interval = 2
iters = 1
sample_chars = 0
[checkpoint]
interval = 2
"""


@pytest.fixture
def children_in_process(monkeypatch):
    """``timing.run_measured`` runs its ``python -m MODULE ARGS`` in this process: ``jaxbigram`` through
    ``cli.main``, the data-prep child through ``speed.data_prep_child``, the PyTorch reference through
    ``torch_ref.main``, with the child's environment and its stdout and stderr captured; returns the argv of every
    run, in order. The compile cache stays off (this process's JAX settings must not point into a bench's temporary
    folder)."""
    from jaxbigram import cli
    from jaxbigram.bench import speed, timing, torch_ref

    entries = {"jaxbigram": cli.main, "jaxbigram.bench": lambda args: speed.data_prep_child(args[1]) or 0,
               "jaxbigram.bench.torch_ref": torch_ref.main}
    argvs = []

    def run(argv, env):
        assert argv[:2] == [sys.executable, "-m"] and argv[2] in entries, argv
        argvs.append(argv[3:])
        out, err = io.StringIO(), io.StringIO()
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                if key != "PYTHONPATH" and os.environ.get(key) != value:
                    mp.setenv(key, value)
            mp.setenv("JAXBIGRAM_COMPILE_CACHE", "off")
            t0, cpu0 = time.perf_counter(), time.process_time()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = entries[argv[2]](argv[3:])
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": timing.peak_rss_mb(), "rc": rc,
                "stdout": out.getvalue(), "stderr": err.getvalue()}

    monkeypatch.setattr(timing, "run_measured", run)
    return argvs


def documented_keys(section: str) -> set[str]:
    page = (REPO_ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    text = page[page.index(f"<!-- section: {section} -->"):page.index(f"<!-- end: {section} -->")]
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.MULTILINE))


def positive(report: dict, *keys: str) -> None:
    for key in keys:
        assert isinstance(report[key], float) and math.isfinite(report[key]) and report[key] > 0, (key, report[key])


# ----------------------------------------------------------------------------- real processes

def test_run_measured_reports_a_child_s_exit_code_output_cpu_and_own_memory():
    """A real child: its exit code, stdout and stderr, its CPU seconds and its own peak memory (64 MiB it touched;
    not this process's, which holds 400 MiB more: Linux hands a spawned child its parent's peak mark)."""
    from jaxbigram.bench import timing

    ballast = bytearray(400 * 2**20)  # touched (zero-filled): this process's peak is now far above the child's

    code = ("import sys; b = bytearray(64 * 2**20); sum(range(2_000_000)); print('out'); print('err', file=sys.stderr);"
            " sys.exit(3)")
    run = timing.run_measured([sys.executable, "-c", code], dict(os.environ))
    assert run["rc"] == 3 and run["stdout"] == "out\n" and run["stderr"] == "err\n"
    assert run["wall_s"] > 0 and run["cpu_s"] > 0
    assert 64 <= run["peak_rss_mb"] < 64 + 100, run["peak_rss_mb"]
    assert len(ballast) == 400 * 2**20
    with pytest.raises(OSError, match="no-such-program-jaxbigram"):
        timing.run_measured(["no-such-program-jaxbigram"], dict(os.environ))


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_sigint_to_the_bench_alone_ends_its_child_and_removes_its_temporary_folder(tmp_path, data_path):
    """``bench --against torch --pairs 1000000000`` (issue 26), SIGINT to the parent only, once its first child (a
    ``jaxbigram train``) runs: exit 130 with one ``stopped`` line, the child is gone, and nothing is left in the
    temporary folder: the child and the launcher that measures it. The bench only has to find torch to start (its first child is jaxbigram's own run): a
    stand-in package it never imports, so the test runs with or without the compare extra."""
    tmp, env = tmp_path / "tmp", dict(os.environ, JAX_PLATFORMS="cpu")
    tmp.mkdir()
    env["TMPDIR"] = str(tmp)
    (tmp_path / "stub" / "torch").mkdir(parents=True)
    write(tmp_path / "stub" / "torch" / "__init__.py", "raise ImportError('a stand-in: the bench never imports it')")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path / "stub"), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-m", "jaxbigram", "bench", "--against", "torch", "--pairs",
                             "1000000000", "--data", str(data_path)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, child = time.monotonic() + 120, None
        while child is None and time.monotonic() < deadline and proc.poll() is None:
            for pid in _children(proc.pid):
                with contextlib.suppress(OSError):
                    if b"train" in open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0"):
                        child = pid
            time.sleep(0.05)
        assert child is not None, proc.communicate(timeout=60)
        while not _children(child) and time.monotonic() < deadline:  # the launcher's child: the run itself
            time.sleep(0.01)
        descendants = [child, *_children(child)]
        assert len(descendants) == 2
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "stopped by SIGINT" and "Traceback" not in err
    assert not any(_alive(pid) for pid in descendants)
    assert list(tmp.iterdir()) == []


# ----------------------------------------------------------------------------- every documented key

def test_bench_measures_every_documented_figure(tmp_path, make_corpus, children_in_process):
    """Every figure of ``bench`` at the smallest sizes (2-step presets, a one-layer GPT of block 8, one repeat): the
    documented keys exactly, sane values, the compiled GPT sampler equal to the lecture's on the same draws, within
    the context window and beyond it, and the whole runs it spawns."""
    path = tmp_path / "corpus.txt"
    make_corpus(str(path), 20_000, vocab=120, seed=1)
    notes, gpt = write(tmp_path / "notes.toml", TINY_BIGRAM), write(tmp_path / "gpt.toml", TINY_GPT)
    plan = bench.Plan(repeats=1, small_shape=(4, 8), small_steps_per_call=2, small_calls=1, large_shape=(8, 16),
                      large_steps_per_call=1, large_calls=1, naive_steps=2, sample_long=(1, 50),
                      sample_wide=(3, 20), naive_sample_chars=20, notes_config=str(notes), notes_repeats=1,
                      corpus_mb=0.01, data_repeats=1,
                      # block 8: the first two sampling figures stay within it, the last two go beyond
                      gpt_config=str(gpt), gpt_steps_per_call=2, gpt_calls=1, gpt_naive_steps=1,
                      gpt_samples=(("1_stream", 1, 6), ("64_streams", 2, 6), ("1_stream_beyond", 1, 12),
                                   ("64_streams_beyond", 2, 12)),
                      gpt_run_repeats=1, gpt_large_config=str(gpt), gpt_large_steps=2, peak_matmul_n=256)
    report = bench.run_speed(plan, data.load_corpus(path), None, lambda message: None)

    assert set(report) == documented_keys("performance")
    json.dumps(report)  # one JSON object
    for key, value in report.items():
        if key.endswith(("_per_s", "_s", "_mb")) or key.startswith("speedup"):
            positive(report, key)
    assert report["train_shape"] == "4x8" and report["sample_many_streams_shape"] == "3x20"
    # the generated corpus: at most its 100 characters and the '\r' of its '\r\n' line ends
    assert report["data_prep_cache_memory_mapped"] is True and 2 < report["data_prep_vocab_size"] <= 101
    assert report["train_tokens_per_s"] == report["train_steps_per_s"] * 32
    assert report["notes_config"] == str(notes) and report["gpt_config"] == report["gpt_large_config"] == str(gpt)
    for label in ("1_stream", "64_streams", "1_stream_beyond", "64_streams_beyond"):
        assert report[f"gpt_sample_{label}_same_ids"] is True, label  # compiled sampler == the lecture's, same draws
    assert report["gpt_sample_64_streams_beyond_shape"] == "2x12"
    assert 0 < report["gpt_train_mfu"] <= 1
    assert report["gpt_train_devices"] == 1  # a step too small to split (and one device in-process)
    assert report["gpt_num_params"] == report["gpt_large_num_params"] > 0
    assert report["gpt_run_exact_val_loss"] > 0
    # the whole runs: data prep once, then each preset cold and warm (two identical command lines each)
    trains = [a for a in children_in_process if a[0] == "train"]
    assert children_in_process[0][0] == "data-prep" and len(trains) == 4
    assert trains[0] == trains[1] and trains[2] == trains[3] and trains[0][2] == str(notes) and trains[2][2] == str(gpt)
    table = bench.format_table(report)
    assert all(key in table for key in report if key not in ("raw_seconds", "devices"))


def test_against_torch_reports_every_documented_key_and_both_sides_learn_alike(data_path, children_in_process):
    """One pair of short whole runs on each side (the tiny bigram, gpt-tiny): the documented keys, sane values, and
    the PyTorch reference reaching the same exact val loss as jaxbigram (same model, data, schedule; different random
    draws)."""
    pytest.importorskip("torch", reason="the PyTorch comparison needs the compare extra: pip install -e '.[compare]'")
    steps = ("train.steps=100", "eval.interval=50", "checkpoint.interval=100")
    plan = bench.TorchPlan(bigram_config="tiny", gpt_config="gpt-tiny", pairs=1,
                           overrides=bench.TorchPlan.overrides + steps)
    report = bench.run_against_torch(plan, str(data_path), log=lambda message: None)

    assert set(report) == documented_keys("vs-torch")
    json.dumps(report)
    assert report["vs_torch_pairs"] == 1 and report["torch_version"] and report["torch_threads"] >= 1
    for kind in ("bigram", "gpt"):
        positive(report, f"{kind}_vs_torch_step_ratio", f"{kind}_vs_torch_run_ratio", f"{kind}_run_s_median",
                 f"torch_{kind}_run_s_median")
        assert len(report[f"{kind}_vs_torch_run_ratios"]) == 1
        # an estimate over a handful of tiny batches is noisy: agreement within 0.3 nats
        assert abs(report[f"{kind}_val_estimate"] - report[f"torch_{kind}_val_estimate"]) < 0.3, kind
    # the exact val pass (every position of the split, the same windows on both sides) is not: within 0.1 nats
    assert abs(report["gpt_val"] - report["torch_gpt_val"]) < 0.1
    assert report["gpt_val"] < math.log(65) - 1.0  # both well below the uniform guess
    # A B per kind, in one pair: jaxbigram then PyTorch, the bigram then the GPT
    jax_bigram, torch_bigram, jax_gpt, torch_gpt = children_in_process
    assert jax_bigram[:3] == ["train", "--config", "tiny"] and jax_gpt[:3] == ["train", "--config", "gpt-tiny"]
    assert Path(torch_bigram[0]).parent.name == "torch-bigram-0" and Path(torch_gpt[0]).parent.name == "torch-gpt-0"


def test_bench_sweeps_reports_every_documented_key(data_path, tmp_path, children_in_process):
    """The three cases under their documented names and member counts, on the tiny bigram for 20 steps: sane ratios,
    the sequential case runs its 4 seeds one after the other, and the sweep's members learn like the single run."""
    short = ("train.steps=20", "eval.interval=20", "checkpoint.interval=20")
    plan = bench.SweepPlan(cases=(bench.SweepCase("bigram", "tiny", 64, pairs=1, overrides=short),
                                  bench.SweepCase("gpt_tiny", "tiny", 16, pairs=1, overrides=short),
                                  bench.SweepCase("gpt_cpu", "tiny", 4, versus="sequential", pairs=1,
                                                  overrides=short)),
                           step_bigram=("tiny", 4, 2), step_gpt=(str(write(tmp_path / "gpt.toml", TINY_GPT)), 2, 1),
                           step_repeats=1)
    report = bench.run_sweeps(plan, str(data_path), log=lambda message: None)

    assert set(report) == documented_keys("sweeps")
    json.dumps(report)
    for key in ("sweep_bigram_64_vs_single", "sweep_gpt_tiny_16_vs_single", "sweep_gpt_cpu_4_vs_sequential"):
        positive(report, key)
        assert report[f"{key}_ratios"] == [round(report[key], 3)]
    positive(report, "step_bigram_logits_ms", "step_bigram_fast_loss_ms", "step_bigram_fast_loss_speedup",
             "step_gpt_one_device_ms")
    assert report["step_bigram_members"] == 4 and report["step_gpt_members"] == 2
    assert report["step_gpt_two_devices_ms"] is None  # this process has one device: nothing to split over
    # baseline then sweep for each case; the sequential baseline is 4 single runs, seeds 1337..1340
    seeds = [next(a for a in argv if a.startswith("train.seed=")) if argv[0] == "train" else argv[0]
             for argv in children_in_process]
    assert seeds == ["train.seed=1337", "sweep", "train.seed=1337", "sweep",
                     *[f"train.seed={1337 + i}" for i in range(4)], "sweep"]
    for argv, n in zip([a for a in children_in_process if a[0] == "sweep"], (64, 16, 4)):
        assert argv[argv.index("--seeds") + 1] == str(n)
    for prefix in ("sweep_bigram_64", "sweep_gpt_tiny_16", "sweep_gpt_cpu_4"):
        # member 0 is the single run (seed 1337): the mean over seeds is near it (20 steps of the tiny bigram)
        assert abs(report[f"{prefix}_val_mean"] - report[f"{prefix}_single_val"]) < 0.05, prefix


def test_against_torch_without_torch_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # what an install without the compare extra finds
    line = run_main(capsys, ["bench", "--against", "torch", "--quick"])
    assert line.startswith("error: `python run.py bench --against torch` needs the optional package torch")
    assert "pip install 'jaxbigram[compare]'" in line


@pytest.mark.parametrize("flags", [["--quick"], []])
def test_a_text_too_short_for_the_bench_is_one_line_before_anything_is_timed(flags, tmp_path, monkeypatch, capsys):
    """1 character, 10, one short of what the bench's largest window (512x256 training, block 256) needs: one
    ``error:`` line naming that length; a text of exactly that length gets past the check to the first timing."""
    class Timed(Exception):
        pass

    def timed(*args, **kwargs):
        raise Timed

    monkeypatch.setattr(bench.speed, "bench_train", timed)
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


def test_bench_grad_accum_times_each_k_on_the_same_optimisation(tmp_path, data_path, capsys, monkeypatch):
    """``bench --grad-accum`` at the smallest sizes: one row per k, the microbatch is batch / k, the activation
    estimate shrinks with k, and both ks end on the same loss (the same steps from the same state: accumulation
    changes the memory, not the optimisation). The CLI prints that report (``--json``) or its table, from its plan."""
    gpt = write(tmp_path / "gpt.toml", TINY_GPT.replace("batch_size = 2", "batch_size = 4"))
    plan = bench.GradAccumPlan(config=str(gpt), ks=(1, 4), steps=3, repeats=2)
    report = bench.grad_accum_step_times(plan, str(data_path), log=lambda message: None)
    assert [c["grad_accum"] for c in report["cases"]] == [1, 4]
    assert [c["microbatch"] for c in report["cases"]] == [4, 1]
    activations = [c["activation_bytes"] for c in report["cases"]]
    assert activations[0] > activations[1] > 0
    losses = [c["last_loss"] for c in report["cases"]]
    assert abs(losses[0] - losses[1]) < 1e-4 and 3.0 < losses[0] < 6.0, losses
    positive(report["cases"][0], "ms_per_step", "compile_s")
    table = bench.format_grad_accum(report).splitlines()
    assert len(table) == 2 + 2 and table[2].split()[:2] == ["1", "4"] and table[2].split()[3] == "1.00×"
    plans = []
    monkeypatch.setattr(bench, "grad_accum_step_times", lambda plan, data, log: plans.append(plan) or report)
    for flags, want in ((["--quick", "--json"], bench.GradAccumPlan(repeats=1, steps=5)), ([], bench.GradAccumPlan())):
        assert cli.main(["bench", "--grad-accum", *flags]) == 0
        out = capsys.readouterr().out
        assert plans.pop() == want and want.config == "gpt-cpu" and want.ks == (1, 4)
        assert (json.loads(out) if flags else out.rstrip("\n")) == (report if flags else "\n".join(table))
