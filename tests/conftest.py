"""Shared fixtures, paths and helpers for the whole suite (the only place they live).

JAX is forced to the CPU here, once, before any test module imports it. Fixtures:

- ``repo_root``: the project's root folder (``Path``).
- ``make_corpus``: ``jaxbigram.bench.synthetic.make_corpus(path, size_bytes, vocab, seed=...)`` (multilingual synthetic text).
- ``data_path``: tinyshakespeare (``$JAXBIGRAM_DATA``, else ``<repo>/../shared/data/tinyshakespeare/input.txt``, else the
  copy ``run.py train`` downloaded into the user cache); ``corpus``: that file loaded (session-scoped).
- ``big_corpus_path``: a generated 400 kB text with 1,500 characters from many scripts (session-scoped).
- ``run_cli``: ``run_cli("train", "--workdir", d, ...)`` runs ``python run.py ...`` in a subprocess (cwd = repo root,
  JAX on the CPU, the session's cache and data) and returns the ``subprocess.CompletedProcess`` (text mode).
- ``cli_run``: the same call in this process (``cli.main``, output captured): for properties of a command's output and
  files rather than of a process.
- ``tiny_train``: one ``run.py train --config tiny`` run of the session (``.workdir``, ``.proc``), checkpoints at
  steps 100 and 200; ``tiny_workdir``: its workdir, read-only by convention (``untouched`` asserts it stayed so);
  ``tiny_workdir_copy``: a private copy, free to damage.

Helpers (import with ``from conftest import ...``): ``snapshot``, ``error_line``, ``assert_usage_error``,
``run_main``, ``same_tree``, ``table_params``, ``store_params``, ``write``. Independent numpy references (softmax,
cross-entropy, bigram counts) live in ``tests/reference.py``.
"""

from __future__ import annotations

import os

os.environ["JAX_PLATFORMS"] = "cpu"  # before anything imports jax
# XLA's CPU back end at -O1, as the CLI runs it (``runtime.tune_xla_for_cpu``), in this process and in every
# subprocess (which then keep this flag as a user's own): a third less compile time than XLA's -O2, the same results.
# (-O0 compiles GPT programs in 0.8x the time of -O1 but runs them slower: the notebook took 83-93 s at -O0 and 64-66 s
# at -O1, A B A B in one run.) A subprocess that sets its own XLA_FLAGS adds SUITE_OPT_LEVEL.
SUITE_OPT_LEVEL = "--xla_backend_optimization_level=1"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), SUITE_OPT_LEVEL]).strip()

import jax  # noqa: E402

# Start JAX's CPU backend now, with its one default device, so every in-process test sees the same single device
# whatever runs first (``cli.main`` would otherwise give a not-yet-started backend two: ``runtime.expose_cpu_devices``).
# Subprocess tests (``run_cli``) get the CLI's real default of two CPU devices.
jax.devices()

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY = str(REPO_ROOT / "configs" / "tiny.toml")
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


DATA = str(_resolve_data())


# ----------------------------------------------------------------------------- helpers

def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its kind, size and mtime: equal snapshots mean nothing was touched."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in sorted(Path(root).rglob("*"))}


def error_line(stderr: str) -> str:
    """The single ``error: …`` line; fails on a traceback or on several error lines."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def assert_usage_error(proc: subprocess.CompletedProcess, *fragments) -> str:
    """Exit code 2, nothing on stdout, exactly one ``error: …`` line on stderr (containing ``fragments``)."""
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    line = error_line(proc.stderr)
    for fragment in fragments:
        assert fragment in line, line
    return line


def run_main(capsys, argv) -> str:
    """``cli.main(argv)`` in this process; asserts exit code 2 and returns its one error line."""
    from jaxbigram.cli import main

    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    return error_line(err)


def leaf_count(tree) -> int:
    """The number of scalars in a pytree of arrays or shapes (an independent parameter count)."""
    import math

    import jax

    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def same_tree(a, b) -> bool:
    """Same structure, dtypes and values (bit for bit)."""
    import jax
    import numpy as np

    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return (jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and len(la) == len(lb)
            and all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y) for x, y in zip(la, lb)))


def table_params(table) -> dict:
    """Bigram params holding ``table`` as the (V, V) logits table."""
    import jax.numpy as jnp

    return {"token_embedding_table": {"embedding": jnp.asarray(table, dtype=jnp.float32)}}


def store_params(workdir, step: int | None = None):
    """(params, meta) of ``step`` (default: the newest) of a run, read through a read-only Store."""
    from jaxbigram.checkpoint import Store

    store = Store(workdir, read_only=True)
    try:
        return store.restore_params(store.steps()[-1] if step is None else step)
    finally:
        store.close()


def write(path: Path, content) -> Path:
    """Write bytes or UTF-8 text to ``path``; returns it."""
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def make_corpus():
    """``jaxbigram.bench.synthetic.make_corpus(path, size_bytes, vocab, seed=0, ...)``."""
    from jaxbigram.bench.synthetic import make_corpus

    return make_corpus


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """A private ``XDG_CACHE_HOME`` for the session, so tests never write to ``~/.cache``."""
    cache = tmp_path_factory.mktemp("xdg_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        yield cache


@pytest.fixture(scope="session")
def data_path() -> Path:
    path = Path(DATA)
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
def big_corpus_path(tmp_path_factory, make_corpus) -> Path:
    """400 kB of generated text over 1,500 characters (accents, CJK, emoji, '\\r\\n' and '\\n'): uint16 ids, V > 512."""
    path = tmp_path_factory.mktemp("bigcorpus") / "multi.txt"
    stats = make_corpus(str(path), 400_000, vocab=1500, seed=11)
    assert stats["bytes"] == path.stat().st_size and 390_000 <= stats["bytes"] <= 400_000
    return path


@pytest.fixture(scope="session")
def run_cli(data_path, _session_cache):
    """``run_cli(*args, env=None, timeout=300, cwd=None)`` → CompletedProcess of ``python run.py *args``.

    ``env`` entries are added to the environment (a value of None removes that variable).
    """

    def run(*args, env: dict | None = None, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
        full_env = dict(os.environ, JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(_session_cache),
                        JAXBIGRAM_DATA=str(data_path))
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
        return subprocess.run([sys.executable, str(REPO_ROOT / "run.py"), *map(str, args)], cwd=cwd or REPO_ROOT,
                              env=full_env, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def gpt_tiny_run(tmp_path_factory, run_cli):
    """``(workdir, proc)`` of one ``run.py train --config gpt-tiny`` of the session (200 steps, evals with samples at
    0, 100, 200), with the CLI's own device defaults. Read-only by convention."""
    workdir = tmp_path_factory.mktemp("gpt") / "run"
    proc = run_cli("train", "--config", "gpt-tiny", "--workdir", workdir,
                   env={"XLA_FLAGS": None, "JAXBIGRAM_CPU_DEVICES": None})  # the CLI's own device defaults
    assert proc.returncode == 0, proc.stderr
    return workdir, proc


@pytest.fixture
def cli_run(data_path, monkeypatch):
    """``cli_run(*args, env=None, cwd=None)``: ``run_cli``'s call, in this process (``cli.main`` with stdout and
    stderr captured, ``env`` and ``cwd`` applied for the call): for the tests whose property is the command's output
    and files, not the process (start-up, signals, the CLI's own device count: ``run_cli`` for those). A traceback is
    not caught: it fails the test where it happened."""
    import contextlib
    import io

    from jaxbigram import cli

    def run(*args, env: dict | None = None, cwd=None, timeout=None) -> subprocess.CompletedProcess:
        out, err = io.StringIO(), io.StringIO()
        with monkeypatch.context() as patch:
            patch.setenv("JAXBIGRAM_DATA", str(data_path))
            for key, value in (env or {}).items():
                if value is None:
                    patch.delenv(key, raising=False)
                else:
                    patch.setenv(key, value)
            if cwd is not None:
                patch.chdir(cwd)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = cli.main([str(a) for a in args], program="python run.py")
                except SystemExit as e:  # argparse: --help, or a bad flag
                    code = e.code if isinstance(e.code, int) else 2
        return subprocess.CompletedProcess(["run.py", *map(str, args)], code, out.getvalue(), err.getvalue())

    return run


@dataclass(frozen=True)
class TinyRun:
    workdir: Path
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def tiny_train(tmp_path_factory, run_cli, data_path) -> TinyRun:
    """Train the tiny preset once per session (200 steps, evals and checkpoints at 100 and 200), in a subprocess
    whose stderr is a pipe (plain progress lines)."""
    workdir = tmp_path_factory.mktemp("tiny_run") / "run"
    proc = run_cli("train", "--config", TINY, "--data", data_path, "--workdir", workdir)
    assert proc.returncode == 0, f"tiny training failed:\n{proc.stderr}"
    return TinyRun(workdir=workdir, proc=proc)


@pytest.fixture(scope="session")
def tiny_workdir(tiny_train) -> Path:
    """The workdir of the session's tiny run. Do not modify it; use ``tiny_workdir_copy`` for that."""
    return tiny_train.workdir


@pytest.fixture
def untouched(tiny_workdir):
    """The tiny run's workdir; asserts after the test that it is byte-for-byte and mtime-for-mtime the same."""
    before = snapshot(tiny_workdir)
    yield tiny_workdir
    assert snapshot(tiny_workdir) == before


@pytest.fixture
def tiny_workdir_copy(tiny_workdir, tmp_path) -> Path:
    """A private copy of the tiny run's workdir, free to damage."""
    dest = tmp_path / "run_copy"
    shutil.copytree(tiny_workdir, dest)
    return dest


# As root, a command first drops the capabilities that let root ignore file permissions (from the bounding set, so the
# program it execs has none), staying uid 0: it is then stopped by permissions like any other user. (Not another uid:
# the interpreter may live where another user may not read it.) In its own process: the test process has threads.
_WITHOUT_PERMISSION_OVERRIDE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
    if libc.prctl(24, capability, 0, 0, 0):  # PR_CAPBSET_DROP
        sys.exit(f"cannot drop capability {capability}: errno {ctypes.get_errno()}")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def run_bound_by_permissions(*args, env: dict, cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python *args`` in a subprocess that file permissions stop, even when the tests run as root (it drops the
    capabilities that let root ignore them; as another user, permissions stop it anyway)."""
    python = [sys.executable, "-c", _WITHOUT_PERMISSION_OVERRIDE] if os.geteuid() == 0 else [sys.executable]
    return subprocess.run([*python, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


# ----------------------------------------------------------------------------- CI: no test may skip (issue 25)
# .ci/run installs every extra and sets JAXBIGRAM_NO_SKIPS=1: a test that skipped there (a missing extra, a missing
# file) fails the run, and the closing lines say which.

def _skipped(config) -> list:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return reporter.stats.get("skipped", []) if reporter is not None else []


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = _skipped(config)
    if os.environ.get("JAXBIGRAM_NO_SKIPS") == "1" and skipped:
        terminalreporter.write_line(f"error: {len(skipped)} test(s) skipped with JAXBIGRAM_NO_SKIPS=1 (reasons: the "
                                    "SKIPPED lines): install every extra, pip install -e '.[test,plot,compare]'", red=True)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("JAXBIGRAM_NO_SKIPS") == "1" and exitstatus == 0 and _skipped(session.config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
