"""How much memory a run needs, estimated before anything is allocated, and a one-line refusal when it cannot fit.

Pure Python (no JAX): ``estimate_bytes`` returns named terms in bytes, ``check_fits`` compares their sum with what is
available (``available_memory_bytes``: host memory, or pass a device's own limit) and raises
``ResourceError("too_big", ...)`` naming the biggest term and what to lower.

The terms follow what ``train.py`` allocates: the parameters, AdamW's two moments and the gradient (4 copies of the
parameters), the batches a fused call draws up front (``train_chunk``: up to ``BATCH_BUFFER_ELEMENTS`` ids per draw,
x and y as int32), one step's activations, the per-step loss buffer of a fused call, and the evaluation
(``estimate_loss``: ``lax.map`` over ``eval.iters`` keys, so one batch of logits at a time, but all the keys and
per-batch losses at once). A model other than the bigram passes its own ``param_count`` and ``activation_bytes``.
"""

from __future__ import annotations

import math
import os

from .errors import ResourceError


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` ≥ 1, ascending (O(√n): a batch size is at most int32)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})

FLOAT_BYTES = 4  # float32 parameters, moments, gradients and logits
INDEX_BYTES = 4  # int32 ids in a batch
KEY_BYTES = 8  # a threefry key: two uint32 words
BATCH_BUFFER_ELEMENTS = 1 << 21  # train_chunk's default batch_buffer (train.DEFAULT_BATCH_BUFFER is this value)

ADVICE = {
    "params": "the parameters are too many: a bigram has vocab_size² of them, so use a text with fewer distinct "
              "characters; a GPT, lower model.n_embd or model.n_layer",
    "optimizer": "AdamW keeps two float copies of the parameters: use a text with fewer distinct characters "
                 "(a bigram) or lower model.n_embd or model.n_layer (a GPT)",
    "gradients": "the gradient is one more copy of the parameters: use a text with fewer distinct characters "
                 "(a bigram) or lower model.n_embd or model.n_layer (a GPT)",
    "batch_buffers": "lower train.batch_size or train.block_size (batches of a fused call are drawn up front)",
    "activations": "lower train.batch_size or train.block_size (what one step keeps for its gradient grows with "
                   "batch × block, and for a GPT with model.n_layer × model.n_embd and block²)",
    "step_losses": "lower train.steps_per_call (each fused call keeps one loss per step)",
    "eval_batch": "lower train.batch_size or train.block_size (evaluation computes one batch of logits at a time)",
    "eval_keys": "lower eval.iters (evaluation draws all its batch keys and keeps every batch's loss)",
    "data": "use a shorter text",
}


def human_bytes(n: float) -> str:
    """1536 → '1.5 KiB'; exact below 1 KiB."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def estimate_bytes(vocab_size: int, batch_size: int, block_size: int, eval_iters: int, steps_per_call: int,
                   num_params: int | None = None, *, activation_bytes: int | None = None, data_ids: int = 0,
                   data_itemsize: int = 1, optimizer_copies: int = 2, grad_accum: int = 1) -> dict[str, int]:
    """Bytes a training run needs, per named term (all Python ints, so nothing overflows).

    - ``params``: ``num_params`` float32 (default: the bigram's ``vocab_size²`` table).
    - ``optimizer``: ``optimizer_copies`` more copies (AdamW's mu and nu); ``gradients``: one more.
    - ``batch_buffers``: x and y (int32) of the steps a fused call draws at once: ``min(steps_per_call,
      BATCH_BUFFER_ELEMENTS // (2 · batch · block))`` steps, at least one.
    - ``activations``: ``activation_bytes`` if given (e.g. a GPT: ~ batch·block·n_embd·n_layer·20 floats), else the
      bigram's logits, their softmax and their gradient: 3 · batch · block · vocab floats; divided by
      ``grad_accum`` (a step runs its batch as that many microbatches, one at a time).
    - ``step_losses``: the fused call's (steps_per_call,) float32 loss buffer.
    - ``eval_batch``: one batch of logits and its softmax (``lax.map`` evaluates the batches one at a time).
    - ``eval_keys``: both splits' ``eval_iters`` keys and per-batch losses, which do exist all at once.
    - ``data``: the ids of the text on the device (``data_ids`` of ``data_itemsize`` bytes).
    """
    num_params = vocab_size * vocab_size if num_params is None else num_params
    tokens = batch_size * block_size
    per_draw = max(1, min(steps_per_call, BATCH_BUFFER_ELEMENTS // max(2 * tokens, 1)))
    if activation_bytes is None:
        activation_bytes = 3 * tokens * vocab_size * FLOAT_BYTES
    activation_bytes = -(-activation_bytes // grad_accum)
    return {
        "params": num_params * FLOAT_BYTES,
        "optimizer": optimizer_copies * num_params * FLOAT_BYTES,
        "gradients": num_params * FLOAT_BYTES,
        "batch_buffers": per_draw * 2 * tokens * INDEX_BYTES,
        "activations": activation_bytes,
        "step_losses": steps_per_call * FLOAT_BYTES,
        "eval_batch": 2 * tokens * vocab_size * FLOAT_BYTES,
        "eval_keys": 2 * eval_iters * (KEY_BYTES + FLOAT_BYTES),
        "data": data_ids * data_itemsize,
    }


def estimate_for_config(cfg, vocab_size: int, data_ids: int = 0, data_itemsize: int = 1, *,
                        num_params: int | None = None, activation_bytes: int | None = None) -> dict[str, int]:
    """``estimate_bytes`` for a ``config.Config`` (its train.batch_size, block_size, steps_per_call, grad_accum,
    eval.iters); ``activation_bytes``: of the whole batch (``grad_accum`` divides it)."""
    t = cfg.train
    return estimate_bytes(vocab_size, t.batch_size, t.block_size, cfg.eval.iters, t.steps_per_call, num_params,
                          activation_bytes=activation_bytes, data_ids=data_ids, data_itemsize=data_itemsize,
                          grad_accum=t.grad_accum)


def check_fits(terms: dict[str, int], available_bytes: int | None) -> int:
    """Raise ``ResourceError("too_big")`` when the terms add up to more than ``available_bytes`` (one line naming the
    total, the biggest term and what to lower); returns the total. ``available_bytes`` None (unknown): no check."""
    total = sum(terms.values())
    if available_bytes is not None and total > available_bytes:
        term = max(terms, key=terms.get)
        raise ResourceError("too_big", need=human_bytes(total), available=human_bytes(available_bytes), term=term,
                         size=human_bytes(terms[term]), advice=ADVICE.get(term, f"lower what makes {term} big"))
    return total


SHARED_TERMS = ("data", "batch_buffers")  # what the members of a sweep share (the text; the batch buffer is split)


def check_members_fit(terms: dict[str, int], members: int, available_bytes: int | None, copies: int = 1) -> None:
    """``check_fits`` for ``members`` runs trained together (a sweep; 1: a single run), each needing ``terms`` but
    sharing ``SHARED_TERMS``, the whole held ``copies`` times (CPU devices share the host's memory: each holds its own
    copy of a single run's state). Too many members is one line naming how many fit."""
    if members == 1:
        check_fits({term: size * copies for term, size in terms.items()}, available_bytes)
        return
    shared = sum(size for term, size in terms.items() if term in SHARED_TERMS)
    each = sum(terms.values()) - shared
    if available_bytes is not None and shared + each * members > available_bytes:
        check_fits(terms, available_bytes)  # one member alone does not fit: say which term, as `train` would
        raise ResourceError("sweep_too_big", members=members, need=human_bytes(shared + each * members),
                            each=human_bytes(each), available=human_bytes(available_bytes),
                            fits=max(1, (available_bytes - shared) // each))


def accum_that_fits(terms_of, batch_size: int, grad_accum: int, fits) -> int | None:
    """The smallest ``train.grad_accum`` above ``grad_accum`` that divides ``batch_size`` and makes ``fits(
    terms_of(k))`` true (None: none does; what is left is not activations)."""

    return next((k for k in divisors(batch_size) if k > grad_accum and fits(terms_of(k))), None)


def check_with_accum(terms_of, batch_size: int, grad_accum: int, members: int, available_bytes: int | None,
                     copies: int = 1) -> None:
    """``check_members_fit(terms_of(grad_accum), ...)``; when it refuses and a larger ``grad_accum`` (fewer
    activations alive at once) would fit, the one line says which (``ResourceError("too_big_accum")``)."""
    try:
        check_members_fit(terms_of(grad_accum), members, available_bytes, copies)
    except ResourceError as e:
        def fits(terms):
            try:
                check_members_fit(terms, members, available_bytes, copies)
                return True
            except ResourceError:
                return False

        k = accum_that_fits(terms_of, batch_size, grad_accum, fits)
        if k is None:
            raise
        raise ResourceError("too_big_accum", reason=str(e), k=k, micro=batch_size // k) from None


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read(64).strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) and garbage read as unknown


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    parts = line.split()
                    if len(parts) >= 2 and parts[1].isdigit():
                        return int(parts[1]) * (1024 if len(parts) < 3 or parts[2].lower() == "kb" else 1)
    except (OSError, ValueError):
        pass
    return None


def _cgroup_available(root: str = "/sys/fs/cgroup") -> int | None:
    """Limit minus usage of this process's memory cgroup (v2 ``memory.max``/``memory.current``, else v1)."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit = _read_int(os.path.join(root, limit_file))
        if limit is not None and limit < 1 << 60:  # v1 reports "no limit" as a huge number
            usage = _read_int(os.path.join(root, usage_file)) or 0
            return max(limit - usage, 0)
    return None


def available_memory_bytes(device=None, *, meminfo: str = "/proc/meminfo",
                           cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes a new allocation can get, or None when unknown.

    Host memory: the smaller of /proc/meminfo's MemAvailable and the memory cgroup's limit minus usage (when one is
    set). With ``device`` (a ``jax.Device``) whose ``memory_stats()`` reports ``bytes_limit`` (GPU, TPU): that limit
    minus ``bytes_in_use``.
    """
    if device is not None:
        try:
            stats = device.memory_stats() or {}
        except Exception:  # CPU devices and some plugins do not implement it
            stats = {}
        if "bytes_limit" in stats:
            return max(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), 0)
    found = [v for v in (_meminfo_available(meminfo), _cgroup_available(cgroup_root)) if v is not None]
    return min(found) if found else None


def activation_bytes(model, batch_size: int) -> int | None:
    """What one training step of ``model`` keeps for its backward pass, roughly (None: the bigram, whose logits,
    softmax and gradient ``estimate_bytes`` counts itself). A GPT: per layer ~16 floats per position and width
    (LayerNorms, q/k/v, attention output, the 4× MLP) plus 3 attention maps per head, and the logits (×3)."""
    if model.kind != "gpt":
        return None
    b, t, c, h, v = batch_size, model.block_size, model.n_embd, model.n_head, model.vocab_size
    return FLOAT_BYTES * b * t * (model.n_layer * (16 * c + 3 * h * t) + 3 * v)
