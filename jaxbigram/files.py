"""Reading a user's files safely: a regular file (not a folder, FIFO or device), within a size limit, that fits in
memory, valid UTF-8 (a leading byte-order mark removed), each failure one named ``UsageError``; and writing a file
whole or not at all (``_atomic_write``)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import UsageError
from .paths import check_path_encodable

UTF8_BOM = b"\xef\xbb\xbf"
PROMPT_FILE_MAX_BYTES = 1 << 20  # read_text_file's default cap (a prompt, not a corpus)


def _atomic_write(path: Path, write) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a cache beside a shared text should be readable by all
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return kind
    return "not a regular file"


# the codes each reader raises: the data file keeps its historic codes; any other file (prompt, ...) the generic ones
_DATA_CODES = {"missing": "data_missing", "is_dir": "data_is_dir", "not_regular": "data_not_regular",
               "unreadable": "data_unreadable", "empty": "data_empty", "not_utf8": "data_not_utf8",
               "too_big": "data_too_big"}
_FILE_CODES = {"missing": "file_missing", "is_dir": "file_is_dir", "not_regular": "file_not_regular",
               "unreadable": "file_unreadable", "empty": "file_empty", "not_utf8": "file_not_utf8",
               "too_big": "file_too_big"}


def _stat_regular(path, codes: dict, fields: dict) -> os.stat_result:
    """``os.stat`` (following symlinks) and refuse anything but a regular file, BEFORE anything opens it: opening a
    FIFO for reading blocks until a writer comes, and /dev/zero or a socket never end."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise UsageError(codes["missing"], **fields) from None
    except ValueError as e:  # an embedded NUL byte (possible from a config string)
        raise UsageError(codes["unreadable"], reason=str(e), **fields) from None
    except OSError as e:  # permission denied on a parent, a symlink loop, a name too long, ...
        raise UsageError(codes["unreadable"], reason=e.strerror or str(e), **fields) from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(codes["is_dir"], **fields)
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(codes["not_regular"], kind=_file_kind(st.st_mode), **fields)
    return st


def check_regular_file(path, flag: str, what: str = "file") -> os.stat_result:
    """Refuse (one line naming ``flag``) a path that does not exist, is a directory, or is not a regular file (a FIFO,
    a device such as /dev/zero, a socket); returns its ``os.stat``. Nothing is opened."""
    return _stat_regular(path, _FILE_CODES, {"path": path, "what": what, "flag": flag})


def _read_regular(path, codes: dict, fields: dict, max_bytes: int | None) -> bytes:
    """The bytes of a regular file: stat first (see _stat_regular), then open without blocking and check the opened
    file again (the path may have been swapped for a FIFO in between), then read at most ``max_bytes``."""
    st = _stat_regular(path, codes, fields)
    if max_bytes is not None and st.st_size > max_bytes:
        raise UsageError(codes["too_big"], size=st.st_size, limit=max_bytes, **fields)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise UsageError(codes["unreadable"], reason=e.strerror or str(e), **fields) from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise UsageError(codes["not_regular"], kind=_file_kind(opened.st_mode), **fields)
        try:
            payload = f.readall() if max_bytes is None else f.read(max_bytes + 1)
        except OSError as e:
            raise UsageError(codes["unreadable"], reason=e.strerror or str(e), **fields) from None
    if max_bytes is not None and len(payload) > max_bytes:  # grew after the stat
        raise UsageError(codes["too_big"], size=len(payload), limit=max_bytes, **fields)
    if not payload:
        raise UsageError(codes["empty"], **fields)
    return payload


def _check_fits_in_memory(path, size: int) -> None:
    """Refuse a data file whose bytes plus ids (at least one byte per character) cannot fit in the memory left."""
    from .memory import available_memory_bytes, human_bytes

    available = available_memory_bytes()
    if available is not None and 2 * size > available:
        raise UsageError("data_too_big", path=path, size=human_bytes(size),
                         need=human_bytes(2 * size), available=human_bytes(available))


def read_bytes(path: Path) -> bytes:
    """The bytes of the data file ``path``: a regular, non-empty file (never a FIFO, device or socket) whose bytes
    and ids fit in the memory available. Each refusal is one UsageError naming the path and --data."""
    fields = {"path": path}
    st = _stat_regular(path, _DATA_CODES, fields)
    _check_fits_in_memory(path, st.st_size)
    return _read_regular(path, _DATA_CODES, fields, None)


def strip_bom(payload: bytes) -> tuple[bytes, bool]:
    """``payload`` without a leading UTF-8 byte-order mark, and whether there was one (Windows editors write it;
    it is not part of the text and must not become a vocabulary character)."""
    if payload[:3] == UTF8_BOM:
        return payload[3:], True
    return payload, False


def decode_utf8(payload: bytes, path: Path) -> str:
    """UTF-8 bytes → str, a leading byte-order mark removed (as ``load_corpus`` does); offsets in errors count from
    the first byte of the file."""
    body, bom = strip_bom(payload)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError("data_not_utf8", path=path, offset=e.start + 3 * bom) from None


def read_text_file(path, what: str = "prompt file", flag: str = "--prompt-file",
                   max_bytes: int = PROMPT_FILE_MAX_BYTES) -> str:
    """The UTF-8 text of a small file such as ``--prompt-file``, a leading byte-order mark removed.

    Same rules as the data file: the path must be UTF-8 and name a regular file (a FIFO, /dev/zero, a socket are
    refused before opening), non-empty, at most ``max_bytes`` bytes, valid UTF-8. Every refusal is one UsageError
    naming ``what``, the path and ``flag``.
    """
    check_path_encodable(path, flag, what)
    fields = {"path": path, "what": what, "flag": flag}
    payload = _read_regular(path, _FILE_CODES, fields, max_bytes)
    body, bom = strip_bom(payload)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError("file_not_utf8", offset=e.start + 3 * bom, **fields) from None


# ----------------------------------------------------------------------------- the corpus, cached as .npy


def _writable_dir(folder: Path) -> bool:
    """Whether we may add files to ``folder``: its mode must allow writing (respected even by root, who bypasses
    permission checks, so a read-only data folder such as a shared dataset is never written to) and access allows it."""
    try:
        return bool(folder.stat().st_mode & 0o222) and os.access(folder, os.W_OK | os.X_OK)
    except OSError:
        return False


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False
