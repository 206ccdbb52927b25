"""The lecture's GPT (Karpathy, "Let's build GPT": gpt.py), in Flax, initialised like nanoGPT.

Architecture: token + position embeddings → dropout → ``n_layer`` pre-LayerNorm blocks
(``x + attn(ln1(x))``, ``x + mlp(ln2(x))``) → final LayerNorm → linear head to the vocabulary.
Causal multi-head self-attention uses one fused ``qkv`` projection (``3 * n_embd``) and
``jax.nn.dot_product_attention(is_causal=True)`` (heads ``(B, T, H, D)``, the layout its fused GPU kernels take),
except on the CPU and when attention dropout is active: there an explicit softmax over heads-major ``(B, H, T, D)``
operands (faster there: see docs/performance.md);
the MLP is 4x wide with **ReLU**, as in the lecture (nanoGPT uses GELU). Dropout sits where the lecture has it
(attention weights, after the attention projection, after the MLP) plus after the embeddings (as nanoGPT).
The head is not tied to the token embedding (the lecture's ``lm_head``). LayerNorm epsilon 1e-5 (PyTorch's).

Init as nanoGPT: N(0, 0.02) for every linear and embedding weight, zeros for biases, and N(0, 0.02 / sqrt(2 n_layer))
for the residual projections (attention output projection and the MLP's second linear). ``bias=False`` drops the
biases of every linear and LayerNorm.

``dtype="bfloat16"`` computes the matmuls (and attention) in bfloat16 with float32 parameters; the residual stream,
LayerNorm, softmax statistics, logits and loss stay float32.

Sampling (``GPT.sample_stream``, the lecture's crop, with a KV cache inside the window) lives in ``gpt_sampler``; the
CPU path of every linear layer (a weight gradient as a row-major GEMM) in ``cpu_matmul``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import ClassVar, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import checks, sampling
from . import cpu_matmul, gpt_sampler

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LN_EPS = 1e-5


# ----------------------------------------------------------------------------- flax modules

def _use_dpa(attention: str) -> bool:
    """Whether the causal attention without dropout uses ``jax.nn.dot_product_attention``. ``"auto"``: everywhere but
    on the CPU, where the explicit softmax is faster (docs/performance.md)."""
    if attention not in ("auto", "dpa", "explicit"):
        raise ValueError(f"attention must be 'auto', 'dpa' or 'explicit', not {attention!r}")
    return attention == "dpa" or (attention == "auto" and jax.default_backend() != "cpu")


def _dense(spec: "GPT", **kwargs):
    """A linear layer of the GPT: float32 params, compute in ``spec.dtype``, zero biases (none without ``bias``).
    On the CPU its weight gradient is a row-major GEMM (``cpu_matmul``)."""
    return partial(nn.Dense, use_bias=spec.bias, dtype=_DTYPES[spec.dtype], param_dtype=jnp.float32,
                   bias_init=nn.initializers.zeros,
                   dot_general=cpu_matmul.dense_dot_general if jax.default_backend() == "cpu" else None, **kwargs)


def _residual_init(spec: "GPT"):
    """nanoGPT's init of the projections into the residual stream: std 0.02 / sqrt(2 · n_layer)."""
    return nn.initializers.normal(0.02 / math.sqrt(2 * spec.n_layer))


def _causal_weights(q, k):
    """Causal softmax attention weights ``(B, H, T, T)`` float32 of heads-major ``q``, ``k`` ``(B, H, T, D)``: row
    ``i`` is softmax over ``j <= i`` of ``q_i · k_j / sqrt(D)``; every entry above the diagonal is 0."""
    t = q.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    att = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    att = jnp.where(jnp.tril(jnp.ones((t, t), dtype=bool)), att, -jnp.inf)
    return jax.nn.softmax(att, axis=-1)


class CausalSelfAttention(nn.Module):
    spec: "GPT"  # the sizes (n_head, n_embd, n_layer, dropout, bias, dtype)
    attention: str = "auto"

    def setup(self):
        self.qkv = _dense(self.spec)(3 * self.spec.n_embd, kernel_init=nn.initializers.normal(0.02))
        self.proj = _dense(self.spec)(self.spec.n_embd, kernel_init=_residual_init(self.spec))
        self.attn_dropout = nn.Dropout(self.spec.dropout)
        self.resid_dropout = nn.Dropout(self.spec.dropout)

    def _heads(self, x, heads_major: bool = False):
        """``(B, T, C)`` → q, k, v each ``(B, T, H, D)``, or ``(B, H, T, D)`` with ``heads_major`` (compute dtype)."""
        b, t, _ = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.spec.n_head, self.spec.n_embd // self.spec.n_head)
        if heads_major:  # one transpose of the fused projection: both attention products then read q, k, v in place
            qkv = qkv.transpose(2, 0, 3, 1, 4)
            return qkv[0], qkv[1], qkv[2]
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

    def _out(self, y, deterministic):
        b, t = y.shape[:2]
        return self.resid_dropout(self.proj(y.reshape(b, t, self.spec.n_embd)), deterministic=deterministic)

    def __call__(self, x, deterministic: bool = True, return_kv: bool = False):
        """``(B, T, C)`` → ``(B, T, C)``; with ``return_kv`` also the keys and values, each ``(B, H, T, D)``."""
        dropout = not deterministic and self.spec.dropout > 0.0
        if not dropout and _use_dpa(self.attention):
            q, k, v = self._heads(x)
            y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
            if return_kv:  # the cache's heads-major layout
                k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        else:  # explicit softmax (needed for dropout on the attention weights; faster on the CPU), heads-major:
            # heads-major (B, H, T, D) operands: both products read them in place (docs/performance.md)
            q, k, v = self._heads(x, heads_major=True)
            att = _causal_weights(q, k)
            if dropout:
                att = self.attn_dropout(att, deterministic=False)
            y = jnp.einsum("bhqk,bhkd->bhqd", att.astype(v.dtype), v).transpose(0, 2, 1, 3)
        out = self._out(y, deterministic)
        return (out, (k, v)) if return_kv else out

    def weights(self, x):
        """The causal attention weights ``(B, H, T, T)`` float32 of ``(B, T, C)`` inputs (deterministic)."""
        q, k, _ = self._heads(x, heads_major=True)
        return _causal_weights(q, k)

    def last(self, x):
        """Output ``(B, 1, C)`` of the last position only (deterministic): keys and values for every position, the
        query only for the last, which sees every position (no mask needed)."""
        q, k, v = self._heads(x)
        return self._out(jax.nn.dot_product_attention(q[:, -1:], k, v), True)

    def decode(self, x, cache_k, cache_v, pos):
        """One new position: ``x`` ``(B, 1, C)`` at absolute position ``pos`` (traced scalar); the cache holds keys
        and values ``(B, H, block_size, D)`` of positions ``< pos``. Returns ``(out, cache_k, cache_v)``.

        The cache is laid out heads-major, so both attention products read it in place: with ``(B, T, H, D)`` the CPU
        transposed the whole cache of every layer at every step (40% of a 64-stream decode step)."""
        q, k, v = self._heads(x)  # (B, 1, H, D)
        put = lambda cache, new: jax.lax.dynamic_update_slice(  # noqa: E731
            cache, new.transpose(0, 2, 1, 3).astype(cache.dtype), (0, 0, pos, 0))
        cache_k, cache_v = put(cache_k, k), put(cache_v, v)
        scale = 1.0 / math.sqrt(q.shape[-1])
        att = jnp.einsum("bhd,bhtd->bht", q[:, 0], cache_k, preferred_element_type=jnp.float32) * scale
        att = jnp.where(jnp.arange(cache_k.shape[2]) <= pos, att, -jnp.inf)
        att = jax.nn.softmax(att, axis=-1)
        y = jnp.einsum("bht,bhtd->bhd", att.astype(cache_v.dtype), cache_v)
        return self._out(y[:, None], True), cache_k, cache_v


class MLP(nn.Module):
    spec: "GPT"

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        x = _dense(self.spec)(4 * self.spec.n_embd, kernel_init=nn.initializers.normal(0.02), name="fc")(x)
        x = nn.relu(x)  # the lecture's activation (nanoGPT uses GELU)
        x = _dense(self.spec)(self.spec.n_embd, kernel_init=_residual_init(self.spec), name="proj")(x)
        return nn.Dropout(self.spec.dropout)(x, deterministic=deterministic)


def _layer_norm(spec: "GPT"):
    return nn.LayerNorm(epsilon=LN_EPS, use_bias=spec.bias, dtype=jnp.float32, param_dtype=jnp.float32)


class Block(nn.Module):
    spec: "GPT"
    attention: str = "auto"

    def setup(self):
        self.ln1 = _layer_norm(self.spec)
        self.ln2 = _layer_norm(self.spec)
        self.attn = CausalSelfAttention(self.spec, self.attention)
        self.mlp = MLP(self.spec)

    def __call__(self, x, deterministic: bool = True, return_kv: bool = False):
        a = self.attn(self.ln1(x), deterministic, return_kv)
        a, kv = a if return_kv else (a, None)
        x = x + a.astype(x.dtype)
        x = x + self.mlp(self.ln2(x), deterministic).astype(x.dtype)
        return (x, kv) if return_kv else x

    def last(self, x):
        """``(B, T, C)`` → ``(B, 1, C)``: the block's output at the last position only."""
        x_last = x[:, -1:] + self.attn.last(self.ln1(x)).astype(x.dtype)
        return x_last + self.mlp(self.ln2(x_last), True).astype(x.dtype)

    def decode(self, x, cache_k, cache_v, pos):
        a, cache_k, cache_v = self.attn.decode(self.ln1(x), cache_k, cache_v, pos)
        x = x + a.astype(x.dtype)
        x = x + self.mlp(self.ln2(x), True).astype(x.dtype)
        return x, cache_k, cache_v


class GPTModule(nn.Module):
    """ids ``(B, T)`` → logits ``(B, T, V)`` float32. Parameters are float32 whatever ``spec.dtype``."""

    spec: "GPT"  # vocab_size, block_size and the sizes
    attention: str = "auto"  # causal attention without dropout: "auto" | "dpa" | "explicit" (see _use_dpa)

    def setup(self):
        spec = self.spec
        emb = partial(nn.Embed, embedding_init=nn.initializers.normal(0.02), dtype=jnp.float32,
                      param_dtype=jnp.float32)
        self.wte = emb(spec.vocab_size, spec.n_embd)
        self.wpe = emb(spec.block_size, spec.n_embd)
        self.drop = nn.Dropout(spec.dropout)
        self.blocks = [Block(spec, self.attention) for _ in range(spec.n_layer)]
        self.ln_f = _layer_norm(spec)
        self.lm_head = _dense(spec)(spec.vocab_size, kernel_init=nn.initializers.normal(0.02))

    def _embed(self, idx):
        """Token plus position embeddings ``(B, T, C)`` of ids ``(B, T)``."""
        return self.wte(idx) + self.wpe(jnp.arange(idx.shape[1]))[None]

    def _trunk(self, idx, deterministic, return_kv=False):
        x = self.drop(self._embed(idx), deterministic=deterministic)
        kvs = []
        for block in self.blocks:
            if return_kv:
                x, kv = block(x, deterministic, True)
                kvs.append(kv)
            else:
                x = block(x, deterministic)
        return self.ln_f(x), kvs

    def _head(self, x):
        return self.lm_head(x).astype(jnp.float32)

    def __call__(self, idx, deterministic: bool = True):
        return self._head(self._trunk(idx, deterministic)[0])

    def last_logits(self, idx):
        """Logits ``(B, V)`` of the last position only (deterministic). The last block computes its query, MLP and
        projections for the last position only (the keys and values of every position are still needed)."""
        x = self._embed(idx)
        for block in self.blocks[:-1]:
            x = block(x, True)
        x = self.blocks[-1].last(x)
        return self._head(self.ln_f(x)[:, 0])

    def attention_weights(self, idx):
        """The causal attention weights of every layer, ``(B, n_layer, H, T, T)`` float32 (deterministic): layer
        ``l``'s weights over its input, the residual stream after the blocks before it."""
        x = self._embed(idx)
        maps = []
        for block in self.blocks:
            maps.append(block.attn.weights(block.ln1(x)))
            x = block(x, True)
        return jnp.stack(maps, axis=1)

    def prefill(self, idx):
        """Keys and values of every layer for ``idx`` ``(B, T0)``: a list of ``(k, v)``, each ``(B, H, T0, D)``."""
        return self._trunk(idx, True, return_kv=True)[1]

    def decode(self, tok, pos, cache):
        """Feed ``tok`` ``(B,)`` at absolute position ``pos``; ``cache`` is a tuple of ``(k, v)`` per layer.
        Returns ``(logits (B, V), cache)``."""
        # ``pos[None]``: flax's one-row Embed (block_size 1) broadcasts its row to the input's shape, so it needs the
        # position as a (1,) array to give (1, C) rather than fail on a scalar
        x = (self.wte(tok) + self.wpe(pos[None]))[:, None]
        new_cache = []
        for block, (ck, cv) in zip(self.blocks, cache):
            x, ck, cv = block.decode(x, ck, cv, pos)
            new_cache.append((ck, cv))
        return self._head(self.ln_f(x)[:, 0]), tuple(new_cache)


# ----------------------------------------------------------------------------- the model seam

@lru_cache(maxsize=256)
def _gpt_module(spec: "GPT", attention: str) -> GPTModule:
    return GPTModule(spec, attention)


@partial(jax.jit, static_argnums=(0,))
def _init_params(model: "GPT", key):
    return model.module().init(key, jnp.zeros((1, model.block_size), jnp.int32))["params"]


@partial(jax.jit, static_argnums=(0,))
def _attention_maps(model: "GPT", params, idx):
    return model.module().apply({"params": params}, idx, method=GPTModule.attention_weights)


@partial(jax.jit, static_argnums=(0,))
def _window_nll(model: "GPT", params, x, y, mask):
    logits = model.logits(params, x)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(jnp.where(mask, nll, 0.0))


def context_windows(ids: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ids`` as consecutive non-overlapping windows of ``block_size`` (a tail window covers the rest, padded):
    ``(x, y, mask)``, each ``(windows, block_size)``; ``mask`` marks the positions that predict a real next id.
    Each position is conditioned on the earlier positions of its window (causality keeps padding harmless)."""
    ids = np.asarray(ids)
    n_pred = len(ids) - 1
    n_win = -(-n_pred // block_size)
    padded = np.zeros(n_win * block_size + 1, dtype=np.int32)
    padded[:len(ids)] = ids
    x = padded[:-1].reshape(n_win, block_size)
    y = padded[1:].reshape(n_win, block_size)
    mask = (np.arange(n_win * block_size) < n_pred).reshape(n_win, block_size)
    return x, y, mask


@dataclass(frozen=True)
class GPT:
    """The GPT seam: hashable (pass it as a static argument to ``jax.jit``), parameters are a plain pytree."""

    vocab_size: int
    block_size: int
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    dtype: str = "float32"  # compute dtype: "float32" | "bfloat16" (params always float32)
    kind: ClassVar[str] = "gpt"
    cheap_split_loss: ClassVar[bool] = False  # a forward pass over every position
    has_optimum: ClassVar[bool] = False

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {self.dtype!r}")

    @property
    def compute_dtype(self):
        """The dtype of the matmuls, attention and the sampler's KV cache (``jnp.float32`` or ``jnp.bfloat16``)."""
        return _DTYPES[self.dtype]

    def module(self, attention: str = "auto") -> GPTModule:
        """The Flax module (one object per model and attention path: its ``apply`` is the train state's
        ``apply_fn``)."""
        return _gpt_module(self, attention)

    def init(self, key: jax.Array) -> dict:
        """Fresh float32 parameters (one compiled program: eager Flax init took ~3 s for gpt-cpu on a CPU)."""
        return _init_params(self, key)

    def logits(self, params, x) -> jax.Array:
        """ids ``(B, T)`` (``T <= block_size``) → logits ``(B, T, V)`` float32, deterministic. Precondition (checked
        only when ``x`` is concrete, never under ``jit``): every id from 0 to V - 1."""
        checks.check_ids("logits", "x", x, self.vocab_size, ndim=2)
        if x.shape[1] > self.block_size:
            checks.refuse("logits", "x", f"at most block_size = {self.block_size} positions long",
                          f"{x.shape[1]} positions")
        return self.module().apply({"params": params}, x)

    def loss(self, params, x, y, dropout_key: jax.Array | None = None) -> jax.Array:
        """Mean cross-entropy over ``(B, T)`` (float32). Dropout is active only with a ``dropout_key`` and
        ``dropout > 0``. ``x`` and ``y`` are int ``(B, T)`` of one shape, ``T <= block_size`` (checked at trace time);
        precondition: every id from 0 to V - 1 (checked only on concrete arrays, never under ``jit``)."""
        checks.check_batch("loss", x, y, self.vocab_size, self.block_size)
        train = dropout_key is not None and self.dropout > 0
        logits = self.module().apply({"params": params}, x, not train,
                                     rngs={"dropout": dropout_key} if train else None)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def window_nll(self, params, x, y, mask) -> jax.Array:
        """Summed next-id loss of windows ``(x, y)`` over the positions ``mask`` selects (see ``context_windows``)."""
        return _window_nll(self, params, x, y, mask)

    def attention_weights(self, params, ids) -> jax.Array:
        """Causal attention weights ``(n_layer, n_head, T, T)`` float32 of a prompt (1-D ids; its last ``block_size``
        ids, ``T`` of them): row ``i`` of each map is how query position ``i`` weighs positions ``0..i``. Pure, no
        dropout; the same math as the model's own attention."""
        checks.check_ids("attention_weights", "ids", ids, self.vocab_size, ndim=None, min_length=1)
        ids = jnp.asarray(ids, dtype=jnp.int32).reshape(-1)[-self.block_size:]
        return _attention_maps(self, params, ids[None])[0]

    def decay_mask(self, params):
        """True on matrices (ndim >= 2: linear kernels and embeddings), False on biases and LayerNorm scales."""
        return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)

    def param_count(self) -> int:
        """Parameters, in closed form (known before anything is built or traced): embeddings, per layer two
        LayerNorms, q/k/v, the attention projection and the 4× MLP, the final LayerNorm and the head."""
        c, b, v = self.n_embd, int(self.bias), self.vocab_size
        layer_norm = c + b * c
        attention = (3 * c * c + b * 3 * c) + (c * c + b * c)
        mlp = (4 * c * c + b * 4 * c) + (4 * c * c + b * c)
        per_layer = 2 * layer_norm + attention + mlp
        return (v + self.block_size) * c + self.n_layer * per_layer + layer_norm + (c * v + b * v)

    def sample_stream(self, params, key, prompt_ids, max_new_tokens: int, temperature=1.0, top_k=0, top_p=1.0,
                      num_samples: int = 1, chunk: int = 256) -> Iterator[jax.Array]:
        """Yield ``(num_samples, n)`` int32 arrays of new ids, ``chunk`` at a time; together they equal a single
        call's output (any ``chunk``), and the same key gives the same ids. Only the last ``block_size`` ids of the
        prompt matter (the lecture's crop). The arguments are checked on the call (``sampling.check_sample_args``)."""
        sampling.check_sample_args("sample", self, key, prompt_ids, max_new_tokens, temperature, top_k, top_p,
                                   num_samples)
        return gpt_sampler.sample_stream(self, params, key, prompt_ids, max_new_tokens, temperature, top_k, top_p,
                                         num_samples, chunk)

    def sample(self, params, key, prompt_ids, max_new_tokens: int, temperature=1.0, top_k=0, top_p=1.0,
               num_samples: int = 1, chunk: int = 4096) -> jax.Array:
        """``(num_samples, max_new_tokens)`` new ids (``sample_stream`` concatenated)."""
        return sampling.collect(self.sample_stream(params, key, prompt_ids, max_new_tokens, temperature, top_k, top_p,
                                                   num_samples, chunk), num_samples)

