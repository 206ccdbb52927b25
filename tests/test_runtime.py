"""runtime.py: XLA CPU tuning only where it belongs, the compile-cache folder, and platform selection errors."""

import os
from pathlib import Path

import pytest

from jaxbigram import runtime
from jaxbigram.errors import UsageError

from conftest import assert_usage_error


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


@pytest.mark.parametrize("flags, bad", [("", None), ("--xla_force_host_platform_device_count=4", None),
                                        ("--xla_cpu_use_thunk_runtime=false --xla_backend_optimization_level=3", None),
                                        ("--xla_force_host_platform_device_count=abc", "abc"),
                                        ("--xla_force_host_platform_device_count=0", "0"),
                                        ("--xla_force_host_platform_device_count=-2", "-2"),
                                        ("--xla_force_host_platform_device_count=", ""),
                                        ("--xla_force_host_platform_device_count", ""),
                                        ("--a=1 --xla_force_host_platform_device_count=99999", "99999"),
                                        ("--xla_backend_optimization_level=fast", "fast")])
def test_check_xla_flags_refuses_a_bad_value_of_the_flags_jaxbigram_sets(flags, bad, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", flags)
    if bad is None:
        runtime.check_xla_flags()
        return
    with pytest.raises(UsageError) as info:
        runtime.check_xla_flags()
    assert info.value.code == "xla_flag_value" and f"={bad}: set it to a whole number from" in str(info.value)


@pytest.mark.parametrize("command", ["info", "sample"])
def test_a_bad_xla_device_count_is_one_line_before_jax_starts(command, run_cli, tmp_path):
    proc = run_cli(command, "--workdir", tmp_path / "none",
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=abc"})
    line = assert_usage_error(proc, "XLA_FLAGS sets --xla_force_host_platform_device_count=abc")
    assert proc.stderr.strip() == line


def _cache_cases(tmp_path) -> dict:
    """Environments whose compile cache folder cannot be used."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    return {"a file": {runtime.COMPILE_CACHE_ENV: str(afile)},
            "below a file": {runtime.COMPILE_CACHE_ENV: str(afile / "xla")},
            "XDG_CACHE_HOME a file": {runtime.COMPILE_CACHE_ENV: None, "XDG_CACHE_HOME": str(afile)},
            "a name too long": {runtime.COMPILE_CACHE_ENV: str(tmp_path / ("n" * 300))}}


@pytest.mark.parametrize("case", ["a file", "below a file", "XDG_CACHE_HOME a file", "a name too long"])
def test_an_unusable_compile_cache_is_one_note_and_the_run_goes_on(case, run_cli, tiny_workdir, tmp_path):
    proc = run_cli("sample", "--workdir", tiny_workdir, "--max-new-tokens", "20", env=_cache_cases(tmp_path)[case])
    assert proc.returncode == 0 and len(proc.stdout) == 1 + 20 + 1, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: compiling without a cache: ")]
    assert len(notes) == 1 and len(proc.stderr.splitlines()) == 2, proc.stderr  # the note, then "sampling from…"
    assert (tmp_path / "afile").read_text() == "x"


def test_folders_a_user_cannot_use(tiny_workdir, tmp_path):
    """Bound by file permissions (root ignores them; the test drops that power): a compile cache folder the user
    cannot write into is one note; a workdir below a folder they may not enter is one error line."""
    import shutil

    from conftest import run_bound_by_permissions

    run = shutil.copytree(tiny_workdir, tmp_path / "run")
    (tmp_path / "cache").mkdir(mode=0o555)  # others may read, not write
    env = {**os.environ, "JAX_PLATFORMS": "cpu", runtime.COMPILE_CACHE_ENV: str(tmp_path / "cache")}
    run_py = Path(__file__).resolve().parent.parent / "run.py"
    try:
        proc = run_bound_by_permissions(run_py, "sample", "--workdir", run, "--max-new-tokens", "20", env=env,
                                        cwd=tmp_path, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stderr.splitlines()[0] == (f"note: compiling without a cache: the compile cache folder "
                                               f"{tmp_path / 'cache'} cannot be used (permission denied): set "
                                               f"JAXBIGRAM_COMPILE_CACHE to a writable folder, or to off")
        assert len(proc.stderr.splitlines()) == 2 and not list((tmp_path / "cache").iterdir())
        (tmp_path / "private").mkdir(mode=0o000)  # a folder on the way the user may not enter: one line
        proc = run_bound_by_permissions(run_py, "info", "--workdir", tmp_path / "private" / "run", env=env,
                                        cwd=tmp_path, timeout=120)
        assert_usage_error(proc, "workdir path", "cannot be used (Permission denied): use another path for --workdir")
    finally:
        for folder in ("cache", "private"):
            if (tmp_path / folder).exists():
                (tmp_path / folder).chmod(0o755)
