#!/usr/bin/env python
"""Big corpus, big vocabulary: train, resume, eval and sample through the CLI on a generated ~100 MB corpus with
~10,000 distinct characters (a 100 M-parameter table), measuring wall time and peak resident memory of each
command; then the training speed of the compiled step, and a full tokenizer round trip.

    python scripts/bench_scaling.py [--size-mb 100] [--vocab 10000] [--dir /tmp/jaxbigram-scaling] [--json]

Every command runs in its own process; its peak RSS is the kernel's ``ru_maxrss`` for that process (os.wait4).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
[train]
seed = 1337
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

SPEED = r"""
import json, resource, sys, time
import jax, numpy as np
from jaxbigram import config, data, parallel, train
corpus = data.load_corpus(sys.argv[1])
train_np, _ = data.split(corpus.ids, 0.1)
vocab, out = corpus.tokenizer.vocab_size, []
for batch, block in ((32, 8), (128, 32)):
    cfg = config.from_dict({"train": {"batch_size": batch, "block_size": block}}).train
    dp = parallel.DataParallel.create(batch)
    state = dp.replicate(train.create_train_state(jax.random.key(0), vocab, cfg))
    ids, key = dp.replicate((train_np, jax.random.key(1)))
    kw = dict(batch_size=batch, block_size=block, max_steps=20, sharding=dp.batch_sharding)
    compiled = train.train_chunk.lower(state, ids, key, 20, **kw).compile().memory_analysis()
    state, losses = train.train_chunk(state, ids, key, 20, **kw); losses.block_until_ready()  # warm-up
    t0 = time.perf_counter()
    for _ in range(3):
        state, losses = train.train_chunk(state, ids, key, 20, **kw)
    losses.block_until_ready()
    rate = 60 / (time.perf_counter() - t0)
    out.append({"batch": batch, "block": block, "steps_per_s": round(rate, 2),
                "tokens_per_s": round(rate * batch * block), "state_mb": round(compiled.argument_size_in_bytes / 2**20),
                "step_temp_mb": round(compiled.temp_size_in_bytes / 2**20)})
    del state
print(json.dumps({"vocab": vocab, "params": vocab * vocab, "speed": out}))
"""

ROUND_TRIP = r"""
import json, sys
from jaxbigram import data
text = open(sys.argv[1], "rb").read().decode("utf-8")
corpus = data.load_corpus(sys.argv[1])
ok = corpus.tokenizer.decode(corpus.ids) == text
print(json.dumps({"round_trip": ok, "characters": len(text), "distinct": len(set(text)),
                  "crlf": text.count("\r\n"), "lf": text.count("\n"), "ids_dtype": str(corpus.ids.dtype)}))
"""


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``: its wall time, its own peak resident memory (``os.wait4``), exit code and output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024),
              "rc": proc.returncode, "stdout": out, "stderr": err}
    if proc.returncode != 0:
        sys.stderr.write(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}\n")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=100.0)
    parser.add_argument("--vocab", type=int, default=10000)
    parser.add_argument("--steps", type=int, default=200, help="training steps of the first run (resume adds 100)")
    parser.add_argument("--dir", default="/tmp/jaxbigram-scaling", help="where the corpus and the run go")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    corpus = base / f"corpus-{args.size_mb:g}mb-{args.vocab}.txt"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    py, runpy = sys.executable, str(ROOT / "run.py")
    report: dict = {}

    gen = run_measured([py, str(ROOT / "scripts" / "make_corpus.py"), "--out", str(corpus), "--size-mb",
                        str(args.size_mb), "--vocab", str(args.vocab)], env)
    report["corpus"] = {**json.loads(gen["stdout"]), "peak_rss_mb": gen["peak_rss_mb"]}
    for stale in base.glob(corpus.name + ".jaxbigram-*"):  # the first train encodes from scratch
        stale.unlink()
    cfg = base / "scaling.toml"
    workdir = base / "run"
    cfg.write_text(CONFIG.format(steps=args.steps))
    train_cmd = [py, runpy, "train", "--config", str(cfg), "--data", str(corpus), "--workdir", str(workdir)]
    commands = {
        "train (first run: encode + cache)": train_cmd + ["--fresh"],
        "train (resume +100 steps, cached ids)": train_cmd + ["--steps", str(args.steps + 100)],
        "eval": [py, runpy, "eval", "--workdir", str(workdir), "--json"],
        "sample 10,000 chars": [py, runpy, "sample", "--workdir", str(workdir), "--max-new-tokens", "10000"],
        "sample 10,000 chars, top-k 50": [py, runpy, "sample", "--workdir", str(workdir), "--max-new-tokens",
                                          "10000", "--top-k", "50"],
    }
    report["commands"] = {}
    for name, cmd in commands.items():
        r = run_measured(cmd, env)
        row = {"wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"], "rc": r["rc"]}
        m = re.search(r"trained to step (\d+) in [\d.]+ s \(([\d,.]+) steps/s\)", r["stdout"])
        if m:
            row["steps_per_s_incl_compile"] = float(m.group(2).replace(",", ""))
        if name == "eval" and r["rc"] == 0:
            ev = json.loads(r["stdout"])
            row.update(val_loss=round(ev["val_loss"], 4), optimum_val_loss=round(ev["optimum_val_loss"], 4))
        if name.startswith("sample") and r["rc"] == 0:
            row["distinct_chars_sampled"] = len(set(r["stdout"]))
        report["commands"][name] = row
    ckpt = max((p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    report["checkpoint_mb"] = round(sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()) / 2**20)
    speed = run_measured([py, "-c", SPEED, str(corpus)], env)
    report["speed"] = {**json.loads(speed["stdout"]), "peak_rss_mb": speed["peak_rss_mb"]}
    rt = run_measured([py, "-c", ROUND_TRIP, str(corpus)], env)
    report["round_trip"] = {**json.loads(rt["stdout"]), "peak_rss_mb": rt["peak_rss_mb"]}

    if args.json:
        print(json.dumps(report))
        return 0
    c = report["corpus"]
    print(f"corpus: {c['bytes'] / 1e6:.1f} MB, {c['characters']:,} characters, {report['round_trip']['distinct']:,} "
          f"distinct; generated in {c['seconds']} s (peak {c['peak_rss_mb']} MB)")
    print(f"tokenizer round trip of the whole corpus: {report['round_trip']['round_trip']} "
          f"(ids {report['round_trip']['ids_dtype']}; peak {report['round_trip']['peak_rss_mb']} MB)")
    print("\n| command | wall s | peak RSS MB | notes |\n|---|---:|---:|---|")
    for name, row in report["commands"].items():
        notes = ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("wall_s", "peak_rss_mb", "rc"))
        print(f"| {name} | {row['wall_s']} | {row['peak_rss_mb']} | {notes}{'' if row['rc'] == 0 else ' FAILED'} |")
    print(f"\ncheckpoint on disk: {report['checkpoint_mb']} MB per step (params + AdamW mu, nu)")
    s = report["speed"]
    print(f"\ncompiled training step, V = {s['vocab']:,} ({s['params'] / 1e6:.0f} M parameters), after warm-up "
          f"(peak {s['peak_rss_mb']} MB):\n| batch x block | steps/s | tokens/s | state MB | step temp MB |\n"
          "|---|---:|---:|---:|---:|")
    for row in s["speed"]:
        print(f"| {row['batch']} x {row['block']} | {row['steps_per_s']} | {row['tokens_per_s']:,} | "
              f"{row['state_mb']} | {row['step_temp_mb']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
