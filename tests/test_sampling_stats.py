"""The fast sampler draws from exactly softmax(logits / temperature), filtered by top-k / top-p.

Expected distributions are computed here, independently, in float64 numpy. Each check is a chi-square
goodness-of-fit test at p = 1e-6 (critical value from the Wilson–Hilferty approximation), run on a fixed seed, so it
is deterministic; a "power" check confirms the same statistic rejects a wrong distribution.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbigram.generate import SAMPLE_BLOCK, _uniforms, generate

V = 24
Z_1E6 = 4.7534  # the standard normal quantile for an upper tail of 1e-6


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    """A fixed logits table with spread-out rows (made here with numpy, independent of the model's init)."""
    return np.random.default_rng(1234).normal(0.0, 1.5, size=(V, V))


def as_params(table: np.ndarray) -> dict:
    return {"token_embedding_table": {"embedding": jnp.asarray(table, dtype=jnp.float32)}}


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
        out = np.asarray(generate(as_params(table), jax.random.key(100 + row), [row], 1, temperature=temperature,
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


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.8, 6, 1.0), (1.2, 0, 0.85)])
def test_transition_frequencies_along_one_long_chain(table, temperature, top_k, top_p):
    """One stream of 120,000 characters (the path the 1-stream speed figure measures): given the current character,
    the next one is a multinomial draw, so each well-visited row's transition counts must fit its distribution."""
    out = np.asarray(generate(as_params(table), jax.random.key(7), [3], 120_000, temperature=temperature,
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
        got = np.asarray(_uniforms(key, streams, first_block, n))
        blocks = [np.asarray(jax.random.uniform(jax.random.fold_in(key, first_block + b), (SAMPLE_BLOCK, streams)))
                  for b in range(-(-n // SAMPLE_BLOCK))]
        np.testing.assert_array_equal(got, np.concatenate(blocks)[:n])
