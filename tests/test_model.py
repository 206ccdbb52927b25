"""model.py: logits are rows of the table; loss and its gradient equal independent numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxbigram.model import BigramLanguageModel, init_params, logits_table, loss_fn
from reference import np_log_softmax

V, B, T = 6, 4, 8


def _setup(seed=0):
    params = init_params(jax.random.key(seed), V)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, (B, T)).astype(np.int32)  # 32 positions over 6 ids: ids repeat
    y = rng.integers(0, V, (B, T)).astype(np.int32)
    return params, x, y


def test_params_are_one_v_by_v_table_with_torch_like_init():
    params = init_params(jax.random.key(0), 65)
    table = np.asarray(logits_table(params))
    assert table.shape == (65, 65)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        {"token_embedding_table": {"embedding": 0}})
    # N(0, 1) per entry, like torch.nn.Embedding in the lecture (4225 draws: mean and std within a few s.e.)
    assert abs(table.mean()) < 0.06 and 0.95 < table.std() < 1.05


def test_logits_shape_and_values_are_table_rows():
    params, x, _ = _setup()
    logits = BigramLanguageModel(V).apply({"params": params}, jnp.asarray(x))
    assert logits.shape == (B, T, V)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(logits_table(params))[x])


def test_loss_equals_numpy_cross_entropy():
    params, x, y = _setup(1)
    logp = np_log_softmax(logits_table(params))
    expected = -logp[x, y].mean()
    np.testing.assert_allclose(float(loss_fn(params, jnp.asarray(x), jnp.asarray(y))), expected, rtol=1e-6)


def test_initial_loss_is_near_log_vocab_plus_half():
    # the lecture's sanity check: an untrained N(0, 1) table predicts about uniformly; for Gaussian logits
    # E[logsumexp] ≈ ln V + σ²/2, so the loss starts near ln 65 + 0.5 ≈ 4.67 (the lecture prints ≈ 4.73)
    params = init_params(jax.random.key(0), 65)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 65, (256, 64)), jnp.int32)
    y = jnp.asarray(np.random.default_rng(1).integers(0, 65, (256, 64)), jnp.int32)
    assert abs(float(loss_fn(params, x, y)) - (np.log(65) + 0.5)) < 0.1


def test_gradient_equals_closed_form():
    """d loss / d W[i] = Σ_{positions with x = i} (softmax(W[i]) − onehot(y)) / (B·T); zero for unused rows."""
    params, x, y = _setup(2)
    x[0, :3] = 0  # make sure one id repeats within a row, and leave id V-1 out entirely
    x[x == V - 1] = 1
    table = np.asarray(logits_table(params), dtype=np.float64)
    probs = np.exp(np_log_softmax(table))
    expected = np.zeros((V, V))
    for b in range(B):
        for t in range(T):
            delta = probs[x[b, t]].copy()
            delta[y[b, t]] -= 1.0
            expected[x[b, t]] += delta
    expected /= B * T

    grads = jax.grad(loss_fn)(params, jnp.asarray(x), jnp.asarray(y))
    got = np.asarray(logits_table(grads))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert not got[V - 1].any()  # a row never used as input gets no gradient
