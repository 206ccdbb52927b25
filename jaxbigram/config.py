"""Run configuration: TOML files → frozen, validated dataclasses; ``--set section.key=value`` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import checks
from .checks import Range
from .memory import divisors
from .errors import UsageError

PRESET_DIRS = (Path(__file__).resolve().parent / "configs",  # an installed package: the presets ship inside it
               Path(__file__).resolve().parent.parent / "configs")  # a checkout: the top-level configs/ (the source)
DEFAULT_PRESET = "default"


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "bigram"  # bigram | gpt
    # gpt only (the bigram is a (V, V) table and ignores them)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)


@dataclass(frozen=True)
class DataConfig:
    path: str = ""  # empty: --data, $JAXBIGRAM_DATA, the cache, then download tinyshakespeare
    val_fraction: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1337
    steps: int = 3000
    batch_size: int = 32
    block_size: int = 8
    learning_rate: float = 1e-2
    lr_schedule: str = "constant"  # constant | cosine
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to learning_rate * min_lr_ratio
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.01  # torch.optim.AdamW's default, as in the lecture
    grad_clip: float = 0.0  # global-norm clipping; 0 disables it
    steps_per_call: int = 1000  # training steps fused into one compiled call
    grad_accum: int = 1  # microbatches per step (gradient accumulation): batch_size / grad_accum sequences at a time
    devices: int = 0  # devices each batch is split over (data parallel); 0: automatic (parallel.select_devices)


@dataclass(frozen=True)
class EvalConfig:
    interval: int = 300
    iters: int = 200
    sample_chars: int = 0  # > 0: a sample of this many characters at each eval (the math does not change)


@dataclass(frozen=True)
class CheckpointConfig:
    interval: int = 1000
    keep: int = 3  # latest checkpoints kept, besides the best by val loss


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTION_CLASSES = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig,
                    "checkpoint": CheckpointConfig}

# JAX (jax_enable_x64 off) counts steps and indexes arrays with int32: a step counter, a fold_in step, a loop bound
# or a buffer length at or above 2**31 - 1 overflows (or is silently truncated) inside compiled code.
INT32_MAX = 2**31 - 1
SEED_MODULUS = 2**32
CONFIG_MAX_BYTES = 1 << 20  # a config is a few hundred bytes; a bigger "config" is the wrong file
_INT32 = "(JAX counts steps and indices in int32)"
# A GPT's blocks are unrolled: each one is traced and compiled on its own (measured on a 2-core CPU: ~0.1 s of tracing
# per layer, and compiling grows faster than linearly; a 1-step run of 64 one-wide layers took 3.5 minutes). The
# lecture's GPT has 6 layers, GPT-2 XL 48; 200,000 layers traced for hours before any memory check could refuse them.
MAX_N_LAYER = 64
_LAYERS = "(each layer is traced and compiled on its own: a deeper GPT would take too long to build)"
# an eval's sample is stored in its metrics.jsonl row and printed at every eval: longer texts are `sample`'s job
MAX_EVAL_SAMPLE_CHARS = 100_000


def _count(low: int, high: int = INT32_MAX, why: str = _INT32) -> Range:
    return Range(low, high, why=why)


def reduce_seed(seed: int) -> int:
    """Any non-negative integer seed → the seed JAX uses: ``seed % 2**32``.

    ``jax.random.key`` (x64 off) keeps only the low 32 bits of a seed below 2**63 and raises OverflowError from 2**63
    on; reducing modulo 2**32 gives the very same key for every seed JAX accepted (so old runs reproduce) and a key
    for any larger one (2**64, 10**30, ...). Pass every seed a user types (``train.seed`` is reduced on load; the
    CLI's ``--seed`` for sample) through it before ``jax.random.key``.
    """
    return checks.check_int("reduce_seed", "seed", seed, 0) % SEED_MODULUS


# The range of every numeric key (docs/config.md states each one as ``Range.text``; tests/test_config.py checks the
# page against this table); every float must also be finite.
RANGES = {
    "model.n_layer": _count(1, MAX_N_LAYER, _LAYERS),
    "model.n_head": _count(1),
    "model.n_embd": _count(1),
    "model.dropout": Range(0.0, 1.0, high_open=True),
    "data.val_fraction": Range(0.0, 1.0, low_open=True, high_open=True),
    "train.seed": Range(0, why="(seeds >= 2**32 are reduced modulo 2**32)"),
    "train.steps": _count(1),
    "train.batch_size": _count(1),
    "train.block_size": _count(1),
    "train.learning_rate": Range(0.0, low_open=True),
    "train.warmup_steps": _count(0),
    "train.min_lr_ratio": Range(0.0, 1.0),
    "train.beta1": Range(0.0, 1.0, high_open=True),
    "train.beta2": Range(0.0, 1.0, high_open=True),
    "train.weight_decay": Range(0.0),
    "train.grad_clip": Range(0.0, why="(0 disables clipping)"),
    "train.steps_per_call": _count(1),
    "train.grad_accum": _count(1, why="(and a divisor of train.batch_size)"),
    "train.devices": _count(0, why="(0: automatic)"),
    "eval.interval": _count(1),
    "eval.iters": _count(1),
    "eval.sample_chars": _count(0, MAX_EVAL_SAMPLE_CHARS,
                               why="(0: no samples; a longer text: `sample --max-new-tokens N`)"),
    "checkpoint.interval": _count(1),
    "checkpoint.keep": _count(1),
}
# other values a key must have: (rule text, predicate)
_RULES = {"data.path": ("a path without NUL characters", lambda v: "\0" not in v)}
# products of keys that index one array: batch × block ids per batch (get_batch's offsets are int32)
_PRODUCTS = {("train.batch_size", "train.block_size"): (INT32_MAX, "a batch's ids are indexed with int32")}
_CHOICES = {"train.lr_schedule": ("constant", "cosine"), "model.kind": ("bigram", "gpt"),
            "model.dtype": ("float32", "bfloat16")}


def _hint(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_value(key: str, value, annotation: str):
    """Type-check one value against its dataclass annotation; returns the (possibly widened) value."""
    if annotation == "bool":
        if not isinstance(value, bool):
            raise UsageError("config_type", key=key, expected="true or false", got=value)
    elif annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError("config_type", key=key, expected="an integer", got=value)
    elif annotation == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError("config_type", key=key, expected="a number", got=value)
        try:
            value = float(value)
        except OverflowError:  # an integer too big for a float (TOML integers have no bound in tomllib)
            raise UsageError("config_not_finite", key=key, got=value) from None
        if not math.isfinite(value):  # nan, inf, and 1e400 (which TOML reads as inf)
            raise UsageError("config_not_finite", key=key, got=value)
    elif annotation == "str":
        if not isinstance(value, str):
            raise UsageError("config_type", key=key, expected="a string", got=value)
    if key in _CHOICES and value not in _CHOICES[key]:
        raise UsageError("config_choice", key=key, choices=", ".join(_CHOICES[key]), got=value)
    if key in RANGES and value not in RANGES[key]:
        raise UsageError("config_range", key=key, rule=RANGES[key].rule, got=value)
    if key in _RULES and not _RULES[key][1](value):
        raise UsageError("config_range", key=key, rule=_RULES[key][0], got=value)
    if key == "train.seed":
        value = reduce_seed(value)
    return value


def _check_products(cfg: "Config") -> None:
    values = {f"{section}.{k}": v for section, table in cfg.to_dict().items() for k, v in table.items()}
    for keys, (limit, why) in _PRODUCTS.items():
        product = math.prod(values[k] for k in keys)
        if product > limit:
            raise UsageError("config_product", keys=" × ".join(keys), got=product, limit=limit, why=why)


def from_dict(raw: dict) -> Config:
    """Build a validated Config from nested dicts; missing keys take their defaults."""
    sections = {}
    for section, values in raw.items():
        if section not in _SECTION_CLASSES:
            raise UsageError("config_unknown_section", section=section, hint=_hint(section, _SECTION_CLASSES),
                             valid=", ".join(_SECTION_CLASSES))
        if not isinstance(values, dict):
            raise UsageError("config_not_table", section=section)
        cls = _SECTION_CLASSES[section]
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        checked = {}
        for key, value in values.items():
            if key not in fields:
                raise UsageError("config_unknown_key", key=f"{section}.{key}", section=section,
                                 hint=_hint(key, fields), valid=", ".join(fields))
            checked[key] = _check_value(f"{section}.{key}", value, fields[key])
        sections[section] = cls(**checked)
    cfg = Config(**sections)
    if cfg.model.n_embd % cfg.model.n_head:
        raise UsageError("config_range", key="model.n_embd", rule=f"divisible by model.n_head = {cfg.model.n_head}",
                         got=cfg.model.n_embd)
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise UsageError("config_grad_accum", got=cfg.train.grad_accum, batch_size=cfg.train.batch_size,
                         works=_divisors_near(cfg.train.batch_size, cfg.train.grad_accum))
    _check_products(cfg)
    return cfg


def _divisors_near(n: int, k: int) -> str:
    """The divisors of ``n`` nearest ``k`` (below and above), as the error names them: ``4 or 8``."""
    below = max(d for d in divisors(n) if d <= k)
    above = next((d for d in divisors(n) if d > k), None)
    return " or ".join(str(d) for d in (below, above) if d is not None)


def parse_override(text: str) -> tuple[str, str, object]:
    """``section.key=value`` → (section, key, value); the value is read as TOML, else kept as a string."""
    if "=" not in text:
        raise UsageError("set_syntax", got=text)
    dotted, raw_value = (s.strip() for s in text.split("=", 1))
    if dotted.count(".") != 1 or not all(dotted.split(".")):
        raise UsageError("set_key", key=dotted)
    section, key = dotted.split(".")
    try:
        value = tomllib.loads(f"v = {raw_value}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw_value
    return section, key, value


def presets() -> dict[str, Path]:
    """The preset configs that ship with jaxbigram, by name (``default``, ``lecture``, ``gpt-cpu``, …)."""
    for folder in PRESET_DIRS:
        if folder.is_dir():
            return {p.stem: p for p in sorted(folder.glob("*.toml"))}
    return {}


def resolve(name_or_path: str | Path) -> Path:
    """A config file: an existing path as given, else a preset by name (``gpt-cpu`` or ``configs/gpt-cpu.toml``)."""
    path = Path(name_or_path)
    if os.path.exists(path):  # whatever it is: reading it then says what is wrong with it
        return path
    known = presets()
    stem = path.stem if path.suffix == ".toml" else path.name
    if stem in known and (len(path.parts) == 1 or path.parent.name == "configs"):
        return known[stem]
    raise UsageError("config_missing", path=path, presets=", ".join(known))


_CONFIG_CODES = {"missing": "file_missing", "is_dir": "file_is_dir", "not_regular": "file_not_regular",
                 "unreadable": "file_unreadable", "empty": "config_empty", "too_big": "file_too_big"}


def _read_config(path: Path) -> dict:
    """The parsed TOML of a config file, refusing (one line each) a missing path, a directory, anything that is not a
    regular file (checked before opening: a FIFO would block, /dev/zero never ends), a file over CONFIG_MAX_BYTES,
    non-UTF-8 or invalid TOML. A leading UTF-8 byte-order mark is ignored (TOML has none; Windows editors write one)."""
    from .files import _read_regular, strip_bom

    try:
        payload = _read_regular(path, _CONFIG_CODES, {"path": path, "what": "config file", "flag": "--config"},
                                CONFIG_MAX_BYTES)
    except UsageError as e:
        if e.code != "config_empty":
            raise
        return {}  # an empty TOML file is a valid, empty config
    try:
        return tomllib.loads(strip_bom(payload)[0].decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError("config_syntax", path=path, reason=str(e)) from None


def read(name_or_path: str | Path) -> dict:
    """The raw TOML tables of a config file or preset, unvalidated (a sweep takes its ``[sweep]`` table out first)."""
    return _read_config(resolve(name_or_path))


def load(path: str | Path | None = None, overrides: list[str] | tuple = (), base: dict | None = None) -> Config:
    """Read a TOML file or preset (or start from ``base``, else the defaults), apply ``section.key=value``
    overrides, validate. ``overrides`` is a list of strings (one string is refused, not read character by character)."""
    if path is not None:
        checks.check_type("load", "path", path, (str, os.PathLike), "a preset name or a TOML path (str or Path)")
    checks.check_strings("load", "overrides", overrides)
    raw: dict = {s: dict(v) for s, v in (base or {}).items()}
    if path is not None:
        raw = _read_config(resolve(path))
    for item in overrides:
        section, key, value = parse_override(item)
        section_values = raw.setdefault(section, {})
        if isinstance(section_values, dict):
            section_values[key] = value
    return from_dict(raw)


def replace(cfg: Config, section: str, **changes) -> Config:
    """A copy of ``cfg`` with some keys of one section changed (validated like a file)."""
    checks.check_type("replace", "cfg", cfg, Config, "a Config (jb.config.load)")
    if section not in _SECTION_CLASSES:
        checks.refuse("replace", "section", "one of " + ", ".join(_SECTION_CLASSES),
                      repr(section) + _hint(str(section), _SECTION_CLASSES))
    raw = cfg.to_dict()
    raw[section].update(changes)
    return from_dict(raw)


def differences(a: dict, b: dict) -> list[str]:
    """The ``section.key`` names whose values differ between two config dicts (missing sections: defaults)."""
    a, b = from_dict(a).to_dict(), from_dict(b).to_dict()
    return [f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b[s][k]]
