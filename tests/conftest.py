"""Shared fixtures for the whole suite.

JAX is forced to the CPU here, before any test module imports it. Fixtures other modules can reuse:

- ``repo_root``: the project's root folder (``Path``).
- ``make_corpus``: the generator of ``scripts/make_corpus.py`` (multilingual synthetic corpora).
- ``data_path``: tinyshakespeare (``$JAXBIGRAM_DATA``, else ``<repo>/../shared/data/tinyshakespeare/input.txt``, else the
  copy ``run.py train`` downloaded into the user cache).
- ``corpus``: that file loaded with ``data.load_corpus`` (session-scoped).
- ``run_cli``: ``run_cli("train", "--workdir", d, ...)`` runs ``python run.py ...`` in a subprocess (cwd = repo root,
  JAX on the CPU, the session's cache and data) and returns the ``subprocess.CompletedProcess`` (text mode).
- ``tiny_train``: one ``run.py train --config configs/tiny.toml`` run of the session (``.workdir``, ``.proc``).
- ``tiny_workdir``: its workdir (``Path``); read-only by convention — use ``tiny_workdir_copy`` to modify one.

Independent numpy references (softmax, cross-entropy, bigram counts) live in ``tests/reference.py``.
"""

from __future__ import annotations

import os

os.environ["JAX_PLATFORMS"] = "cpu"  # before anything imports jax

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
# what `python run.py train` downloaded on this machine (the user's cache, read before the session cache replaces it)
USER_CACHED_DATA = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                    / "jaxbigram" / "tinyshakespeare" / "input.txt")
if not os.environ.get("JAXBIGRAM_DATA"):  # every test module (and subprocess) then sees the same file
    for _candidate in (DEFAULT_DATA, USER_CACHED_DATA):
        if _candidate.is_file():
            os.environ["JAXBIGRAM_DATA"] = str(_candidate.resolve())
            break


def _resolve_data() -> Path:
    """``$JAXBIGRAM_DATA`` (absolute, or relative to the cwd, else to the repo root), else ``../shared/...``."""
    raw = os.environ.get("JAXBIGRAM_DATA")
    if not raw:
        return DEFAULT_DATA.resolve()
    path = Path(raw).expanduser()
    if path.is_absolute():
        return path.resolve()
    for base in (Path.cwd(), REPO_ROOT):
        if (base / path).is_file():
            return (base / path).resolve()
    return (REPO_ROOT / path).resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def make_corpus():
    """``scripts/make_corpus.py``'s ``make_corpus(path, size_bytes, vocab=..., seed=...)`` (a script, not a module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_corpus", REPO_ROOT / "scripts" / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_corpus


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """A private ``XDG_CACHE_HOME`` for the session, so tests never write to ``~/.cache``."""
    cache = tmp_path_factory.mktemp("xdg_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        yield cache


@pytest.fixture(scope="session")
def data_path() -> Path:
    path = _resolve_data()
    if not path.is_file():
        pytest.fail(f"tinyshakespeare not found at {path}: set JAXBIGRAM_DATA to its input.txt, or run "
                    f"`python run.py train` once to download it (also looked in ../shared/data/tinyshakespeare/ "
                    f"and {USER_CACHED_DATA})", pytrace=False)
    return path


@pytest.fixture(scope="session")
def corpus(data_path):
    from jaxbigram.data import load_corpus

    return load_corpus(data_path)


@pytest.fixture(scope="session")
def run_cli(data_path, _session_cache):
    """``run_cli(*args, env=None, timeout=300)`` → CompletedProcess of ``python run.py *args``.

    ``env`` entries are added to the environment (a value of None removes that variable).
    """

    def run(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        full_env = dict(os.environ, JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(_session_cache),
                        JAXBIGRAM_DATA=str(data_path))
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
        return subprocess.run([sys.executable, str(REPO_ROOT / "run.py"), *map(str, args)], cwd=REPO_ROOT,
                              env=full_env, capture_output=True, text=True, timeout=timeout)

    return run


@dataclass(frozen=True)
class TinyRun:
    workdir: Path
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def tiny_train(tmp_path_factory, run_cli, data_path, repo_root) -> TinyRun:
    """Train configs/tiny.toml once per session (200 steps, checkpoints at 100 and 200)."""
    workdir = tmp_path_factory.mktemp("tiny_run") / "run"
    proc = run_cli("train", "--config", repo_root / "configs" / "tiny.toml", "--data", data_path,
                   "--workdir", workdir)
    assert proc.returncode == 0, f"tiny training failed:\n{proc.stderr}"
    return TinyRun(workdir=workdir, proc=proc)


@pytest.fixture(scope="session")
def tiny_workdir(tiny_train) -> Path:
    """The workdir of the session's tiny run. Do not modify it; use ``tiny_workdir_copy`` for that."""
    return tiny_train.workdir


@pytest.fixture
def tiny_workdir_copy(tiny_workdir, tmp_path) -> Path:
    """A private copy of the tiny run's workdir, free to damage."""
    dest = tmp_path / "run_copy"
    shutil.copytree(tiny_workdir, dest)
    return dest
