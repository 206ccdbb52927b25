"""A checkpoint step's JSON metadata (``<step>/meta/metadata``), checked before anything uses it.

Everything that reads a step trusts its metadata: the model is built from its config and vocabulary, the text is
encoded with its vocabulary, a resume takes the run's config from it. So metadata of the wrong shape is damage, like a
truncated array: ``check`` names its first problem (``MetadataError``), and ``checkpoint.Store`` turns that into the
step's "truncated or corrupted" error, which readers report, ``info`` warns about and ``train`` sets aside.

What ``train`` writes (``train.run_metadata``, then ``fit`` and ``checkpoint.Store.save``), and what ``check`` requires:

- ``config``: every section of a valid ``Config`` (a key missing inside a section takes its default);
- ``vocab``: distinct characters in code-point order (id i is the i-th), ``vocab_size``: their number;
- ``data``: ``path`` (str), ``sha256`` (64 hex digits), ``length`` (int >= 0);
- ``step``: the step of the folder it is in; ``history``: eval rows ``{step, train_loss, val_loss}``, steps increasing
  and at most ``step``; ``checksums``: ``{array name: CRC32}``;
- optional: ``model`` (``config.model.kind``), ``num_params`` (the model's count), ``last_eval`` (an eval row of
  ``step``), ``exact`` (the exact report of ``step``: ``val_loss`` and ``optimum_val_loss`` are numbers);
- a sweep's: ``sweep``, an object of ``members`` = ``len(configs)`` × ``seeds`` (integers >= 1), ``configs`` (valid
  Configs of the same model), ``labels`` (a string per config), ``history`` (rows ``{step, train_loss, val_loss}`` of
  increasing steps up to ``step``, each loss a list of one number or null per member) and, optionally, ``diverged``
  (``{member: step}``); every array then has a leading axis of ``members``;
- and the params on disk have exactly the names and shapes the config and vocabulary give the model.
"""

from __future__ import annotations

import functools
import math
import re

import jax

from . import config as config_lib
from . import models
from .errors import UsageError
from .progress import is_eval_row

_SECTIONS = tuple(config_lib.Config().to_dict())
_SHA256 = re.compile(r"[0-9a-f]{64}")
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "an integer",
               float: "a number", type(None): "null"}


class MetadataError(ValueError):
    """A step's metadata that cannot describe its arrays (wrong shape, type or value); the message names the problem."""


def leaf_name(path) -> str:
    """``params/blocks_0/attn/qkv/kernel``: a pytree path as the names checksums and messages use."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def check(meta, step: int, saved_params) -> dict:
    """``meta`` when it is well-formed metadata of step ``step``, whose params on disk have the shapes of
    ``saved_params`` (a pytree of anything with ``.shape``); else MetadataError naming the first problem."""
    if not isinstance(meta, dict):
        raise MetadataError(f"it is {_json_type(meta)}, not an object")
    if _field(meta, "step", int) != step:
        raise MetadataError(f"its step is {meta['step']}, but it is in the folder of step {step}")
    cfg = _config(_field(meta, "config", dict))
    vocab, vocab_size = _field(meta, "vocab", str), _field(meta, "vocab_size", int)
    if len(vocab) != vocab_size or list(vocab) != sorted(set(vocab)):
        raise MetadataError(f"vocab is not {vocab_size} distinct characters in code-point order")
    _data(_field(meta, "data", dict))
    _history(_field(meta, "history", list), meta.get("last_eval"), step)
    checksums = _field(meta, "checksums", dict)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in checksums.values()):
        raise MetadataError("checksums are not all CRC32 values")
    _exact(meta.get("exact"), step)
    model = models.build(cfg.model, vocab_size, cfg.train.block_size)
    if meta.get("model", model.kind) != model.kind:
        raise MetadataError(f"model is {meta['model']!r} but its config says {model.kind!r}")
    if meta.get("num_params", model.param_count()) != model.param_count():
        raise MetadataError(f"num_params is {meta['num_params']!r}, its config and vocab give {model.param_count()}")
    members = _sweep(meta["sweep"], step, cfg) if "sweep" in meta else None
    implied = param_shapes(model)
    if members is not None:  # a sweep's state: every array has a leading member axis
        implied = {name: (members, *shape) for name, shape in implied.items()}
    _same_shapes(_shapes(saved_params), implied)
    return meta


@functools.lru_cache(maxsize=16)
def param_shapes(model) -> dict:
    """``{name: shape}`` of the params ``model.init`` makes (traced only: nothing is computed)."""
    return _shapes(jax.eval_shape(model.init, jax.random.key(0)))


def _shapes(tree) -> dict:
    return {leaf_name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _same_shapes(saved: dict, implied: dict) -> None:
    for name in sorted(saved.keys() | implied.keys()):
        if saved.get(name) != implied.get(name):
            on_disk, expected = (str(shapes.get(name, "absent")) for shapes in (saved, implied))
            raise MetadataError(f"params/{name} is {on_disk} on disk, but its config and vocab give {expected}")


def _json_type(value) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _field(table: dict, key: str, kind: type, where: str = ""):
    """``table[key]`` when it is there and of JSON type ``kind`` (an int is no number of its own: never a bool)."""
    if key not in table:
        raise MetadataError(f"it has no {where}{key!r}")
    value = table[key]
    kinds = (int, float) if kind is float else kind
    if not isinstance(value, kinds) or (isinstance(value, bool) and kind is not bool):
        raise MetadataError(f"{where}{key} is {_json_type(value)}, not {_JSON_TYPES[kind]}")
    return value


def _config(raw: dict) -> config_lib.Config:
    for section in _SECTIONS:
        _field(raw, section, dict, "config.")
    try:
        return config_lib.from_dict(raw)
    except UsageError as e:
        raise MetadataError(f"config: {e}") from None


def _data(data: dict) -> None:
    if "\0" in _field(data, "path", str, "data."):
        raise MetadataError("data.path has a NUL character")
    if not _SHA256.fullmatch(_field(data, "sha256", str, "data.")):
        raise MetadataError("data.sha256 is not 64 hex digits")
    if _field(data, "length", int, "data.") < 0:
        raise MetadataError("data.length is negative")


def _history(history: list, last_eval, step: int) -> None:
    steps = [row["step"] if is_eval_row(row) else None for row in history]
    if None in steps or steps != sorted(set(steps)) or any(s < 0 or s > step for s in steps):
        raise MetadataError(f"history is not eval rows {{step, train_loss, val_loss}} of increasing steps 0 to {step}")
    if last_eval is not None and not (is_eval_row(last_eval) and last_eval["step"] == step):
        raise MetadataError(f"last_eval is not the eval row of step {step}")


def _sweep(spec, step: int, cfg: config_lib.Config) -> int:
    """The number of members of a well-formed sweep section (``sweep.Plan.spec`` and its loop's history)."""
    if not isinstance(spec, dict):
        raise MetadataError(f"sweep is {_json_type(spec)}, not an object")
    members, seeds = _field(spec, "members", int, "sweep."), _field(spec, "seeds", int, "sweep.")
    if members < 1 or seeds < 1:
        raise MetadataError(f"sweep has {members} members of {seeds} seeds each, not at least 1 of each")
    configs, labels = _field(spec, "configs", list, "sweep."), _field(spec, "labels", list, "sweep.")
    if len(configs) * seeds != members:
        raise MetadataError(f"sweep has {len(configs)} configs × {seeds} seeds, not its {members} members")
    if len(labels) != len(configs) or not all(isinstance(label, str) for label in labels):
        raise MetadataError(f"sweep.labels is not {len(configs)} strings, one per config")
    for i, raw in enumerate(configs):
        if not isinstance(raw, dict):
            raise MetadataError(f"sweep.configs[{i}] is {_json_type(raw)}, not an object")
        setting = _config(raw)
        if setting.model != cfg.model or setting.train.block_size != cfg.train.block_size:
            raise MetadataError(f"sweep.configs[{i}] gives another model than its config")
    rows = _field(spec, "history", list, "sweep.")
    steps = [row.get("step") if isinstance(row, dict) else None for row in rows]
    if (not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= step for s in steps)
            or steps != sorted(set(steps)) or not all(_member_losses(row, members) for row in rows)):
        raise MetadataError(f"sweep.history is not eval rows {{step, train_loss, val_loss}} of increasing steps 0 to "
                            f"{step}, each loss a list of {members} numbers or nulls")
    diverged = spec.get("diverged") or {}
    if not isinstance(diverged, dict) or not all(
            k.isdigit() and int(k) < members and isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= step
            for k, v in diverged.items()):
        raise MetadataError(f"sweep.diverged is not {{member: step}} of members 0 to {members - 1}, steps 0 to {step}")
    return members


def _member_losses(row: dict, members: int) -> bool:
    """Each of the row's losses is a list of one number per member (null: a member that diverged)."""
    return all(isinstance(row.get(k), list) and len(row[k]) == members
               and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
                       for v in row[k]) for k in ("train_loss", "val_loss"))


def _exact(exact, step: int) -> None:
    if exact is None:
        return
    if not isinstance(exact, dict):
        raise MetadataError(f"exact is {_json_type(exact)}, not an object")
    if _field(exact, "step", int, "exact.") != step:
        raise MetadataError(f"exact.step is {exact['step']}, not {step}")
    for key in ("val_loss", "optimum_val_loss"):
        _field(exact, key, float, "exact.")
