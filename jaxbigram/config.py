"""Run configuration: TOML files → frozen, validated dataclasses; ``--set section.key=value`` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass(frozen=True)
class EvalConfig:
    interval: int = 300
    iters: int = 200


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

# (rule text, predicate) per key; keys not listed accept any value of the right type.
_RULES = {
    "model.n_layer": (">= 1", lambda v: v >= 1),
    "model.n_head": (">= 1", lambda v: v >= 1),
    "model.n_embd": (">= 1", lambda v: v >= 1),
    "model.dropout": (">= 0 and < 1", lambda v: 0 <= v < 1),
    "data.val_fraction": ("> 0 and < 1", lambda v: 0 < v < 1),
    "train.seed": (">= 0", lambda v: v >= 0),
    "train.steps": (">= 1", lambda v: v >= 1),
    "train.batch_size": (">= 1", lambda v: v >= 1),
    "train.block_size": (">= 1", lambda v: v >= 1),
    "train.learning_rate": ("> 0", lambda v: v > 0),
    "train.warmup_steps": (">= 0", lambda v: v >= 0),
    "train.min_lr_ratio": ("between 0 and 1", lambda v: 0 <= v <= 1),
    "train.beta1": (">= 0 and < 1", lambda v: 0 <= v < 1),
    "train.beta2": (">= 0 and < 1", lambda v: 0 <= v < 1),
    "train.weight_decay": (">= 0", lambda v: v >= 0),
    "train.grad_clip": (">= 0 (0 disables clipping)", lambda v: v >= 0),
    "train.steps_per_call": (">= 1", lambda v: v >= 1),
    "eval.interval": (">= 1", lambda v: v >= 1),
    "eval.iters": (">= 1", lambda v: v >= 1),
    "checkpoint.interval": (">= 1", lambda v: v >= 1),
    "checkpoint.keep": (">= 1", lambda v: v >= 1),
}
_CHOICES = {"train.lr_schedule": ("constant", "cosine"), "model.kind": ("bigram",),
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
        value = float(value)
    elif annotation == "str":
        if not isinstance(value, str):
            raise UsageError("config_type", key=key, expected="a string", got=value)
    if key in _CHOICES and value not in _CHOICES[key]:
        raise UsageError("config_choice", key=key, choices=", ".join(_CHOICES[key]), got=value)
    if key in _RULES and not _RULES[key][1](value):
        raise UsageError("config_range", key=key, rule=_RULES[key][0], got=value)
    return value


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
    return cfg


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
    if path.is_file():
        return path
    known = presets()
    stem = path.stem if path.suffix == ".toml" else path.name
    if stem in known and (len(path.parts) == 1 or path.parent.name == "configs"):
        return known[stem]
    raise UsageError("config_missing", path=path, presets=", ".join(known))


def load(path: str | Path | None = None, overrides: list[str] | tuple = (), base: dict | None = None) -> Config:
    """Read a TOML file or preset (or start from ``base``, else the defaults), apply ``section.key=value``
    overrides, validate."""
    raw: dict = {s: dict(v) for s, v in (base or {}).items()}
    if path is not None:
        path = resolve(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UsageError("config_syntax", path=path, reason=str(e)) from None
    for item in overrides:
        section, key, value = parse_override(item)
        section_values = raw.setdefault(section, {})
        if isinstance(section_values, dict):
            section_values[key] = value
    return from_dict(raw)


def replace(cfg: Config, section: str, **changes) -> Config:
    """A copy of ``cfg`` with some keys of one section changed (validated like a file)."""
    raw = cfg.to_dict()
    raw[section].update(changes)
    return from_dict(raw)


def differences(a: dict, b: dict) -> list[str]:
    """The ``section.key`` names whose values differ between two config dicts (missing sections: defaults)."""
    a, b = from_dict(a).to_dict(), from_dict(b).to_dict()
    return [f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b[s][k]]
