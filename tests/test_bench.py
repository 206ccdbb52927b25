"""``run.py bench``: every figure it reports is documented in the README, and each one is a sane measurement.

Sizes are tiny here (the real command takes about a minute); nothing about speed is asserted.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json
import math
import re
from pathlib import Path

from jaxbigram import bench, data
from jaxbigram.cli import build_parser

REPO = Path(__file__).resolve().parent.parent


def documented_keys() -> set[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("<!-- section: performance -->"):readme.index("<!-- end: performance -->")]
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.MULTILINE))


def test_bench_measures_every_documented_figure(tmp_path):
    path = tmp_path / "corpus.txt"
    size = bench.write_corpus(path, 0.05)
    text = path.read_bytes().decode("utf-8")  # valid UTF-8, with multi-byte characters
    assert size == len(path.read_bytes()) and any(ord(c) > 0xFFFF for c in text)
    plan = bench.Plan(repeats=1, small_shape=(4, 8), small_steps_per_call=20, small_calls=1, large_shape=(8, 16),
                      large_steps_per_call=2, large_calls=1, naive_steps=10, sample_long=(1, 300),
                      sample_wide=(3, 100), naive_sample_chars=100, notes_config=str(REPO / "configs" / "tiny.toml"),
                      notes_repeats=1, corpus_mb=0.05, data_repeats=1, extra_args=("--data", str(path)))
    report = bench.run(plan, data.load_corpus(path))

    assert set(report) == documented_keys()
    json.dumps(report)  # one JSON object
    for key, value in report.items():
        if key.endswith(("_per_s", "_s", "_mb")) or key.startswith("speedup"):
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    assert report["train_shape"] == "4x8" and report["sample_many_streams_shape"] == "3x100"
    assert report["data_prep_cache_memory_mapped"] is True
    assert report["train_tokens_per_s"] == report["train_steps_per_s"] * 32
    assert report["notes_run_warm_cache_s"] > 0 and report["notes_config"] == "tiny.toml"
    table = bench.format_table(report)
    assert all(key in table for key in report if key not in ("raw_seconds", "devices"))


def test_bench_flags():
    args = build_parser().parse_args(["bench", "--json", "--quick", "--platform", "cpu"])
    assert (args.command, args.json, args.quick, args.platform) == ("bench", True, True, "cpu")
