"""``bench --sweeps``: a sweep next to its single run(s), alternating, each a fresh process (compile cache off on
both sides); and in this process, what makes a sweep's step fast (``fast_loss``, two devices)."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from functools import partial

from . import timing


@dataclass(frozen=True)
class SweepCase:
    """A sweep of ``seeds`` members of ``preset`` timed against one single run (``versus="single"``) or against
    ``seeds`` single runs one after the other (``"sequential"``)."""

    name: str  # in the keys: sweep_{name}_{seeds}_vs_{versus}
    preset: str
    seeds: int
    versus: str = "single"
    pairs: int = 3
    overrides: tuple = ()

    @property
    def prefix(self) -> str:
        return f"sweep_{self.name}_{self.seeds}"


@dataclass(frozen=True)
class SweepPlan:
    """What ``bench --sweeps`` runs (each run a fresh process, compile cache off on both sides)."""

    cases: tuple = (SweepCase("bigram", "default", 64), SweepCase("gpt_tiny", "gpt-tiny", 16),
                    SweepCase("gpt_cpu", "gpt-cpu", 4, versus="sequential", pairs=1))
    # both sides: no samples at evals (a sweep prints none)
    overrides: tuple = ("eval.sample_chars=0",)
    # in this process, one compiled chunk of member steps timed two ways (preset, members, steps per call):
    step_bigram: tuple = ("default", 64, 50)  # the logits' cross-entropy vs Bigram.fast_loss, one device
    step_gpt: tuple = ("gpt-cpu", 4, 10)  # members on one device vs split over two
    step_repeats: int = 3


def _time_member_chunks(preset: str, members: int, steps: int, repeats: int, corpus, variants: dict) -> dict:
    """Seconds per step of ``sweep_members.members_chunk`` for each variant (name → (loss_fn or None, devices)),
    called alternately (A B A B …) after one warm-up call each; medians."""
    import jax

    from .. import config as config_lib
    from .. import data as data_lib
    from .. import models, sweep, sweep_members

    cfg = config_lib.load(preset)
    train_np, _ = data_lib.split(corpus.ids, cfg.data.val_fraction)
    model = models.build(cfg.model, corpus.tokenizer.vocab_size, cfg.train.block_size)
    plan = sweep.Plan((cfg,), ("base",), members)
    setups = {}
    for name, (loss_fn, devices) in variants.items():
        split = sweep_members.member_sharding(devices)
        keys, hparams = sweep_members.member_inputs(plan, split)
        data = jax.device_put(train_np, jax.sharding.NamedSharding(split.mesh, jax.sharding.PartitionSpec()))
        states = sweep_members.member_init(model, cfg.train, split)(keys["init"])
        setups[name] = [states, hparams, keys, data, loss_fn]

    def call(name):
        states, hparams, keys, data, loss_fn = setups[name]
        t0 = time.perf_counter()
        states, losses = sweep_members.members_chunk(states, hparams, keys, data, steps, model=model, cfg=cfg.train,
                                                     max_steps=steps, loss_fn=loss_fn)
        jax.block_until_ready((states, losses))
        setups[name][0] = states
        return (time.perf_counter() - t0) / steps

    return timing.alternate({name: partial(call, name) for name in setups}, repeats)


def sweep_step_ratios(plan: SweepPlan, corpus, log=timing.log) -> dict:
    """What makes a sweep fast, measured side by side in this process: a bigram sweep's step with the logits'
    cross-entropy against ``Bigram.fast_loss`` (the pair counts), and a GPT sweep's step with its members on one
    device against split over two (None with a single device)."""
    import jax

    from .. import config as config_lib
    from .. import models

    preset, members, steps = plan.step_bigram
    bigram = models.build(config_lib.load(preset).model, corpus.tokenizer.vocab_size, 1)
    devices = jax.local_devices()
    bi = _time_member_chunks(preset, members, steps, plan.step_repeats, corpus,
                             {"logits": (None, devices[:1]), "fast_loss": (bigram.fast_loss, devices[:1])})
    log(f"{members} {preset} members per step: logits' cross-entropy {bi['logits'] * 1e3:.2f} ms, fast_loss "
        f"{bi['fast_loss'] * 1e3:.3f} ms")
    report = {"step_bigram_preset": preset, "step_bigram_members": members,
              "step_bigram_logits_ms": bi["logits"] * 1e3, "step_bigram_fast_loss_ms": bi["fast_loss"] * 1e3,
              "step_bigram_fast_loss_speedup": bi["logits"] / bi["fast_loss"]}
    preset, members, steps = plan.step_gpt
    variants = {"one_device": (None, devices[:1])}
    if len(devices) > 1 and members % 2 == 0:
        variants["two_devices"] = (None, devices[:2])
    gpt = _time_member_chunks(preset, members, steps, plan.step_repeats, corpus, variants)
    two = gpt.get("two_devices")
    log(f"{members} {preset} members per step: one device {gpt['one_device'] * 1e3:.1f} ms, two devices "
        f"{'-' if two is None else f'{two * 1e3:.1f} ms'}")
    report.update({"step_gpt_preset": preset, "step_gpt_members": members,
                   "step_gpt_one_device_ms": gpt["one_device"] * 1e3,
                   "step_gpt_two_devices_ms": None if two is None else two * 1e3,
                   "step_gpt_two_devices_speedup": None if two is None else gpt["one_device"] / two})
    return report


def run_sweeps(plan: SweepPlan, data: str, platform: str | None = None, pairs: int | None = None,
               log=timing.log) -> dict:
    """Each case's sweep next to its single run(s), alternating (baseline, sweep, baseline, sweep, …): per-pair
    ratios sweep time / baseline time and their median (below 1: the sweep took less time), flat keys documented in
    docs/performance.md. ``pairs`` overrides every case's."""
    from .. import config as config_lib
    from ..data import check_length_for, load_corpus

    cfgs = {case.preset: config_lib.load(case.preset, plan.overrides + case.overrides) for case in plan.cases}
    cfgs.update({preset: config_lib.load(preset) for preset, _, _ in (plan.step_bigram, plan.step_gpt)})
    corpus = load_corpus(data)
    check_length_for(corpus, "bench --sweeps", {  # up front, in one line: what `train` would refuse
        f"the {preset} preset": (cfg.train.block_size, cfg.data.val_fraction) for preset, cfg in cfgs.items()})
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_model": timing.cpu_model(),
                    "cpu_count": os.cpu_count(), "load_avg_start": timing.load_average()}
    report.update(sweep_step_ratios(plan, corpus, log))
    with timing.scratch("jaxbigram-bench-sweeps-") as tmp:
        for case in plan.cases:
            overrides = plan.overrides + case.overrides
            n_pairs, key = pairs or case.pairs, f"{case.prefix}_vs_{case.versus}"
            single_vals, sweep_vals = [], []

            def baseline(pair, case=case, overrides=overrides):
                seconds = 0.0
                for i in range(case.seeds if case.versus == "sequential" else 1):
                    run = timing.timed_cli("train", case.preset, overrides + (f"train.seed={1337 + i}",), data,
                                           tmp / f"{case.name}-single-{pair}-{i}", platform)
                    seconds += run["wall_s"]
                    exact = timing.exact_val(run["stdout"])
                    single_vals.append(math.nan if exact is None else exact)
                return seconds

            def swept(pair, case=case, overrides=overrides):
                run = timing.timed_cli("sweep", case.preset, overrides + ("train.seed=1337",), data,
                                       tmp / f"{case.name}-sweep-{pair}", platform, "--seeds", str(case.seeds),
                                       "--json")
                sweep_vals.append(statistics.fmean(json.loads(run["stdout"].strip().splitlines()[-1])["val_loss"]))
                return run["wall_s"]

            def said(pair, baseline_s, sweep_s, case=case, key=key, n_pairs=n_pairs):
                log(f"{key} pair {pair + 1}/{n_pairs}: {case.versus} {baseline_s:.1f} s, sweep of {case.seeds} "
                    f"{sweep_s:.1f} s (ratio {sweep_s / baseline_s:.2f})")

            baselines, sweeps = timing.ab_pairs(n_pairs, baseline, swept, said)
            ratios = [s / b for s, b in zip(sweeps, baselines)]
            report.update({
                key: statistics.median(ratios), f"{key}_ratios": [round(r, 3) for r in ratios],
                f"{case.prefix}_preset": case.preset, f"{case.prefix}_pairs": n_pairs,
                f"{case.prefix}_s_median": statistics.median(sweeps),
                f"{case.prefix}_{case.versus}_s_median": statistics.median(baselines),
                f"{case.prefix}_val_mean": statistics.median(sweep_vals),
                f"{case.prefix}_single_val": statistics.median(single_vals),
            })
    report["load_avg_end"] = timing.load_average()
    return report

