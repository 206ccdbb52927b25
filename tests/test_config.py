"""config.py: presets (by path or by name), validation with one clear message naming the key, --set overrides, and
the differences between two configs."""

import dataclasses
import re

import pytest

from jaxbigram import config
from jaxbigram.errors import UsageError
from conftest import REPO_ROOT


def load_text(tmp_path, text, overrides=()):
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return config.load(path, overrides)


def error_of(fn, *args, **kwargs) -> UsageError:
    with pytest.raises(UsageError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)  # one line
    return info.value


@pytest.mark.parametrize("name", ["default", "lecture", "notes", "tiny"])
def test_every_preset_loads(repo_root, name):
    cfg = config.load(repo_root / "configs" / f"{name}.toml")
    assert isinstance(cfg, config.Config)
    assert cfg.train.steps >= 1


def test_lecture_preset_is_the_lecture(repo_root):
    cfg = config.load(repo_root / "configs" / "lecture.toml")
    t = cfg.train
    assert (t.batch_size, t.block_size, t.steps, t.learning_rate, t.lr_schedule) == (32, 8, 3000, 1e-2, "constant")
    assert (cfg.eval.interval, cfg.eval.iters) == (300, 200)
    assert cfg.data.val_fraction == 0.1


def test_notes_preset_is_the_seed_notes(repo_root):
    t = config.load(repo_root / "configs" / "notes.toml").train
    assert (t.batch_size, t.block_size, t.steps, t.learning_rate) == (32, 8, 100_000, 1e-3)


def test_no_file_gives_the_defaults():
    assert config.load(None) == config.Config()


def test_unknown_key_names_it_and_suggests_the_closest(tmp_path):
    err = error_of(load_text, tmp_path, "[train]\nlearnig_rate = 0.1\n")
    assert err.code == "config_unknown_key"
    assert "train.learnig_rate" in str(err) and "did you mean 'learning_rate'" in str(err)


def test_unknown_section_suggests_the_closest(tmp_path):
    err = error_of(load_text, tmp_path, "[trian]\nsteps = 5\n")
    assert err.code == "config_unknown_section"
    assert "[trian]" in str(err) and "did you mean 'train'" in str(err)


@pytest.mark.parametrize("text, key", [
    ('[train]\nbatch_size = "32"\n', "train.batch_size"),
    ("[train]\nbatch_size = 3.5\n", "train.batch_size"),
    ("[train]\nsteps = true\n", "train.steps"),  # a bool is not an integer
    ('[train]\nlearning_rate = "fast"\n', "train.learning_rate"),
    ("[data]\npath = 3\n", "data.path"),
    ('[model]\nbias = "yes"\n', "model.bias"),
])
def test_wrong_type_names_the_key(tmp_path, text, key):
    err = error_of(load_text, tmp_path, text)
    assert err.code == "config_type" and key in str(err)


def test_integer_for_a_float_is_widened(tmp_path):
    cfg = load_text(tmp_path, "[train]\nlearning_rate = 1\n")
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)


@pytest.mark.parametrize("text, key", [
    ("[train]\nbatch_size = 0\n", "train.batch_size"),
    ("[train]\nblock_size = -1\n", "train.block_size"),
    ("[train]\nsteps = 0\n", "train.steps"),
    ("[train]\nlearning_rate = 0.0\n", "train.learning_rate"),
    ("[eval]\niters = 0\n", "eval.iters"),
    ("[data]\nval_fraction = 1.0\n", "data.val_fraction"),
    ("[train]\nbeta2 = 1.0\n", "train.beta2"),
    ("[model]\nn_layer = 0\n", "model.n_layer"),
    ("[model]\ndropout = 1.0\n", "model.dropout"),
    ("[model]\nn_embd = 100\nn_head = 3\n", "model.n_embd"),  # must be divisible by n_head
])
def test_out_of_range_names_the_key_and_the_rule(tmp_path, text, key):
    err = error_of(load_text, tmp_path, text)
    assert err.code == "config_range" and key in str(err) and "must be" in str(err)


@pytest.mark.parametrize("text, code, fragment", [
    ("[train]\ngrad_accum = 3\n", "config_grad_accum", "train.grad_accum = 3 does not divide train.batch_size = 32"
                                                          " (each step runs the batch as grad_accum equal microbatches):"
                                                          " use 2 or 4"),
    ("[train]\nbatch_size = 12\ngrad_accum = 64\n", "config_grad_accum", "use 12"),
    ("[train]\ngrad_accum = 0\n", "config_range", "train.grad_accum must be between 1 and"),
    ("[train]\ngrad_accum = 99999999999\n", "config_range", "train.grad_accum must be between 1 and"),
])
def test_grad_accum_must_divide_the_batch_and_the_error_names_one_that_does(tmp_path, text, code, fragment):
    err = error_of(load_text, tmp_path, text)
    assert err.code == code and fragment in str(err)
    if code == "config_grad_accum":  # every value it names works
        for works in str(err).split("use ")[1].split(" or "):
            assert load_text(tmp_path, text.replace(text.split("grad_accum = ")[1].split("\n")[0], works)
                             ).train.grad_accum == int(works)


@pytest.mark.parametrize("text, choices", [('[train]\nlr_schedule = "linear"\n', "constant, cosine"),
                                           ('[model]\nkind = "rnn"\n', "bigram"),
                                           ('[model]\ndtype = "float16"\n', "float32, bfloat16")])
def test_bad_choice(tmp_path, text, choices):
    err = error_of(load_text, tmp_path, text)
    assert err.code == "config_choice" and choices in str(err)


def test_model_section_defaults_to_the_bigram():
    cfg = config.load(None)
    assert cfg.model == config.ModelConfig() and cfg.model.kind == "bigram"
    assert set(cfg.to_dict()) == {"model", "data", "train", "eval", "checkpoint"}


def test_missing_file_and_syntax_error(tmp_path):
    err = error_of(config.load, tmp_path / "none.toml")
    assert err.code == "config_missing" and "presets: " in str(err) and "tiny" in str(err)
    err = error_of(load_text, tmp_path, "[train]\nsteps = = 3\n")
    assert err.code == "config_syntax" and "line 2" in str(err)


def test_section_that_is_not_a_table(tmp_path):
    assert error_of(load_text, tmp_path, "train = 3\n").code == "config_not_table"


@pytest.mark.parametrize("text, expected", [
    ("train.steps=5", ("train", "steps", 5)),
    ("train.learning_rate = 1e-3", ("train", "learning_rate", 1e-3)),
    ("train.lr_schedule=cosine", ("train", "lr_schedule", "cosine")),  # bare words stay strings
    ('train.lr_schedule="cosine"', ("train", "lr_schedule", "cosine")),
    ("data.path=/tmp/a=b.txt", ("data", "path", "/tmp/a=b.txt")),  # only the first '=' splits
])
def test_parse_override(text, expected):
    assert config.parse_override(text) == expected


def test_override_without_equals_sign():
    err = error_of(config.parse_override, "train.steps")
    assert err.code == "set_syntax" and "section.key=value" in str(err)


@pytest.mark.parametrize("text", ["steps=5", "a.b.c=1", ".steps=1", "train.=1"])
def test_override_key_must_be_section_dot_key(text):
    assert error_of(config.parse_override, text).code == "set_key"


def test_overrides_apply_on_top_of_a_file_and_are_validated(repo_root):
    cfg = config.load(repo_root / "configs" / "lecture.toml", ["train.steps=10", "eval.iters=2"])
    assert cfg.train.steps == 10 and cfg.eval.iters == 2 and cfg.train.batch_size == 32
    assert error_of(config.load, None, ["train.steps=0"]).code == "config_range"
    assert error_of(config.load, None, ["train.stepz=3"]).code == "config_unknown_key"


def test_replace_validates():
    cfg = config.replace(config.Config(), "train", steps=7)
    assert cfg.train.steps == 7
    assert error_of(config.replace, cfg, "train", steps=-1).code == "config_range"


# ----------------------------------------------------------------------------- presets by name

def test_presets_are_the_shipped_configs(repo_root):
    names = config.presets()
    assert {"default", "lecture", "notes", "tiny"} <= set(names)
    assert names["tiny"].resolve() == (repo_root / "configs" / "tiny.toml").resolve()
    assert config.DEFAULT_PRESET in names


@pytest.mark.parametrize("name", ["tiny", "configs/tiny.toml", "tiny.toml"])
def test_a_preset_name_resolves_from_any_folder(repo_root, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert config.resolve(name).resolve() == (repo_root / "configs" / "tiny.toml").resolve()
    assert config.load(name) == config.load(repo_root / "configs" / "tiny.toml")


def test_an_existing_file_wins_over_a_preset_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_text("[train]\nsteps = 7\n")
    assert config.load("tiny").train.steps == 7


@pytest.mark.parametrize("name", ["nonexistent", "other/tiny.toml"])
def test_unknown_preset_name_is_config_missing(name):
    assert error_of(config.resolve, name).code == "config_missing"


# ----------------------------------------------------------------------------- a base config and differences

def test_load_on_a_base_keeps_its_values_and_applies_overrides(repo_root):
    base = config.load(repo_root / "configs" / "lecture.toml").to_dict()
    cfg = config.load(None, ["train.steps=5"], base=base)
    assert cfg.train.steps == 5 and cfg.train.batch_size == 32 and cfg.eval.iters == 200
    assert base["train"]["steps"] == 3000  # the base is not modified
    # a file replaces the base entirely
    assert config.load(repo_root / "configs" / "tiny.toml", base=base) == config.load(repo_root / "configs" / "tiny.toml")


def test_differences_names_every_changed_key():
    a = config.Config().to_dict()
    b = config.load(None, ["train.steps=5", "model.n_layer=2", "eval.iters=3"]).to_dict()
    assert config.differences(a, b) == ["model.n_layer", "train.steps", "eval.iters"]
    assert config.differences(a, a) == []
    assert config.differences({}, a) == []  # missing sections are the defaults


# ----------------------------------------------------------------------------- every key's range, stated once

def _fields() -> dict[str, str]:
    """``section.key`` → its annotation (``int``, ``float``, ``str``, ``bool``) for every config key."""
    return {f"{section}.{f.name}": f.type for section, cls in config._SECTION_CLASSES.items()
            for f in dataclasses.fields(cls)}


def _documented() -> dict[str, str]:
    """``section.key`` → the "allowed" column of docs/config.md's tables."""
    rows, section = {}, None
    for line in (REPO_ROOT / "docs" / "config.md").read_text(encoding="utf-8").splitlines():
        if heading := re.match(r"## \[(\w+)\]", line):
            section = heading.group(1)
        elif section and (row := re.match(r"\| `(\w+)` \| \w+ \| [^|]* \| ([^|]*) \|", line)):
            rows[f"{section}.{row.group(1)}"] = row.group(2).strip()
    return rows


def _bounds(text: str) -> list[tuple[str, float]]:
    """``between 1 and 64`` / ``> 0 and < 1`` / ``>= 0 (…)`` → [(op, value), ...], read independently of config."""
    text = re.split(r" \(|, ", text)[0]
    if m := re.fullmatch(r"between (\S+) and (\S+)", text):
        return [(">=", float(m.group(1))), ("<=", float(m.group(2)))]
    return [(op, float(v)) for op, v in re.findall(r"(>=|<=|>|<) (\S+)", text)]


def test_every_key_is_documented_and_every_numeric_key_has_one_range():
    fields = _fields()
    assert set(_documented()) == set(fields)
    assert set(config.RANGES) == {k for k, t in fields.items() if t in ("int", "float")}


def test_the_documented_ranges_are_the_ranges_the_code_enforces():
    """For every numeric key, docs/config.md states ``Range.text``, and the values at and just past each bound it
    states are accepted and refused (one line quoting the same text) by validation itself."""
    fields, documented = _fields(), _documented()
    # keys that must move together for an extreme value to pass the other checks (divisibility, batch × block)
    partners = {"model.n_embd": ["model.n_head=1"], "model.n_head": ["model.n_embd={v}"],
                "train.batch_size": ["train.block_size=1"], "train.block_size": ["train.batch_size=1"],
                "train.grad_accum": ["train.batch_size={v}", "train.block_size=1"]}
    for key, rng in config.RANGES.items():
        allowed = documented[key]
        assert allowed == rng.text or allowed.startswith((rng.text + " (", rng.text + ", ")), (key, allowed)
        is_int = fields[key] == "int"
        for op, bound in _bounds(allowed):
            step = 1 if is_int else 1e-6
            inside = bound if "=" in op else bound + step * (1 if op == ">" else -1)
            outside = bound + step * (-1 if ">" in op else 1) if "=" in op else bound
            for value, ok in ((inside, True), (outside, False)):
                value = int(value) if is_int else value
                overrides = [f"{key}={value}", *(p.format(v=value) for p in partners.get(key, []))]
                if ok:
                    section, name = key.split(".")
                    got = getattr(getattr(config.load(None, overrides), section), name)
                    assert got == (config.reduce_seed(value) if key == "train.seed" else value), (key, value)
                else:
                    err = error_of(config.load, None, overrides)
                    assert err.code == "config_range" and f"must be {rng.text}" in str(err), (key, value, str(err))


def test_choices_and_booleans_are_documented_as_the_code_has_them():
    documented = _documented()
    for key, choices in config._CHOICES.items():
        assert documented[key] == ", ".join(f"`{c}`" for c in choices)
    for key in (k for k, t in _fields().items() if t == "bool"):
        assert documented[key] == "`true`, `false`"


@pytest.mark.parametrize("layers", [config.MAX_N_LAYER + 1, 200_000, 3_000_000_000])
def test_a_gpt_too_deep_to_build_is_refused_with_the_limit(layers):
    assert config.load(None, [f"model.n_layer={config.MAX_N_LAYER}"]).model.n_layer == config.MAX_N_LAYER
    err = error_of(config.load, None, [f"model.n_layer={layers}", "model.n_embd=1", "model.n_head=1"])
    assert str(err) == (f"config key model.n_layer must be between 1 and {config.MAX_N_LAYER} (each layer is traced "
                        f"and compiled on its own: a deeper GPT would take too long to build), got {layers}")
