"""A sweep's members as one compiled program: devices, inputs, init, training chunk and losses, vmapped (pure)."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from . import train
from .errors import UsageError
from .evaluate import estimate_loss
from .models.bigram import _pair_nll
from .models.gpt import context_windows
from .optimizer import HPARAM_KEYS
from .optimum import bigram_counts


MEMBER_AXIS = "members"  # the mesh axis the members are split along


def member_devices(members: int, requested: int = 0, devices=None) -> list:
    """The devices the members are split over (each device trains ``members / len`` of them; members never talk to
    each other, so there is no communication): ``train.devices`` = N takes the first N local devices, which must
    divide the members evenly; 0 (automatic) the most local devices that do (on a 2-core CPU with two devices,
    both cores)."""
    devices = list(jax.local_devices() if devices is None else devices)
    if requested:
        if requested > len(devices):
            raise UsageError("devices_unavailable", requested=requested, available=len(devices))
        if members % requested:
            raise UsageError("sweep_devices", members=members, devices=requested)
        return devices[:requested]
    return devices[:max(d for d in range(1, len(devices) + 1) if members % d == 0)]


def member_sharding(devices) -> NamedSharding:
    """Arrays with a leading member axis, split along it over ``devices``."""
    return NamedSharding(Mesh(np.array(devices), (MEMBER_AXIS,)), P(MEMBER_AXIS))


def place(tree, sharding: NamedSharding):
    """Every leaf of a stacked pytree (states, keys, hyperparameters) split along its member axis."""
    return jax.device_put(tree, sharding)


def member_loss(model):
    """The loss members train and are estimated with: the model's ``fast_loss`` where it has one (the bigram's, from
    pair counts: under ``vmap`` the logits' gradient is a per-member scatter of (B·T, V) rows, which ``bench
    --sweeps`` times against it), else None (``train_step``'s cross-entropy of the logits)."""
    return getattr(model, "fast_loss", None)


@partial(jax.jit, static_argnames=("model", "cfg", "max_steps", "loss_fn"), donate_argnums=(0,))
def members_chunk(states, hparams, keys, train_data, num_steps, *, model, cfg, max_steps: int, loss_fn=None):
    """``train.train_steps`` of every member at once: (states, (members, max_steps) losses); ``loss_fn``:
    ``train_step``'s (the sweep passes ``member_loss(model)``). The batch buffer is shared by the members (each draws
    ``1 / members`` of a single run's), so memory stays that of one run."""
    members = jax.tree.leaves(states.params)[0].shape[0]
    buffer = max(1, train.DEFAULT_BATCH_BUFFER // members)
    return jax.vmap(lambda s, h, k: train.train_steps(s, model, cfg, h, train_data, k, num_steps, max_steps=max_steps,
                                                      batch_buffer=buffer, loss_fn=loss_fn))(states, hparams, keys)


def member_inputs(plan, split: NamedSharding) -> tuple[dict, dict]:
    """Every member's keys (``train.run_keys`` of its seed) and ``optimizer.hparams_of`` values, stacked and split over
    the devices: built vectorised from the settings, never member by member."""
    n = len(plan.settings) * plan.seeds
    setting = np.arange(n) // plan.seeds
    base = np.array([c.train.seed for c in plan.settings], np.uint64)
    seeds = jnp.asarray(((base[setting] + np.arange(n) % plan.seeds) % (1 << 32)).astype(np.uint32))
    keys = place(jax.vmap(train.keys_from)(jax.vmap(jax.random.key)(seeds)), split)
    hparams = place({k: jnp.asarray(np.array([getattr(c.train, k) for c in plan.settings], np.float32)[setting])
                     for k in HPARAM_KEYS}, split)
    return keys, hparams


def member_init(model, tcfg, split: NamedSharding):
    """The compiled ``keys["init"] → states`` of the members (fresh TrainStates, split like the keys)."""
    return jax.jit(jax.vmap(lambda k: train.create_train_state(k, model, tcfg)), out_shardings=split)


@partial(jax.jit, static_argnames=("model", "iters", "batch_size", "block_size"))
def members_estimate(model, params, eval_keys, step, train_data, val_data, *, iters, batch_size, block_size):
    """``estimate_loss`` of every member at step ``step`` (each with its own eval key, as ``fit``)."""
    return jax.vmap(lambda p, k: estimate_loss(model, p, train.step_key(k, step), train_data, val_data, iters=iters,
                                               batch_size=batch_size, block_size=block_size,
                                               loss_fn=member_loss(model)))(params, eval_keys)


# the exact loss of a GPT scores this many tokens (members × windows × block_size) per call: its activations stay
# well under a GiB for the presets, and calls are few enough that Python costs nothing
EXACT_TOKENS_PER_CALL = 1 << 14


@partial(jax.jit, static_argnames=("model",))
def _members_window_nll(model, params, x, y, mask):
    return jax.vmap(model.window_nll, in_axes=(0, None, None, None))(params, x, y, mask)


def members_split_loss(model, params, ids: np.ndarray, members: int) -> np.ndarray:
    """The exact loss of every member over ``ids`` (``evaluate.split_loss`` of each). A bigram: counts once, the
    table's NLL ``vmap``ped over members. A GPT: the same consecutive windows (``context_windows``), each call
    scoring a batch of them for every member at once (``vmap`` over the member axis, split over its devices)."""
    if len(ids) < 2:
        return np.full(members, math.nan)
    if model.cheap_split_loss:
        counts = bigram_counts(ids, model.vocab_size)
        nll = np.asarray(jax.vmap(_pair_nll, in_axes=(0, None, None))(params, jnp.asarray(counts.rows),
                                                                         jnp.asarray(counts.cols)), np.float64)
        return nll @ counts.counts / counts.total
    x, y, mask = context_windows(ids, model.block_size)
    n_win, t = x.shape
    per_call = max(1, min(n_win, EXACT_TOKENS_PER_CALL // (members * t)))
    pad = -n_win % per_call
    if pad:
        x, y, mask = (np.concatenate([a, np.zeros((pad, t), a.dtype)]) for a in (x, y, mask))
    sharding = jax.tree.leaves(params)[0].sharding
    replicated = NamedSharding(sharding.mesh, P()) if isinstance(sharding, NamedSharding) else None
    total = np.zeros(members, np.float64)
    for start in range(0, len(x), per_call):
        window = jax.device_put(tuple(a[start:start + per_call] for a in (x, y, mask)), replicated)
        total += np.asarray(_members_window_nll(model, params, *window), np.float64)
    return total / (len(ids) - 1)
