"""``bench --grad-accum``: the step time of gradient accumulation (``train.grad_accum``), k = 1 next to k = 4 (or any
ks), on one config's sizes, with the activation memory the estimate gives each (what accumulation buys).

Each k times the same compiled ``train.train_chunk`` a run uses (its batches drawn up front, one fused call of
``steps`` steps); after one warm-up call each, the ks alternate (k=1, k=4, k=1, k=4, …: ``timing.alternate``) and the
median of ``repeats`` calls is reported. Only the step's work differs between the ks: k microbatches of
``batch_size / k`` windows in a ``lax.scan`` instead of one batch. Every k starts from the same state and sees the
same batches, so the last losses agree (the optimisation is the same; floats differ in the last digits).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import timing


@dataclass(frozen=True)
class GradAccumPlan:
    """What ``bench --grad-accum`` times: ``config`` (a preset or path, with ``overrides``) at each k of ``ks``."""

    config: str = "gpt-cpu"
    ks: tuple = (1, 4)
    steps: int = 20
    repeats: int = 5
    overrides: tuple = ()


def grad_accum_step_times(plan: GradAccumPlan, data_path: str | None = None, log=timing.log) -> dict:
    """Time a step at each ``grad_accum`` of ``plan.ks`` (each must divide the batch size). Returns ``{config, model,
    batch_size, block_size, steps, repeats, platform, cases: [{grad_accum, microbatch, ms_per_step, compile_s,
    activation_bytes, last_loss}]}``: ``ms_per_step`` the median of ``repeats`` alternating fused calls of ``steps``
    steps, ``activation_bytes`` the memory estimate's activation term, ``last_loss`` the last step's loss."""
    import jax
    import jax.numpy as jnp

    from .. import config as config_lib
    from .. import data as data_lib
    from .. import memory, models, train

    base = config_lib.load(plan.config, list(plan.overrides))
    corpus = data_lib.load_corpus(str(data_lib.resolve_data_path(data_path)[0]))
    train_np, _ = data_lib.split(corpus.ids, base.data.val_fraction)
    tcfg = base.train
    model = models.build(base.model, corpus.tokenizer.vocab_size, tcfg.block_size)
    ids = jnp.asarray(train_np)
    keys = train.run_keys(tcfg.seed)
    runs, cases = {}, {}
    for k in plan.ks:
        cfg = config_lib.replace(base, "train", grad_accum=int(k))  # validated: k divides the batch
        sizes = dict(batch_size=tcfg.batch_size, block_size=tcfg.block_size, max_steps=plan.steps, grad_accum=int(k))
        state = train.create_train_state(keys["init"], model, cfg.train)
        t0 = time.perf_counter()
        compiled = train.train_chunk.lower(state, ids, keys["batch"], keys["dropout"], plan.steps, **sizes).compile()
        terms = memory.estimate_for_config(cfg, corpus.tokenizer.vocab_size, num_params=model.param_count(),
                                           activation_bytes=memory.activation_bytes(model, tcfg.batch_size))
        cases[k] = {"grad_accum": int(k), "microbatch": tcfg.batch_size // int(k),
                    "compile_s": time.perf_counter() - t0, "activation_bytes": terms["activations"]}
        runs[k] = {"compiled": compiled, "state": state}
        log(f"grad_accum={k}: compiled in {cases[k]['compile_s']:.1f} s")

    def timed_call(k):
        def call() -> float:
            run = runs[k]
            # the same steps from the same state at every call (a copy: the call donates it), made before the clock
            start = jax.block_until_ready(jax.tree.map(jnp.copy, run["state"]))
            t0 = time.perf_counter()
            _, losses = run["compiled"](start, ids, keys["batch"], keys["dropout"], plan.steps)
            losses.block_until_ready()
            run["last_loss"] = float(losses[plan.steps - 1])
            return time.perf_counter() - t0
        return call

    medians = timing.alternate({k: timed_call(k) for k in plan.ks}, plan.repeats)
    for k in plan.ks:
        cases[k].update(ms_per_step=1000 * medians[k] / plan.steps, last_loss=runs[k]["last_loss"])
    return {"config": str(plan.config), "model": model.kind, "batch_size": tcfg.batch_size,
            "block_size": tcfg.block_size, "steps": plan.steps, "repeats": plan.repeats,
            "platform": jax.default_backend(), "cases": [cases[k] for k in plan.ks]}


def format_grad_accum(report: dict) -> str:
    """The side-by-side table: per k, the microbatch, ms per step (× k = 1's), the activation estimate and the last
    loss."""
    from ..memory import human_bytes

    first = report["cases"][0]["ms_per_step"]
    lines = [f"gradient accumulation: {report['config']} ({report['model']}, batch {report['batch_size']} × block "
             f"{report['block_size']}), {report['platform']}, median of {report['repeats']} alternating calls of "
             f"{report['steps']} steps",
             "  grad_accum  microbatch  ms/step   vs first  activations (estimate)  last loss"]
    for c in report["cases"]:
        lines.append(f"  {c['grad_accum']:>10}  {c['microbatch']:>10}  {c['ms_per_step']:>7.3f}  "
                     f"{c['ms_per_step'] / first:>7.2f}×  {human_bytes(c['activation_bytes']):>22}  "
                     f"{c['last_loss']:.6f}")
    return "\n".join(lines)
