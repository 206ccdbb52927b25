"""Sampling primitives every model shares: temperature / top-k / top-p filters, pre-drawn uniforms, and the exact
inverse-CDF draw. Pure and jit-friendly; the models' own samplers (``models/*.py``) are built from these. At the
edge, ``sample_text`` turns a model's id stream into the text ``run.py sample`` prints.

A draw is ``next = #{j : cdf[j] <= u}`` with ``u`` uniform in [0, 1): an exact draw from the categorical distribution
whose CDF is ``cdf``. Uniforms come in blocks of ``SAMPLE_BLOCK`` per stream, block ``b`` from ``fold_in(key, b)``, so
a generation streamed chunk by chunk draws exactly the same numbers as one call.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import jax
import jax.numpy as jnp

from . import checks
from .config import reduce_seed

SAMPLE_BLOCK = 8192


def check_sample_args(function: str, model, key, prompt_ids, max_new_tokens, temperature, top_k, top_p,
                      num_samples) -> None:
    """Refuse (host side, before anything runs) what ``model.sample_stream`` cannot sample with: a prompt that is not
    1-D with at least one id from 0 to V - 1, ``max_new_tokens`` < 0, a temperature that is not a finite number > 0,
    ``top_k`` outside 0 (off) to V, ``top_p`` outside (0, 1], ``num_samples`` < 1, or a key that is not one key."""
    checks.check_key(function, "key", key)
    checks.check_ids(function, "prompt_ids", prompt_ids, model.vocab_size, min_length=1)
    checks.check_int(function, "max_new_tokens", max_new_tokens, 0)
    checks.check_real(function, "temperature", temperature, 0.0, low_open=True)
    checks.check_int(function, "top_k", top_k, 0, model.vocab_size)
    checks.check_real(function, "top_p", top_p, 0.0, 1.0, low_open=True)
    checks.check_int(function, "num_samples", num_samples, 1)


def filtered_cdf(logits, temperature=1.0, top_k=0, top_p=1.0) -> jax.Array:
    """CDF over the last axis of softmax(logits / temperature), restricted to the top-k / nucleus top-p set.

    ``top_k = 0`` and ``top_p = 1`` disable the filters (they sort each row, so they only run when asked). Ties at the
    k-th logit are kept (as in nanoGPT). The last entry of each row is exactly 1. A temperature so small that
    ``logits / temperature`` overflows means greedy: the logits are shifted so their maximum is 0 before dividing,
    which leaves the most likely characters at 0 and sends every other one to -inf, never to NaN (the temperature is
    at least the smallest normal float32: below it a CPU would read it as 0).
    """
    logits = logits.astype(jnp.float32)
    temperature = jnp.maximum(temperature, jnp.finfo(jnp.float32).tiny)  # CPUs flush float32 subnormals to zero
    logits = (logits - jnp.max(logits, axis=-1, keepdims=True)) / temperature
    logits = jax.lax.cond(top_k > 0, top_k_filter, lambda l, _: l, logits, top_k)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = jax.lax.cond(top_p < 1, top_p_filter, lambda p, _: p, probs, top_p)
    cdf = jnp.cumsum(probs, axis=-1)
    return cdf / cdf[..., -1:]


def top_k_filter(logits, top_k):
    """Logits below the k-th largest of their row become -inf."""
    vocab = logits.shape[-1]
    desc = -jnp.sort(-logits, axis=-1)
    kth = jnp.take_along_axis(desc, jnp.full(logits.shape[:-1] + (1,), jnp.minimum(top_k, vocab) - 1), axis=-1)
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(probs, top_p):
    """Nucleus: keep the smallest set of most likely characters whose probability reaches top_p."""
    sorted_probs = -jnp.sort(-probs, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep_sorted = mass_before < top_p
    cutoff = jnp.min(jnp.where(keep_sorted, sorted_probs, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(probs >= cutoff, probs, 0.0)


def draw(cdf_rows, u) -> jax.Array:
    """Inverse-CDF draw per row: ``cdf_rows`` ``(S, V)``, ``u`` ``(S,)`` → ids ``(S,)`` int32."""
    vocab = cdf_rows.shape[-1]
    if vocab <= 512:  # count the CDF entries <= u: searchsorted(side="right") as one compare-and-sum kernel
        nxt = jnp.sum(cdf_rows <= u[:, None], axis=-1)
    else:  # binary search
        nxt = jax.vmap(lambda row, x: jnp.searchsorted(row, x, side="right", method="scan"))(cdf_rows, u)
    return jnp.minimum(nxt, vocab - 1).astype(jnp.int32)


def uniforms(key, num_streams: int, first_block, num_new: int) -> jax.Array:
    """``(num_new, num_streams)`` uniforms: rows ``b * SAMPLE_BLOCK + i`` come from block ``b``'s draw
    ``uniform(fold_in(key, first_block + b), (SAMPLE_BLOCK, num_streams))[i]``.

    A final partial block is drawn only as far as needed (``uniform(k, (n, S))`` is the first ``n`` rows of
    ``uniform(k, (SAMPLE_BLOCK, S))`` with JAX's counter-based threefry), so a short sample of many streams costs
    O(num_new · S), not O(SAMPLE_BLOCK · S); a streamed generation draws the very same numbers as one call.
    """
    full, rest = divmod(num_new, SAMPLE_BLOCK)
    parts = []
    if full:
        blocks = jax.vmap(lambda b: jax.random.uniform(jax.random.fold_in(key, first_block + b),
                                                       (SAMPLE_BLOCK, num_streams)))(jnp.arange(full))
        parts.append(blocks.reshape(full * SAMPLE_BLOCK, num_streams))
    if rest:
        parts.append(jax.random.uniform(jax.random.fold_in(key, first_block + full), (rest, num_streams)))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def collect(chunks, num_samples: int) -> jax.Array:
    """The chunks of a ``sample_stream`` as one ``(num_samples, n)`` int32 array (``n`` = 0 for no chunk)."""
    parts = list(chunks)
    if not parts:
        return jnp.zeros((num_samples, 0), jnp.int32)
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


def sample_key(seed: int, index: int) -> jax.Array:
    """The key of sample ``index`` (0, 1, …) drawn with ``seed``: ``fold_in(key(seed % 2**32), index)``."""
    return jax.random.fold_in(jax.random.key(reduce_seed(seed)), index)


def sample_text(model, params, tokenizer, seed: int, prompt_ids, max_new_tokens: int, temperature=1.0, top_k=0,
                top_p=1.0, index: int = 0) -> Iterator[str]:
    """Sample ``index`` of ``seed`` as text, piece by piece: the decoded prompt, then the new characters chunk by chunk
    as ``model.sample_stream`` yields them (one stream; the same seed and index give the same text). The arguments
    are checked on the call, before the first piece."""
    checks.check_int("sample_text", "index", index, 0)
    stream = model.sample_stream(params, sample_key(seed, index), prompt_ids, max_new_tokens, temperature, top_k,
                                 top_p)
    return itertools.chain([tokenizer.decode(prompt_ids)], (tokenizer.decode(chunk[0]) for chunk in stream))
