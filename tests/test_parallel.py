"""Data parallelism and multi-process training: the same numbers on 1, 2, 4 and 8 devices and on 2 processes.

A subprocess with 8 CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``) trains on meshes over 1,
2, 4 and 8 of them, and runs the ``fit`` driver on all 8; the two processes of the multi-process run talk through
``jax.distributed`` on localhost with gloo collectives; the one-device reference is ``fit`` in this process. They
all run at the same time.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxbigram import config
from jaxbigram.checkpoint import Store
from jaxbigram.data import load_corpus
from jaxbigram.errors import UsageError
from jaxbigram.models.bigram import logits_table
from jaxbigram.parallel import DataParallel, select_devices
from jaxbigram.train import fit
from conftest import REPO_ROOT as ROOT, SUITE_OPT_LEVEL, store_params
DEVICE_COUNTS = (1, 2, 4, 8)  # as in parallel_worker.py
STEPS, HALF = 40, 20
CONFIG = f"""
[train]
seed = 7
steps = {STEPS}
batch_size = 16
block_size = 8
learning_rate = 0.05
steps_per_call = 10
[eval]
interval = 20
iters = 4
[checkpoint]
interval = 20
keep = 2
"""


def _env(devices: int = 1) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {SUITE_OPT_LEVEL}"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch_pair(cfg, data, workdir, steps, tmp):
    port = _free_port()
    procs = []
    for pid in range(2):
        cmd = [sys.executable, str(ROOT / "run.py"), "train", "--config", str(cfg), "--data", str(data),
               "--workdir", str(workdir), "--steps", str(steps), "--coordinator", f"localhost:{port}",
               "--num-processes", "2", "--process-id", str(pid)]
        out, err = open(tmp / f"p{pid}-{steps}.out", "w+"), open(tmp / f"p{pid}-{steps}.err", "w+")
        procs.append((subprocess.Popen(cmd, env=_env(), stdout=out, stderr=err, cwd=tmp), out, err))
    return procs


def _finish(procs, timeout=240):
    results = []
    for proc, out, err in procs:
        proc.wait(timeout=timeout)
        out.seek(0), err.seek(0)
        results.append((proc.returncode, out.read(), err.read()))
        out.close(), err.close()
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_corpus):
    """Start the subprocesses together (the 8-device worker and the first half of the two-process run), and train
    the one-device reference with ``fit`` in this process meanwhile."""
    tmp = tmp_path_factory.mktemp("parallel")
    data = tmp / "corpus.txt"
    make_corpus(str(data), 60_000, vocab=120, seed=3)
    cfg = tmp / "cfg.toml"
    cfg.write_text(CONFIG)
    worker = subprocess.Popen([sys.executable, str(ROOT / "tests" / "parallel_worker.py"), str(cfg), str(data),
                               str(tmp / "dev8"), str(tmp / "dev8.npz")],
                              env=_env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pair = _launch_pair(cfg, data, tmp / "multi", HALF, tmp)
    (tmp / "one").mkdir()  # fit writes metrics.jsonl into an existing workdir (train_and_evaluate creates it)
    with open(os.devnull, "w") as quiet:
        reference = fit(config.load(cfg), load_corpus(data), Store(tmp / "one"), fresh=True, out=quiet, err=quiet)
    output, _ = worker.communicate(timeout=240)
    assert worker.returncode == 0, output[-3000:]
    first_half = _finish(pair)
    second_half = _finish(_launch_pair(cfg, data, tmp / "multi", STEPS, tmp))  # resumes from step HALF
    one = {"params": np.asarray(logits_table(reference.state.params)), "val_loss": reference.report["val_loss"],
           "history": np.asarray([[h["step"], h["train_loss"], h["val_loss"]] for h in reference.history])}
    return {"tmp": tmp, "one": one, "dev": np.load(tmp / "dev8.npz"), "pair": (first_half, second_half)}


def test_batch_must_split_evenly_over_devices():
    with pytest.raises(UsageError) as e:
        DataParallel.create(10, devices=[object()] * 4)
    assert e.value.code == "batch_devices"
    assert "batch_size 10" in str(e.value) and "4 devices" in str(e.value)
    dp = DataParallel.create(12, devices=None)
    assert dp.num_devices >= 1 and dp.local_device_count == dp.num_devices  # one process: every device is local


class _Device:
    def __init__(self, index, process_index=0):
        self.id, self.process_index = index, process_index

    def __repr__(self):
        return f"dev{self.id}@p{self.process_index}"


def test_select_devices_follows_train_devices_and_the_model():
    two = [_Device(0), _Device(1)]
    # explicit: the first N, or one line when there are fewer
    assert select_devices(1, 12, True, two, "cpu") == two[:1]
    assert select_devices(2, 12, False, two, "cpu") == two
    with pytest.raises(UsageError) as e:
        select_devices(3, 12, True, two, "cpu")
    assert e.value.code == "devices_unavailable" and "at most 2" in str(e.value)
    # automatic on a CPU: the GPT takes both devices, the bigram (a step of microseconds) one
    assert select_devices(0, 12, True, two, "cpu") == two
    assert select_devices(0, 12, False, two, "cpu") == two[:1]
    assert select_devices(0, 5, True, two, "cpu") == two[:1]  # an odd batch cannot split over two: one device
    # several processes: one device of each for the bigram; on accelerators every device, whatever the model
    four = [_Device(0, 0), _Device(1, 0), _Device(2, 1), _Device(3, 1)]
    assert select_devices(0, 16, False, four, "cpu") == [four[0], four[2]]
    assert select_devices(0, 16, True, four, "cpu") == four
    assert select_devices(0, 16, False, four, "gpu") == four


@pytest.mark.parametrize("n", DEVICE_COUNTS[1:])
def test_loss_curve_matches_one_device(runs, n):
    """Meshes over 2, 4 and 8 devices: same global batch, same per-step losses and params as 1 device."""
    dev = runs["dev"]
    assert int(dev["devices"]) == 8
    # each device holds only its rows of the global batch, and the global batch is the one-device batch
    assert dev[f"rows{n}"].tolist() == [16 // n] and dev["rows1"].tolist() == [16]
    np.testing.assert_array_equal(dev[f"batch{n}"], dev["batch1"])
    losses = dev["losses1"]
    assert losses.shape == (STEPS,) and np.isfinite(losses).all() and losses[-1] < losses[0] - 0.5
    np.testing.assert_allclose(dev[f"losses{n}"], losses, rtol=0, atol=1e-5)
    np.testing.assert_allclose(dev[f"params{n}"], dev["params1"], rtol=0, atol=1e-5)


def test_fit_on_eight_devices_matches_one(runs):
    """The whole driver on 8 devices (evals, checkpoints, exact report) against fit in this 1-device process."""
    dev, one = runs["dev"], runs["one"]
    np.testing.assert_allclose(dev["params1"], one["params"], rtol=0, atol=1e-5)  # the chunk loop is what fit runs
    np.testing.assert_allclose(dev["fit_params"], one["params"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(dev["history"], one["history"], rtol=0, atol=1e-5)
    assert abs(float(dev["val_loss"]) - one["val_loss"]) < 1e-5


def test_checkpoint_of_many_devices_restores_on_one(runs):
    """A checkpoint written from an 8-device mesh loads in this one-device process (sample/eval path)."""
    params, meta = store_params(runs["tmp"] / "dev8")
    assert meta["step"] == STEPS
    np.testing.assert_allclose(np.asarray(params["token_embedding_table"]["embedding"]), runs["one"]["params"],
                               rtol=0, atol=1e-5)


def test_two_processes_train_together_like_one(runs):
    for half in runs["pair"]:
        (rc0, out0, err0), (rc1, out1, err1) = half
        assert rc0 == 0 and rc1 == 0, (err0[-2000:], err1[-2000:])
        assert out1 == "" and "Traceback" not in err1  # only the primary process prints
        assert "2 device(s) [CpuDevice(id=0), CpuDevice(id=" in err0  # one global mesh over both processes
        assert "[Gloo]" not in out0  # gloo's C++ connection lines go to stderr: stdout holds only results
    first, second = runs["pair"]
    assert f"step {HALF}: train loss" in first[0][1]
    assert f"resuming from step {HALF}" in second[0][2] and f"step {STEPS}: train loss" in second[0][1]
    # the run saved from both processes, resumed from both, and ends where one process with one device ends
    params, meta = store_params(runs["tmp"] / "multi")
    assert meta["step"] == STEPS
    one = runs["one"]
    np.testing.assert_allclose(np.asarray(params["token_embedding_table"]["embedding"]), one["params"],
                               rtol=0, atol=1e-5)
    history = np.asarray([[h["step"], h["train_loss"], h["val_loss"]] for h in meta["history"]])
    np.testing.assert_allclose(history, one["history"], rtol=0, atol=1e-5)
    assert abs(meta["exact"]["val_loss"] - one["val_loss"]) < 1e-5


def test_gpt_with_dropout_on_four_devices_matches_one(tmp_path, make_corpus):
    """The GPT through the same data-parallel driver: 4 forced CPU devices against 1, dropout on."""
    from test_train import GPT_TINY

    data = tmp_path / "corpus.txt"
    make_corpus(str(data), 40_000, vocab=120, seed=4)
    cfg = tmp_path / "gpt.toml"
    cfg.write_text(GPT_TINY)
    outs = {}
    for n in (1, 4):
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "parallel_worker.py"), "--fit", str(cfg),
                               str(data), str(tmp_path / f"dev{n}"), str(tmp_path / f"dev{n}.npz")],
                              env=_env(n), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[n] = np.load(tmp_path / f"dev{n}.npz")
    assert int(outs[4]["devices"]) == 4 and int(outs[1]["devices"]) == 1
    np.testing.assert_allclose(outs[4]["history"], outs[1]["history"], rtol=0, atol=1e-5)
    # Params: a few entries whose gradients are ~0 (rows of characters missing from these short runs' batches) are
    # Adam-normalised float noise (the 4-device all-reduce sums in another order), so the bound is looser there.
    diff = np.abs(outs[4]["params"] - outs[1]["params"])
    assert (diff <= 1e-5).mean() > 0.99 and diff.max() < 1e-3


def test_split_on_cpu_only_for_steps_worth_an_all_reduce():
    """The automatic CPU split goes by the step's FLOPs, 6 · params · tokens, against ``CPU_SPLIT_MIN_FLOPS``;
    never for the bigram (a lookup of microseconds)."""
    from jaxbigram.models.bigram import Bigram
    from jaxbigram.models.gpt import GPT
    from jaxbigram.parallel import CPU_SPLIT_MIN_FLOPS, split_on_cpu

    assert not split_on_cpu(Bigram(65), 1) and not split_on_cpu(Bigram(65), 10**6)
    small = GPT(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32)
    flops = 6 * small.param_count() * 8 * 16
    assert flops < CPU_SPLIT_MIN_FLOPS and not split_on_cpu(small, 8)
    big_batch = -(-int(CPU_SPLIT_MIN_FLOPS) // (6 * small.param_count() * 16))  # the first batch over the line
    assert split_on_cpu(small, big_batch) and not split_on_cpu(small, big_batch - 1)
