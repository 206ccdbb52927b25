"""Compute as an axis of a sweep (pure numpy, no JAX): parameter counts, training FLOPs, and the fit of
``L(N) = E + A·N^(−α)`` to per-size losses with an uncertainty from the seeds (docs/scaling-laws.md).

- ``N`` (``params_non_embedding``): the parameters minus the token and position embedding tables (lookups, not
  matmuls); the GPT's ``lm_head`` is a matmul and counts.
- FLOPs per token trained: ``6·N + 6·n_layer·block_size·n_embd`` (forward 2·N multiply-adds per token plus the
  attention scores and their weighted sum, 2·n_layer·T·C; backward twice the forward). The bigram's logits are a
  table lookup: its only arithmetic is the V-wide softmax and its gradient, counted as ``6·V``.
- Training FLOPs = FLOPs per token × tokens seen (steps × batch_size × block_size).
- ``--budget FLOPS`` (iso-FLOP): each size trains for the whole chunks of ``steps_per_call`` steps nearest the budget
  (``budget_steps``); ``isoflop_minimum`` fits a parabola in log N to the sizes' losses at one budget.
"""

from __future__ import annotations

import math

import numpy as np

ALPHAS = np.geomspace(0.01, 3.0, 600)  # the α grid of ``fit_power_law``


def compute_of(model, steps: int, batch_size: int, block_size: int) -> dict:
    """``{params, params_non_embedding, flops_per_token, tokens, flops}`` of a run of ``model``."""
    total = model.param_count()
    if model.kind == "gpt":
        embedding = (model.vocab_size + model.block_size) * model.n_embd
        n = total - embedding
        per_token = 6 * n + 6 * model.n_layer * model.block_size * model.n_embd
    else:
        n, per_token = 0, 6 * model.vocab_size
    tokens = steps * batch_size * block_size
    return {"params": total, "params_non_embedding": n, "flops_per_token": per_token, "tokens": tokens,
            "flops": per_token * tokens}


def fit_power_law(n, loss) -> dict | None:
    """Least squares ``loss ≈ E + A·n^(−α)``: for each α of ``ALPHAS`` the best (E, A) is linear least squares, the α
    with the smallest squared error wins. None with fewer than 3 distinct sizes (3 parameters)."""
    n, loss = np.asarray(n, np.float64), np.asarray(loss, np.float64)
    ok = np.isfinite(loss) & (n > 0)
    n, loss = n[ok], loss[ok]
    if len(np.unique(n)) < 3:
        return None
    best = None
    for alpha in ALPHAS:
        x = n ** -alpha
        design = np.stack([np.ones_like(x), x], axis=1)
        (e, a), *_ = np.linalg.lstsq(design, loss, rcond=None)
        sse = float(((design @ np.array([e, a]) - loss) ** 2).sum())
        if best is None or sse < best["sse"]:
            best = {"E": float(e), "A": float(a), "alpha": float(alpha), "sse": sse}
    return best


def fit_with_seeds(n, per_seed, resamples: int = 200, seed: int = 0) -> dict | None:
    """``fit_power_law`` of the per-size means of ``per_seed`` (one list of seed losses per size), with ± the standard
    deviation of E, A and α over ``resamples`` bootstrap refits (each size's seeds drawn with replacement)."""
    means = [np.nanmean(s) if np.isfinite(s).any() else np.nan for s in map(np.asarray, per_seed)]
    fit = fit_power_law(n, means)
    if fit is None:
        return None
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        sample = []
        for s in map(np.asarray, per_seed):
            s = s[np.isfinite(s)]
            sample.append(rng.choice(s, len(s)).mean() if len(s) else np.nan)
        refit = fit_power_law(n, sample)
        if refit is not None:
            draws.append([refit["E"], refit["A"], refit["alpha"]])
    spread = np.std(draws, axis=0) if draws else np.zeros(3)
    return {**fit, "E_std": float(spread[0]), "A_std": float(spread[1]), "alpha_std": float(spread[2]),
            "sizes": len(means), "resamples": len(draws)}


def predict(fit: dict, n) -> np.ndarray:
    """``E + A·n^(−α)`` of a fit."""
    return fit["E"] + fit["A"] * np.asarray(n, np.float64) ** -fit["alpha"]


def budget_steps(budget: float, flops_per_token: int, tokens_per_step: int, steps_per_call: int) -> dict:
    """The steps that spend ``budget`` training FLOPs, in whole chunks of ``steps_per_call``: ``{chunk_flops, chunks,
    steps, flops}``, ``chunks`` = budget / chunk_flops rounded to the nearest whole number (halves up), or 0 when the
    budget buys less than one chunk (``flops``: what the steps spend)."""
    chunk = flops_per_token * tokens_per_step * steps_per_call
    chunks = 0 if budget < chunk else math.floor(budget / chunk + 0.5)
    steps = chunks * steps_per_call
    return {"chunk_flops": chunk, "chunks": chunks, "steps": steps, "flops": flops_per_token * tokens_per_step * steps}


def isoflop_minimum(n, loss) -> dict | None:
    """The loss-optimal size at one budget from the sizes' losses (Hoffmann et al. 2022, approach 2): the parabola
    ``loss ≈ a + b·ln N + c·(ln N)²`` by least squares, its vertex ``{N, loss, inside}`` (``inside``: between the
    smallest and the largest size). None with fewer than 3 distinct sizes, or a parabola without a minimum (c ≤ 0)."""
    n, loss = np.asarray(n, np.float64), np.asarray(loss, np.float64)
    ok = np.isfinite(loss) & (n > 0)
    n, loss = n[ok], loss[ok]
    if len(np.unique(n)) < 3:
        return None
    c, b, a = np.polyfit(np.log(n), loss, 2)
    if c <= 0:
        return None
    at = -b / (2 * c)
    return {"N": float(np.exp(at)), "loss": float(a + b * at + c * at * at),
            "inside": bool(n.min() <= np.exp(at) <= n.max())}
