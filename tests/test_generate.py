"""generate.py: determinism, vocabulary, prompt, streaming == one call, greedy top-k=1, temperature."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chisquare

from jaxbigram.generate import SAMPLE_BLOCK, generate, generate_stream, next_char_cdf
from jaxbigram.model import init_params, logits_table
from reference import np_bigram_counts, np_softmax

V = 11


@pytest.fixture(scope="module")
def params():
    p = init_params(jax.random.key(0), V)
    return jax.tree_util.tree_map(lambda w: w * 8.0, p)  # peaked rows, so greedy and temperature effects are clear


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
    assert ((out >= 0) & (out < V)).all()
    np.testing.assert_array_equal(out[:, :len(prompt)], np.tile(prompt, (3, 1)))
    assert len({tuple(row) for row in out}) == 3  # independent streams


def test_zero_new_tokens_returns_the_prompt(params):
    np.testing.assert_array_equal(np.asarray(generate(params, jax.random.key(0), [2, 7], 0)), [[2, 7]])


def test_generate_equals_concatenated_stream_chunks(params):
    n = 2 * SAMPLE_BLOCK + 123  # more than one block per chunk, and a partial last chunk
    key = jax.random.key(5)
    whole = np.asarray(generate(params, key, [4], n, num_samples=2))
    chunks = [np.asarray(c) for c in generate_stream(params, key, [4], n, num_samples=2, chunk_blocks=1)]
    assert [c.shape[1] for c in chunks] == [SAMPLE_BLOCK, SAMPLE_BLOCK, 123]
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
    probs = np_softmax(table, temperature)
    cdf = np.asarray(next_char_cdf(params, temperature, top_k))
    np.testing.assert_allclose(cdf, np.cumsum(probs, axis=1), atol=1e-5)


@pytest.mark.parametrize("temperature", [0.7, 1.5])
def test_empirical_next_char_frequencies_match_softmax(params, temperature):
    """Along one 60,000-character chain, each well-visited row's next-character counts pass a chi-square test
    against softmax(W[row] / T) (the chain is Markov, so given the row the draws are multinomial)."""
    out = np.asarray(generate(params, jax.random.key(17), [0], 60000, temperature=temperature))[0]
    table = np.asarray(logits_table(params))
    pairs = np_bigram_counts(out, V)
    checked = 0
    for row in range(V):
        n = pairs[row].sum()
        if n < 2000:
            continue
        expected = n * np_softmax(table[row], temperature)
        big = expected >= 5  # pool the rare characters into one bin, as the test requires
        observed, expected = pairs[row][big], expected[big]
        if not big.all():
            observed = np.append(observed, n - observed.sum())
            expected = np.append(expected, n - expected.sum())
        assert chisquare(observed, expected).pvalue > 1e-4
        checked += 1
    assert checked >= 3


def test_lower_temperature_is_more_predictable(params):
    def agreement_with_greedy(temperature):
        out = np.asarray(generate(params, jax.random.key(3), [0], 2000, temperature=temperature))[0]
        return np.mean(out[1:] == np.asarray(logits_table(params))[out[:-1]].argmax(axis=1))

    cold, warm, hot = agreement_with_greedy(0.05), agreement_with_greedy(1.0), agreement_with_greedy(3.0)
    assert cold > 0.99 and cold > warm > hot
