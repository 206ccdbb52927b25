"""``bench --against torch``: whole runs of a bigram and a GPT preset next to the PyTorch reference (``torch_ref``),
each side a fresh process, alternating; medians and per-pair ratios."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import timing


@dataclass(frozen=True)
class TorchPlan:
    """What ``bench --against torch`` runs: whole runs of a bigram and a GPT preset, each side a fresh process,
    alternating jaxbigram / PyTorch ``pairs`` times."""

    bigram_config: str = "lecture"  # the seed's loop: the lecture's bigram.py
    gpt_config: str = "gpt-cpu"
    pairs: int = 3
    # --set style overrides for both presets and both sides. By default the samples a GPT preset prints at each eval
    # are off: the PyTorch reference does not sample, and the comparison is of the same work
    overrides: tuple = ("eval.sample_chars=0",)


def require_torch() -> None:
    """One ``error:`` line saying what to install when PyTorch is not importable."""
    import importlib.util

    from ..errors import UsageError

    if importlib.util.find_spec("torch") is None:
        raise UsageError("extra_missing", command="bench --against torch", package="torch (the CPU wheel is enough)",
                         extra="compare")


def _steady_rate(rates: list) -> float | None:
    """Steps/s of a run's eval intervals, the first left out (it holds jaxbigram's compile, PyTorch's warm-up):
    the median of the rest (of all when there is only one)."""
    rates = [r for r in rates if r]
    return statistics.median(rates[1:] if len(rates) > 1 else rates) if rates else None


def _jax_whole_run(preset: str, overrides: tuple, data: str, tmp: Path, tag: str, platform: str | None) -> dict:
    """``jaxbigram train --config PRESET --fresh`` in a fresh process, compile cache off (cold, as a first run)."""
    workdir = tmp / f"jax-{tag}"
    run = timing.timed_cli("train", preset, overrides, data, workdir, platform)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"wall_s": run["wall_s"], "steps_per_s": _steady_rate([r.get("steps_per_s") for r in rows]),
            "val": timing.exact_val(run["stdout"]), "last_val_estimate": rows[-1]["val_loss"]}


def _torch_whole_run(cfg, data: str, tmp: Path, tag: str) -> dict:
    """The PyTorch reference (``torch_ref``) in a fresh process, same config."""
    workdir = tmp / f"torch-{tag}"
    workdir.mkdir()
    spec = workdir / "config.json"
    spec.write_text(json.dumps(cfg.to_dict()))
    run = timing.run_measured([sys.executable, "-m", "jaxbigram.bench.torch_ref", str(spec), data, str(workdir)],
                              timing.child_env())
    if run["rc"] != 0:
        raise RuntimeError(f"PyTorch {cfg.model.kind} run failed (exit {run['rc']}):\n{run['stderr'][-2000:]}")
    out = json.loads(run["stdout"].strip().splitlines()[-1])
    return {"wall_s": run["wall_s"], "steps_per_s": _steady_rate(out["interval_steps_per_s"]),
            "val": out["exact_val_loss"], "last_val_estimate": out["val_loss"],
            "torch_version": out["torch_version"], "torch_threads": out["torch_threads"]}


def run_against_torch(plan: TorchPlan, data: str, platform: str | None = None, log=timing.log) -> dict:
    """jaxbigram and the PyTorch reference, whole runs side by side (A B A B …, each a fresh process): medians and
    per-pair ratios, flat keys documented in docs/performance.md. A ratio above 1 means jaxbigram is faster."""
    from .. import config as config_lib
    from ..data import check_length_for, load_corpus

    require_torch()
    cfgs = {kind: config_lib.load(name, plan.overrides) for kind, name in
            (("bigram", plan.bigram_config), ("gpt", plan.gpt_config))}
    check_length_for(load_corpus(data), "bench --against torch", {  # up front: both sides need the same windows
        f"the {getattr(plan, kind + '_config')} preset": (cfg.train.block_size, cfg.data.val_fraction)
        for kind, cfg in cfgs.items()})
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_model": timing.cpu_model(),
                    "cpu_count": os.cpu_count(), "load_avg_start": timing.load_average(), "vs_torch_pairs": plan.pairs,
                    "bigram_config": plan.bigram_config, "gpt_config": plan.gpt_config}
    runs: dict = {(side, kind): [] for side in ("jax", "torch") for kind in cfgs}
    with timing.scratch("jaxbigram-vs-torch-") as tmp:
        for pair in range(plan.pairs):  # A B A B …: each kind, jaxbigram then PyTorch
            for kind, cfg in cfgs.items():
                tag = f"{kind}-{pair}"
                jax_run = _jax_whole_run(getattr(plan, f"{kind}_config"), plan.overrides, data, tmp, tag, platform)
                torch_run = _torch_whole_run(cfg, data, tmp, tag)
                runs["jax", kind].append(jax_run)
                runs["torch", kind].append(torch_run)
                log(f"pair {pair + 1}/{plan.pairs} {kind}: jaxbigram {jax_run['wall_s']:.1f} s "
                    f"({jax_run['steps_per_s'] or 0:,.1f} steps/s), PyTorch {torch_run['wall_s']:.1f} s "
                    f"({torch_run['steps_per_s'] or 0:,.1f} steps/s)")
    last_torch = runs["torch", "gpt"][-1]
    report.update(torch_version=last_torch["torch_version"], torch_threads=last_torch["torch_threads"])
    for kind in cfgs:
        jax_runs, torch_runs = runs["jax", kind], runs["torch", kind]
        run_ratios = [t["wall_s"] / j["wall_s"] for j, t in zip(jax_runs, torch_runs)]
        step_ratios = [j["steps_per_s"] / t["steps_per_s"] for j, t in zip(jax_runs, torch_runs)
                       if j["steps_per_s"] and t["steps_per_s"]]
        report.update({
            f"{kind}_run_s_median": statistics.median(j["wall_s"] for j in jax_runs),
            f"torch_{kind}_run_s_median": statistics.median(t["wall_s"] for t in torch_runs),
            f"{kind}_vs_torch_run_ratio": statistics.median(run_ratios),
            f"{kind}_vs_torch_run_ratios": [round(r, 3) for r in run_ratios],
            f"{kind}_steps_per_s_median": statistics.median(j["steps_per_s"] for j in jax_runs),
            f"torch_{kind}_steps_per_s_median": statistics.median(t["steps_per_s"] for t in torch_runs),
            f"{kind}_vs_torch_step_ratio": statistics.median(step_ratios) if step_ratios else None,
            f"{kind}_vs_torch_step_ratios": [round(r, 3) for r in step_ratios],
            f"{kind}_val_estimate": statistics.median(j["last_val_estimate"] for j in jax_runs),
            f"torch_{kind}_val_estimate": statistics.median(t["last_val_estimate"] for t in torch_runs),
        })
    report.update(gpt_val=statistics.median(j["val"] for j in runs["jax", "gpt"]),
                  torch_gpt_val=statistics.median(t["val"] for t in runs["torch", "gpt"]),
                  load_avg_end=timing.load_average())
    return report

