"""runtime.py: XLA CPU tuning only where it belongs, the compile-cache folder, and platform selection errors."""

import os
from pathlib import Path

import pytest

from jaxbigram import runtime
from jaxbigram.errors import UsageError


def test_xla_cpu_tuning_only_where_it_belongs(monkeypatch):
    for name in ("XLA_FLAGS", runtime.XLA_TUNING_ENV, "JAX_PLATFORM_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert runtime.tune_xla_for_cpu(None) and "xla_backend_optimization_level=1" in os.environ["XLA_FLAGS"]
    assert not runtime.tune_xla_for_cpu(None)  # already set: left alone, not duplicated
    assert os.environ["XLA_FLAGS"].count("xla_backend_optimization_level") == 1
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
    assert not runtime.tune_xla_for_cpu("cpu") and os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=3"
    monkeypatch.delenv("XLA_FLAGS")
    assert not runtime.tune_xla_for_cpu("gpu") and "XLA_FLAGS" not in os.environ
    monkeypatch.setenv(runtime.XLA_TUNING_ENV, "off")
    assert not runtime.tune_xla_for_cpu("cpu") and "XLA_FLAGS" not in os.environ


def test_compile_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(runtime.COMPILE_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert runtime.compile_cache_dir() == tmp_path / "jaxbigram" / "xla"
    monkeypatch.setenv(runtime.COMPILE_CACHE_ENV, str(tmp_path / "elsewhere"))
    assert runtime.compile_cache_dir() == Path(tmp_path / "elsewhere")
    monkeypatch.setenv(runtime.COMPILE_CACHE_ENV, "off")
    assert runtime.compile_cache_dir() is None


def test_select_platform_names_the_backend_and_refuses_unknown_names():
    assert "backend cpu" in runtime.select_platform(None)
    with pytest.raises(UsageError) as info:
        runtime.select_platform("quantum")
    assert info.value.code == "platform_unknown" and "cpu, gpu or tpu" in str(info.value)
    # an unavailable platform (tpu, gpu here) is checked through run.py in test_cli.py: it changes jax's config
