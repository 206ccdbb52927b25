"""Process-wide JAX settings the CLI applies once, before the first compile (side effects only; no math here).

- ``select_platform``: pin JAX to cpu / gpu / tpu, with a one-line error when that platform has no device.
- A persistent XLA compilation cache in ``$XDG_CACHE_HOME/jaxbigram/xla`` (default ``~/.cache/jaxbigram/xla``): the
  second run of a config loads its compiled programs from disk instead of compiling them again. Set
  ``JAXBIGRAM_COMPILE_CACHE`` to another folder, or to ``off`` to disable it. A folder that cannot be used (a file,
  below a file, not writable, a name too long) is one ``note:`` line, and the run compiles without a cache.
- JAX's CPU backend gets ``DEFAULT_CPU_DEVICES`` (2) devices instead of 1 (``JAXBIGRAM_CPU_DEVICES=N`` sets another
  count; an ``XLA_FLAGS`` that sets ``xla_force_host_platform_device_count`` wins, and its value is checked before
  JAX starts, since XLA would abort the process on a bad one: ``check_xla_flags``). XLA runs a small matmul on about
  one core, so a GPT step split over two CPU devices (data parallel) uses both cores of a 2-core machine (figures in
  docs/performance.md). Which devices a run uses is ``train.devices`` (``parallel.select_devices``): the bigram
  stays on one, and an idle second device costs it nothing.
- On the CPU, XLA's LLVM back end at ``-O1`` instead of ``-O2``: less compile time for these small programs, and no
  slower to run (training results are bit-identical). Skipped when ``XLA_FLAGS`` already sets
  ``xla_backend_optimization_level`` (its value checked likewise), when ``JAXBIGRAM_XLA_TUNING=off``, or when an
  accelerator may be used.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from pathlib import Path

from .errors import UsageError, message
from .paths import check_user_path, prepare_folder, user_cache_dir

COMPILE_CACHE_ENV = "JAXBIGRAM_COMPILE_CACHE"
PLATFORMS = {"cpu": ["cpu"], "gpu": ["cuda", "rocm"], "tpu": ["tpu"]}  # --platform → JAX backends to try, in order
XLA_TUNING_ENV = "JAXBIGRAM_XLA_TUNING"
CPU_XLA_FLAGS = ("--xla_backend_optimization_level=1",)
CPU_DEVICES_ENV = "JAXBIGRAM_CPU_DEVICES"
DEFAULT_CPU_DEVICES = 2
MAX_CPU_DEVICES = 1024
_OFF = {"0", "off", "false", "no", "none"}
DEVICE_COUNT_FLAG = "xla_force_host_platform_device_count"
OPT_LEVEL_FLAG = "xla_backend_optimization_level"
OWNED_XLA_FLAGS = {DEVICE_COUNT_FLAG: (1, MAX_CPU_DEVICES), OPT_LEVEL_FLAG: (0, 3)}  # flag → its whole-number range


def compile_cache_dir() -> Path | None:
    """Where compiled programs are cached: ``$JAXBIGRAM_COMPILE_CACHE``, else the user cache; None when disabled."""
    raw = os.environ.get(COMPILE_CACHE_ENV)
    if raw is not None:
        return None if raw.strip().lower() in _OFF or not raw.strip() else Path(raw).expanduser()
    base = user_cache_dir()
    return None if base is None else base / "jaxbigram" / "xla"


def _compile_cache_problem(path: Path) -> str | None:
    """Why the compile cache cannot live in ``path`` (created if needed), or None when it can."""
    try:
        check_user_path(path, COMPILE_CACHE_ENV, "compile cache")
    except UsageError as e:
        return str(e)
    reason = prepare_folder(path)
    return None if reason is None else message("compile_cache_unusable", path=path, reason=reason)


def enable_compile_cache(log=None) -> Path | None:
    """Turn on JAX's persistent compilation cache for every program (even quick ones); returns its folder, or None
    when it is off or its folder cannot be used (then says so on ``log``: JAX would warn at every compile)."""
    path = compile_cache_dir()
    if path is None:
        return None
    problem = _compile_cache_problem(path)
    if problem is not None:
        if log is not None:
            log(message("note_uncached", problem=problem))
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _accelerator_possible(platform: str | None) -> bool:
    if platform is not None:
        return platform != "cpu"
    requested = os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME") or ""
    if requested.strip():
        return any(p.strip() not in ("", "cpu") for p in requested.split(","))
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    return any(importlib.util.find_spec(name) is not None for name in ("libtpu", "jax_plugins"))


def tune_xla_for_cpu(platform: str | None = None) -> bool:
    """Add ``CPU_XLA_FLAGS`` to ``XLA_FLAGS`` when the run will be on the CPU; returns whether it did.

    Must run before JAX starts its backend (the flags are read then).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get(XLA_TUNING_ENV, "on").strip().lower() in _OFF:
        return False
    if OPT_LEVEL_FLAG in flags or _accelerator_possible(platform):
        return False
    os.environ["XLA_FLAGS"] = " ".join([flags, *CPU_XLA_FLAGS]).strip()
    return True


def cpu_device_count() -> int:
    """How many devices JAX's CPU backend gets: ``$JAXBIGRAM_CPU_DEVICES`` (1 to ``MAX_CPU_DEVICES``), else 2."""
    raw = os.environ.get(CPU_DEVICES_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_CPU_DEVICES
    try:
        count = int(raw.strip())
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_CPU_DEVICES:
        raise UsageError("cpu_devices_env", env=CPU_DEVICES_ENV, got=raw, max=MAX_CPU_DEVICES)
    return count


def check_xla_flags() -> None:
    """Refuse, with one line, an ``XLA_FLAGS`` that gives a flag jaxbigram itself reads and sets (``OWNED_XLA_FLAGS``)
    a value that is not a whole number in its range: XLA would print its usage and abort the process. Other XLA
    flags are XLA's own business."""
    for flag, (low, high) in OWNED_XLA_FLAGS.items():
        for match in re.finditer(rf"(?:^|\s)--?{flag}(?:=(\S*))?(?=\s|$)", os.environ.get("XLA_FLAGS", "")):
            value = match.group(1)
            if value is None or not value.isdigit() or not low <= int(value) <= high:
                raise UsageError("xla_flag_value", flag=flag, got=value or "", low=low, high=high)


def expose_cpu_devices() -> int | None:
    """Give JAX's CPU backend ``cpu_device_count()`` devices; returns the count, or None where ``XLA_FLAGS`` already
    sets one or JAX has already started (``cli.main`` called from a process that computed before: it keeps what it
    has)."""
    count = cpu_device_count()
    if DEVICE_COUNT_FLAG in os.environ.get("XLA_FLAGS", ""):
        return None
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # "should be updated before backends are initialized"
        return None
    return count


def configure(platform: str | None = None, compile_cache: bool = True, log=None) -> None:
    """Everything above, in the order JAX needs it. Called by ``cli.main`` before any computation; notes go to
    ``log``."""
    check_xla_flags()
    expose_cpu_devices()
    tune_xla_for_cpu(platform)
    if compile_cache:
        enable_compile_cache(log)


def select_platform(name: str | None) -> str:
    """Pin JAX to ``name`` (None: JAX's choice) before any computation; returns a description of the backend.

    ``gpu`` tries JAX's ``cuda`` backend, then ``rocm``: JAX fails loudly on any platform named in ``jax_platforms``
    that does not start, so naming both at once would fail on a machine with only one kind.
    """
    import jax

    if name is not None and name not in PLATFORMS:
        raise UsageError("platform_unknown", got=name)
    errors = []
    for backend in PLATFORMS[name] if name is not None else [None]:
        if backend is not None:
            jax.config.update("jax_platforms", backend)
        try:
            devices = jax.devices()
            break
        except (RuntimeError, AssertionError) as e:  # JAX asserts when a named platform has no device at all
            errors.append(str(e).splitlines()[0] if str(e) else f"no {backend} device found")
    else:
        raise UsageError("platform_unavailable", got=name, reason=errors[0])
    return f"jax {jax.__version__}: backend {jax.default_backend()}, {len(devices)} device(s) {devices}"
