"""Hostile inputs to data.py, config.py and memory.py: files that are not regular files, paths that are not UTF-8,
byte-order marks, a tampered ids cache, integers JAX cannot hold, non-finite floats, runs too big for the memory.

Every refusal is one ``UsageError`` (one line, naming what to change); nothing hangs, nothing is read forever.
"""

import json
import math
import os
import socket

import numpy as np
import pytest

from jaxbigram import config, data, memory
from jaxbigram.errors import UsageError

BAD_NAME = os.fsdecode(b"corpus-\xff\xfe.txt")  # not UTF-8: Python holds it as lone surrogates


def error_of(fn, *args, **kwargs) -> UsageError:
    with pytest.raises(UsageError) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text and "\r" not in text  # one line
    text.encode("utf-8")  # printable whatever the path: no lone surrogates
    return info.value


def naive_ids(text):
    chars = sorted(set(text))
    return "".join(chars), np.asarray([chars.index(c) for c in text])


# ----------------------------------------------------------------------------- 6. memory estimate

GIB = 1 << 30


def test_estimate_terms_for_the_bigram():
    terms = memory.estimate_bytes(65, 32, 8, 200, 1000)
    assert terms["params"] == 65 * 65 * 4
    assert terms["optimizer"] == 2 * terms["params"] and terms["gradients"] == terms["params"]
    assert terms["batch_buffers"] == 1000 * 2 * 32 * 8 * 4  # all 1000 steps drawn at once (512k ids ≤ 2**21)
    assert terms["eval_batch"] == 2 * 32 * 8 * 65 * 4  # one batch, not 200
    assert terms["eval_keys"] == 2 * 200 * 12
    assert terms["step_losses"] == 4000


def test_batch_buffer_matches_train_chunk():
    from jaxbigram import train

    assert memory.BATCH_BUFFER_ELEMENTS == train.BATCH_BUFFER_ELEMENTS
    for batch, block, steps in [(32, 8, 1000), (128, 32, 1000), (4096, 256, 10), (1, 1, 5)]:
        per_draw = train._steps_per_draw(steps, 2 * batch * block, train.BATCH_BUFFER_ELEMENTS)
        assert memory.estimate_bytes(65, batch, block, 1, steps)["batch_buffers"] == per_draw * 2 * batch * block * 4


def test_a_second_model_supplies_its_own_params_and_activations():
    terms = memory.estimate_bytes(65, 64, 256, 200, 100, num_params=10_000_000, activation_bytes=123)
    assert terms["params"] == 40_000_000 and terms["optimizer"] == 80_000_000 and terms["activations"] == 123


@pytest.mark.parametrize("kwargs, term, advice", [
    (dict(vocab_size=60_000), "optimizer", "fewer distinct characters"),
    (dict(batch_size=10**9), "activations", "lower train.batch_size"),
    (dict(eval_iters=10**9), "eval_keys", "lower eval.iters"),
])
def test_runs_too_big_for_the_memory_give_one_line(kwargs, term, advice):
    args = dict(vocab_size=65, batch_size=32, block_size=8, eval_iters=200, steps_per_call=1000) | kwargs
    err = error_of(memory.check_fits, memory.estimate_bytes(**args), 16 * GIB)
    assert err.code == "too_big" and err.fields["term"] == term and advice in str(err)
    assert str(err).startswith("this run needs about ") and "only 16.0 GiB is available" in str(err)


def test_the_default_config_fits(repo_root):
    cfg = config.load(repo_root / "configs" / "default.toml")
    terms = memory.estimate_for_config(cfg, 65, data_ids=1_115_394)
    assert memory.check_fits(terms, 256 * 1024 * 1024) == sum(terms.values())  # well under 256 MiB
    memory.check_fits(terms, memory.available_memory_bytes())
    memory.check_fits(terms, None)  # unknown: no check


def test_available_memory_reads_meminfo_and_the_cgroup(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:   8000000 kB\n", encoding="ascii")
    cg = tmp_path / "cg"
    cg.mkdir()
    assert memory.available_memory_bytes(meminfo=str(meminfo), cgroup_root=str(cg)) == 8_000_000 * 1024
    (cg / "memory.max").write_text("max\n", encoding="ascii")
    assert memory.available_memory_bytes(meminfo=str(meminfo), cgroup_root=str(cg)) == 8_000_000 * 1024
    (cg / "memory.max").write_text(f"{2 * GIB}\n", encoding="ascii")
    (cg / "memory.current").write_text(f"{GIB // 2}\n", encoding="ascii")
    assert memory.available_memory_bytes(meminfo=str(meminfo), cgroup_root=str(cg)) == GIB + GIB // 2
    assert memory.available_memory_bytes(meminfo=str(tmp_path / "none"), cgroup_root=str(tmp_path / "none")) is None
    real = memory.available_memory_bytes()
    assert real is None or real > 0


def test_available_memory_of_a_device_with_stats():
    class Device:
        def memory_stats(self):
            return {"bytes_limit": 80 * GIB, "bytes_in_use": 2 * GIB}

    assert memory.available_memory_bytes(Device()) == 78 * GIB


def test_human_bytes():
    assert [memory.human_bytes(n) for n in (0, 1023, 1536, 16 * GIB)] == ["0 B", "1023 B", "1.5 KiB", "16.0 GiB"]
    assert math.isclose(float(memory.human_bytes(2**60).split()[0]), 1024.0)
