"""The bigram model: a (V, V) table of next-character logits, and its loss."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class BigramLanguageModel(nn.Module):
    """Row ``i`` of the embedding table holds the logits of the character that follows character ``i``."""

    vocab_size: int

    def setup(self):
        # N(0, 1) per entry, like torch.nn.Embedding (flax's default would be N(0, 1/V)): the untrained loss starts
        # near the lecture's ≈ 4.7 rather than ≈ ln V.
        self.token_embedding_table = nn.Embed(self.vocab_size, self.vocab_size,
                                              embedding_init=nn.initializers.normal(stddev=1.0))

    def __call__(self, idx: jax.Array) -> jax.Array:
        """ids ``(B, T)`` → logits ``(B, T, V)``."""
        return self.token_embedding_table(idx)


def init_params(key: jax.Array, vocab_size: int) -> dict:
    """Fresh parameters: ``{'token_embedding_table': {'embedding': (V, V)}}``."""
    return BigramLanguageModel(vocab_size).init(key, jnp.zeros((1, 1), jnp.int32))["params"]


def logits_table(params: dict) -> jax.Array:
    """The ``(V, V)`` table itself (row = current character, column = next character)."""
    return params["token_embedding_table"]["embedding"]


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy of predicting ``y`` from ``x`` (both int ``(B, T)``)."""
    model = BigramLanguageModel(vocab_size=logits_table(params).shape[0])
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
