"""The optimizer: AdamW with the configured learning-rate schedule and optional global-norm clipping
(``make_optimizer``), and the same optimizer with some hyperparameters traced (``traced_optimizer``: the members of a
sweep share one compiled program). Pure; no state."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import jax.numpy as jnp
import optax

from . import checks
from .config import TrainConfig


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Constant, or linear warmup then cosine decay to ``learning_rate * min_lr_ratio`` at ``steps``."""
    if cfg.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if cfg.warmup_steps else cfg.learning_rate, peak_value=cfg.learning_rate,
            warmup_steps=cfg.warmup_steps, decay_steps=max(cfg.steps, cfg.warmup_steps + 1),
            end_value=cfg.learning_rate * cfg.min_lr_ratio)
    if cfg.warmup_steps:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps), optax.constant_schedule(cfg.learning_rate)],
            [cfg.warmup_steps])
    return optax.constant_schedule(cfg.learning_rate)


# the train keys the optimizer may take as traced numbers (``traced_optimizer``): runs that differ only in them (and in
# the seed) share one compiled program, e.g. the members of a sweep. Whether grad_clip is 0 or not changes the
# optimizer's structure, so runs sharing a program agree on that.
HPARAM_KEYS = ("learning_rate", "min_lr_ratio", "beta1", "beta2", "weight_decay", "grad_clip")


def _adamw(cfg: TrainConfig, schedule, hparams, decay_mask) -> optax.GradientTransformation:
    adamw = optax.adamw(schedule, b1=hparams["beta1"], b2=hparams["beta2"], weight_decay=hparams["weight_decay"],
                        mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(hparams["grad_clip"]), adamw) if cfg.grad_clip > 0 else adamw


def make_optimizer(cfg: TrainConfig, decay_mask=None) -> optax.GradientTransformation:
    """AdamW with the configured schedule (weight decay on the leaves the function ``decay_mask(params)`` selects;
    None: all), optionally after global-norm clipping.

    Invariant (the ``lru_cache`` is what keeps it): the same arguments return the same object. A TrainState's ``tx``
    is part of its static structure, so the abstract state a run is planned with (``compile_ahead``) and the real one
    share one compiled ``train_chunk`` only if their optimizers are one object; without the cache every call would
    build a new one and every chunk would compile again. The seed is no part of the optimizer: runs that differ only
    in it share one (and so their compiled chunks). ``tests/test_train.py`` checks both."""
    return _cached_optimizer(replace(cfg, seed=0), decay_mask)


@lru_cache(maxsize=64)
def _cached_optimizer(cfg: TrainConfig, decay_mask) -> optax.GradientTransformation:
    return _adamw(cfg, learning_rate_schedule(cfg), {k: getattr(cfg, k) for k in HPARAM_KEYS}, decay_mask)


def hparams_of(cfg: TrainConfig) -> dict:
    """The ``HPARAM_KEYS`` values of ``cfg`` as float32 scalars (what ``traced_optimizer`` takes)."""
    return {k: jnp.float32(getattr(cfg, k)) for k in HPARAM_KEYS}


def check_hparams(function: str, hparams) -> None:
    """A dict of exactly the ``HPARAM_KEYS`` (``hparams_of``): its keys are static, so this is free under ``jit``."""
    expected = f"a dict of exactly {', '.join(HPARAM_KEYS)} (train.hparams_of)"
    if not isinstance(hparams, dict):
        checks.refuse_type(function, "hparams", expected, hparams)
    missing = [k for k in HPARAM_KEYS if k not in hparams]
    unknown = sorted(set(hparams) - set(HPARAM_KEYS), key=str)
    got = [f"missing {', '.join(missing)}"] if missing else []
    got += [f"unknown {', '.join(map(str, unknown))}"] if unknown else []
    if got:
        checks.refuse(function, "hparams", expected, "; ".join(got))


def traced_optimizer(cfg: TrainConfig, hparams: dict, decay_mask=None) -> optax.GradientTransformation:
    """``make_optimizer(cfg)`` with the ``HPARAM_KEYS`` values taken from ``hparams`` (arrays, possibly traced): the
    schedule has the config's shape (warmup, steps) with peak 1, scaled by the traced learning rate. Same state
    structure as ``make_optimizer``'s; the same numbers up to float rounding (``lr * unit(step)`` in float32)."""
    unit = learning_rate_schedule(replace(cfg, learning_rate=1.0, min_lr_ratio=hparams["min_lr_ratio"]))
    return _adamw(cfg, lambda count: hparams["learning_rate"] * unit(count), hparams, decay_mask)


def _decay_mask_of(model, params):
    return None if model.decay_mask(params) is None else model.decay_mask
