"""sampling.py: the sampler draws from exactly softmax(logits / temperature), filtered by top-k / top-p (nucleus).

Expected distributions are computed here, independently, in float64 numpy. Each check is a chi-square
goodness-of-fit test at p = 1e-6 (critical value from the Wilson–Hilferty approximation), run on a fixed seed, so it
is deterministic; a "power" check confirms the same statistic rejects a wrong distribution.
"""

import jax
import numpy as np
import pytest

from jaxbigram.models.bigram import generate, next_char_cdf
from jaxbigram.sampling import SAMPLE_BLOCK, draw, filtered_cdf, sample_key, sample_text, uniforms
from conftest import table_params

V = 24
Z_1E6 = 4.7534  # the standard normal quantile for an upper tail of 1e-6


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    """A fixed logits table with spread-out rows (made here with numpy, independent of the model's init)."""
    return np.random.default_rng(1234).normal(0.0, 1.5, size=(V, V))


def expected_probs(logits: np.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """softmax(logits / T) over the top-k logits (ties kept), then the smallest most-likely set reaching top_p."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if top_k:
        kth = np.sort(z)[::-1][top_k - 1]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        mass_before = np.cumsum(p[order]) - p[order]
        keep = np.zeros(len(p), dtype=bool)
        keep[order[mass_before < top_p]] = True
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return p


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(statistic, critical value at p = 1e-6) over the support of ``probs``; bins expecting < 5 are pooled."""
    n = counts.sum()
    support = probs > 0
    observed, expected = counts[support].astype(np.float64), n * probs[support]
    small = expected < 5
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    df = len(expected) - 1
    statistic = float(((observed - expected) ** 2 / expected).sum())
    critical = df * (1 - 2 / (9 * df) + Z_1E6 * np.sqrt(2 / (9 * df))) ** 3
    return statistic, critical


SETTINGS = [  # (temperature, top_k, top_p)
    (1.0, 0, 1.0),
    (0.6, 0, 1.0),
    (1.7, 0, 1.0),
    (1.0, 5, 1.0),
    (0.8, 12, 1.0),
    (1.0, 0, 0.8),
    (1.3, 10, 0.9),
]


@pytest.mark.parametrize("temperature, top_k, top_p", SETTINGS)
def test_next_character_frequencies_from_one_row(table, temperature, top_k, top_p):
    """60,000 independent streams, one character each, all continuing the same character."""
    n = 60_000
    for row in (0, 7):
        out = np.asarray(generate(table_params(table), jax.random.key(100 + row), [row], 1, temperature=temperature,
                                  top_k=top_k, top_p=top_p, num_samples=n))[:, 1]
        counts = np.bincount(out, minlength=V)
        probs = expected_probs(table[row], temperature, top_k, top_p)
        assert counts[probs == 0].sum() == 0, "a filtered-out character was sampled"
        statistic, critical = chi_square(counts, probs)
        assert statistic < critical, (row, statistic, critical)
        # power: the same test rejects the unfiltered, untempered distribution
        wrong = expected_probs(table[row], 1.0) if (temperature, top_k, top_p) != (1.0, 0, 1.0) \
            else expected_probs(table[row], 1.25)
        assert chi_square(counts, wrong)[0] > critical or counts[wrong == 0].sum() > 0


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.5, 0, 1.0), (0.8, 6, 1.0),
                                                       (1.2, 0, 0.85)])
def test_transition_frequencies_along_one_long_chain(table, temperature, top_k, top_p):
    """One stream of 120,000 characters (the path the 1-stream speed figure measures): given the current character,
    the next one is a multinomial draw, so each well-visited row's transition counts must fit its distribution."""
    out = np.asarray(generate(table_params(table), jax.random.key(7), [3], 120_000, temperature=temperature,
                              top_k=top_k, top_p=top_p))[0]
    pairs = np.zeros((V, V), dtype=np.int64)
    np.add.at(pairs, (out[:-1], out[1:]), 1)
    checked = 0
    for row in range(V):
        probs = expected_probs(table[row], temperature, top_k, top_p)
        assert pairs[row][probs == 0].sum() == 0
        if pairs[row].sum() < 3000:
            continue
        statistic, critical = chi_square(pairs[row], probs)
        assert statistic < critical, (row, statistic, critical)
        checked += 1
    assert checked >= 5


def test_uniform_blocks_are_independent_of_how_far_they_are_drawn():
    """Row b·SAMPLE_BLOCK + i of the uniforms is row i of block b's full draw, whatever the requested length, so a
    short sample of many streams is cheap and streamed output equals one call."""
    key, streams = jax.random.key(3), 5
    for first_block, n in [(0, 1), (0, 300), (2, SAMPLE_BLOCK), (1, SAMPLE_BLOCK + 17)]:
        got = np.asarray(uniforms(key, streams, first_block, n))
        blocks = [np.asarray(jax.random.uniform(jax.random.fold_in(key, first_block + b), (SAMPLE_BLOCK, streams)))
                  for b in range(-(-n // SAMPLE_BLOCK))]
        np.testing.assert_array_equal(got, np.concatenate(blocks)[:n])


def test_draw_is_the_inverse_cdf_on_both_paths():
    """``#{j : cdf[j] <= u}``: the compare-and-sum kernel (V <= 512) and the binary search (V > 512) agree with
    numpy's searchsorted, including u exactly on a CDF step and u past the last entry's rounding."""
    rng = np.random.default_rng(0)
    for vocab in (7, 600):
        probs = rng.dirichlet(np.ones(vocab), size=5).astype(np.float32)
        cdf = np.cumsum(probs, axis=1)
        cdf /= cdf[:, -1:]
        u = rng.uniform(size=5).astype(np.float32)
        u[0] = cdf[0, vocab // 2]  # exactly on a step: the next character
        got = np.asarray(draw(cdf, u))
        want = [min(int(np.searchsorted(row, x, side="right")), vocab - 1) for row, x in zip(cdf, u)]
        assert got.tolist() == want and got.dtype == np.int32


def test_filtered_cdf_ends_at_one_and_keeps_ties_at_the_kth_logit():
    logits = np.array([[1.0, 3.0, 3.0, 0.0, 3.0, -1.0]])
    cdf = np.asarray(filtered_cdf(logits, 1.0, 2, 1.0))
    probs = np.diff(cdf, prepend=0.0)
    assert cdf[0, -1] == 1.0
    np.testing.assert_allclose(probs[0], [0, 1 / 3, 1 / 3, 0, 1 / 3, 0], atol=1e-6)  # three tied at the 2nd logit


def _nucleus_numpy(logits: np.ndarray, temperature: float, top_k: int, top_p: float):
    """Independent float64 reference: kept sets per row, and rows where p sits too close to a cumulative sum."""
    z = logits.astype(np.float64) / temperature
    if top_k:
        kth = np.sort(z, axis=1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if top_p >= 1.0:  # the filter is off: every character the top-k filter left
        return p > 0, p, np.zeros(len(p), dtype=bool)
    keep, ambiguous = np.zeros_like(p, dtype=bool), np.zeros(len(p), dtype=bool)
    for i, row in enumerate(p):
        order = np.argsort(-row, kind="stable")
        cum = np.cumsum(row[order])
        n = int(np.searchsorted(cum, top_p - 1e-12)) + 1  # smallest n with cum[n-1] >= p
        keep[i, order[:min(n, len(row))]] = True
        ambiguous[i] = np.min(np.abs(cum - top_p)) < 1e-5
    return keep, p, ambiguous


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 10)])
def test_top_p_keeps_the_smallest_set_reaching_p(temperature, top_k):
    vocab = 40
    logits = np.asarray(jax.random.normal(jax.random.key(3), (vocab, vocab))) * 2.0
    params = {"token_embedding_table": {"embedding": logits}}
    checked = 0
    for top_p in (0.05, 0.3, 0.5, 0.8, 0.9, 0.95, 0.999, 1.0):
        cdf = np.asarray(next_char_cdf(params, temperature, top_k, top_p), dtype=np.float64)
        probs = np.diff(cdf, axis=1, prepend=0.0)
        keep, p, ambiguous = _nucleus_numpy(logits, temperature, top_k, top_p)
        rows = ~ambiguous
        np.testing.assert_array_equal(probs[rows] > 0, keep[rows])
        renorm = np.where(keep, p, 0.0) / np.where(keep, p, 0.0).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(probs[rows], renorm[rows], atol=2e-6)
        checked += int(rows.sum())
    assert checked >= 0.95 * 8 * vocab


def test_sample_text_is_the_prompt_then_the_decoded_stream(table):
    """What ``run.py sample`` prints for sample ``i`` of ``--seed s``: the prompt, then the ids the model draws with
    ``fold_in(key(s % 2**32), i)``, decoded chunk by chunk."""
    from jaxbigram.data import Tokenizer
    from jaxbigram.models.bigram import Bigram

    tokenizer, model, params = Tokenizer("".join(chr(ord("a") + i) for i in range(V))), Bigram(V), table_params(table)
    prompt = tokenizer.encode("cab")
    for seed, index in ((1337, 0), (7, 2)):
        key = jax.random.fold_in(jax.random.key(seed), index)
        assert np.array_equal(jax.random.key_data(sample_key(seed, index)), jax.random.key_data(key))
        assert np.array_equal(jax.random.key_data(sample_key(seed + 2**32, index)), jax.random.key_data(key))
        pieces = list(sample_text(model, params, tokenizer, seed, prompt, 3 * SAMPLE_BLOCK, top_k=5, index=index))
        assert pieces[0] == "cab" and len(pieces) >= 2
        new = np.asarray(generate(params, key, prompt, 3 * SAMPLE_BLOCK, top_k=5))[0, len(prompt):]
        assert "".join(pieces) == "cab" + tokenizer.decode(new)
    assert list(sample_text(model, params, tokenizer, 1, prompt, 0)) == ["cab"]
