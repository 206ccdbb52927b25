"""The model seam: everything above it (config, data, the fused train step, checkpoints, the CLI) trains "a model".

A model is a frozen, hashable dataclass (so jitted functions take it as a static argument) with:

- ``kind`` (the ``model.kind`` config value) and ``has_optimum`` (whether the closed-form bigram optimum is the best
  this model can reach: true for the bigram, for any other model it is only a baseline to beat);
- ``split_on_cpu(batch_size)``: whether its training step at this batch gains from splitting the batch over several
  CPU devices (a GPT of some size) or is too small to (the bigram, a tiny GPT); ``train.devices = 0`` goes by it
  (``parallel.select_devices``);
- ``init(key) -> params``;
- ``loss(params, x, y, dropout_key=None) -> scalar``: mean cross-entropy of int ``(B, T)`` batches; pure; dropout only
  when a key is given;
- ``logits(params, x) -> (B, T, V)``: deterministic;
- ``decay_mask(params)``: which leaves AdamW decays (None: all);
- ``param_count()``: the number of parameters in closed form (the memory check runs before anything is built);
- ``activation_bytes(batch_size)``: the memory one training step's activations need (None: the bigram's default);
- ``split_loss(params, ids) -> float``: the exact mean loss over every position of a split of at least 2 ids
  (``evaluate.exact_report`` scores a shorter one as NaN for every model, without calling it; ``cheap_split_loss``:
  whether that is cheap enough to do on the whole train split at the end of every ``train``);
- ``sample_stream(params, key, prompt_ids, max_new_tokens, temperature, top_k, top_p, num_samples)``: chunks of new
  ids ``(num_samples, n)``; together they are one sample; same key, same text.

``build(cfg.model, vocab_size, block_size)`` picks the model from the registry below.
"""

from __future__ import annotations

from ..config import ModelConfig
from ..errors import UsageError
from .bigram import Bigram
from .gpt import GPT


def _bigram(cfg: ModelConfig, vocab_size: int, block_size: int) -> Bigram:
    return Bigram(vocab_size=vocab_size)


def _gpt(cfg: ModelConfig, vocab_size: int, block_size: int) -> GPT:
    return GPT(vocab_size=vocab_size, block_size=block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
               n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias, dtype=cfg.dtype)


REGISTRY = {"bigram": _bigram, "gpt": _gpt}


def build(cfg: ModelConfig, vocab_size: int, block_size: int):
    """The model named by ``cfg.kind``, sized for this vocabulary and context length."""
    if cfg.kind not in REGISTRY:
        raise UsageError("model_unknown", got=cfg.kind, choices=", ".join(REGISTRY))
    return REGISTRY[cfg.kind](cfg, vocab_size, block_size)
