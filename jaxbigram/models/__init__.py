"""The model seam: everything above it (config, data, the fused train step, checkpoints, the CLI) trains "a model".

Models are only math: no devices, memory policy or files (those are ``parallel``, ``memory`` and ``evaluate``'s).
A model is a frozen, hashable dataclass (so jitted functions take it as a static argument) with:

- ``kind`` (the ``model.kind`` config value) and ``has_optimum`` (whether the closed-form bigram optimum is the best
  this model can reach: true for the bigram, for any other model it is only a baseline to beat);
- ``init(key) -> params``;
- ``loss(params, x, y, dropout_key=None) -> scalar``: mean cross-entropy of int ``(B, T)`` batches; pure; dropout only
  when a key is given;
- optionally ``fast_loss`` (same signature): the same value and gradient as ``loss`` computed another way that stays
  cheap when many runs are ``vmap``ped (the bigram: from the batch's pair counts); ``run.py sweep`` uses it;
- ``logits(params, x) -> (B, T, V)``: deterministic;
- ``decay_mask(params)``: which leaves AdamW decays (None: all);
- ``param_count()``: the number of parameters in closed form (the memory check runs before anything is built);
- the exact loss of a whole split (``evaluate.split_loss`` calls it): with ``cheap_split_loss`` (the bigram, from its
  pair counts; cheap enough for the whole train split at the end of every ``train``) ``split_loss(params, ids)``,
  otherwise (the GPT) ``block_size`` and ``window_nll(params, x, y, mask)``, the summed loss of context windows;
- ``sample_stream(params, key, prompt_ids, max_new_tokens, temperature, top_k, top_p, num_samples)``: chunks of new
  ids ``(num_samples, n)``; together they are one sample; same key, same text; ``sample(...)``: them joined.

``build(cfg.model, vocab_size, block_size)`` picks the model from the registry below.
"""

from __future__ import annotations

from .. import checks
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
    """The model named by ``cfg.kind``, sized for this vocabulary and context length (each an integer >= 1)."""
    checks.check_type("build", "cfg", cfg, ModelConfig, "a ModelConfig (cfg.model of a Config)")
    vocab_size = checks.check_int("build", "vocab_size", vocab_size, 1)
    block_size = checks.check_int("build", "block_size", block_size, 1)
    if cfg.kind not in REGISTRY:
        raise UsageError("model_unknown", got=cfg.kind, choices=", ".join(REGISTRY))
    return REGISTRY[cfg.kind](cfg, vocab_size, block_size)
