"""The bigram model: a (V, V) table of next-character logits; its loss, exact split loss and CDF-walk sampler.

For a bigram the next-character distribution depends only on the last character, so sampling builds the per-row CDF
of the table once per (temperature, top-k, top-p) and walks the chain with pre-drawn uniforms (``sampling.draw``), and
the loss of a whole split depends on the text only through its bigram counts (``optimum.bigram_counts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from functools import partial
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import checks, sampling
from ..optimum import bigram_counts


class BigramLanguageModel(nn.Module):
    """Row ``i`` of the embedding table holds the logits of the character that follows character ``i``."""

    vocab_size: int

    def setup(self):
        # N(0, 1) per entry, like torch.nn.Embedding (flax's default would be N(0, 1/V)): the untrained loss starts
        # near the lecture's ≈ 4.7 rather than ≈ ln V.
        self.token_embedding_table = nn.Embed(self.vocab_size, self.vocab_size,
                                              embedding_init=nn.initializers.normal(stddev=1.0))

    def __call__(self, idx: jax.Array, deterministic: bool = True) -> jax.Array:
        """ids ``(B, T)`` → logits ``(B, T, V)`` (``deterministic``: the GPT's signature; a bigram has no dropout)."""
        return self.token_embedding_table(idx)


@lru_cache(maxsize=None)
def _bigram_module(vocab_size: int) -> BigramLanguageModel:
    return BigramLanguageModel(vocab_size)


def logits_table(params: dict) -> jax.Array:
    """The ``(V, V)`` table itself (row = current character, column = next character)."""
    return params["token_embedding_table"]["embedding"]


@dataclass(frozen=True)
class Bigram:
    """The lecture's ``BigramLanguageModel`` behind the model seam (see ``models/__init__.py``)."""

    vocab_size: int
    kind: ClassVar[str] = "bigram"
    cheap_split_loss: ClassVar[bool] = True  # from its bigram counts, whatever the corpus size
    has_optimum: ClassVar[bool] = True  # the closed-form optimum is the best any (V, V) table can do

    def module(self) -> BigramLanguageModel:
        """The Flax module (one object per model: its ``apply`` is the train state's ``apply_fn``)."""
        return _bigram_module(self.vocab_size)

    def init(self, key: jax.Array) -> dict:
        """Fresh parameters: ``{'token_embedding_table': {'embedding': (V, V)}}``."""
        return self.module().init(key, jnp.zeros((1, 1), jnp.int32))["params"]

    def logits(self, params: dict, x: jax.Array) -> jax.Array:
        """ids ``(B, T)`` → logits ``(B, T, V)``. Precondition (checked only when ``x`` is concrete, never under
        ``jit``): every id from 0 to V - 1."""
        checks.check_ids("logits", "x", x, self.vocab_size, ndim=2)
        return self.module().apply({"params": params}, x)

    def loss(self, params: dict, x: jax.Array, y: jax.Array, dropout_key=None) -> jax.Array:
        """Mean cross-entropy of predicting ``y`` from ``x`` (both int ``(B, T)``, one shape: checked at trace time);
        no dropout in a bigram. Precondition: every id from 0 to V - 1 (checked only on concrete arrays)."""
        checks.check_batch("loss", x, y, self.vocab_size)
        return optax.softmax_cross_entropy_with_integer_labels(self.logits(params, x), y).mean()

    def fast_loss(self, params: dict, x: jax.Array, y: jax.Array, dropout_key=None) -> jax.Array:
        """``loss`` computed from the batch's (V, V) pair counts: Σ count(i,j)·(−log softmax(W)[i,j]) / (B·T). The
        same value and gradient (to float rounding), in O(B·T + V²) work instead of O(B·T·V), and it stays cheap
        under ``vmap`` (the logits' gradient is a scatter-add of (B·T, V) rows, which XLA serialises per member):
        what ``run.py sweep`` trains and estimates with. Precondition as ``loss``'s (an id >= V would be dropped)."""
        checks.check_batch("fast_loss", x, y, self.vocab_size)
        v = self.vocab_size
        pairs = (x.astype(jnp.int32) * v + y.astype(jnp.int32)).ravel()
        counts = jnp.zeros(v * v, jnp.float32).at[pairs].add(1.0).reshape(v, v)
        log_probs = jax.nn.log_softmax(logits_table(params).astype(jnp.float32), axis=-1)
        return -(counts * log_probs).sum() / pairs.size

    def decay_mask(self, params):
        return None  # torch.optim.AdamW in the lecture decays the whole table

    def param_count(self) -> int:
        """Parameters, in closed form (known before anything is built): the V × V table."""
        return self.vocab_size * self.vocab_size

    def split_loss(self, params: dict, ids: np.ndarray) -> float:
        """Mean cross-entropy over every position of ``ids``, exact: Σ count(i,j)·(−log softmax(W)[i,j]) / N.

        Equal to running ``loss`` over all windows, in memory O(distinct pairs) whatever the corpus size.
        """
        counts = bigram_counts(ids, self.vocab_size)
        if counts.total == 0:
            return float("nan")
        nll = np.asarray(_pair_nll(params, jnp.asarray(counts.rows), jnp.asarray(counts.cols)), dtype=np.float64)
        return float(np.dot(nll, counts.counts) / counts.total)

    def sample_stream(self, params, key, prompt_ids, max_new_tokens: int, temperature=1.0, top_k=0, top_p=1.0,
                      num_samples: int = 1, chunk_blocks: int = 16):
        """``(num_samples, n)`` arrays of new ids, chunk by chunk (an iterator); together they equal ``generate``'s
        output. The arguments are checked on the call (``sampling.check_sample_args``)."""
        sampling.check_sample_args("sample", self, key, prompt_ids, max_new_tokens, temperature, top_k, top_p,
                                   num_samples)
        return self._stream(params, key, prompt_ids, max_new_tokens, temperature, top_k, top_p, num_samples,
                            chunk_blocks)

    def _stream(self, params, key, prompt_ids, max_new_tokens, temperature, top_k, top_p, num_samples, chunk_blocks):
        cdf = next_char_cdf(params, temperature, top_k, top_p)
        last = jnp.full((num_samples,), jnp.asarray(prompt_ids)[-1], dtype=jnp.int32)
        done = 0
        while done < max_new_tokens:
            n = min(chunk_blocks * sampling.SAMPLE_BLOCK, max_new_tokens - done)
            new = sample_chain(cdf, key, last, done // sampling.SAMPLE_BLOCK, num_new=n)
            yield new
            last = new[:, -1]
            done += n

    def sample(self, params, key, prompt_ids, max_new_tokens: int, temperature=1.0, top_k=0, top_p=1.0,
               num_samples: int = 1) -> jax.Array:
        """``(num_samples, max_new_tokens)`` new ids (``sample_stream`` concatenated; the GPT's signature)."""
        return sampling.collect(self.sample_stream(params, key, prompt_ids, max_new_tokens, temperature, top_k, top_p,
                                                   num_samples), num_samples)


@jax.jit
def _pair_nll(params, rows, cols):
    table = logits_table(params).astype(jnp.float32)
    return jax.nn.logsumexp(table, axis=-1)[rows] - table[rows, cols]


@jax.jit
def next_char_cdf(params, temperature=1.0, top_k=0, top_p=1.0) -> jax.Array:
    """Row-wise CDF ``(V, V)`` of the next character (``sampling.filtered_cdf`` of every row of the table)."""
    return sampling.filtered_cdf(logits_table(params), temperature, top_k, top_p)


@partial(jax.jit, static_argnames=("num_new",))
def sample_chain(cdf, key, last_ids, first_block, *, num_new: int) -> jax.Array:
    """Walk the chain ``num_new`` steps from ``last_ids`` (shape ``(S,)``) → new ids ``(S, num_new)``."""
    us = sampling.uniforms(key, last_ids.shape[0], first_block, num_new)

    def step(prev, u):
        nxt = sampling.draw(cdf[prev], u)
        return nxt, nxt

    _, out = jax.lax.scan(step, last_ids.astype(jnp.int32), us)  # unroll=1 measured fastest on the CPU
    return out.T


def generate(params, key, prompt_ids, max_new_tokens: int, temperature=1.0, top_k=0, top_p=1.0,
             num_samples: int = 1) -> jax.Array:
    """``(num_samples, len(prompt) + max_new_tokens)`` ids: the prompt followed by sampled continuations."""
    prompt = jnp.broadcast_to(jnp.asarray(prompt_ids, dtype=jnp.int32), (num_samples, len(prompt_ids)))
    if max_new_tokens == 0:
        return prompt
    cdf = next_char_cdf(params, temperature, top_k, top_p)
    new = sample_chain(cdf, key, prompt[:, -1], 0, num_new=max_new_tokens)
    return jnp.concatenate([prompt, new], axis=1)
