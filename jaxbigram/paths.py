"""Paths a user gives (flags, environment variables), checked once before anything uses them, and the folders jaxbigram
writes into. No JAX here.

``check_user_path`` turns whatever the OS would say about a path deep inside a command (a name too long, a symlink
loop, a file where a folder should be, bytes that are not UTF-8) into one named ``UsageError`` naming the flag or
variable it came from. A path that does not exist yet passes: what to do then is the command's business.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import UsageError, printable_path

NAME_MAX = 255  # bytes in one file or folder name (Linux; the file system's own limit is asked when it can be)
PATH_MAX = 4096  # bytes in a whole path, its final NUL included
SHOWN_CHARS = 120  # a path too long to use is shown elided to about this many characters
IS_FILE = "it is a file"  # what ``prepare_folder`` says of a folder that is a file


def check_path_encodable(path, flag: str, what: str = "path") -> None:
    """Refuse a path that is not valid UTF-8 (or holds a NUL byte) with one line naming ``flag``.

    A file name on Linux may be any bytes; Python hands undecodable ones over as lone surrogates, which cannot be
    written into JSON metadata as UTF-8 and which orbax/TensorStore cannot open.
    """
    try:
        raw = os.fsencode(path)
    except (TypeError, ValueError):
        raw = None
    if raw is None or b"\0" in raw:
        raise UsageError("path_nul", what=what, path=path, flag=flag)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("path_not_utf8", what=what, path=path, flag=flag) from None


def _limits(absolute: bytes) -> tuple[int, int]:
    """(NAME_MAX, PATH_MAX) of the file system holding ``absolute``, asked of its nearest existing folder."""
    folder = absolute
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        return NAME_MAX, PATH_MAX


def _elided(path: bytes) -> str:
    shown = printable_path(path)
    return shown if len(shown) <= SHOWN_CHARS else f"{shown[:SHOWN_CHARS * 2 // 3]}…{shown[-SHOWN_CHARS // 3:]}"


def _first_file(absolute: bytes) -> bytes:
    """The first leading part of ``absolute`` that exists and is not a folder (why a stat said ENOTDIR)."""
    parts = absolute.split(b"/")
    for end in range(2, len(parts) + 1):
        prefix = b"/".join(parts[:end])
        if os.path.lexists(prefix) and not os.path.isdir(prefix):
            return prefix
    return absolute


def check_user_path(path, flag: str, what: str, room: int = 0) -> None:
    """Refuse with one line (naming ``flag``: the option or variable the path came from) a path no file operation
    can use: not UTF-8 or with a NUL byte, a name over NAME_MAX bytes, a whole path (made absolute, plus ``room``
    bytes for what a command writes below it) over PATH_MAX, a symlink loop, a file where a folder should be, a
    folder on the way this user may not enter."""
    check_path_encodable(path, flag, what)
    absolute = os.path.abspath(os.fsencode(path))
    name_max, path_max = _limits(absolute)
    fields = {"what": what, "path": _elided(absolute), "flag": flag}
    long_name = next((name for name in absolute.split(b"/") if len(name) > name_max), None)
    if long_name is not None:
        raise UsageError("path_too_long", detail=f"a name of {len(long_name)} bytes, {_elided(long_name[:40])}…; "
                                                 f"names may have at most {name_max}", **fields)
    if len(absolute) + room >= path_max:
        below = f" plus up to {room} for the files written inside it" if room else ""
        raise UsageError("path_too_long", detail=f"{len(absolute)} bytes{below}; a path may have at most "
                                                 f"{path_max - 1}", **fields)
    try:
        os.stat(absolute)
    except FileNotFoundError:  # not there yet: the command says what to do
        return
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            raise UsageError("path_not_dir", file=_first_file(absolute), **{**fields, "path": path}) from None
        raise UsageError("path_unusable", reason=e.strerror or str(e), **{**fields, "path": path}) from None


def user_cache_dir() -> Path | None:
    """``$XDG_CACHE_HOME`` (default ``~/.cache``); None when neither it nor a home folder is known."""
    base = os.environ.get("XDG_CACHE_HOME")
    if base:
        return Path(base)
    home = os.path.expanduser("~")
    return None if home.startswith("~") else Path(home) / ".cache"


def prepare_folder(folder: Path) -> str | None:
    """Create ``folder`` (and its parents) if needed; None when files can be written into it, else why not:
    ``IS_FILE``, the OS's reason (``Not a directory``, ``File name too long``, …), ``permission denied`` or
    ``read-only file system``."""
    try:
        if os.path.exists(folder) and not os.path.isdir(folder):
            return IS_FILE
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return e.strerror or str(e)
    return unwritable_reason(folder)


def unwritable_reason(folder) -> str | None:
    """Why this process cannot create files in the existing folder ``folder`` (None when it can)."""
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    return "read-only file system" if os.statvfs(folder).f_flag & os.ST_RDONLY else "permission denied"
