"""The GPT's figures in ``bench``: fused training against a naive jit-per-step loop, utilisation against the device's
peak, the compiled sampler against the lecture's re-run-the-model sampler, whole preset runs, the full-size GPT."""

from __future__ import annotations

import statistics
import time
from functools import lru_cache

from . import timing
from .timing import median_rate, time_fused, time_step_loop

# Published dense peaks (TFLOP/s) of the units JAX's default float32 matmuls use, by device kind, for utilisation
# on accelerators: TF32 tensor cores on Ampere and later GPUs, float32 on V100, bfloat16 MXUs on TPUs. On a CPU the
# bench measures its own float32 matmul peak instead.
PUBLISHED_PEAK_TFLOPS = {"H100": (494.7, "TF32"), "H200": (494.7, "TF32"), "A100": (156.0, "TF32"),
                         "L4": (60.0, "TF32"), "V100": (15.7, "float32"), "TPU v4": (275.0, "bfloat16"),
                         "TPU v5 lite": (197.0, "bfloat16"), "TPU v5": (459.0, "bfloat16")}


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """This device's float32 matmul throughput (FLOP/s): the median of ``repeats`` timed ``n×n @ n×n`` products."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(lambda a, b: a @ b)
    dot(a, b).block_until_ready()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dot(a, b).block_until_ready()
        seconds.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / statistics.median(seconds)


def peak_flops(measured_matmul: float) -> tuple[float, str]:
    """The peak utilisation is measured against: the published one of a known accelerator, else the measured one."""
    import jax

    kind = jax.devices()[0].device_kind
    for name, (tflops, unit) in PUBLISHED_PEAK_TFLOPS.items():
        if jax.default_backend() != "cpu" and name.lower() in kind.lower():
            return tflops * 1e12, f"published dense {unit} peak of {kind}"
    return measured_matmul, "measured float32 matmul peak"


def gpt_flops_per_token(model, num_params: int) -> float:
    """Training FLOPs per token: 6·N (forward and backward of every weight) plus attention, 12·layers·width·block."""
    return 6.0 * num_params + 12.0 * model.n_layer * model.n_embd * model.block_size


def _gpt_setup(preset: str, vocab_size: int):
    import jax

    from .. import config as config_lib
    from .. import models
    from ..train import create_train_state

    cfg = config_lib.load(preset)
    model = models.build(cfg.model, vocab_size, cfg.train.block_size)
    state = create_train_state(jax.random.key(0), model, cfg.train)
    return cfg, model, state, model.param_count()


def bench_gpt_train(preset: str, train_ids, vocab_size: int, steps_per_call: int, calls: int, repeats: int) -> dict:
    """Fused ``train_chunk`` of a GPT preset (its optimizer, clipping and dropout) on the devices ``train`` would
    split its batches over (``train.devices``): steps/s, tokens/s, FLOP/s."""
    import jax

    from ..parallel import DataParallel, select_devices, split_on_cpu

    cfg, model, state, num_params = _gpt_setup(preset, vocab_size)
    t = cfg.train
    dp = DataParallel.create(t.batch_size, select_devices(t.devices, t.batch_size,
                                                             split_on_cpu(model, t.batch_size)))
    state, compile_s, seconds = time_fused(state, train_ids, t.batch_size, t.block_size, steps_per_call, calls,
                                            repeats, dp=dp)
    steps = steps_per_call * calls
    tokens = steps * t.batch_size * t.block_size
    return {"steps_per_s": median_rate(steps, seconds), "tokens_per_s": median_rate(tokens, seconds),
            "flops_per_s": median_rate(tokens * gpt_flops_per_token(model, num_params), seconds),
            "compile_s": compile_s, "num_params": num_params, "raw_s": seconds, "model": model,
            "params": jax.device_get(state.params), "devices": dp.num_devices}  # on the host: sampling uses one


def bench_gpt_naive_train(preset: str, train_ids, vocab_size: int, steps: int, repeats: int) -> dict:
    """The baseline: one jitted ``train_step`` (and one jitted ``get_batch``) per Python call, same batches."""
    import jax
    import jax.numpy as jnp

    from ..data import get_batch
    from ..train import step_key, train_step

    cfg, model, state, _ = _gpt_setup(preset, vocab_size)
    t = cfg.train
    data, base, dropout = jnp.asarray(train_ids), jax.random.key(1), jax.random.key(2)
    step_fn = jax.jit(train_step)
    batch_fn = jax.jit(lambda s: get_batch(step_key(base, s), data, t.batch_size, t.block_size))

    def run(state, first, n):
        for s in range(first, first + n):
            state, loss = step_fn(state, *batch_fn(s), step_key(dropout, s))
        loss.block_until_ready()
        return state

    seconds = time_step_loop(run, state, 3, steps, repeats)
    return {"steps_per_s": median_rate(steps, seconds), "raw_s": seconds}


@lru_cache(maxsize=None)
def _naive_step(model):
    """The lecture's per-character work, compiled once per model: the last position's logits of a cropped window
    (a fixed-shape buffer and its length), and the draw from them."""
    import jax

    from ..models.gpt_sampler import next_ids

    def last_logits(params, buf, n):
        return jax.lax.dynamic_index_in_dim(model.logits(params, buf), n - 1, axis=1, keepdims=False)

    return jax.jit(last_logits), jax.jit(next_ids)


def naive_gpt_sample(model, params, key, prompt_ids, max_new_tokens: int, num_samples: int):
    """The lecture's ``generate``, in JAX: for every new character, run the model on the context cropped to
    ``block_size`` (a fixed-shape buffer, so it compiles once) and draw from the last position's logits. Draws the
    same uniforms as the compiled sampler, so both give the same text."""
    import numpy as np

    from ..sampling import uniforms

    block = model.block_size
    last_logits, draw = _naive_step(model)
    us = np.asarray(uniforms(key, num_samples, 0, max_new_tokens))
    seq = np.tile(np.asarray(prompt_ids, np.int32), (num_samples, 1))
    for i in range(max_new_tokens):
        context = seq[:, -block:]
        buf = np.zeros((num_samples, block), np.int32)
        buf[:, :context.shape[1]] = context
        nxt = np.asarray(draw(last_logits(params, buf, context.shape[1]), us[i], 1.0, 0, 1.0))
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    return seq[:, len(prompt_ids):]


def bench_gpt_sampling(model, params, streams: int, chars: int, repeats: int) -> dict:
    """The compiled KV-cache sampler and the naive one on the same draws: chars/s over all streams each."""
    import jax
    import numpy as np

    key = jax.random.key(7)

    def compiled():
        return np.concatenate([np.asarray(c) for c in model.sample_stream(params, key, [0], chars,
                                                                            num_samples=streams)], axis=1)

    def naive():
        return naive_gpt_sample(model, params, key, [0], chars, streams)

    out = {}
    for name, fn in (("compiled", compiled), ("naive", naive)):
        ids = fn()  # compile and warm up
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - t0)
        out[name] = {"chars_per_s": median_rate(streams * chars, seconds), "ids": ids}
    return {"chars_per_s": out["compiled"]["chars_per_s"], "naive_chars_per_s": out["naive"]["chars_per_s"],
            "same_ids": bool(np.array_equal(out["compiled"]["ids"], out["naive"]["ids"]))}


def bench_gpt(plan, corpus, platform: str | None, log) -> dict:
    """The GPT's figures at the sizes of ``plan`` (a ``speed.Plan``): fused training vs a naive jit-per-step loop,
    utilisation, sampling vs the lecture's re-run-the-model sampler, whole preset runs (wall time, peak memory, exact
    val loss), the full-size GPT."""
    from ..data import split

    vocab = corpus.tokenizer.vocab_size
    train_ids, _ = split(corpus.ids, 0.1)
    report: dict = {"gpt_config": plan.gpt_config}
    log("matmul peak (float32)")
    measured = matmul_peak_flops(plan.peak_matmul_n)
    peak, peak_source = peak_flops(measured)
    report.update(matmul_peak_flops=measured, peak_flops=peak, peak_source=peak_source)
    log(f"{plan.gpt_config}: fused training")
    fused = bench_gpt_train(plan.gpt_config, train_ids, vocab, plan.gpt_steps_per_call, plan.gpt_calls, plan.repeats)
    log(f"{plan.gpt_config}: {fused['steps_per_s']:.1f} steps/s fused; naive jit-per-step loop next")
    naive = bench_gpt_naive_train(plan.gpt_config, train_ids, vocab, plan.gpt_naive_steps, plan.repeats)
    report.update({
        "gpt_num_params": fused["num_params"], "gpt_train_steps_per_s": fused["steps_per_s"],
        "gpt_train_ms_per_step": 1000.0 / fused["steps_per_s"], "gpt_train_tokens_per_s": fused["tokens_per_s"],
        "gpt_train_flops_per_s": fused["flops_per_s"], "gpt_train_mfu": fused["flops_per_s"] / peak,
        "gpt_train_compile_s": fused["compile_s"], "gpt_train_devices": fused["devices"],
        "gpt_naive_train_steps_per_s": naive["steps_per_s"],
        "gpt_speedup_vs_naive": fused["steps_per_s"] / naive["steps_per_s"]})
    for label, streams, chars in plan.gpt_samples:
        log(f"{plan.gpt_config}: sampling {streams} stream(s) x {chars} characters, compiled and naive")
        sampled = bench_gpt_sampling(fused["model"], fused["params"], streams, chars, 1 if streams * chars > 4096
                                     else plan.repeats)
        name = f"gpt_sample_{label}"
        report.update({f"{name}_shape": f"{streams}x{chars}", f"{name}_chars_per_s": sampled["chars_per_s"],
                       f"{name}_naive_chars_per_s": sampled["naive_chars_per_s"],
                       f"{name}_speedup": sampled["chars_per_s"] / sampled["naive_chars_per_s"],
                       f"{name}_same_ids": sampled["same_ids"]})
    if plan.gpt_run_repeats:
        log(f"whole {plan.gpt_config} run in subprocesses")
        run = timing.preset_run(plan.gpt_config, corpus.path, plan.gpt_run_repeats, platform, log)
        report.update({"gpt_run_s": run["cold_s"], "gpt_run_warm_cache_s": run["warm_s"],
                       "gpt_run_peak_rss_mb": run["peak_rss_mb"], "gpt_run_exact_val_loss": run["exact_val_loss"]})
    if plan.gpt_large_config:
        log(f"{plan.gpt_large_config}: {plan.gpt_large_steps} fused steps of the full-size GPT")
        large = bench_gpt_train(plan.gpt_large_config, train_ids, vocab, plan.gpt_large_steps, 1, 1)
        report.update({"gpt_large_config": plan.gpt_large_config, "gpt_large_num_params": large["num_params"],
                       "gpt_large_tokens_per_s": large["tokens_per_s"], "gpt_large_mfu": large["flops_per_s"] / peak,
                       "gpt_large_compile_s": large["compile_s"]})
    return report

