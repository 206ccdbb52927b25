"""``bench``: the step time of gradient accumulation (``train.grad_accum``), k = 1 next to k = 4 (or any ks), on one
config's sizes, with the activation memory the estimate gives each (what accumulation buys).

Each k times the same compiled ``train.train_chunk`` a run uses (its batches drawn up front, one fused call of
``steps`` steps), after a warm-up call; the median of ``repeats`` timed calls is reported. Only the step's work
differs between the ks: k microbatches of ``batch_size / k`` windows in a ``lax.scan`` instead of one batch.
"""

from __future__ import annotations

import statistics
import time


def grad_accum_step_times(config="gpt-tiny", data_path: str | None = None, ks=(1, 4), *, steps: int = 50,
                          repeats: int = 3, overrides=()) -> dict:
    """Time a step of ``config`` (a preset or path, with ``overrides``) at each ``grad_accum`` in ``ks`` (each must
    divide its batch size). Returns ``{config, batch_size, block_size, model, steps, repeats, cases: [{grad_accum,
    microbatch, ms_per_step, compile_s, activation_bytes, seconds}]}``: ``ms_per_step`` the median of ``repeats``
    fused calls of ``steps`` steps, ``activation_bytes`` the memory estimate's activation term."""
    import jax
    import jax.numpy as jnp

    from .. import config as config_lib
    from .. import data as data_lib
    from .. import memory, models, train

    base = config_lib.load(config, list(overrides))
    corpus = data_lib.load_corpus(str(data_lib.resolve_data_path(data_path)[0]))
    train_np, _ = data_lib.split(corpus.ids, base.data.val_fraction)
    tcfg = base.train
    model = models.build(base.model, corpus.tokenizer.vocab_size, tcfg.block_size)
    ids = jnp.asarray(train_np)
    keys = train.run_keys(tcfg.seed)
    dropout = keys["dropout"]  # as a run: dropout on where the model has any
    cases = []
    for k in ks:
        cfg = config_lib.replace(base, "train", grad_accum=int(k))  # validated: k divides the batch
        state = train.create_train_state(keys["init"], model, cfg.train)
        sizes = dict(batch_size=tcfg.batch_size, block_size=tcfg.block_size, max_steps=steps, grad_accum=int(k))
        t0 = time.perf_counter()
        compiled = train.train_chunk.lower(state, ids, keys["batch"], dropout, steps, **sizes).compile()
        compile_s = time.perf_counter() - t0
        state, losses = compiled(state, ids, keys["batch"], dropout, steps)  # warm-up
        losses.block_until_ready()
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            state, losses = compiled(state, ids, keys["batch"], dropout, steps)
            losses.block_until_ready()
            seconds.append(time.perf_counter() - t0)
        terms = memory.estimate_for_config(cfg, corpus.tokenizer.vocab_size, num_params=model.param_count(),
                                           activation_bytes=memory.activation_bytes(model, tcfg.batch_size))
        cases.append({"grad_accum": int(k), "microbatch": tcfg.batch_size // int(k),
                      "ms_per_step": 1000 * statistics.median(seconds) / steps, "compile_s": compile_s,
                      "activation_bytes": terms["activations"], "seconds": seconds})
        del state
    return {"config": str(config), "model": model.kind, "batch_size": tcfg.batch_size, "block_size": tcfg.block_size,
            "steps": steps, "repeats": repeats, "platform": jax.default_backend(), "cases": cases}


def format_grad_accum(report: dict) -> str:
    """The side-by-side table: per k, the microbatch, ms per step (× k = 1's) and the activation estimate."""
    from ..memory import human_bytes

    first = report["cases"][0]["ms_per_step"]
    lines = [f"gradient accumulation: {report['config']} ({report['model']}, batch {report['batch_size']} × block "
             f"{report['block_size']}), {report['platform']}, median of {report['repeats']} calls of "
             f"{report['steps']} steps",
             "  grad_accum  microbatch  ms/step   vs k=1   activations (estimate)"]
    for c in report["cases"]:
        lines.append(f"  {c['grad_accum']:>10}  {c['microbatch']:>10}  {c['ms_per_step']:>7.3f}  "
                     f"{c['ms_per_step'] / first:>6.2f}×   {human_bytes(c['activation_bytes'])}")
    return "\n".join(lines)
