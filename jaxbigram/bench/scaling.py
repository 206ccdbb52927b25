"""``bench --scaling``: train, resume, eval and sample through the CLI on a big generated corpus with a big
vocabulary (each command a fresh process: wall time and peak memory), the checkpoint size and the compiled step's
speed at that vocabulary."""

from __future__ import annotations

import json
import time

from . import synthetic, timing
from .speed import bench_train


SCALING_CONFIG = """
[train]
steps = {steps}
batch_size = 32
block_size = 8
learning_rate = 0.05
steps_per_call = 100
[eval]
interval = 100
iters = 10
[checkpoint]
interval = 100
keep = 2
"""


def run_scaling(data: str, *, quick: bool = False, size_mb: float = 100.0, vocab: int = 10_000, steps: int = 200,
                log=timing.log) -> dict:
    """Train, resume, eval and sample through the CLI on a generated corpus with ``vocab`` distinct characters (a
    ``vocab²``-parameter table): wall time and peak memory of each command, the checkpoint size, the speed of the
    compiled step at that vocabulary, and a tokenizer round trip of the whole corpus."""
    import numpy as np

    from ..data import load_corpus

    if quick:
        size_mb, vocab = 10.0, 2000
    report: dict = {"size_mb": size_mb, "vocab": vocab}
    with timing.scratch("jaxbigram-scaling-") as base:
        corpus = base / "corpus.txt"
        t0 = time.perf_counter()
        report["corpus"] = synthetic.make_corpus(str(corpus), int(size_mb * 1e6), vocab)
        report["corpus"]["seconds"] = round(time.perf_counter() - t0, 2)
        log(f"corpus: {report['corpus']['bytes'] / 1e6:.1f} MB, {report['corpus']['distinct_characters']:,} "
            f"distinct characters")
        cfg, workdir = base / "scaling.toml", base / "run"
        cfg.write_text(SCALING_CONFIG.format(steps=steps))
        env = timing.child_env(XDG_CACHE_HOME=str(base / "cache"))
        train = ["train", "--config", str(cfg), "--data", str(corpus), "--workdir", str(workdir)]
        commands = {
            "train (first run: encode + cache)": train + ["--fresh"],
            "train (resume +100 steps, cached ids)": train + ["--steps", str(steps + 100)],
            "eval": ["eval", "--workdir", str(workdir), "--json"],
            "sample 10,000 chars": ["sample", "--workdir", str(workdir), "--max-new-tokens", "10000"],
            "sample 10,000 chars, top-k 50": ["sample", "--workdir", str(workdir), "--max-new-tokens", "10000",
                                              "--top-k", "50"],
        }
        report["commands"] = {}
        for name, args in commands.items():
            run = timing.run_measured(timing.jaxbigram_argv(*args), env)
            if run["rc"] != 0:
                raise RuntimeError(f"{name} failed (exit {run['rc']}):\n{run['stderr'][-2000:]}")
            row = {"wall_s": round(run["wall_s"], 2), "peak_rss_mb": round(run["peak_rss_mb"])}
            if name == "eval":
                ev = json.loads(run["stdout"])
                row.update(val_loss=round(ev["val_loss"], 4), optimum_val_loss=round(ev["optimum_val_loss"], 4))
            report["commands"][name] = row
            log(f"{name}: {row}")
        step_dirs = [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
        newest = max(step_dirs, key=lambda p: int(p.name))
        report["checkpoint_mb"] = round(sum(f.stat().st_size for f in newest.rglob("*") if f.is_file()) / 2**20)
        loaded = load_corpus(str(corpus))
        report["round_trip"] = loaded.tokenizer.decode(loaded.ids) == corpus.read_bytes().decode("utf-8")
        train_ids = np.asarray(loaded.ids[: len(loaded.ids) * 9 // 10])
        speed = bench_train(train_ids, loaded.tokenizer.vocab_size, (32, 8), 20, 3, 1)
        report["train_steps_per_s"] = speed["steps_per_s"]
    return report

