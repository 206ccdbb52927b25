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


def test_cpu_device_count_from_the_environment(monkeypatch):
    monkeypatch.delenv(runtime.CPU_DEVICES_ENV, raising=False)
    assert runtime.cpu_device_count() == runtime.DEFAULT_CPU_DEVICES == 2
    monkeypatch.setenv(runtime.CPU_DEVICES_ENV, " 3 ")
    assert runtime.cpu_device_count() == 3
    for bad in ("0", "-1", "two", "1.5", str(runtime.MAX_CPU_DEVICES + 1), "9" * 40):
        monkeypatch.setenv(runtime.CPU_DEVICES_ENV, bad)
        with pytest.raises(UsageError) as info:
            runtime.cpu_device_count()
        assert info.value.code == "cpu_devices_env" and runtime.CPU_DEVICES_ENV in str(info.value)


@pytest.mark.parametrize("env, expected", [({}, 2), ({"JAXBIGRAM_CPU_DEVICES": "3"}, 3),
                                           ({"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}, 4),
                                           ({"JAXBIGRAM_CPU_DEVICES": "1"}, 1)])
def test_configure_gives_the_cpu_backend_its_devices(env, expected):
    """In a fresh process (the count is fixed when JAX starts its CPU backend): 2 devices by default, the
    environment's count, and XLA_FLAGS' forced count left alone."""
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", runtime.CPU_DEVICES_ENV)}
    code = "from jaxbigram import runtime; runtime.configure('cpu', compile_cache=False); import jax; " \
           "print(jax.device_count())"
    out = subprocess.run([sys.executable, "-c", code], env={**base, "JAX_PLATFORMS": "cpu", **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(expected)]


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
