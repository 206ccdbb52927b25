"""models/ (the seam) and models/bigram.py: the table, its loss and gradient, the exact split loss, and the CDF-walk
sampler (determinism, prompt, streaming == one call, greedy top-k = 1, temperature, V > 512) — against independent
numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbigram import data, models, sampling
from jaxbigram.config import ModelConfig
from jaxbigram.errors import UsageError
from jaxbigram.models.bigram import Bigram, BigramLanguageModel, generate, logits_table, next_char_cdf
from conftest import leaf_count, table_params
from reference import np_log_softmax, np_mean_cross_entropy, np_softmax

V, B, T = 6, 4, 8


def _setup(seed=0):
    params = Bigram(V).init(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, (B, T)).astype(np.int32)  # 32 positions over 6 ids: ids repeat
    y = rng.integers(0, V, (B, T)).astype(np.int32)
    return params, x, y


# ----------------------------------------------------------------------------- the seam

def test_build_picks_the_bigram_and_counts_its_parameters():
    model = models.build(ModelConfig(), 65, 8)
    assert model == Bigram(65) and model.kind == "bigram" and model.has_optimum
    assert hash(model) == hash(Bigram(65))  # a static argument of jitted functions
    params = model.init(jax.random.key(0))
    assert leaf_count(params) == 65 * 65
    assert leaf_count(jax.eval_shape(model.init, jax.random.key(0))) == 65 * 65  # shapes only
    assert model.decay_mask(params) is None  # AdamW decays the whole table, as torch does in the lecture


def test_unknown_model_kind_is_a_usage_error():
    with pytest.raises(UsageError) as info:
        models.build(ModelConfig(kind="rnn"), 65, 8)
    assert info.value.code == "model_unknown" and "bigram" in str(info.value)


# ----------------------------------------------------------------------------- the table, loss, gradient

def test_params_are_one_v_by_v_table_with_torch_like_init():
    params = Bigram(65).init(jax.random.key(0))
    table = np.asarray(logits_table(params))
    assert table.shape == (65, 65) and Bigram(65).param_count() == 65 * 65
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        {"token_embedding_table": {"embedding": 0}})
    # N(0, 1) per entry, like torch.nn.Embedding in the lecture (4225 draws: mean and std within a few s.e.)
    assert abs(table.mean()) < 0.06 and 0.95 < table.std() < 1.05


def test_logits_shape_and_values_are_table_rows():
    params, x, _ = _setup()
    logits = Bigram(V).logits(params, jnp.asarray(x))
    assert logits.shape == (B, T, V)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(logits_table(params))[x])
    np.testing.assert_array_equal(np.asarray(BigramLanguageModel(V).apply({"params": params}, jnp.asarray(x))),
                                  np.asarray(logits))


def test_loss_equals_numpy_cross_entropy():
    params, x, y = _setup(1)
    expected = -np_log_softmax(logits_table(params))[x, y].mean()
    loss = Bigram(V).loss(params, jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    # no dropout in a bigram: a dropout key changes nothing
    assert float(Bigram(V).loss(params, jnp.asarray(x), jnp.asarray(y), jax.random.key(3))) == float(loss)


def test_initial_loss_is_near_log_vocab_plus_half():
    # the lecture's sanity check: an untrained N(0, 1) table predicts about uniformly; for Gaussian logits
    # E[logsumexp] ≈ ln V + σ²/2, so the loss starts near ln 65 + 0.5 ≈ 4.67 (the lecture prints ≈ 4.73)
    model = Bigram(65)
    params = model.init(jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).integers(0, 65, (256, 64)), jnp.int32)
    y = jnp.asarray(np.random.default_rng(1).integers(0, 65, (256, 64)), jnp.int32)
    assert abs(float(model.loss(params, x, y)) - (np.log(65) + 0.5)) < 0.1


def test_gradient_equals_closed_form():
    """d loss / d W[i] = Σ_{positions with x = i} (softmax(W[i]) − onehot(y)) / (B·T); zero for unused rows."""
    params, x, y = _setup(2)
    x[0, :3] = 0  # make sure one id repeats within a row, and leave id V-1 out entirely
    x[x == V - 1] = 1
    probs = np.exp(np_log_softmax(np.asarray(logits_table(params), dtype=np.float64)))
    expected = np.zeros((V, V))
    for b in range(B):
        for t in range(T):
            delta = probs[x[b, t]].copy()
            delta[y[b, t]] -= 1.0
            expected[x[b, t]] += delta
    expected /= B * T

    for loss in (Bigram(V).loss, Bigram(V).fast_loss):  # the logits' cross-entropy, and from pair counts
        grads = jax.grad(loss)(params, jnp.asarray(x), jnp.asarray(y))
        got = np.asarray(logits_table(grads))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
        assert not got[V - 1].any()  # a row never used as input gets no gradient


def test_fast_loss_from_pair_counts_equals_numpy_cross_entropy_also_under_vmap():
    """``fast_loss`` (what a sweep trains with) is the mean cross-entropy, per member of a ``vmap`` too."""
    tables, xs, ys = zip(*(_setup(seed) for seed in (3, 4, 5)))
    params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *tables)
    got = jax.vmap(Bigram(V).fast_loss)(params, jnp.asarray(np.stack(xs)), jnp.asarray(np.stack(ys)))
    for k in range(3):
        expected = -np_log_softmax(np.asarray(logits_table(tables[k]), np.float64))[xs[k], ys[k]].mean()
        np.testing.assert_allclose(float(got[k]), expected, rtol=1e-6)


# ----------------------------------------------------------------------------- the exact split loss

def test_split_loss_equals_mean_cross_entropy_over_every_position(corpus):
    vocab = corpus.tokenizer.vocab_size
    _, val = data.split(corpus.ids, 0.1)
    model = Bigram(vocab)
    params = jax.tree_util.tree_map(lambda w: w * 5.0, model.init(jax.random.key(3)))  # a sharper table
    expected = np_mean_cross_entropy(logits_table(params), val)
    assert model.split_loss(params, val) == pytest.approx(expected, rel=1e-6)
    # and it is the model's loss over the whole split as one window
    whole = jnp.asarray(np.asarray(val, dtype=np.int32))
    assert float(model.loss(params, whole[None, :-1], whole[None, 1:])) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("ids", [[], [3]])
def test_split_loss_of_a_split_without_pairs_is_nan(ids):
    model = Bigram(5)
    assert np.isnan(model.split_loss(model.init(jax.random.key(0)), np.asarray(ids, np.uint8)))


# ----------------------------------------------------------------------------- sampling

@pytest.fixture(scope="module")
def params():
    return jax.tree_util.tree_map(lambda w: w * 8.0, Bigram(11).init(jax.random.key(0)))  # peaked rows


def test_same_seed_same_text_other_seed_other_text(params):
    a = generate(params, jax.random.key(1), [0], 300)
    b = generate(params, jax.random.key(1), [0], 300)
    c = generate(params, jax.random.key(2), [0], 300)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_output_shape_vocab_and_prompt(params):
    prompt = [3, 1, 4, 1, 5]
    out = np.asarray(generate(params, jax.random.key(0), prompt, 200, num_samples=3))
    assert out.shape == (3, len(prompt) + 200)
    assert out.dtype == np.int32
    assert ((out >= 0) & (out < 11)).all()
    np.testing.assert_array_equal(out[:, :len(prompt)], np.tile(prompt, (3, 1)))
    assert len({tuple(row) for row in out}) == 3  # independent streams


def test_zero_new_tokens_returns_the_prompt(params):
    np.testing.assert_array_equal(np.asarray(generate(params, jax.random.key(0), [2, 7], 0)), [[2, 7]])
    assert list(Bigram(11).sample_stream(params, jax.random.key(0), [2, 7], 0)) == []


def test_generate_equals_concatenated_stream_chunks(params):
    n = 2 * sampling.SAMPLE_BLOCK + 123  # more than one block per chunk, and a partial last chunk
    key = jax.random.key(5)
    whole = np.asarray(generate(params, key, [4], n, num_samples=2))
    chunks = [np.asarray(c) for c in Bigram(11).sample_stream(params, key, [4], n, num_samples=2, chunk_blocks=1)]
    assert [c.shape[1] for c in chunks] == [sampling.SAMPLE_BLOCK, sampling.SAMPLE_BLOCK, 123]
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), whole[:, 1:])


def test_top_k_1_is_the_greedy_argmax_chain(params):
    out = np.asarray(generate(params, jax.random.key(9), [6], 100, top_k=1))[0]
    table = np.asarray(logits_table(params))
    np.testing.assert_array_equal(out[1:], table[out[:-1]].argmax(axis=1))


@pytest.mark.parametrize("temperature, top_k", [(1.0, 0), (0.5, 0), (2.0, 0), (1.0, 3)])
def test_cdf_is_softmax_of_logits_over_temperature(params, temperature, top_k):
    table = np.asarray(logits_table(params))
    if top_k:
        kth = np.sort(table, axis=1)[:, -top_k][:, None]
        table = np.where(table >= kth, table, -np.inf)
    cdf = np.asarray(next_char_cdf(params, temperature, top_k))
    np.testing.assert_allclose(cdf, np.cumsum(np_softmax(table, temperature), axis=1), atol=1e-5)


def test_lower_temperature_is_more_predictable(params):
    def agreement_with_greedy(temperature):
        out = np.asarray(generate(params, jax.random.key(3), [0], 2000, temperature=temperature))[0]
        return np.mean(out[1:] == np.asarray(logits_table(params))[out[:-1]].argmax(axis=1))

    cold, warm, hot = agreement_with_greedy(0.05), agreement_with_greedy(1.0), agreement_with_greedy(3.0)
    assert cold > 0.99 and cold > warm > hot


def test_sampling_with_a_big_vocabulary_is_an_exact_chain_walk():
    """V > 512 takes the binary-search path: compare with numpy's searchsorted on the same uniforms."""
    vocab, key, n = 1500, jax.random.key(42), 300
    table = np.random.default_rng(0).normal(0.0, 3.0, (vocab, vocab))
    params = table_params(table)
    out = np.asarray(generate(params, key, [0], n))[0]
    cdf = np.asarray(next_char_cdf(params, 1.0, 0, 1.0))
    prev, expected = 0, []
    for u in np.asarray(sampling.uniforms(key, 1, 0, n))[:, 0]:
        prev = min(int(np.searchsorted(cdf[prev], u, side="right")), vocab - 1)
        expected.append(prev)
    assert out[0] == 0 and out[1:].tolist() == expected
    top = np.asarray(generate(params, key, [0], n, 1.0, 5))[0]  # top-k: every draw among the row's top 5
    table32 = np.asarray(logits_table(params))
    for a, b in zip(top[:-1], top[1:]):
        assert table32[a, b] >= np.sort(table32[a])[-5]


def test_sample_is_generate_without_the_prompt():
    model = Bigram(vocab_size=7)
    params = table_params(np.random.default_rng(4).normal(size=(7, 7)))
    key = jax.random.key(9)
    new = model.sample(params, key, [3, 2], 50, num_samples=3)
    assert new.shape == (3, 50) and new.dtype == jnp.int32
    np.testing.assert_array_equal(new, generate(params, key, [3, 2], 50, num_samples=3)[:, 2:])
    assert model.sample(params, key, [3], 0).shape == (1, 0)
