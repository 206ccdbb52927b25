"""The GPT model (jaxbigram.models.gpt): causality, exact KV-cache sampling, split_loss, dropout, init, training."""

from __future__ import annotations

import math
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbigram import evaluate
from jaxbigram.data import get_batch, split
from jaxbigram.sampling import uniforms as _uniforms
from jaxbigram.models.gpt import GPT, GPTModule
from conftest import leaf_count

V = 11
TINY = GPT(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=16)
# the model is hashable: jit its pure methods with the model static (eager flax is slow); caches shared by the tests
_logits = jax.jit(GPT.logits, static_argnums=0)
_loss = jax.jit(GPT.loss, static_argnums=0)
_init = jax.jit(GPT.init, static_argnums=0)


def _spread(params, key, scale=0.3):
    """Random parameters far from init, so that logits differ a lot between characters and positions."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [scale * jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)])


@pytest.fixture(scope="module")
def tiny_params():
    return _spread(_init(TINY, jax.random.key(0)), jax.random.key(1))


# ----------------------------------------------------------------------------- the forward pass

def test_interface(tiny_params):
    assert GPT.kind == "gpt" and GPT.has_optimum is False
    assert hash(TINY) == hash(GPT(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=16))
    assert isinstance(TINY.module(), GPTModule)
    x = jnp.zeros((3, 5), jnp.int32)
    assert _logits(TINY, tiny_params, x).shape == (3, 5, V) and _logits(TINY, tiny_params, x).dtype == jnp.float32
    loss = _loss(TINY, tiny_params, x, x)
    assert loss.shape == () and loss.dtype == jnp.float32
    c, t, layers = TINY.n_embd, TINY.block_size, TINY.n_layer  # the closed form, with biases
    per_layer = 2 * 2 * c + (3 * c * c + 3 * c) + (c * c + c) + (4 * c * c + 4 * c) + (4 * c * c + c)
    assert leaf_count(tiny_params) == V * c + t * c + layers * per_layer + 2 * c + (c * V + V)


def test_causal(tiny_params):
    rng = np.random.default_rng(0)
    x = rng.integers(0, V, (2, 8))
    base = np.asarray(_logits(TINY, tiny_params, x))
    for t in range(7):
        changed = x.copy()
        changed[:, t + 1:] = rng.integers(0, V, (2, 7 - t))
        got = np.asarray(_logits(TINY, tiny_params, changed))
        np.testing.assert_allclose(got[:, :t + 1], base[:, :t + 1], atol=1e-6)
        assert not np.allclose(got[:, t + 1:], base[:, t + 1:])  # later positions do see the change
    last = jax.jit(lambda p, x: TINY.module().apply({"params": p}, x, method=GPTModule.last_logits))
    np.testing.assert_allclose(last(tiny_params, x), base[:, -1], rtol=1e-5, atol=1e-5)  # the sampler's shortcut


def test_dropout_loss(tiny_params):
    model = GPT(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.2)
    x = jax.random.randint(jax.random.key(2), (4, 8), 0, V)
    y = jnp.roll(x, -1, axis=1)
    loss = partial(_loss, model)
    assert float(loss(tiny_params, x, y)) == float(loss(tiny_params, x, y))  # no key: deterministic
    np.testing.assert_allclose(loss(tiny_params, x, y), _loss(TINY, tiny_params, x, y), rtol=1e-6)
    k1, k2 = jax.random.key(3), jax.random.key(4)
    assert float(loss(tiny_params, x, y, k1)) != float(loss(tiny_params, x, y))
    assert float(loss(tiny_params, x, y, k1)) == float(loss(tiny_params, x, y, k1))
    assert float(loss(tiny_params, x, y, k1)) != float(loss(tiny_params, x, y, k2))
    # the explicit-softmax attention with dropout (rate ~0) equals the deterministic paths
    almost_none = GPT(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=1e-12)
    np.testing.assert_allclose(_loss(almost_none, tiny_params, x, y, k1), _loss(TINY, tiny_params, x, y), rtol=1e-5)


def test_attention_implementations_agree(tiny_params):
    """jax.nn.dot_product_attention and the explicit softmax give the same logits."""
    x = jax.random.randint(jax.random.key(11), (3, 8), 0, V)
    dpa, explicit = (jax.jit(TINY.module(impl).apply)({"params": tiny_params}, x) for impl in ("dpa", "explicit"))
    np.testing.assert_allclose(dpa, explicit, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_logits(TINY, tiny_params, x), explicit, rtol=1e-5, atol=1e-5)


def test_bfloat16_close(tiny_params):
    x = jax.random.randint(jax.random.key(5), (4, 8), 0, V)
    y = jnp.roll(x, -1, axis=1)
    bf16 = GPT(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=16, dtype="bfloat16")
    f32_loss, bf16_loss = float(_loss(TINY, tiny_params, x, y)), float(_loss(bf16, tiny_params, x, y))
    assert _logits(bf16, tiny_params, x).dtype == jnp.float32
    assert abs(bf16_loss - f32_loss) < 0.02 * f32_loss


def test_gradient_matches_finite_differences(tiny_params):
    """Directional derivatives of the float32 loss vs central differences along random directions."""
    x = jax.random.randint(jax.random.key(6), (2, 8), 0, V)
    y = jnp.roll(x, -1, axis=1)
    f = jax.jit(lambda p: TINY.loss(p, x, y))
    grad = jax.jit(jax.grad(TINY.loss))(tiny_params, x, y)
    eps = 1e-2
    for seed in range(3):
        d = _spread(tiny_params, jax.random.key(100 + seed), scale=1.0)
        norm = math.sqrt(sum(float(jnp.sum(a * a)) for a in jax.tree.leaves(d)))
        d = jax.tree.map(lambda a: a / norm, d)
        analytic = sum(float(jnp.sum(g * a)) for g, a in zip(jax.tree.leaves(grad), jax.tree.leaves(d)))
        plus = f(jax.tree.map(lambda p, a: p + eps * a, tiny_params, d))
        minus = f(jax.tree.map(lambda p, a: p - eps * a, tiny_params, d))
        numeric = float(plus - minus) / (2 * eps)
        assert abs(numeric - analytic) < 2e-2 * abs(analytic) + 1e-4, (numeric, analytic)


# ----------------------------------------------------------------------------- init and weight decay

def test_init_statistics():
    model = GPT(vocab_size=65, block_size=32, n_layer=4, n_head=4, n_embd=64)
    params = _init(model, jax.random.key(0))
    resid = 0.02 / math.sqrt(2 * model.n_layer)
    for i in range(model.n_layer):
        block = params[f"blocks_{i}"]
        assert abs(float(jnp.std(block["attn"]["proj"]["kernel"])) / resid - 1) < 0.05
        assert abs(float(jnp.std(block["mlp"]["proj"]["kernel"])) / resid - 1) < 0.05
        assert abs(float(jnp.std(block["attn"]["qkv"]["kernel"])) / 0.02 - 1) < 0.05
        assert abs(float(jnp.std(block["mlp"]["fc"]["kernel"])) / 0.02 - 1) < 0.05
        assert not np.any(np.asarray(block["attn"]["qkv"]["bias"]))
        assert np.all(np.asarray(block["ln1"]["scale"]) == 1)
    assert abs(float(jnp.std(params["wte"]["embedding"])) / 0.02 - 1) < 0.1
    assert abs(float(jnp.std(params["wpe"]["embedding"])) / 0.02 - 1) < 0.1
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    no_bias = GPT(vocab_size=65, block_size=32, n_layer=1, n_head=4, n_embd=64, bias=False)
    names = {"/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(
        jax.eval_shape(no_bias.init, jax.random.key(0)))}
    assert not any(n.endswith("bias") for n in names), names


def test_decay_mask(tiny_params):
    mask = TINY.decay_mask(tiny_params)
    assert jax.tree.structure(mask) == jax.tree.structure(tiny_params)
    for m, p in zip(jax.tree.leaves(mask), jax.tree.leaves(tiny_params)):
        assert bool(m) == (p.ndim >= 2)
    assert sum(map(bool, jax.tree.leaves(mask))) == 2 + 4 * TINY.n_layer + 1  # wte, wpe, 4 kernels/block, head
    optax.adamw(1e-3, mask=mask).init(tiny_params)


# ----------------------------------------------------------------------------- split_loss

def test_split_loss_matches_windowed_reference(tiny_params):
    rng = np.random.default_rng(1)
    for length in (8 * 5 + 4, 8 * 3 + 1, 5):  # tail window of 3, none, one short window
        ids = rng.integers(0, V, length).astype(np.uint8)
        nll = []
        for start in range(0, length - 1, 8):
            x = ids[start:min(start + 8, length - 1)].astype(np.int32)
            y = ids[start + 1:start + 1 + len(x)].astype(np.int64)
            z = np.asarray(_logits(TINY, tiny_params, x[None]), np.float64)[0]
            z = z - z.max(-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            nll.extend(-logp[np.arange(len(y)), y])
        assert len(nll) == length - 1
        got = evaluate.split_loss(TINY, tiny_params, ids, batch_windows=2)
        np.testing.assert_allclose(got, np.mean(nll), rtol=1e-5)
        assert evaluate.split_loss(TINY, tiny_params, ids, batch_windows=2) == got  # deterministic


# ----------------------------------------------------------------------------- sampling

def _np_next(logits, u, temperature, top_k, top_p):
    """Reference draw: float64 numpy filters + inverse CDF, one row per stream."""
    z = np.asarray(logits, np.float64) / temperature
    if top_k > 0:
        kth = -np.sort(-z, axis=-1)[:, min(top_k, z.shape[-1]) - 1:][:, :1]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if top_p < 1:
        desc = -np.sort(-p, axis=-1)
        keep = (np.cumsum(desc, -1) - desc) < top_p
        cutoff = np.where(keep, desc, np.inf).min(-1, keepdims=True)
        p = np.where(p >= cutoff, p, 0.0)
    cdf = np.cumsum(p, -1)
    cdf /= cdf[:, -1:]
    return np.minimum((cdf <= np.asarray(u, np.float64)[:, None]).sum(-1), p.shape[-1] - 1)


def _reference_sample(model, params, key, prompt, n_new, num_samples, temperature=1.0, top_k=0, top_p=1.0):
    """The lecture's loop: crop to the last block_size ids, run the whole model, sample the last position."""
    u = np.asarray(_uniforms(key, num_samples, 0, n_new))
    seq = np.tile(np.asarray(prompt, np.int32), (num_samples, 1))
    for i in range(n_new):
        last = np.asarray(_logits(model, params, seq[:, -model.block_size:]))[:, -1]
        seq = np.concatenate([seq, _np_next(last, u[i], temperature, top_k, top_p)[:, None].astype(np.int32)], 1)
    return seq[:, len(prompt):]


@pytest.mark.parametrize("prompt,settings", [
    ([3, 1, 4], dict(temperature=1.0)),  # shorter than the block: cache, then the shifting window
    ([2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5], dict(temperature=0.8, top_k=4)),  # longer than the block
    ([5], dict(temperature=1.3, top_p=0.8)),
])
def test_kv_sampler_equals_reference(tiny_params, prompt, settings):
    key = jax.random.key(7)
    want = _reference_sample(TINY, tiny_params, key, prompt, 40, 3, **settings)
    got = np.asarray(TINY.sample(tiny_params, key, prompt, 40, num_samples=3, **settings))
    assert got.shape == (3, 40) and got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    assert len({tuple(r) for r in got}) == 3  # the streams differ


EDGE_SIZES = {  # the smallest models the config allows, each sampled against the lecture's loop
    "block 1": dict(vocab_size=6, block_size=1, n_layer=2, n_head=2, n_embd=4),
    "block 2, one-wide heads": dict(vocab_size=6, block_size=2, n_layer=1, n_head=4, n_embd=4),  # n_head = n_embd
    "vocabulary of 1": dict(vocab_size=1, block_size=2, n_layer=1, n_head=1, n_embd=2),
    "vocabulary of 2, width 1": dict(vocab_size=2, block_size=1, n_layer=1, n_head=1, n_embd=1),
}


@pytest.mark.parametrize("name", EDGE_SIZES)
def test_edge_sizes_sample_like_the_reference(name):
    """Block 1 and 2, one-wide heads, a vocabulary of 1 or 2: the KV cache, the shifting window and flax's one-row
    embedding (block 1, vocabulary 1) give the reference loop's draws, from a 1-id prompt and a longer one."""
    model = GPT(**EDGE_SIZES[name])
    params = _spread(_init(model, jax.random.key(0)), jax.random.key(1), scale=1.0)
    key, vocab = jax.random.key(12), model.vocab_size
    for prompt, settings in (([0], {}), ([(3 * i) % vocab for i in range(5)], dict(temperature=0.7, top_k=vocab))):
        want = _reference_sample(model, params, key, prompt, 10, 2, **settings)
        got = np.asarray(model.sample(params, key, prompt, 10, num_samples=2, **settings))
        np.testing.assert_array_equal(got, want)
        if vocab == 1:
            assert not got.any()


def test_block_1_is_a_bigram_of_its_own_logits():
    """With a context of 1 each next character depends only on the last one: the GPT samples exactly the chain of
    the (V, V) table of its logits for each single character, drawn with the same uniforms by the bigram's sampler."""
    from jaxbigram.models.bigram import generate

    model = GPT(**EDGE_SIZES["block 1"])
    params = _spread(_init(model, jax.random.key(2)), jax.random.key(3), scale=1.0)
    table = np.asarray(_logits(model, params, np.arange(model.vocab_size, dtype=np.int32)[:, None]))[:, 0]
    key = jax.random.key(13)
    want = np.asarray(generate({"token_embedding_table": {"embedding": table}}, key, [4], 30, num_samples=3))[:, 1:]
    np.testing.assert_array_equal(np.asarray(model.sample(params, key, [2, 4], 30, num_samples=3)), want)


def test_stream_chunks_equal_one_call(tiny_params):
    key = jax.random.key(8)
    prompt = [1, 2, 3]
    whole = np.asarray(TINY.sample(tiny_params, key, prompt, 40, num_samples=2, top_k=5))
    for chunk in (5,):
        parts = [np.asarray(p) for p in TINY.sample_stream(tiny_params, key, prompt, 40, top_k=5, num_samples=2,
                                                            chunk=chunk)]
        assert all(p.shape[1] <= chunk for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
    np.testing.assert_array_equal(np.asarray(TINY.sample(tiny_params, key, prompt, 40, num_samples=2, top_k=5)), whole)
    other = np.asarray(TINY.sample(tiny_params, jax.random.key(9), prompt, 40, num_samples=2, top_k=5))
    assert not np.array_equal(other, whole)
    assert TINY.sample(tiny_params, key, prompt, 0).shape == (1, 0)
    with pytest.raises(ValueError):
        next(TINY.sample_stream(tiny_params, key, [], 5))


def test_chunk_uniforms_equal_generate_uniforms():
    """The sampler's per-block host cache of uniforms reproduces sampling.uniforms, across a block boundary."""
    from jaxbigram.sampling import SAMPLE_BLOCK
    from jaxbigram.models.gpt_sampler import Uniforms

    key, total = jax.random.key(10), SAMPLE_BLOCK + 300
    want = np.asarray(_uniforms(key, 2, 0, total))
    source = Uniforms(key, 2, total)
    got = np.concatenate([source.take(start, min(1000, total - start)) for start in range(0, total, 1000)])
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- training sanity

def test_short_training_beats_bigram_optimum(corpus):
    """A tiny GPT, 300 AdamW steps on tinyshakespeare: val loss below the bigram optimum (≈ 2.48)."""
    start = time.perf_counter()
    train_ids, val_ids = split(np.asarray(corpus.ids), 0.1)
    model = GPT(vocab_size=corpus.tokenizer.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=64)
    params = _init(model, jax.random.key(0))
    opt = optax.adamw(3e-3, weight_decay=0.1, mask=model.decay_mask(params))
    data = jnp.asarray(train_ids)

    @jax.jit
    def train(params, opt_state, key):
        def step(i, carry):
            params, opt_state = carry
            x, y = get_batch(jax.random.fold_in(key, i), data, 32, model.block_size)
            grads = jax.grad(model.loss)(params, x, y)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state
        return jax.lax.fori_loop(0, 300, step, (params, opt_state))

    params, _ = train(params, opt.init(params), jax.random.key(1))
    val = evaluate.split_loss(model, params, val_ids, batch_windows=256)
    elapsed = time.perf_counter() - start
    print(f"tiny GPT: val loss {val:.3f} after 300 steps, {elapsed:.1f} s")
    assert val < 2.48


@pytest.mark.parametrize("bias", [True, False])
def test_param_count_in_closed_form_equals_the_built_model(bias):
    """The memory check uses ``param_count`` before anything is built: it must be the real count."""
    spec = GPT(vocab_size=13, block_size=6, n_layer=3, n_head=2, n_embd=8, bias=bias)
    assert spec.param_count() == leaf_count(jax.eval_shape(spec.init, jax.random.key(0)))


def test_cpu_matmul_gradients_are_the_plain_matmul_gradients():
    """``cpu_matmul.matmul`` (the CPU path of every GPT linear layer) is ``x @ w`` with the same gradients as autodiff of
    ``jnp.matmul``, for a batched ``(B, T, in)`` input; only float rounding may differ."""
    from jaxbigram.models.cpu_matmul import matmul

    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, 5, 8))
    w = jax.random.normal(kw, (8, 6))
    g = jax.random.normal(kg, (3, 5, 6))
    np.testing.assert_allclose(matmul(x, w), jnp.matmul(x, w), rtol=1e-6, atol=1e-6)
    ours = jax.vjp(matmul, x, w)[1](g)
    plain = jax.vjp(jnp.matmul, x, w)[1](g)
    for a, b in zip(ours, plain):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # and against numpy: dW = sum over rows of x^T g, dx = g w^T
    np.testing.assert_allclose(ours[1], np.einsum("bti,bto->io", np.asarray(x), np.asarray(g)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours[0], np.asarray(g) @ np.asarray(w).T, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- attention maps

def _np_layer_norm(x, p):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def test_attention_maps_are_causal_distributions(tiny_params):
    ids = np.random.default_rng(3).integers(0, V, 12)  # longer than block_size 8: its last 8 ids count
    maps = np.asarray(TINY.attention_weights(tiny_params, ids))
    assert maps.shape == (TINY.n_layer, TINY.n_head, 8, 8) and maps.dtype == np.float32
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-6)
    assert np.all(np.triu(maps, k=1) == 0.0) and np.all(maps >= 0)
    np.testing.assert_array_equal(maps, np.asarray(TINY.attention_weights(tiny_params, ids[-8:])))
    assert np.asarray(TINY.attention_weights(tiny_params, ids[:3])).shape == (2, 2, 3, 3)


def test_attention_maps_of_one_layer_by_hand():
    model = GPT(vocab_size=V, block_size=6, n_layer=1, n_head=2, n_embd=8)
    params = _spread(_init(model, jax.random.key(2)), jax.random.key(3), scale=0.5)
    ids = np.array([3, 1, 4, 1, 5])
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = p["wte"]["embedding"][ids] + p["wpe"]["embedding"][: len(ids)]
    qkv = _np_layer_norm(x, p["blocks_0"]["ln1"]) @ p["blocks_0"]["attn"]["qkv"]["kernel"]
    qkv = (qkv + p["blocks_0"]["attn"]["qkv"]["bias"]).reshape(len(ids), 3, 2, 4)  # (T, q/k/v, H, D)
    for h in range(2):
        scores = qkv[:, 0, h] @ qkv[:, 1, h].T / math.sqrt(4)
        expected = np.zeros_like(scores)
        for i in range(len(ids)):  # softmax over the positions up to i, nothing after
            e = np.exp(scores[i, : i + 1] - scores[i, : i + 1].max())
            expected[i, : i + 1] = e / e.sum()
        np.testing.assert_allclose(model.attention_weights(params, ids)[0, h], expected, rtol=2e-5, atol=1e-6)
