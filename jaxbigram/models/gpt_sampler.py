"""The GPT's sampler (``GPT.sample_stream``): a KV cache inside the context window, the cropped window beyond it.

It follows the lecture exactly: the next character is drawn from the logits of the last position given at most the
last ``block_size`` characters. While the context fits in the window a KV cache is used (parallel prefill of the
prompt, then one token per step inside one compiled ``lax.scan``); beyond it, absolute position embeddings change
every key/value when the window shifts, so each step re-runs the cropped window (only the last position goes through
the head) inside a compiled ``lax.scan``. The cache is heads-major ``(S, H, T, D)``, so a decode step reads it
without transposing it. Draws use pre-drawn uniforms and the inverse CDF (``next = #{j : cdf[j] <= u}``), the bigram
sampler's scheme, so a key fixes the text and chunked streaming equals one call; the uniforms are drawn a block at a
time and sliced on the host (``Uniforms``), so chunks of any size cost no recompilation.

``model`` is the ``GPT`` seam (hashable, a static argument); its module's ``prefill``, ``decode`` and
``last_logits`` methods do the math.
"""

from __future__ import annotations

from functools import partial
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from .. import sampling
from ..sampling import SAMPLE_BLOCK


def next_ids(logits, u, temperature, top_k, top_p):
    """Inverse-CDF draw per row: logits ``(S, V)``, uniforms ``u`` ``(S,)`` → ids ``(S,)`` int32."""
    return sampling.draw(sampling.filtered_cdf(logits, temperature, top_k, top_p), u)


@partial(jax.jit, static_argnums=(0, 3))
def _prefill(model, params, prefix, num_samples: int):
    """KV cache ``(k, v)`` per layer, each ``(S, H, block_size, D)``, holding ``prefix`` ``(1, P)`` at 0..P-1."""
    kvs = model.module().apply({"params": params}, prefix, method="prefill")
    dt = model.compute_dtype
    return tuple(tuple(jnp.zeros(_cache_shape(model, num_samples), dt).at[:, :, :prefix.shape[1]].set(
        a.astype(dt)) for a in kv) for kv in kvs)


def _cache_shape(model, num_samples: int) -> tuple:
    """One layer's key (or value) cache: ``(S, H, block_size, D)``, heads-major (see ``CausalSelfAttention.decode``)."""
    return (num_samples, model.n_head, model.block_size, model.n_embd // model.n_head)


def _empty_cache(model, num_samples: int):
    dt = model.compute_dtype
    shape = _cache_shape(model, num_samples)
    return tuple((jnp.zeros(shape, dt), jnp.zeros(shape, dt)) for _ in range(model.n_layer))


@partial(jax.jit, static_argnums=(0,), static_argnames=("n_cache", "n_window"))
def _sample_steps(model, params, buf, pending, cache, pos0, uniforms, temperature, top_k, top_p, *,
                  n_cache: int, n_window: int):
    """``n_cache`` KV-cache steps then ``n_window`` cropped-window steps, one compiled program.

    State: ``buf`` ``(S, T)`` ids (cache regime: ids of positions ``< pos`` at their positions; window regime: the
    last ``T`` ids before ``pending``), ``pending`` ``(S,)`` the newest id, not yet fed. Returns ``(ids (S, n),
    buf, pending, cache)``; ``cache`` is None once the window regime was entered.
    """
    module = model.module()
    variables = {"params": params}
    outs = []
    if n_cache:
        def cache_step(carry, xs):
            buf, pending, cache = carry
            pos, u = xs
            buf = jax.lax.dynamic_update_slice(buf, pending[:, None], (0, pos))
            logits, cache = module.apply(variables, pending, pos, cache, method="decode")
            nxt = next_ids(logits, u, temperature, top_k, top_p)
            return (buf, nxt, cache), nxt

        xs = (pos0 + jnp.arange(n_cache, dtype=jnp.int32), uniforms[:n_cache])
        (buf, pending, cache), ids = jax.lax.scan(cache_step, (buf, pending, cache), xs)
        outs.append(ids)
    if n_window:
        def window_step(carry, u):
            buf, pending = carry
            buf = jnp.concatenate([buf[:, 1:], pending[:, None]], axis=1)
            logits = module.apply(variables, buf, method="last_logits")
            nxt = next_ids(logits, u, temperature, top_k, top_p)
            return (buf, nxt), nxt

        (buf, pending), ids = jax.lax.scan(window_step, (buf, pending), uniforms[n_cache:])
        outs.append(ids)
        cache = None
    return jnp.concatenate(outs).T, buf, pending, cache


@partial(jax.jit, static_argnums=(1, 2))
def _block_uniforms(key, rows: int, num_streams: int, block):
    """The first ``rows`` rows of block ``block``'s uniforms: ``uniform(fold_in(key, block), (rows, S))``, which are
    those of ``sampling.uniforms`` (a partial block is a prefix of the full one)."""
    return jax.random.uniform(jax.random.fold_in(key, block), (rows, num_streams))


class Uniforms:
    """Rows ``[start, start + n)`` of ``sampling.uniforms(key, S, 0, total)`` for consecutive chunks, drawing each
    block of ``SAMPLE_BLOCK`` rows once (only as far as ``total`` needs) and slicing it on the host, so chunks of any
    size cost no recompilation."""

    def __init__(self, key, num_streams: int, total: int):
        self.key, self.num_streams, self.total = key, num_streams, total
        self.block, self.rows = -1, None

    def take(self, start: int, n: int) -> np.ndarray:
        parts = []
        while n:
            b, off = divmod(start, SAMPLE_BLOCK)
            if b != self.block:
                rows = min(SAMPLE_BLOCK, self.total - b * SAMPLE_BLOCK)
                self.block, self.rows = b, np.asarray(_block_uniforms(self.key, rows, self.num_streams, b))
            k = min(n, SAMPLE_BLOCK - off)
            parts.append(self.rows[off:off + k])
            start, n = start + k, n - k
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def sample_stream(model, params, key, prompt_ids, max_new_tokens: int, temperature=1.0, top_k=0, top_p=1.0,
                  num_samples: int = 1, chunk: int = 256) -> Iterator[jax.Array]:
    """``GPT.sample_stream``: yield ``(num_samples, n)`` int32 arrays of new ids, ``chunk`` at a time."""
    prompt = np.asarray(prompt_ids, dtype=np.int32).reshape(-1)[-model.block_size:]
    if prompt.size == 0:
        raise ValueError("the prompt must hold at least one id")
    t, s = model.block_size, num_samples
    n = len(prompt)  # context length, the pending id included
    buf = np.zeros((s, t), np.int32)
    buf[:, :n - 1] = prompt[:-1]
    buf = jnp.asarray(buf)
    pending = jnp.full((s,), prompt[-1], jnp.int32)
    cache = _prefill(model, params, jnp.asarray(prompt[None, :-1]), s) if n > 1 else _empty_cache(model, s)
    temperature, top_k, top_p = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
    uniforms = Uniforms(key, s, max_new_tokens)
    done = 0
    while done < max_new_tokens:
        m = min(chunk, max_new_tokens - done)
        n_cache = max(0, min(m, t - n + 1))
        u = uniforms.take(done, m)
        new, buf, pending, cache = _sample_steps(model, params, buf, pending, cache, jnp.int32(n - 1), u,
                                                 temperature, top_k, top_p, n_cache=n_cache,
                                                 n_window=m - n_cache)
        yield new
        done += m
        n += m
