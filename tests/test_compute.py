"""compute.py: parameter counts and FLOPs against the parameters themselves, the power-law fit against known curves."""

import jax
import numpy as np

from jaxbigram import compute, config, models, sweep_shapes
from conftest import leaf_count


def test_compute_counts_the_parameters_and_states_the_flops_formula():
    cfg = config.load("gpt-tiny", ["model.n_layer=3"])
    model = models.build(cfg.model, 65, 16)
    params = model.init(jax.random.key(0))
    c = compute.compute_of(model, steps=10, batch_size=8, block_size=16)
    embeddings = params["wte"]["embedding"].size + params["wpe"]["embedding"].size
    assert c["params"] == leaf_count(params) and c["params_non_embedding"] == leaf_count(params) - embeddings
    assert c["flops_per_token"] == 6 * c["params_non_embedding"] + 6 * 3 * 16 * 32
    assert c["tokens"] == 10 * 8 * 16 and c["flops"] == c["flops_per_token"] * c["tokens"]


def test_the_fit_recovers_a_known_power_law_and_its_seed_spread():
    n = np.array([1e3, 1e4, 1e5, 1e6])
    truth = 1.2 + 30.0 * n ** -0.35
    fit = compute.fit_power_law(n, truth)
    assert abs(fit["E"] - 1.2) < 0.01 and abs(fit["alpha"] - 0.35) < 0.01 and abs(fit["A"] - 30) < 1.5
    np.testing.assert_allclose(compute.predict(fit, n), truth, atol=2e-3)
    assert compute.fit_power_law(n[:2], truth[:2]) is None  # 3 parameters need 3 sizes
    rng = np.random.default_rng(0)
    noisy = compute.fit_with_seeds(n, [t + rng.normal(0, 0.02, 4) for t in truth])
    exact = compute.fit_with_seeds(n, [np.full(4, t) for t in truth])
    assert exact["E_std"] < 1e-9 < noisy["E_std"] and noisy["resamples"] == 200


def test_scaling_fit_takes_the_best_setting_of_each_size():
    rows = [{"setting": f"s{i}", "members": [2 * i, 2 * i + 1], "val_mean": v, "params_non_embedding": n}
            for i, (n, v) in enumerate([(100, 3.0), (100, 2.9), (1000, 2.5), (10000, 2.3)])]
    val = np.array([3.0, 3.0, 2.9, 2.9, 2.5, 2.5, 2.3, 2.3])
    fit = sweep_shapes.scaling_fit(rows, val)
    assert fit["params"] == [100, 1000, 10000] and fit["settings"] == ["s1", "s2", "s3"]
    np.testing.assert_allclose(compute.predict(fit, fit["params"]), [2.9, 2.5, 2.3], atol=1e-3)
    assert "3 sizes, 3 parameters" in sweep_shapes.format_fit(fit) and "no fit" in sweep_shapes.format_fit(None)
