"""paths.py: every path a user gives is checked once, before use; what no file operation could use is one named
error, and a path that does not exist yet passes."""

import os

import pytest

from jaxbigram import paths
from jaxbigram.errors import UsageError

LONG_NAME = "n" * 300


def _path_of_length(base, total: int):
    """``base`` extended with names of at most 200 bytes to exactly ``total`` bytes."""
    path = str(base)
    while len(path) < total:
        path += "/" + "d" * min(200, total - len(path) - 1)
    return path


def _hostile(tmp_path, kind: str):
    """A path of each kind no file operation can use (``kind`` → (path, room, error code))."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    loop = tmp_path / "loop"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    return {
        "a name over 255 bytes": (tmp_path / LONG_NAME / "run", 0, "path_too_long"),
        "a whole path over 4096 bytes": (_path_of_length(tmp_path, 4200), 0, "path_too_long"),  # every name fine
        "room for the files below it": (_path_of_length(tmp_path, 4000), 200, "path_too_long"),
        "a symlink loop": (loop / "run", 0, "path_unusable"),
        "below a regular file": (afile / "run", 0, "path_not_dir"),
        "not UTF-8": (tmp_path / os.fsdecode(b"r\xffn"), 0, "path_not_utf8"),
        "a NUL byte": (f"{tmp_path}/a\0b", 0, "path_nul"),
    }[kind]


@pytest.mark.parametrize("kind", ["a name over 255 bytes", "a whole path over 4096 bytes",
                                  "room for the files below it", "a symlink loop", "below a regular file", "not UTF-8",
                                  "a NUL byte"])
def test_a_path_no_file_operation_can_use_is_one_named_error(kind, tmp_path):
    path, room, code = _hostile(tmp_path, kind)
    with pytest.raises(UsageError) as info:
        paths.check_user_path(path, "--workdir", "workdir", room)
    text = str(info.value)
    assert info.value.code == code and "\n" not in text and "--workdir" in text
    assert len(text) < 600  # a path too long to use is shown elided


def test_a_path_that_does_not_exist_yet_or_exists_passes(tmp_path):
    for path in (tmp_path, tmp_path / "new" / "run", "relative/run", tmp_path / ("n" * 255)):
        paths.check_user_path(path, "--workdir", "workdir", room=160)


def test_the_room_below_a_path_counts(tmp_path):
    fits = tmp_path / ("d" * 200) / ("e" * 100)
    paths.check_user_path(fits, "--out", "output folder", room=16)
    with pytest.raises(UsageError) as info:
        paths.check_user_path(fits, "--out", "output folder", room=4096)
    assert "plus up to 4096 for the files written inside it" in str(info.value)


def test_below_a_file_names_the_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UsageError) as info:
        paths.check_user_path(afile / "a" / "b", "--data", "data")
    assert str(info.value) == (f"data path {afile}/a/b goes through {afile}, which is a file, not a folder: use "
                               f"another path for --data")


@pytest.mark.parametrize("kind, expected", [("new", None), ("existing", None), ("a file", paths.IS_FILE),
                                            ("below a file", "Not a directory"),
                                            ("a name too long", "File name too long")])
def test_prepare_folder_creates_it_or_says_why_not(kind, expected, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    folder = {"new": tmp_path / "a" / "b", "existing": tmp_path, "a file": afile, "below a file": afile / "sub",
              "a name too long": tmp_path / LONG_NAME}[kind]
    assert paths.prepare_folder(folder) == expected
    assert os.path.isdir(folder) == (expected is None)
    assert afile.read_text() == "x"


def test_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert paths.user_cache_dir() == tmp_path
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.user_cache_dir() == tmp_path / "home" / ".cache"
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)  # no HOME and no passwd entry: "~" stays "~"
    assert paths.user_cache_dir() is None
