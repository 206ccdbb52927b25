"""``python run.py bench``: how fast training, sampling and data prep run on this machine, next to a naive JAX loop.

One module per harness: ``speed`` (``bench``: training, sampling, data prep, whole preset runs) with ``gpt_speed``
(its GPT figures), ``scaling`` (``--scaling``), ``vs_torch`` (``--against torch``, with the PyTorch reference
``torch_ref``), ``sweeps`` (``--sweeps``), ``grad_accum`` (``--grad-accum``); ``timing`` is what they share (fresh-process runs that die with the bench,
in-process timers, A B A B alternation, medians). This package is a harness at the edge: only ``cli bench`` imports
it, and nothing in training imports it.
"""

from __future__ import annotations

from . import timing
from .grad_accum import GradAccumPlan, format_grad_accum, grad_accum_step_times
from .gpt_speed import PUBLISHED_PEAK_TFLOPS, gpt_flops_per_token
from .scaling import run_scaling
from .speed import FULL, QUICK, Plan, run_speed
from .sweeps import SweepCase, SweepPlan, run_sweeps
from .vs_torch import TorchPlan, require_torch, run_against_torch

__all__ = ["FULL", "GradAccumPlan", "PUBLISHED_PEAK_TFLOPS", "QUICK", "Plan", "SweepCase", "SweepPlan", "TorchPlan",
           "format_grad_accum", "format_table", "gpt_flops_per_token", "grad_accum_step_times", "require_torch", "run",
           "run_against_torch", "run_scaling", "run_speed", "run_sweeps"]


def _flatten(report: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in report.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def run(*, quick: bool = False, scaling: bool = False, data: str | None = None, platform: str | None = None,
        log=timing.log) -> dict:
    """``bench`` (or ``bench --scaling``): every measurement; returns the flat JSON-ready report documented in
    docs/performance.md."""
    from ..data import load_corpus, resolve_data_path

    path, _ = resolve_data_path(data)
    if scaling:
        return run_scaling(str(path), quick=quick, log=log)
    return run_speed(QUICK if quick else FULL, load_corpus(path), platform, log)


def format_table(report: dict) -> str:
    """The report as an aligned two-column text table (what ``bench`` prints without ``--json``)."""
    rows = [(k, v) for k, v in _flatten(report).items() if not k.startswith("raw_seconds") and k != "devices"]
    width = max(len(k) for k, _ in rows)
    lines = []
    for key, value in rows:
        if isinstance(value, float):
            value = f"{value:,.0f}" if value >= 1000 else f"{value:.3g}" if value < 10 else f"{value:,.1f}"
        lines.append(f"{key.ljust(width)}  {value}")
    return "\n".join(lines)

