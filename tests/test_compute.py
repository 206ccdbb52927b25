"""compute.py: parameter counts and FLOPs against the parameters themselves, the power-law fit against known curves."""

import jax
import pytest
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


def test_budget_steps_rounds_the_budget_to_the_nearest_whole_chunk():
    """A chunk of 10 steps × 10 tokens at 10 FLOPs per token costs 1,000 FLOPs: 2.5 chunks round up, 2.49 down, one
    chunk's cost buys it, anything less none."""
    for budget, chunks in ((2500, 3), (2490, 2), (1000, 1), (1499, 1), (999.9, 0)):
        got = compute.budget_steps(budget, 10, 10, 10)
        assert got == {"chunk_flops": 1000, "chunks": chunks, "steps": 10 * chunks, "flops": 1000 * chunks}, budget


def test_apply_budget_gives_each_size_the_steps_its_flops_buy_and_refuses_a_budget_below_one_chunk():
    """gpt-tiny at widths 8, 16, 32 (vocab 65, batch 8 × block 16, 10 steps a chunk): each size's steps are the whole
    chunks nearest the budget at 6·N + 6·n_layer·T·C FLOPs per token, N counted from the initialised parameters."""
    import pytest

    from jaxbigram import sweep
    from jaxbigram.errors import UsageError

    widths, budget = (8, 16, 32), 3.3e8
    plan = sweep.make_plan("gpt-tiny", [f"model.n_embd={list(widths)}", "train.steps_per_call=10"], 1, budget=budget)
    groups, spent = sweep.apply_budget(sweep.group_plans(plan), 65)
    expected = []
    for c in widths:
        model = models.build(config.load("gpt-tiny", [f"model.n_embd={c}"]).model, 65, 16)
        params = jax.eval_shape(model.init, jax.random.key(0))
        n = leaf_count(params) - (65 + 16) * c  # less the token and position tables
        chunk = (6 * n + 6 * 2 * 16 * c) * 8 * 16 * 10
        expected.append(10 * int(np.floor(budget / chunk + 0.5)))
    assert [g.settings[0].train.steps for _, g in groups] == [s["steps"] for s in spent] == expected
    assert len(set(expected)) == 3 and min(expected) >= 10  # three sizes, three step counts, each one chunk or more
    assert [g.budget for _, g in groups] == [budget] * 3 and groups[0][1].spec()["budget"] == budget
    largest = spent[-1]["chunk_flops"]
    small = sweep.make_plan("gpt-tiny", [f"model.n_embd={list(widths)}", "train.steps_per_call=10"], 1,
                            budget=largest - 1)
    with pytest.raises(UsageError) as refused:
        sweep.apply_budget(sweep.group_plans(small), 65)
    text = str(refused.value)
    works = float(text.split("pass --budget ")[1].split()[0])
    assert "model.n_embd=32" in text and f"{largest:.3g} FLOPs" in text and largest <= works < largest * 1.01
    unbudgeted = sweep.group_plans(sweep.make_plan("gpt-tiny", [f"model.n_embd={list(widths)}"], 1))
    assert sweep.apply_budget(unbudgeted, 65) == (unbudgeted, [])  # no --budget: train.steps as configured


def test_isoflop_minimum_is_the_vertex_of_the_parabola_in_log_n():
    n = np.array([1e3, 1e4, 1e5, 1e6])
    x = np.log(n)
    loss = 2.0 + 0.01 * (x - np.log(3e4)) ** 2
    got = compute.isoflop_minimum(n, loss)
    assert got["N"] == pytest.approx(3e4, rel=1e-6) and got["loss"] == pytest.approx(2.0) and got["inside"]
    assert not compute.isoflop_minimum(n, 2.0 + 0.01 * (x - np.log(1e8)) ** 2)["inside"]
    assert compute.isoflop_minimum(n, 2.0 - 0.01 * x ** 2) is None  # no minimum
    assert compute.isoflop_minimum(n[:2], loss[:2]) is None
