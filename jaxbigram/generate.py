"""Sampling text from the bigram table: pure, jit-compiled, explicit keys, O(max_new_tokens).

For a bigram the next-character distribution depends only on the last character, so the whole model is a fixed
(V, V) table of probabilities. We build its per-row CDF once per (temperature, top-k, top-p) and walk the chain with
pre-drawn uniforms: ``next = #{j : cdf[prev, j] <= u}`` is an exact draw from the row's categorical distribution.
Uniforms come in blocks of ``SAMPLE_BLOCK`` per stream, block ``b`` from ``fold_in(key, b)``, so a streamed
generation (chunk by chunk) produces exactly the same text as one call.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .model import logits_table

SAMPLE_BLOCK = 8192


@jax.jit
def next_char_cdf(params, temperature=1.0, top_k=0, top_p=1.0) -> jax.Array:
    """Row-wise CDF ``(V, V)`` of softmax(logits / temperature), restricted to the top-k / nucleus top-p set.

    ``top_k = 0`` and ``top_p = 1`` disable the filters. Ties at the k-th logit are kept (as in nanoGPT).
    """
    logits = logits_table(params).astype(jnp.float32) / temperature
    # the filters sort every row (O(V² log V): tens of seconds at V = 10,000 on a CPU), so run them only when asked
    logits = jax.lax.cond(top_k > 0, _top_k_filter, lambda l, _: l, logits, top_k)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = jax.lax.cond(top_p < 1, _top_p_filter, lambda p, _: p, probs, top_p)
    cdf = jnp.cumsum(probs, axis=-1)
    return cdf / cdf[:, -1:]


def _top_k_filter(logits, top_k):
    vocab = logits.shape[-1]
    desc = -jnp.sort(-logits, axis=-1)
    kth = jnp.take_along_axis(desc, jnp.full((vocab, 1), jnp.minimum(top_k, vocab) - 1), axis=-1)
    return jnp.where(logits < kth, -jnp.inf, logits)


def _top_p_filter(probs, top_p):
    """Nucleus: keep the smallest set of most likely characters whose probability reaches top_p."""
    sorted_probs = -jnp.sort(-probs, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep_sorted = mass_before < top_p
    cutoff = jnp.min(jnp.where(keep_sorted, sorted_probs, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(probs >= cutoff, probs, 0.0)


def _uniforms(key, num_streams: int, first_block, num_new: int) -> jax.Array:
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


@partial(jax.jit, static_argnames=("num_new",))
def sample_chain(cdf, key, last_ids, first_block, *, num_new: int) -> jax.Array:
    """Walk the chain ``num_new`` steps from ``last_ids`` (shape ``(S,)``) → new ids ``(S, num_new)``."""
    uniforms = _uniforms(key, last_ids.shape[0], first_block, num_new)
    vocab = cdf.shape[-1]

    def step(prev, u):
        rows = cdf[prev]
        if vocab <= 512:  # count the CDF entries <= u: searchsorted(side="right") as one compare-and-sum kernel
            nxt = jnp.sum(rows <= u[:, None], axis=-1)
        else:  # binary search
            nxt = jax.vmap(lambda row, x: jnp.searchsorted(row, x, side="right", method="scan"))(rows, u)
        nxt = jnp.minimum(nxt, vocab - 1).astype(jnp.int32)
        return nxt, nxt

    _, out = jax.lax.scan(step, last_ids.astype(jnp.int32), uniforms)  # unroll=1 measured fastest on the CPU
    return out.T


def generate_stream(params, key, prompt_ids, max_new_tokens: int, temperature=1.0, top_k=0, top_p=1.0,
                    num_samples: int = 1, chunk_blocks: int = 16):
    """Yield ``(num_samples, n)`` arrays of new ids, chunk by chunk; together they equal ``generate``'s output."""
    cdf = next_char_cdf(params, temperature, top_k, top_p)
    last = jnp.full((num_samples,), jnp.asarray(prompt_ids)[-1], dtype=jnp.int32)
    done = 0
    while done < max_new_tokens:
        n = min(chunk_blocks * SAMPLE_BLOCK, max_new_tokens - done)
        new = sample_chain(cdf, key, last, done // SAMPLE_BLOCK, num_new=n)
        yield new
        last = new[:, -1]
        done += n


def generate(params, key, prompt_ids, max_new_tokens: int, temperature=1.0, top_k=0, top_p=1.0,
             num_samples: int = 1) -> jax.Array:
    """``(num_samples, len(prompt) + max_new_tokens)`` ids: the prompt followed by sampled continuations."""
    prompt = jnp.broadcast_to(jnp.asarray(prompt_ids, dtype=jnp.int32), (num_samples, len(prompt_ids)))
    if max_new_tokens == 0:
        return prompt
    cdf = next_char_cdf(params, temperature, top_k, top_p)
    new = sample_chain(cdf, key, prompt[:, -1], 0, num_new=max_new_tokens)
    return jnp.concatenate([prompt, new], axis=1)
